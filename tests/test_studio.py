"""Sketch studio (`sketchembed serve`): the JSON API through FastAPI's test client — every endpoint,
every refused input, raw and simplified drawings agreeing, answers equal to the CLI's library calls —
and the page in a real headless Chromium (skipped with a message where the browser is missing).

Two tiny checkpoints are trained once (2 batches each, in-process): a classifier (combined) and an
embedding-only model (triplet, classes by KNN).
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import threading
import time
import urllib.request
from itertools import islice
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from bench.studio import measure, stroke_prefixes
from conftest import real_points
from sketchembed.cli import main
from sketchembed.data.datamodule import SketchDataModule
from sketchembed.data.formats import read_drawings
from sketchembed.data.simplify import simplify_drawing
from sketchembed.eval.human import sample_items
from sketchembed.eval.knn import vote
from sketchembed.eval.embed import embed_points
from sketchembed.eval.suggest import suggest
from sketchembed.models import CombinedModel, TripletImageModel
from sketchembed.studio import Studio, create_app
from sketchembed.studio import app as studio_app
from sketchembed.studio.drawing import MAX_BODY_BYTES, strokes_json
from sketchembed.studio.live import browser_missing, draw_stroke, free_port, launch, serve_in_thread, wait_predictions

STUDY10 = ["apple", "pear", "blackberry", "grapes", "banana", "bus", "van", "truck", "airplane", "helicopter"]


def _train_tiny(kind: str, out: Path) -> Path:
    L.seed_everything(0)
    if kind == "combined":
        model = CombinedModel(10, backbone="test_resnet", embedding_dim=16, hidden=16, layers=1, mlp_hidden=16,
                              image_size=32)
        dm = SketchDataModule("study10", views=sorted(model.views), image_size=32, batch_size=8, max_snapshots=3)
    else:
        model = TripletImageModel(backbone="test_resnet", embedding_dim=16, image_size=32)
        dm = SketchDataModule("study10", views=sorted(model.views), image_size=32, sampler="pk", pk_p=3, pk_k=4)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0, num_sanity_val_steps=0,
                        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    path = out / kind / "last.ckpt"
    path.parent.mkdir(parents=True)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("studio")
    return {"combined": _train_tiny("combined", tmp), "triplet": _train_tiny("triplet", tmp), "tmp": tmp}


@pytest.fixture(scope="module")
def studio(ckpts):
    return Studio.open(ckpts["combined"], progress=False, results_dir=ckpts["tmp"] / "results", log=lambda m: None)


@pytest.fixture(scope="module")
def client(studio):
    with TestClient(create_app(studio), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def knn_client(ckpts):
    s = Studio.open(ckpts["triplet"], progress=False, results_dir=ckpts["tmp"] / "results", log=lambda m: None)
    with TestClient(create_app(s), raise_server_exceptions=False) as c:
        c.studio = s
        yield c


def strokes_of(points) -> list:
    return strokes_json(np.asarray(points))


def assert_one_line_refusal(r, status, pattern):
    assert r.status_code == status, (r.status_code, r.text)
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and "Traceback" not in r.text, detail
    assert re.search(pattern, detail), detail


# ------------------------------------------------------------------------------------ endpoints
def test_health_names_model_and_classes(client):
    h = client.get("/api/health").json()
    assert h["status"] == "ok" and h["model_kind"] == "combined" and h["classes"] == STUDY10
    assert h["by"] == "classifier" and h["index"] == {"n": 235, "classes": 10}  # the train split of study10


def test_predict_is_the_models_answer_and_the_cli_suggestion(client, studio, shared_quickdraw):
    """Classes = softmax of the model's logits; neighbours = what `sketchembed suggest` finds."""
    pts = real_points(shared_quickdraw, ["bus"], 1)[0].astype(np.int16)
    r = client.post("/api/predict", json={"drawing": strokes_of(pts), "k": 6})
    assert r.status_code == 200, r.text
    res = r.json()
    _, logits, _, _ = embed_points(studio.model, [pts], studio.inputs)
    p = torch.softmax(torch.from_numpy(logits[0]).double(), 0).numpy()
    order = np.argsort(-p)[:5]
    assert [c["name"] for c in res["classes"]] == [STUDY10[i] for i in order]
    assert np.allclose([c["p"] for c in res["classes"]], p[order], atol=1e-6)
    idx, dist, _ = suggest(studio.model, studio.index, pts, studio.inputs, k=6)
    assert [n["key_id"] for n in res["neighbours"]] == [str(int(studio.index.key_ids[i])) for i in idx]
    assert np.allclose([n["distance"] for n in res["neighbours"]], dist, atol=1e-5)
    first = res["neighbours"][0]
    assert first["class"] in STUDY10
    assert first["drawing"] == strokes_of(studio.index.drawing(int(idx[0])))
    assert res["n_points"] == len(pts) and res["n_strokes"] == int(pts[:, 2].sum())


