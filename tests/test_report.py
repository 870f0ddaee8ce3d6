"""Reports and their uncertainty: Wilson intervals against scipy's, McNemar/Fisher on known counts,
`report.md` of one run, and `sketchembed report` over train and eval run dirs (one row per trained
model, both probes apart, differences beyond noise marked)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.stats import binomtest

from sketchembed.commands import report as report_cmd
from sketchembed.eval import report, stats
from sketchembed.study import STUDY_COL


# ----------------------------------------------------------------------------------------- stats
@pytest.mark.parametrize("n", [1, 5, 17, 51, 340])
def test_wilson_matches_scipy(n):
    for k in range(0, n + 1, max(1, n // 7)):
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        low, high = stats.wilson(k, n)
        assert low == pytest.approx(ci.low, abs=1e-9) and high == pytest.approx(ci.high, abs=1e-9), (k, n)


def test_wilson_edges():
    assert stats.wilson(40, 51) == pytest.approx((0.6537, 0.8751), abs=1e-4)  # 78.4 % of 51: ±11 points
    low, high = stats.wilson(51, 51)
    assert high == 1.0 and 0.9 < low < 1.0
    assert all(np.isnan(stats.wilson(0, 0)))
    with pytest.raises(ValueError, match="outside"):
        stats.wilson(6, 5)
    # fractional successes (balanced accuracy): between its integer neighbours
    assert stats.wilson(20, 51)[0] < stats.wilson(20.5, 51)[0] < stats.wilson(21, 51)[0]


def test_with_intervals_adds_without_touching_flat_keys():
    m = {"model_kind": "lstm", "n_test": 51, "test/acc@100": 40 / 51, "test/balanced_acc@100": 0.7,
         "test/knn@3": 0.5, "test/triplet_acc": 0.9, "test/d_pos": 1.2, "test/loss@100": 2.0,
         "val/acc@100": 0.5, "per_class_acc@100": {"apple": 0.5, "bus": None}, "per_class_n": {"apple": 4, "bus": 0}}
    out = stats.with_intervals(m)
    assert {k: out[k] for k in m} == m                              # flat keys unchanged
    iv = out["intervals"]
    assert iv["test/acc@100"] == {"n": 51, "ci95": list(stats.wilson(40, 51)), "method": "wilson"}
    assert iv["test/balanced_acc@100"]["approximate"] and iv["test/triplet_acc"]["approximate"]
    assert "approximate" not in iv["test/knn@3"]
    assert "test/d_pos" not in iv and "test/loss@100" not in iv     # not accuracies
    assert "val/acc@100" not in iv                                  # n of val unknown: no made-up interval
    assert iv["per_class_acc@100/apple"]["n"] == 4 and "per_class_acc@100/bus" not in iv
    # training's keys: SPLIT/n logged by the embedding callback, best/… uses its split's n
    tr = stats.with_intervals({"test/n": 51.0, "val/n": 20.0, "test/acc@50": 0.5, "best/val/acc@100": 0.75})
    assert tr["intervals"]["test/acc@50"]["n"] == 51 and tr["intervals"]["best/val/acc@100"]["n"] == 20
    assert json.loads(json.dumps(out)) == out                       # plain JSON


def test_interval_reads_saved_n_or_computes_it():
    m = stats.with_intervals({"n_test": 10, "test/acc@100": 0.7})
    assert stats.interval(m, "test/acc@100").n == 10
    assert stats.interval({"n_test": 10, "test/acc@100": 0.7}, "test/acc@100").pct() == "70.0 [39.7–89.2]"
    assert stats.interval({"test/acc@100": 0.7}, "test/acc@100") is None   # n unknown
    assert stats.interval({"n_test": 10}, "test/acc@100") is None


def test_mcnemar_and_fisher_known_counts():
    a = np.array([1] * 10 + [0] * 0 + [1] * 20, bool)
    b = np.array([0] * 10 + [1] * 0 + [1] * 20, bool)
    d = stats.mcnemar(a, b)                     # 10 discordant, all one way: p = 2 / 2**10
    assert d.p_value == pytest.approx(2 / 1024) and d.beyond_noise and "McNemar" in d.test
    assert stats.mcnemar(a, a).p_value == 1.0
    assert stats.mcnemar(a, np.r_[a[:1] ^ True, a[1:]]).p_value == 1.0
    with pytest.raises(ValueError, match="length"):
        stats.mcnemar(a, a[:-1])
    same = stats.two_proportions(stats.Interval.of(0.784, 51), stats.Interval.of(0.706, 51))
    assert not same.beyond_noise and "Fisher" in same.test   # 40/51 vs 36/51: noise
    far = stats.two_proportions(stats.Interval.of(0.9, 100), stats.Interval.of(0.5, 100))
    assert far.beyond_noise


# ------------------------------------------------------------------------------- report.md of a run
METRICS_LSTM = {"model_kind": "lstm", "dataset": "study10 (337 real drawings)", "test/acc@50": 0.5,
                "test/acc@100": 0.625, "test/knn@3": 0.7, "test/knn@4": 0.71, "test/probe_acc": 0.66,
                "test/acc@10": 0.2, "test/acc@30": 0.4, "human/acc@100": 0.9}


def test_report_tables_from_metrics(tmp_path):
    (tmp_path / "tsne.png").write_bytes(b"\x89PNG")
    out = report.write_report(tmp_path, stats.with_intervals({**METRICS_LSTM, "n_test": 8}))
    text = out.read_text()
    assert "| classification @ 50 % of the drawing | 50.0 | 21.5–78.5 | 8 | 77.7 |" in text
    assert "| classification @ 100 % of the drawing | 62.5 |" in text and "| 86.7 |" in text
    assert "| KNN K=3 | 70.0 |" in text and "| linear probe (emb → 64 → classes) | 66.0 |" in text
    assert "95 % interval: Wilson" in text
    assert "| triplet accuracy |" not in text  # not measured → no row
    assert STUDY_COL in text
    assert "## t-SNE map" in text and "![t-SNE map of the test embeddings](tsne.png)" in text
    assert "confusion.png" not in text          # figure absent → not embedded
    assert "| 10 | 30 | 50 | 100 |" in text     # early-recognition curve
    no_n = report.render_report(METRICS_LSTM)   # n unknown: said, not invented
    assert "| classification @ 50 % of the drawing | 50.0 | – | – | 77.7 |" in no_n


def test_report_per_class_intervals():
    m = stats.with_intervals({"model_kind": "lstm", "n_test": 5, "test/acc@100": 0.6,
                              "per_class_acc@100": {"apple": 1.0, "bus": 0.0}, "per_class_n": {"apple": 3, "bus": 2}})
    text = report.render_report(m)
    assert "| apple | 3 | 100.0 | 43.9–100.0 |" in text and "| bus | 2 | 0.0 | 0.0–65.8 |" in text


def test_report_triplet_vs_direct():
    t = {"model_kind": "triplet", "test/knn@4": 0.9, "test/probe_acc": 0.8, "test/triplet_acc": 0.97}
    d = {"model_kind": "direct", "test/knn@4": 0.85, "test/probe_acc": 0.82, "test/acc@100": 0.83}
    text = report.render_report(t, baseline=d)
    assert "| KNN K=4 | 90.0 | 85.0 | 91 vs 89 |" in text
    assert "| linear probe (emb → 64 → classes) | 80.0 | 82.0 | 87 vs 85 |" in text
    assert "| triplet accuracy | 97.0 | – | – |" in text
    # ours never lands in the study column: our 97.0 is not the study's 97–99.6 range
    assert "| triplet accuracy | 97.0 | – | – | 97–99.6 (by backbone) |" in text


RETRIEVAL = {"n_train": 500, "test/p@1": 0.75, "test/r_precision": 0.5, "test/map@r": 0.375, "test/nmi": 0.25,
             "test/ami": 0.125, "n_retrieval_queries": 40, "retrieval_r_max": 50}
R_INTERVAL = {"n": 40, "ci95": [0.41, 0.59], "method": "t over 20 random query groups"}


def _with_retrieval(n_test: int = 8) -> dict:
    m = stats.with_intervals({**METRICS_LSTM, **RETRIEVAL, "n_test": n_test})
    m["intervals"]["test/r_precision"] = R_INTERVAL
    return m


def test_report_retrieval_section_with_its_intervals():
    text = report.render_report(_with_retrieval())
    section = text.split("## Retrieval (test drawings against the KNN index)")[1]
    assert "| P@1 | 75.0 | 40.9–92.9 | 8 | – |" in section          # Wilson over the 8 queries
    assert "| R-precision | 50.0 | 41.0–59.0 | 40 | – |" in section   # the saved t interval, not Wilson's
    assert "| MAP@R | 37.5 | – | – | – |" in section                  # no interval saved: none invented
    assert "| NMI (k-means of the test embeddings) | 25.0 | – | – | – |" in section
    assert "| AMI (k-means of the test embeddings) | 12.5 |" in section
    assert "over 40 sampled queries, R up to 50" in section and "R-precision: t over 20 random query groups" in section
    assert "## Retrieval" not in report.render_report(METRICS_LSTM)  # not measured: no section


def test_report_html_is_one_self_contained_page(tmp_path):
    from PIL import Image

    Image.new("RGB", (40, 30), "red").save(tmp_path / "confusion.png")
    m = {**_with_retrieval(), "run_name": "<script>alert(1)</script>"}
    report.write_report(tmp_path, m)
    page = (tmp_path / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<script>" not in page   # text from metrics.json is escaped
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert '<img src="data:image/png;base64,' in page and "confusion.png" not in page
    assert report.png_data_uri(tmp_path / "confusion.png") in page
    assert not re.search(r"https?://|(?:src|href)=\"(?!data:)", page)  # nothing to fetch from anywhere
    for cell in ("<td>P@1</td>", '<td style="text-align:right">75.0</td>', '<td style="text-align:right">86.7</td>'):
        assert cell in page, cell                                       # ours, and the study's beside it
    assert "confusion.png" in (tmp_path / "report.md").read_text()      # the markdown links the file


def test_report_html_renders_in_headless_chromium(tmp_path):
    """The page opened from a file in Chromium, offline: it draws (screenshot not blank), requests
    nothing but itself and its data URIs, and its DOM holds the tables' values."""
    from PIL import Image, ImageStat

    from sketchembed.studio import live  # here: the studio's imports are heavy, only this test needs them

    why = live.browser_missing()
    if why:
        pytest.skip(f"no headless browser: {why}")
    from playwright.sync_api import sync_playwright

    Image.new("RGB", (300, 200), (30, 90, 200)).save(tmp_path / "tsne.png")
    report.write_report(tmp_path, _with_retrieval())
    url = (tmp_path / "report.html").as_uri()
    requested = []
    with sync_playwright() as pw:
        browser = live.launch(pw)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 900})
            page.on("request", lambda r: requested.append(r.url))
            page.goto(url)
            page.wait_for_load_state("load")
            page.screenshot(path=str(tmp_path / "shot.png"), full_page=True)
            img_ok = page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth === 300)")
        finally:
            browser.close()
    assert img_ok                                                       # the figure decoded from its data URI
    assert all(u == url or u.startswith("data:") for u in requested), requested
    with Image.open(tmp_path / "shot.png") as shot:
        grey = shot.convert("L")
        assert shot.size[0] == 1000 and shot.size[1] > 900              # more than one screen of report
        assert ImageStat.Stat(grey).stddev[0] > 20                      # not a blank page
        assert grey.point(lambda v: 255 if v < 100 else 0).getbbox()    # dark text drawn somewhere
    dom = subprocess.run([live.CHROMIUM, *live.LAUNCH_ARGS, "--dump-dom", url], capture_output=True, text=True,
                         timeout=60).stdout
    for value in ("sketchembed report: lstm", "<td>R-precision</td>", ">41.0–59.0<", ">62.5<", ">86.7<"):
        assert value in dom, value


