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

from bench.studio import adversarial_bodies, measure, measure_adversarial, stroke_prefixes
from helpers import real_points
from sketchembed.cli import main
from sketchembed.corpus.formats import read_drawings
from sketchembed.corpus.simplify import TooMuchWork, simplify_drawing, simplify_strokes
from sketchembed.corpus.user_drawing import MAX_RDP_VISITS
from sketchembed.data.datamodule import SketchDataModule
from sketchembed.eval.embed import embed_points
from sketchembed.eval.human import sample_items
from sketchembed.eval.knn import vote
from sketchembed.eval.suggest import suggest
from sketchembed.models import CombinedModel, TripletImageModel
from sketchembed.studio import Studio, create_app
from sketchembed.studio import app as studio_app
from sketchembed.studio.budget import LIGHT_MODEL_POINTS, LIGHT_RDP_VISITS, MAX_BODY_BYTES, Lanes, Work
from sketchembed.studio.drawing import strokes_json
from sketchembed.studio.errors import BadInput, ErrorResponse
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


def assert_one_line_refusal(r, status, pattern, code=None):
    """The one error shape {"status", "code", "detail"} (studio/errors.py), the detail one line."""
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"status", "code", "detail"} and body["status"] == status, body
    ErrorResponse.model_validate(body)
    detail = body["detail"]
    assert isinstance(detail, str) and "\n" not in detail and "Traceback" not in r.text, detail
    assert re.search(pattern, detail), detail
    if code is not None:
        assert body["code"] == code, body


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
WIDE_ZIGZAG = [[np.linspace(0, 255, 500).tolist(), [0.0, 255.0] * 250]]  # within the estimate, 5 s of RDP before
# The one rule (studio/errors.py): 400 = the body cannot be read as JSON; 422 = JSON, but not what the
# endpoint takes (shape, types, values); 413 = over a size or work limit.
BAD_INPUTS = [
    # (name, body bytes, status, what the message names)
    ("not json", b"{drawing: [}", 400, r"not JSON"),
    ("not utf-8", b"\xff\xfe", 400, r"not JSON"),
    ("a list, not an object", b"[1, 2]", 422, r"JSON object"),
    ("no drawing", b'{"strokes": []}', 422, r"JSON object"),
    ("unknown field", json.dumps({"drawing": GOOD, "colour": 1}).encode(), 422, r"unknown field.*colour"),
    ("drawing not a list", b'{"drawing": "abc"}', 422, r"'drawing' must be a list of strokes"),
    ("drawing an object", b'{"drawing": {"x": 1}}', 422, r"'drawing' must be a list of strokes"),
    ("k not a number", json.dumps({"drawing": GOOD, "k": "five"}).encode(), 422, r"'k' must be an integer"),
    ("stroke with one row", b'{"drawing": [[[1, 2, 3]]]}', 422, r"stroke 0 must be .*got 1 rows"),
    ("stroke with four rows", b'{"drawing": [[[1], [2], [3], [4]]]}', 422, r"stroke 0 must be .*got 4 rows"),
    ("stroke not a list", b'{"drawing": [[[1, 2], [3, 4]], 7]}', 422, r"stroke 1 must be"),
    ("row of strings", b'{"drawing": [[["1", "2"], [3, 4]]]}', 422, r"stroke 0 x must hold numbers"),
    ("row of booleans", b'{"drawing": [[[1, 2], [true, 4]]]}', 422, r"stroke 0 y must hold numbers"),
    ("nested row", b'{"drawing": [[[[1], 2], [3, 4]]]}', 422, r"stroke 0 x must hold numbers"),
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
    ("too many points for the model", json.dumps({"drawing": [[list(range(256)) * 4, [5, 9] * 512]] * 2,
                                                  "format": "simplified"}).encode(), 413,
     r"2,048 points once simplified; the model reads at most 2,000"),
    ("bad format", json.dumps({"drawing": GOOD, "format": "svg"}).encode(), 422, r"'format' must be one of"),
    ("simplified off the canvas", json.dumps({"drawing": [[[1, 300], [3, 4]]], "format": "simplified"}).encode(),
     422, r"simplified drawing: stroke 0 has coordinates outside 0–255"),
    ("simplified one-point stroke", json.dumps({"drawing": [[[1], [3]], GOOD[0]], "format": "simplified"}).encode(),
     422, r"stroke 0 has a single point"),
    # the readers' JSON decoder: nesting too deep is refused, not a RecursionError (a 500)
    ("nested too deeply", b'{"drawing": [[[1, 2], [3, 4]]], "k": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400,
     r"^body is not JSON \(nested too deeply\)$"),
    # the raw readers' coordinate limit, before the simplification (1e308 was a 500 from inside it)
    ("raw beyond the limit", json.dumps({"drawing": [[[1, 1e308], [3, 4]]], "format": "raw"}).encode(), 422,
     r"raw drawing: stroke 0 has coordinates outside ±100,000"),
    ("huge both ways", json.dumps({"drawing": [[[-1e308, 1e308], [3, 4]]]}).encode(), 422,
     r"raw drawing: stroke 0 has coordinates outside ±100,000"),
    ("too intricate", json.dumps({"drawing": [[np.linspace(0, 255, 20000).tolist(), [0, 255] * 10000]],
                                  "format": "raw"}).encode(), 413,
     r"raw drawing: too intricate to simplify: 20,000 points"),
    # within points x ink, but over RDP's own count of its work (it took 5 s, 1 s for 20,000 points)
    ("over the simplification budget", json.dumps({"drawing": WIDE_ZIGZAG, "format": "raw"}).encode(), 413,
     r"raw drawing: too intricate to simplify: its simplification needs more than 2,000,000 point visits"),
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
    assert_one_line_refusal(r, 400, r"^Content-Length 'x1' is not a number$", "unreadable")
    assert client.get("/api/health").json()["status"] == "ok"  # still serving


@pytest.mark.parametrize("drawing, fmt", [([[[100], [100], [0]]], "raw"), ([[[7, 7], [9, 9]]], "simplified"),
                                          ([[[50, 50.4], [60, 60.2], [0, 8]]], "raw")],
                         ids=["one raw point", "a simplified dot", "a tiny raw wiggle"])
def test_a_lone_tap_is_named_as_such(client, drawing, fmt):
    """All points in one place: "a single tap", with code "tap" (the page says "keep drawing")."""
    r = client.post("/api/predict", json={"drawing": drawing})
    assert_one_line_refusal(r, 422, rf"^{fmt} drawing: a single tap, not a drawing \(all its points in one place\)$",
                            "tap")


def test_every_error_has_the_one_shape(client, studio, monkeypatch):
    """400, 404, 405, 413 (from the body-size layer too), 422 (body and query), 500 and 503: one shape."""
    assert_one_line_refusal(client.post("/api/predict", content=b"{"), 400, r"not JSON", "unreadable")
    assert_one_line_refusal(client.get("/nope"), 404, r"^Not Found$", "not_found")
    assert_one_line_refusal(client.get("/api/predict"), 405, r"Method Not Allowed", "method_not_allowed")
    assert_one_line_refusal(client.post("/api/predict", content=b" " * (MAX_BODY_BYTES + 1)), 413,
                            r"over the limit", "too_large")
    assert_one_line_refusal(client.get("/api/sample?seed=x"), 422, r"^query.seed: ", "invalid")
    assert_one_line_refusal(client.post("/api/human/start", json={"n": "five"}), 422, r"^n: ", "invalid")
    monkeypatch.setattr(studio.lanes, "wait_s", 0.05)
    monkeypatch.setattr(studio.lanes, "share", 1.0)  # no rest after the held lane below
    with studio.lanes.request() as other:  # another request holds the lane for large drawings
        other.go_heavy("a test")
        big = {"drawing": [[list(range(256)) * 2, [5, 9] * 256]], "format": "simplified"}  # 512 points
        r = client.post("/api/predict", json=big)
        assert_one_line_refusal(r, 503, r"^busy with other large drawings \(512 points for the model", "busy")
        assert r.headers["retry-after"] == "2"
    assert client.post("/api/predict", json=big).status_code == 200  # the lane is free again


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
    assert r.json() == {"status": 500, "code": "internal",
                        "detail": "internal error (RuntimeError); the server log has the details"}


# ------------------------------------------------------------------------------------ the work budget
def _zigzag(n: int, amp: float) -> list:
    return [[np.linspace(0, 255, n).tolist(), np.where(np.arange(n) % 2 == 0, 0.0, amp).tolist()]]


def test_rdp_counts_its_work_and_stops_at_its_budget():
    """The wide zig-zag took 5 s (one RDP level per vertex over its 127,000 resampled points): its count
    of point visits stops it at the budget; below the budget the result is the one without it."""
    wide = [np.asarray(WIDE_ZIGZAG[0], dtype=float).T]
    t0 = time.perf_counter()
    with pytest.raises(TooMuchWork, match=r"more than 2,000,000 point visits"):
        simplify_strokes(wide, max_visits=MAX_RDP_VISITS)
    assert time.perf_counter() - t0 < 5
    mid = [np.asarray(_zigzag(40, 255.0)[0], dtype=float).T]  # ~440,000 visits: over the light allowance
    with pytest.raises(TooMuchWork):
        simplify_strokes(mid, max_visits=LIGHT_RDP_VISITS)
    assert all(np.array_equal(a, b) for a, b in zip(simplify_strokes(mid, max_visits=MAX_RDP_VISITS),
                                                    simplify_strokes(mid), strict=True))


def test_heavy_work_runs_beside_light_work_one_request_at_a_time():
    """A heavy forward pass never holds the light lock; heavy requests take turns, a few wait, the
    rest are refused at once (503), and leaving a request frees the lane."""
    lanes = Lanes(queue=1, wait_s=0.3, share=1.0)  # no rests here (see the next test)
    with lanes.request() as light, lanes.model(LIGHT_MODEL_POINTS, light):
        assert lanes.light.locked() and not light.heavy
    outcome = []

    def second():
        try:
            with lanes.request() as w:
                w.go_heavy("second")
                outcome.append("ran")
        except BadInput as e:
            outcome.append(e.status)

    with lanes.request() as heavy, lanes.model(LIGHT_MODEL_POINTS + 1, heavy):
        assert heavy.heavy and not lanes.light.locked()  # light passes go on meanwhile
        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(0.1)  # the second waits for the lane (the queue holds one)
        t0 = time.perf_counter()
        with pytest.raises(BadInput, match=r"^busy with other large drawings \(third") as third:
            lanes.request().go_heavy("third")
        assert third.value.status == 503 and time.perf_counter() - t0 < 0.1  # at once: the queue is full
        waiter.join(5)
    assert outcome == [503]  # it waited 0.3 s; the lane stayed busy
    with lanes.request() as w:
        w.go_heavy("after")
        assert w.heavy


def test_the_heavy_lane_rests_as_long_as_it_worked():
    """Clients sending large drawings back to back get at most half of one core between them."""
    lanes = Lanes(share=0.5)
    t0 = time.perf_counter()
    with lanes.request() as w:
        w.go_heavy("work")
        time.sleep(0.2)
    assert time.perf_counter() - t0 >= 0.4
    assert not lanes.light.locked() and lanes._heavy.acquire(blocking=False)  # then free


def test_large_drawings_are_served_in_the_heavy_lane(client, monkeypatch):
    """Over the light allowance (points for the model, simplification work, body bytes) a drawing is
    still answered, from the heavy lane."""
    why = []
    real = Work.go_heavy
    monkeypatch.setattr(Work, "go_heavy", lambda self, reason: (why.append(reason), real(self, reason)))
    cases = [({"drawing": [[list(range(256)) * 2, [5, 9] * 256]], "format": "simplified"}, "512 points for the model"),
             ({"drawing": _zigzag(40, 255.0), "format": "raw"}, "a simplification of more than 100,000 point visits"),
             ({"drawing": [[np.linspace(0, 255, 5000).round(6).tolist(), [100.0] * 5000]] * 2, "format": "raw"},
              "a body of ")]
    for body, reason in cases:
        why.clear()
        r = client.post("/api/predict", json=body)
        assert r.status_code == 200, r.text
        assert len(why) == 1 and why[0].startswith(reason), why
    why.clear()
    assert client.post("/api/predict", json={"drawing": GOOD}).status_code == 200 and not why  # light


@pytest.mark.slow
def test_real_raw_drawings_fit_the_simplification_budget(shared_quickdraw):
    """Every real raw drawing simplifies within a quarter of MAX_RDP_VISITS, and fewer than 0.2 % need
    the heavy lane (more than LIGHT_RDP_VISITS)."""
    n = heavy = 0
    for f in sorted((shared_quickdraw / "raw").glob("*.ndjson")):
        for d in read_drawings(f, on_error="skip"):
            strokes = [np.asarray(s, dtype=float) for s in d.strokes]
            n += 1
            try:
                simplify_strokes(strokes, max_visits=LIGHT_RDP_VISITS)
            except TooMuchWork:
                heavy += 1
                simplify_strokes(strokes, max_visits=MAX_RDP_VISITS // 4)
    assert n > 9000 and 0 < heavy < 0.002 * n, (n, heavy)


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
    assert_one_line_refusal(client.post("/api/human/start", content=b"{nope",
                                        headers={"content-type": "application/json"}), 400, r"^body is not JSON")
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


def test_every_endpoint_documents_its_purpose_examples_and_errors(client):
    """/openapi.json (what /docs shows): a purpose, a pydantic response model with examples that are
    real (each validates; the request examples are answered 200), and errors in the one shape."""
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    models = {m.__name__: m for m in (studio_app.PredictResponse, studio_app.Health, studio_app.Sample,
                                      studio_app.HumanStartResponse, studio_app.HumanFinishResponse)}
    requests = {"PredictRequest": studio_app.PredictRequest, "HumanStart": studio_app.HumanStart,
                "HumanFinish": studio_app.HumanFinish}
    assert len([op for ops in spec["paths"].values() for op in ops.values()]) == 5
    for path, ops in spec["paths"].items():
        for op in ops.values():
            assert op["summary"] and op["description"], path
            name = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
            assert name in models, (path, name)
            for example in schemas[name]["examples"]:
                models[name].model_validate(example)
            errors = {code: r for code, r in op["responses"].items() if code != "200"}
            assert "500" in errors and all(r["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
                                           for r in errors.values()), path
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body:
                example = body["examples"][0]
                requests[body["title"]].model_validate(example)
                if path != "/api/human/finish":  # its example names a session of its own
                    assert client.post(path, json=example).status_code == 200, path
    assert "400" in spec["info"]["description"] and "422" in spec["info"]["description"]


def test_favicon_is_served(client):
    r = client.get("/favicon.ico")
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg+xml")
    assert r.content.startswith(b"<svg")
    for page in ("/", "/docs"):
        assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in client.get(page).text


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
    # a random subset, not the first rows
    assert len(capped.index) == 30 and len(set(capped.index.labels.tolist())) >= 8
    assert main(["serve", "--ckpt", str(ckpts["triplet"]), "--index", str(tmp_path / "index")]) == 2
    assert "index was built with checkpoint" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ the browser
INK_BOX = """() => {
  const c = document.getElementById('canvas'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let x0 = c.width, x1 = -1, y0 = c.height, y1 = -1;
  for (let y = 0; y < c.height; y++) for (let x = 0; x < c.width; x++) {
    if (d[(y * c.width + x) * 4 + 3] > 0) {
      x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y);
    }
  }
  return [x0, x1, y0, y1, c.width, c.height];
}"""

@pytest.fixture(scope="module")
def live_server(studio):
    with serve_in_thread(create_app(studio)) as url:
        yield url


def test_bench_measures_normal_clients_beside_adversarial_ones(live_server):
    bodies = stroke_prefixes(2)
    res = measure_adversarial(live_server, bodies, adversarial_bodies()[-1:], requests=6, clients=2, adversaries=1)
    assert res["alone_p95_ms"] > 0 and res["beside_p95_ms"] > 0 and res["alone_rps"] > 0 and res["beside_rps"] > 0
    assert res["p95_ratio"] == res["beside_p95_ms"] / res["alone_p95_ms"]
    assert sum(res["adversary_answers"].values()) >= 1 and set(res["adversary_answers"]) <= {"200", "503"}


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
            errors, missing = [], []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("response", lambda r: missing.append(r.url) if r.status == 404 else None)
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
            # the replayed drawing is centred and whole (it was pinned to the top-left, its edges cut)
            x0, x1, y0, y1, w, h = page.evaluate(INK_BOX)
            assert abs((x0 + x1) / 2 - w / 2) <= 3 and abs((y0 + y1) / 2 - h / 2) <= 3, (x0, x1, y0, y1)
            assert min(x0, y0) > 0.05 * w and max(x1, y1) < 0.95 * w and max(x1 - x0, y1 - y0) > 0.75 * w
            # a first stroke that is a dot (one test drawing of study10 has one): no guess at that step,
            # and the replay goes on to the next stroke instead of stopping with an error
            page.evaluate("replayStored([[[40, 40], [60, 60]], [[10, 240, 200], [20, 30, 220]]], 'dot', null)")
            page.wait_for_function("document.getElementById('status').textContent === 'replayed your drawing'")
            steps = page.locator("#steps li").all_inner_texts()
            assert len(steps) == 2 and steps[0] == "after stroke 1: a single tap, no guess yet", steps
            assert re.match(r"after stroke 2: \w+ \(", steps[1]) and page.locator("#curve circle").count() == 2
            # drawing a dot on a clear canvas: an answer ("keep drawing"), not an error, and no guesses
            n = int(page.evaluate("document.body.dataset.predictions"))
            page.click("#clear")
            draw_stroke(page, [(0.5, 0.5), (0.5, 0.5)])
            wait_predictions(page, n + 1)
            assert page.locator("#status").inner_text() == "a single tap: keep drawing"
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
            # the API page works offline: every endpoint with its purpose, request and response examples,
            # no line clipped
            page.goto(live_server + "/docs")
            page.wait_for_selector("body[data-endpoints='5']")
            assert "POST/api/predict" in page.locator("#endpoints h2").all_inner_texts()[1].replace(" ", "")
            assert page.locator("#endpoints .purpose").count() == 5
            predict = page.locator("#endpoints section").nth(1)
            assert '"drawing"' in predict.locator("pre.request-example").inner_text()
            assert '"neighbours"' in predict.locator("pre.response-example").inner_text()
            assert page.locator("pre.response-example").count() == 5
            assert page.evaluate("[...document.querySelectorAll('pre')].every((p) => p.scrollWidth <= p.clientWidth)")
            assert "422 invalid" in page.locator("#description").inner_text()
            assert not errors, errors
            assert not missing, missing  # the favicon included
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