def test_raw_and_simplified_drawings_give_the_same_answer(client, shared_quickdraw):
    """A raw drawing (x, y, t; any frame) is simplified the dataset's way before the model sees it."""

    raw = next(islice(read_drawings(shared_quickdraw / "raw" / "banana.ndjson", on_error="raise"), 2, 3))
    raw_json = [[s[:, 0].tolist(), s[:, 1].tolist(), s[:, 2].tolist()] for s in raw.strokes]
    simple = strokes_of(simplify_drawing(raw).points())
    a = client.post("/api/predict", json={"drawing": raw_json}).json()
    b = client.post("/api/predict", json={"drawing": simple}).json()
    # the same raw drawing on a canvas twice as large, shifted, without its time row
    moved = [[[2 * x + 31.5 for x in s[0]], [2 * y + 7 for y in s[1]]] for s in raw_json]
    c = client.post("/api/predict", json={"drawing": moved, "format": "raw"}).json()
    assert a == b == c
    assert a["n_points"] < sum(len(s) for s in raw.strokes)  # it was simplified


def test_k_is_checked(client, shared_quickdraw):
    d = strokes_of(real_points(shared_quickdraw, ["pear"], 1)[0])
    assert len(client.post("/api/predict", json={"drawing": d, "k": 3}).json()["neighbours"]) == 3
    assert len(client.post("/api/predict", json={"drawing": d}).json()["neighbours"]) == 8
    for k in (0, 51, "3", 2.5, True):
        assert_one_line_refusal(client.post("/api/predict", json={"drawing": d, "k": k}), 422, r"'k' must")


GOOD = [[[10, 60, 120], [10, 80, 40]]]
BAD_INPUTS = [
    # (name, body bytes, status, what the message names)
    ("not json", b"{drawing: [}", 400, r"not JSON"),
    ("not utf-8", b"\xff\xfe", 400, r"not JSON"),
    ("a list, not an object", b"[1, 2]", 400, r"JSON object"),
    ("no drawing", b'{"strokes": []}', 400, r"JSON object"),
    ("unknown field", json.dumps({"drawing": GOOD, "colour": 1}).encode(), 400, r"unknown field.*colour"),
    ("drawing not a list", b'{"drawing": {"x": 1}}', 400, r"'drawing' must be a list of strokes"),
    ("stroke with one row", b'{"drawing": [[[1, 2, 3]]]}', 400, r"stroke 0 must be .*got 1 rows"),
    ("stroke with four rows", b'{"drawing": [[[1], [2], [3], [4]]]}', 400, r"stroke 0 must be .*got 4 rows"),
    ("stroke not a list", b'{"drawing": [[[1, 2], [3, 4]], 7]}', 400, r"stroke 1 must be"),
    ("row of strings", b'{"drawing": [[["1", "2"], [3, 4]]]}', 400, r"stroke 0 x must hold numbers"),
    ("row of booleans", b'{"drawing": [[[1, 2], [true, 4]]]}', 400, r"stroke 0 y must hold numbers"),
    ("nested row", b'{"drawing": [[[[1], 2], [3, 4]]]}', 400, r"stroke 0 x must hold numbers"),
    ("x/y length mismatch", b'{"drawing": [[[1, 2, 3], [3, 4]]]}', 422, r"stroke 0: x has 3 values but y has 2"),
    ("t length mismatch", b'{"drawing": [[[1, 2], [3, 4], [0]]]}', 422, r"stroke 0: x has 2 values but t has 1"),
    ("NaN", b'{"drawing": [[[1, NaN], [3, 4]]]}', 422, r"stroke 0 x holds NaN or infinity"),
    ("infinity", b'{"drawing": [[[1, 2], [3, Infinity]]]}', 422, r"stroke 0 y holds NaN or infinity"),
    ("huge number", b'{"drawing": [[[1, 2], [3, 1e400]]]}', 422, r"NaN or infinity"),
    ("empty drawing", b'{"drawing": []}', 422, r"'drawing' is empty"),
    ("empty stroke", b'{"drawing": [[[1, 2], [3, 4]], [[], []]]}', 422, r"stroke 1 has no points"),
    ("too many strokes", json.dumps({"drawing": [[[1, 2], [3, 4]]] * 257}).encode(), 413, r"257 strokes, at most 256"),
    ("too many points", json.dumps({"drawing": [[list(range(12000)), [5] * 12000]] * 2}).encode(), 413,
     r"more than 20000 points"),
    ("bad format", json.dumps({"drawing": GOOD, "format": "svg"}).encode(), 422, r"'format' must be one of"),
    ("simplified off the canvas", json.dumps({"drawing": [[[1, 300], [3, 4]]], "format": "simplified"}).encode(),
     422, r"simplified drawing: stroke 0 has coordinates outside 0–255"),
    ("simplified one-point stroke", json.dumps({"drawing": [[[1], [3]]], "format": "simplified"}).encode(),
     422, r"stroke 0 has a single point"),
    ("a lone tap", json.dumps({"drawing": [[[100], [100], [0]]]}).encode(), 422, r"raw drawing: drawing spans 0"),
    ("a lone dot", json.dumps({"drawing": [[[7, 7], [9, 9]]]}).encode(), 422, r"simplified drawing: drawing spans 0"),
    # the readers' JSON decoder: nesting too deep is refused, not a RecursionError (a 500)
    ("nested too deeply", b'{"drawing": [[[1, 2], [3, 4]]], "k": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400,
     r"^body is not JSON \(nested too deeply\)$"),
    # the raw readers' coordinate limit, before the simplification (1e308 was a 500 from inside it)
    ("raw beyond the limit", json.dumps({"drawing": [[[1, 1e308], [3, 4]]], "format": "raw"}).encode(), 422,
     r"raw drawing: stroke 0 has coordinates outside ±100,000"),
    ("huge both ways", json.dumps({"drawing": [[[-1e308, 1e308], [3, 4]]]}).encode(), 422,
     r"raw drawing: stroke 0 has coordinates outside ±100,000"),
    ("too intricate", json.dumps({"drawing": [[np.linspace(0, 255, 20000).tolist(), [0, 255] * 10000]],
                                  "format": "raw"}).encode(), 422, r"raw drawing: too intricate to simplify: 20,000 points"),
]