# ---------------------------------------------------------------------- sketchembed report (many runs)
def _hydra_dir(d: Path, config: dict, choices: dict, overrides: list[str]) -> None:
    (d / ".hydra").mkdir(parents=True, exist_ok=True)
    (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (d / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}}))
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))


def _train_dir(d: Path, model: str, seed: int, acc: float, probe: float, n: int = 51) -> Path:
    """A training run dir as train.py leaves it before it wrote run facts (facts only in .hydra)."""
    _hydra_dir(d, {"seed": seed, "data": {"root": "study10"},
                   "callbacks": {"embedding_eval": {"probe_epochs": 30}}},
               {"model": model, "backbone": "test_resnet", "loss": "cross_entropy", "miner": "semihard",
                "data": "quickdraw"}, [f"model={model}", f"seed={seed}"])
    (d / "checkpoints").mkdir()
    (d / "checkpoints" / "best.ckpt").write_bytes(b"")
    (d / "train_metrics.json").write_text(json.dumps({"test/acc@100": acc, "test/acc@50": acc - 0.1,
                                                      "test/probe_acc": probe, "test/n": float(n)}))
    return d


def _eval_dir(d: Path, train: Path, labels: np.ndarray, pred: np.ndarray, probe_steps: int = 300) -> Path:
    _hydra_dir(d, {"seed": 42, "probe": {"steps": probe_steps}}, {}, [f"ckpt_path={train}/checkpoints/best.ckpt"])
    m = {"model_kind": "combined", "checkpoint": str(train / "checkpoints" / "best.ckpt"), "dataset": "study10",
         "split": "test", "n_test": len(labels), "test/acc@100": float((pred == labels).mean()),
         "test/probe_acc": 0.6}
    (d / "metrics.json").write_text(json.dumps(stats.with_intervals(m)))
    np.savez(d / "predictions.npz", labels=labels, key_ids=np.arange(len(labels))[::-1].copy(),
             **{"pred@100": pred, "probe": labels})
    return d


def test_report_cli_one_row_per_trained_model(tmp_path, capsys):
    from sketchembed.cli import main

    labels = np.repeat(np.arange(10), 6)                     # 60 drawings
    good = labels.copy()
    bad = labels.copy()
    bad[:30] = (bad[:30] + 1) % 10                           # 30 more mistakes, all on one side
    ta = _train_dir(tmp_path / "train" / "a", "combined", 42, 0.7, 0.49)
    tb = _train_dir(tmp_path / "train" / "b", "combined", 7, 0.72, 0.5)
    _train_dir(tmp_path / "train" / "c", "lstm", 42, 0.4, 0.3)      # no evaluation: its own train/ row
    _eval_dir(tmp_path / "eval" / "a", ta, labels, good)
    _eval_dir(tmp_path / "eval" / "b", tb, labels, bad)
    out = tmp_path / "cmp.md"
    assert main(["report", str(tmp_path / "train"), str(tmp_path / "eval"), "--out", str(out)]) == 0
    console = capsys.readouterr().out
    text = out.read_text()
    header = next(ln for ln in text.splitlines() if ln.startswith("| run |"))
    assert header.startswith("| run | model kind | backbone | loss | miner | seed | data | split | overrides | n |")
    assert "probe, train-time (30 ep) (%)" in header and "probe, eval (300 steps) (%)" in header
    rows = [ln for ln in text.splitlines() if ln.startswith("| eval/") or ln.startswith("| train/")]
    assert len(rows) == 3                                     # a and b merged with their evaluation
    row_a = next(r for r in rows if r.startswith("| eval/a"))
    assert "| combined | test_resnet | cross_entropy | – | 42 | study10 | test | model=combined seed=42 | 60 |" in row_a
    assert "| 49.0 [" in row_a and "| 60.0 [" in row_a       # both probes, apart
    row_c = next(r for r in rows if r.startswith("| train/c"))
    assert "| lstm | – | cross_entropy | – | 42 | study10 | test | model=lstm seed=42 | 51 |" in row_c  # no backbone
    row_b = next(r for r in rows if r.startswith("| eval/b"))
    assert "50.0 [" in row_b and "▼" in row_b                # 30 of 60 more mistakes: beyond noise
    assert "McNemar exact (paired, n=60, discordant 30/0)" in text  # same drawings, predictions aligned by key
    assert "▲" not in row_c and "▼" in row_c                  # 40 % vs 100 % @100: Fisher
    assert "|---|---|---|---|---|---|---|---|---|---:|" in text    # text columns left-aligned, n right
    for word in ("eval/a", "McNemar", "test_resnet", "probe, eval (300 steps)"):
        assert word in console
    assert "86.5" in text.split(STUDY_COL)[1]          # the study's figures apart