@pytest.mark.parametrize("name,body,status,pattern", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_refused_in_one_line(client, name, body, status, pattern):
    t0 = time.perf_counter()
    r = client.post("/api/predict", content=body, headers={"content-type": "application/json"})
    assert_one_line_refusal(r, status, pattern)
    assert time.perf_counter() - t0 < 10  # the zig-zag took a minute and 1 GB to simplify


@pytest.mark.parametrize("path", ["/api/predict", "/api/human/start", "/api/human/finish"])
def test_every_json_endpoint_refuses_deep_nesting_in_one_line(client, path):
    body = b'{"session": "x", "answers": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    r = client.post(path, content=body, headers={"content-type": "application/json"})
    assert_one_line_refusal(r, 400, r"^body is not JSON \(nested too deeply\)$")


def test_a_slow_request_does_not_stall_the_others(live_server, monkeypatch):
    """Reading and simplifying a drawing runs in the threadpool, as the model does: while one predict
    is busy there, the event loop still answers (it was blocked for a minute by one raw zig-zag)."""
    busy, release = threading.Event(), threading.Event()

    def slow_to_points(*a, **k):
        busy.set()
        release.wait(20)
        return real(*a, **k)

    real = studio_app.to_points
    monkeypatch.setattr(studio_app, "to_points", slow_to_points)
    answers = []
    worker = threading.Thread(target=lambda: answers.append(_post(live_server + "/api/predict", {"drawing": GOOD})))
    worker.start()
    try:
        assert busy.wait(20)
        with urllib.request.urlopen(live_server + "/api/health", timeout=5) as r:
            assert json.loads(r.read())["status"] == "ok"
    finally:
        release.set()
        worker.join(30)
    assert answers and len(answers[0]["neighbours"]) == 8


def _post(url, body):
    req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def test_oversized_bodies_are_refused_declared_or_streamed(client):
    big = b'{"drawing": [[[' + b"1," * (MAX_BODY_BYTES // 2) + b"1], [1]]]}"
    assert_one_line_refusal(client.post("/api/predict", content=big), 413, r"over the limit of \d+ bytes")

    def chunks():  # no Content-Length: sent chunked, counted while it streams
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b" " * 65536

    assert_one_line_refusal(client.post("/api/predict", content=chunks()), 413, r"\(streamed\) is over the limit")
    r = client.post("/api/predict", content=b"{}", headers={"content-length": "x1"})
    assert r.status_code in (400, 413)
    assert client.get("/api/health").json()["status"] == "ok"  # still serving


def test_one_point_taps_are_accepted_as_raw(client):
    """A tap (one raw point) is a dot, as in the dataset's raw files; simplification makes it 2 points."""
    r = client.post("/api/predict", json={"drawing": [[[100], [100], [0]], [[10, 200], [30, 40], [5, 9]]]})
    assert r.status_code == 200, r.text
    assert r.json()["n_strokes"] == 2


def test_an_internal_error_is_one_line_without_traceback(client, studio, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("secret internals\nline two")

    monkeypatch.setattr(studio, "predict", boom)
    r = client.post("/api/predict", json={"drawing": GOOD})
    assert r.status_code == 500
    assert r.json() == {"detail": "internal error (RuntimeError); the server log has the details"}


def test_sample_is_reproducible_and_checked(client):
    a, b = client.get("/api/sample?seed=3").json(), client.get("/api/sample?seed=3").json()
    assert a == b and a["class"] in STUDY10 and len(a["drawing"]) >= 1
    assert_one_line_refusal(client.get("/api/sample?split=holdout"), 422, r"split: Input should be")
    assert_one_line_refusal(client.get("/api/sample?seed=-1"), 422, r"seed: Input should be")


def test_human_test_scores_you_beside_the_model_and_saves_json(client, studio):
    start = client.post("/api/human/start", json={"n": 6, "fractions": [0.5, 1.0], "seed": 4}).json()
    assert start["classes"] == STUDY10 and len(start["items"]) == 6
    assert sorted(it["fraction"] for it in start["items"]) == [0.5] * 3 + [1.0] * 3
    assert all("label" not in it for it in start["items"])  # the answer is not sent to the page
    items = sample_items(studio.data, 6, [0.5, 1.0], 4, "test")
    assert [it["drawing"] for it in start["items"]] == [strokes_of(it.points) for it in items]
    truth = [STUDY10[it.label] for it in items]
    answers = [truth[0], truth[1], "apple" if truth[2] != "apple" else "pear", None, truth[4], truth[5]]
    r = client.post("/api/human/finish", json={"session": start["session"], "answers": answers})
    assert r.status_code == 200, r.text
    res = r.json()
    model = studio.guess([it.points for it in items])
    for row in res["rows"]:
        f = row["fraction"]
        mine = [(a == t, m == t) for it, a, t, m in zip(items, answers, truth, model) if it.fraction == f and a]
        assert row["n"] == len(mine)
        assert row["human"] == pytest.approx(np.mean([h for h, _ in mine]))
        assert row["model"] == pytest.approx(np.mean([m for _, m in mine]))
        lo, hi = row["human_ci95"]
        assert 0 <= lo <= row["human"] <= hi <= 1 and hi - lo > 0.2  # 3 drawings: a wide interval
    saved = json.loads(Path(res["saved"]).read_text())
    assert saved["skipped"] == 1 and len(saved["answers"]) == 5 and saved["seed"] == 4
    assert {"human/acc@50", "human/acc@100", "model/acc@50", "model/acc@100"} <= set(saved)
    # finished sessions are gone; bad requests are one line
    again = client.post("/api/human/finish", json={"session": start["session"], "answers": answers})
    assert_one_line_refusal(again, 404, r"unknown or finished human-test session")
    s2 = client.post("/api/human/start", json={"n": 2, "seed": 1}).json()["session"]
    assert_one_line_refusal(client.post("/api/human/finish", json={"session": s2, "answers": ["apple"]}),
                            422, r"'answers' has 1 entries for 2 drawings")
    assert_one_line_refusal(client.post("/api/human/finish", json={"session": s2, "answers": ["apple", "cat"]}),
                            422, r"'cat', not a class")
    assert_one_line_refusal(client.post("/api/human/start", json={"n": 0}), 422, r"^n: Input should be")
    assert_one_line_refusal(client.post("/api/human/start", json={"fractions": [0]}), 422, r"'fractions' must be")
    assert_one_line_refusal(client.post("/api/human/start", content=b"{nope", headers={"content-type": "application/json"}),
                            400, r"^body is not JSON")
    assert_one_line_refusal(client.post("/api/human/start", json={"seed": -1}), 422, r"^seed: Input should be greater")
    assert_one_line_refusal(client.post("/api/human/finish", json=[1]), 422, r"^body: Input should be a valid dict")


def test_embedding_only_model_guesses_by_knn(knn_client, shared_quickdraw):
    s = knn_client.studio
    h = knn_client.get("/api/health").json()
    assert h["model_kind"] == "triplet" and h["by"].startswith("knn")
    pts = real_points(shared_quickdraw, ["truck"], 1)[0]
    res = knn_client.post("/api/predict", json={"drawing": strokes_of(pts), "k": 3}).json()
    assert len(res["neighbours"]) == 3
    ps = [c["p"] for c in res["classes"]]
    assert ps == sorted(ps, reverse=True) and sum(ps) <= 1 + 1e-9
    assert all(math.isclose(p * s.vote_k, round(p * s.vote_k)) for p in ps)  # shares of the K votes
    emb, _ = s._embed([pts.astype(np.int16)])
    idx, _ = s.index.query(emb, s.vote_k)
    assert res["classes"][0]["name"] == s.index.classes[int(vote(s.index.labels[idx], s.vote_k, 10)[0])]


def test_page_and_docs_are_served_from_the_package(client):
    page = client.get("/")
    assert page.status_code == 200 and '<canvas id="canvas"' in page.text
    static = Path(__file__).resolve().parents[1] / "src" / "sketchembed" / "studio" / "static"
    for f in sorted(static.iterdir()):
        r = client.get(f"/static/{f.name}")
        assert r.status_code == 200 and r.content == f.read_bytes()
        # no CDN or any other network resource: the page must work offline
        assert not re.search(r"""(src|href|url)\s*[=(]\s*["']?(https?:)?//""", f.read_text()), f.name
    spec = client.get("/openapi.json").json()
    assert {"/api/health", "/api/predict", "/api/sample", "/api/human/start", "/api/human/finish"} <= set(spec["paths"])
    body = spec["paths"]["/api/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "drawing" in body["properties"]
    docs = client.get("/docs")  # the package's own page: FastAPI's Swagger UI loads from a CDN
    assert docs.status_code == 200 and '<script src="/static/api.js">' in docs.text and "cdn" not in docs.text
    assert client.get("/redoc").status_code == 404
    assert_one_line_refusal(client.get("/nope"), 404, r"Not Found")


def test_package_data_ships_the_static_files(repo_root):
    text = (repo_root / "pyproject.toml").read_text()
    section = text[text.index("[tool.setuptools.package-data]"):]
    assert '"studio/static/**/*"' in section.split("\n[")[0]


def test_serve_refuses_a_bad_checkpoint_in_one_line(tmp_path, capsys):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    assert main(["serve", "--ckpt", str(junk)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "junk.ckpt" in err and "\n" not in err


def test_serve_refuses_a_taken_port_before_loading_anything(tmp_path, capsys):
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        assert main(["serve", "--ckpt", str(tmp_path / "never-read.ckpt"), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"--port {port}: cannot listen there" in err and err.count("\n") == 1


def test_serve_uses_a_saved_index_of_its_own_model_only(ckpts, studio, tmp_path, capsys):
    studio.index.save(tmp_path / "index")
    same = Studio.open(ckpts["combined"], index_dir=tmp_path / "index", log=lambda m: None)
    assert len(same.index) == len(studio.index) and same.index.ckpt_sha256 == studio.index.ckpt_sha256
    capped = Studio.open(ckpts["combined"], index_max=30, progress=False, log=lambda m: None)
    assert len(capped.index) == 30 and len(set(capped.index.labels.tolist())) >= 8  # a random subset, not the first rows
    assert main(["serve", "--ckpt", str(ckpts["triplet"]), "--index", str(tmp_path / "index")]) == 2
    assert "index was built with checkpoint" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ the browser
@pytest.fixture(scope="module")
def live_server(studio):
    with serve_in_thread(create_app(studio)) as url:
        yield url


def test_bench_measures_latency_and_throughput(live_server):
    bodies = stroke_prefixes(2)
    assert len(bodies) >= 2 and all(b["format"] == "simplified" for b in bodies)
    lens = [len(b["drawing"]) for b in bodies]  # each drawing cut after each of its strokes: 1, 2, …, n
    assert lens[0] in (1, 2) and all(b == a + 1 or b <= 2 for a, b in zip(lens, lens[1:]))
    res = measure(live_server, bodies, latency_requests=6, throughput_requests=12, clients=4, warmup=1)
    assert 0 < res["p50_ms"] <= res["p95_ms"] and res["requests_per_s"] > 0 and res["throughput_requests"] == 12


def test_page_in_a_real_browser_guesses_after_every_stroke(live_server, tmp_path):
    why = browser_missing()
    if why:
        pytest.skip(f"browser test: {why}")
    from playwright.sync_api import sync_playwright

    shot = Path(os.environ.get("SKETCHEMBED_STUDIO_SCREENSHOT", tmp_path / "studio.png"))
    with sync_playwright() as pw:
        browser = launch(pw)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 820})
            page.set_default_timeout(90000)  # each wait ends as soon as the page is there; slow only under load
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(live_server + "/")
            page.wait_for_function("document.getElementById('model-info').textContent.includes('combined')")
            # a bus: the body, then a wheel
            draw_stroke(page, [(0.15, 0.35), (0.85, 0.35), (0.85, 0.7), (0.15, 0.7), (0.15, 0.35)])
            wait_predictions(page, 1)
            guesses1 = page.locator("#guesses li").all_inner_texts()
            neighbours1 = page.locator("#neighbours .card").all_inner_texts()
            assert len(guesses1) == 5 and all(re.search(r"\d+(\.\d)? %", g) for g in guesses1), guesses1
            assert len(neighbours1) == 8 and page.locator("#neighbours .card svg polyline").count() >= 8
            draw_stroke(page, [(0.3, 0.75), (0.35, 0.8), (0.3, 0.85), (0.25, 0.8), (0.3, 0.75)])
            wait_predictions(page, 2)
            guesses2 = page.locator("#guesses li").all_inner_texts()
            neighbours2 = page.locator("#neighbours .card").all_inner_texts()
            assert len(guesses2) == 5 and len(neighbours2) == 8
            assert guesses2 != guesses1 and neighbours2 != neighbours1
            assert "2 strokes" in page.locator("#by").inner_text()
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
            # undo goes back to the first stroke's answer
            page.click("#undo")
            wait_predictions(page, 3)
            assert page.locator("#guesses li").all_inner_texts() == guesses1
            # replay a test drawing: one step per stroke, the guess after each
            page.click("#replay-test")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('replayed')",
                                   timeout=60000)
            steps = page.locator("#steps li").all_inner_texts()
            assert steps and all(re.match(rf"after stroke {i}: \w", t) for i, t in enumerate(steps, start=1))
            assert page.locator("#curve circle").count() == len(steps)
            # a first stroke that is a dot (one test drawing of study10 has one): no guess at that step,
            # and the replay goes on to the next stroke instead of stopping with an error
            page.evaluate("replayStored([[[40, 40], [60, 60]], [[10, 240, 200], [20, 30, 220]]], 'dot', null)")
            page.wait_for_function("document.getElementById('status').textContent === 'replayed your drawing'")
            steps = page.locator("#steps li").all_inner_texts()
            assert len(steps) == 2 and steps[0] == "after stroke 1: a single dot, no guess yet", steps
            assert re.match(r"after stroke 2: \w+ \(", steps[1]) and page.locator("#curve circle").count() == 2
            # drawing a dot on a clear canvas: an answer ("keep drawing"), not an error, and no guesses
            n = int(page.evaluate("document.body.dataset.predictions"))
            page.click("#clear")
            draw_stroke(page, [(0.5, 0.5), (0.5, 0.5)])
            wait_predictions(page, n + 1)
            assert page.locator("#status").inner_text() == "a single dot: keep drawing"
            assert page.locator("#status.error").count() == 0 and page.locator("#guesses li").count() == 0
            # the human test: two drawings, one answered, one skipped; the result table
            page.click("#tab-human")
            page.fill("#human-n", "2")
            page.click("#human-start")
            page.locator("#human-classes button").first.click()
            page.click("#human-skip")
            page.wait_for_selector("#human-result:not([hidden])")
            rows = page.locator("#human-rows tr").all_inner_texts()
            assert len(rows) == 1 and re.search(r"%\s+1\s+(0|100) % \(\d+–\d+ %\)\s+(0|100) % \(", rows[0]), rows
            assert Path(page.locator("#human-saved").inner_text()).is_file()
            assert page.locator("#human-study").inner_text().startswith("84")
            # the API page works offline: every endpoint of /openapi.json listed with its schema
            page.goto(live_server + "/docs")
            page.wait_for_selector("body[data-endpoints='5']")
            assert "POST/api/predict" in page.locator("#endpoints h2").all_inner_texts()[1].replace(" ", "")
            assert '"drawing"' in page.locator("#endpoints pre").first.inner_text()
            assert not errors, errors
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