def test_report_cli_train_facts_saved_by_train(tmp_path, capsys):
    from sketchembed.cli import main

    d = tmp_path / "run"
    d.mkdir()
    m = {"model_kind": "triplet", "backbone": "resnet18", "loss": "hinge", "miner": "semihard", "seed": 3,
         "dataset": "study10", "val/knn@4": 0.4, "val/n": 20.0}
    (d / "train_metrics.json").write_text(json.dumps(m))
    assert main(["report", str(d), "--out", str(tmp_path / "o.md")]) == 0
    text = (tmp_path / "o.md").read_text()
    assert "| run | triplet | resnet18 | hinge | semihard | 3 | study10 | val | 20 |" in text
    assert "40.0 [21.9–61.3]" in text


def test_report_cli_ref_and_errors(tmp_path, capsys):
    from sketchembed.cli import main

    assert main(["report", str(tmp_path)]) == 2
    assert "no metrics.json" in capsys.readouterr().err
    (tmp_path / "metrics.json").write_text("{not json")
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "skipped 1 unreadable" in err and "metrics.json: unreadable" in err and "no readable metrics" in err
    assert main(["report", str(tmp_path / "metrics.json")]) == 2          # named explicitly: an error
    assert "metrics.json: unreadable" in capsys.readouterr().err
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "metrics.json").write_text(json.dumps({"model_kind": "lstm", "test/acc@100": 0.5}))
    assert main(["report", str(tmp_path)]) == 0                           # the bad one is skipped, counted
    out = capsys.readouterr()
    assert "skipped 1 unreadable" in out.err and "50.0" in out.out
    assert main(["report", str(tmp_path / "ok"), "--ref", "nothing-like-it"]) == 2
    assert "--ref 'nothing-like-it' matches no run" in capsys.readouterr().err


def test_report_cli_fits_100_columns_and_wide_prints_every_column(tmp_path, capsys):
    """Many runs with every figure: the terminal table fits 100 columns (the figures that do not fit
    are named), --wide prints all of them; the markdown file always has every column."""
    from sketchembed.cli import main

    figures = {f"test/{c}": 0.5 + i / 100 for i, c in enumerate(report.TABLE_COLUMNS)}
    for i, (kind, seed) in enumerate([("triplet", 1), ("triplet", 2), ("direct", 1), ("combined", 3)]):
        d = tmp_path / f"a-rather-long-run-directory-name-{i}"
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps(stats.with_intervals(
            {"model_kind": kind, "seed": seed, "dataset": "study10", "n_test": 500, **figures})))
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "all.md")]) == 0
    narrow = capsys.readouterr().out
    assert max(len(line) for line in narrow.splitlines()) <= report_cmd.TERMINAL_WIDTH
    hidden = " ".join(narrow.split("not shown (to fit 100 columns")[1].split())  # the line, unwrapped
    assert "acc@100 (%)" in narrow.split("not shown")[0]                  # the first figures are in the table
    assert "r_precision (%)" in hidden and "--wide shows them" in hidden   # the last ones are named
    assert "same in every row: data study10, split test" in narrow        # equal facts: one line, not columns
    assert main(["report", str(tmp_path), "--wide"]) == 0
    wide = capsys.readouterr().out
    assert "not shown" not in wide and max(len(line) for line in wide.splitlines()) > report_cmd.TERMINAL_WIDTH
    header = next(line for line in wide.splitlines() if "acc@100 (%)" in line)
    for col in ("knn@3_study_tie (%)", "triplet_acc (%)", "p@1 (%)", "r_precision (%)", "map@r (%)", "ami (%)"):
        assert col in header, col                                            # every column, none folded
    md_header = next(ln for ln in (tmp_path / "all.md").read_text().splitlines() if ln.startswith("| run |"))
    assert all(f"{c} (%)" in md_header for c in report.TABLE_COLUMNS if c != "probe_acc")


def test_report_compares_p1_paired_and_never_fisher_on_means(tmp_path):
    """P@1 is right where the nearest neighbour's class is (knn@1): McNemar on the saved knn@1
    predictions; R-precision is a mean of per-query values, not a count: no Fisher test on it."""
    labels = np.repeat(np.arange(5), 12)
    runs = []
    for name, wrong in (("a", 0), ("b", 30)):
        d = tmp_path / name
        d.mkdir()
        knn1 = labels.copy()
        knn1[:wrong] = (knn1[:wrong] + 1) % 5
        m = stats.with_intervals({"model_kind": "triplet", "n_test": 60, "test/p@1": float((knn1 == labels).mean()),
                                  "test/r_precision": 0.9 - wrong / 100})
        m["intervals"]["test/r_precision"] = {"n": 60, "ci95": [0.8 - wrong / 100, 0.95 - wrong / 100],
                                              "method": "t over 20 random query groups"}
        np.savez(d / "predictions.npz", labels=labels, key_ids=np.arange(60), **{"knn@1": knn1})
        runs.append(report.Run(name, {"model_kind": "triplet"}, evaluated=m, eval_dir=d))
    d = report.compare(runs[0], runs[1], "p@1")
    assert d.beyond_noise and d.test.startswith("McNemar exact (paired, n=60, discordant 30/0)")
    assert report.compare(runs[0], runs[1], "r_precision") is None
    assert runs[1].interval("r_precision").method == "t over 20 random query groups"
