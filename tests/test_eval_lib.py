"""Evaluation library on synthetic embeddings: the numbers must be right where the answer is known."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import CLASSES3
from helpers import class_drawing as _class_drawing
from helpers import ndjson_file as _ndjson
from sketchembed.eval import knn, probe


def clusters(n_per=30, n_classes=4, dim=16, spread=0.1, seed=0):
    """Well-separated Gaussian clusters: every sensible classifier gets 100 %."""
    r = np.random.default_rng(seed)
    centers = r.normal(size=(n_classes, dim)) * 10
    labels = np.repeat(np.arange(n_classes), n_per)
    emb = centers[labels] + r.normal(size=(len(labels), dim)) * spread
    return emb.astype(np.float32), labels


def square(x0=0, y0=0, s=100):
    pts = np.array([[x0, y0, 0], [x0 + s, y0, 0], [x0 + s, y0 + s, 0], [x0, y0 + s, 1],
                    [x0 + 10, y0 + 10, 0], [x0 + 20, y0 + 40, 1]], dtype=np.int16)
    return pts


# ------------------------------------------------------------------------------------------- KNN
def test_knn_separated_clusters_are_perfect():
    tr, ytr = clusters(seed=0)
    r = np.random.default_rng(5)
    te = tr + r.normal(size=tr.shape).astype(np.float32) * 0.05
    acc = knn.knn_accuracy(tr, ytr, te, ytr, ks=(1, 3, 4, 5))
    assert acc == {1: 1.0, 3: 1.0, 4: 1.0, 5: 1.0}


def test_knn_k1_on_index_itself_is_perfect_and_loo_is_not_trivial():
    r = np.random.default_rng(0)
    emb = r.normal(size=(60, 8)).astype(np.float32)
    lab = r.integers(0, 3, size=60)          # random labels: no structure
    assert knn.knn_accuracy(emb, lab, emb, lab, ks=(1,))[1] == 1.0
    loo = knn.knn_accuracy(emb, lab, emb, lab, ks=(1,), exclude_self=True)[1]
    assert loo < 0.7                          # leave-one-out cannot see the own label


def test_knn_vote_counts_and_ties_go_to_nearest():
    nl = np.array([[2, 1, 1, 2], [0, 1, 1, 1], [3, 3, 0, 0]])
    assert knn.vote(nl, 1, 4).tolist() == [2, 0, 3]
    assert knn.vote(nl, 3, 4).tolist() == [1, 1, 3]
    assert knn.vote(nl, 4, 4).tolist() == [2, 1, 3]   # 2-2 ties: class of the nearest


def test_knn_known_mistake_counted():
    # 1-D: index points of class 0 at 0,1,2 and class 1 at 10,11,12; a query at 4 labelled 1 is wrong
    idx = np.array([[0], [1], [2], [10], [11], [12]], np.float32)
    lab = np.array([0, 0, 0, 1, 1, 1])
    acc = knn.knn_accuracy(idx, lab, np.array([[4.0], [11.5]], np.float32), np.array([1, 1]), ks=(1, 3))
    assert acc == {1: 0.5, 3: 0.5}


def test_knn_errors():
    emb, lab = clusters()
    with pytest.raises(ValueError, match="dimension"):
        knn.knn_accuracy(emb, lab, emb[:, :3], lab)
    with pytest.raises(ValueError, match="needs at least"):
        knn.knn_accuracy(emb[:2], lab[:2], emb, lab, ks=(3,))
    bad = emb.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        knn.knn_accuracy(bad, lab, emb, lab)


def test_index_round_trip_and_query(tmp_path):
    emb, lab = clusters(n_per=5, n_classes=3)
    drawings = [square(i, i) for i in range(len(lab))]
    pts, offs = knn.pack_points(drawings)
    idx = knn.KNNIndex(emb, lab, key_ids=np.arange(len(lab), dtype=np.uint64) + 2**63, classes=["a", "b", "c"],
                       ckpt_path="/x/model.ckpt", ckpt_sha256="abc", indices=np.arange(len(lab)) * 2,
                       points=pts, offsets=offs, meta={"split": "train"})
    idx.save(tmp_path / "ix")
    back = knn.KNNIndex.load(tmp_path / "ix")
    assert back.classes == ["a", "b", "c"] and back.ckpt_sha256 == "abc" and back.meta["split"] == "train"
    np.testing.assert_array_equal(back.embeddings, emb)
    np.testing.assert_array_equal(back.key_ids, idx.key_ids)           # uint64 above 2**63 survives
    np.testing.assert_array_equal(back.drawing(7), drawings[7])
    i, d = back.query(emb[[4, 11]], k=3)
    assert i.shape == (2, 3) and i[0, 0] == 4 and i[1, 0] == 11 and d[0, 0] == pytest.approx(0, abs=1e-4)
    assert set(lab[i[0]]) == {lab[4]}
    assert np.all(np.diff(d, axis=1) >= 0)


def test_index_load_rejects_other_dirs(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a KNN index"):
        knn.KNNIndex.load(tmp_path)
    (tmp_path / "index.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not a sketchembed KNN index"):
        knn.KNNIndex.load(tmp_path)


# ----------------------------------------------------------------------------------------- probe
def test_probe_separated_clusters_and_determinism():
    tr, ytr = clusters(n_per=40, n_classes=5, dim=32)
    r = np.random.default_rng(3)
    val = tr + r.normal(size=tr.shape).astype(np.float32) * 0.1
    res = probe.linear_probe(tr, ytr, {"val": (val, ytr)}, epochs=20, seed=0)
    assert res.accuracy["val"] == 1.0
    again = probe.linear_probe(tr, ytr, {"val": (val, ytr)}, epochs=20, seed=0)
    w1 = [p.detach().numpy() for p in res.model.parameters()]
    w2 = [p.detach().numpy() for p in again.model.parameters()]
    assert all(np.array_equal(a, b) for a, b in zip(w1, w2))
    assert res.model[0].out_features == 64


def test_probe_random_labels_do_not_generalise():
    r = np.random.default_rng(0)
    x = r.normal(size=(200, 16)).astype(np.float32)
    y = r.integers(0, 4, 200)
    xv = r.normal(size=(400, 16)).astype(np.float32)
    yv = r.integers(0, 4, 400)
    res = probe.linear_probe(x, y, {"val": (xv, yv)}, epochs=10)
    assert res.accuracy["val"] < 0.4


# ------------------------------------------------------------------------- retrieval (P@1, R-precision …)
def _calculator_reference(ref, ref_y, q, q_y, seed=0):
    """What pytorch-metric-learning's AccuracyCalculator says on the whole set at once, its own faiss
    search, k = the largest R, queries not in the reference."""
    import torch
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import FaissKMeans

    calc = AccuracyCalculator(include=("precision_at_1", "r_precision", "mean_average_precision_at_r", "NMI", "AMI"),
                              k="max_bin_count", device=torch.device("cpu"),
                              kmeans_func=FaissKMeans(niter=20, seed=seed, gpu=False, verbose=False,
                                                      min_points_per_centroid=1))
    return calc.get_accuracy(q, q_y, ref, ref_y)


def test_retrieval_hand_checked_example():
    """1-D: class 0 at 0, 1, 2; class 1 at 10, 11. Query at 9 (class 0) sees 10, 11, 2 first: R = 3,
    one hit at rank 3 (R-precision 1/3, AP@R = (1/3)(1/3)); query at 5.8 (class 1) sees 2, 10: R = 2,
    a hit at rank 2 (R-precision 1/2, AP@R = (1/2)(1/2)); the other two are perfect."""
    from sketchembed.eval import retrieval

    ref, ref_y = np.array([[0.], [1.], [2.], [10.], [11.]], np.float32), np.array([0, 0, 0, 1, 1])
    q, q_y = np.array([[0.4], [10.2], [9.], [5.8]], np.float32), np.array([0, 1, 0, 1])
    r = retrieval.retrieval_metrics(ref, ref_y, q, q_y, knn.nearest(ref, ref_y, q, 1),
                                    bounds=retrieval.Bounds(max_queries=None))
    v = r.values
    assert v["test/p@1"] == 0.5                                     # 0.4 → 0 and 10.2 → 10 right, the others wrong
    assert v["test/r_precision"] == pytest.approx((1 + 1 + 1 / 3 + 1 / 2) / 4, abs=1e-12)
    assert v["test/map@r"] == pytest.approx((1 + 1 + 1 / 9 + 1 / 4) / 4, abs=1e-12)
    assert v["n_retrieval_queries"] == 4 and v["retrieval_r_max"] == 3
    assert r.n_overrides == {"test/p@1": 4}
    lib = _calculator_reference(ref, ref_y, q, q_y)
    for ours, theirs in (("p@1", "precision_at_1"), ("r_precision", "r_precision"),
                         ("map@r", "mean_average_precision_at_r"), ("nmi", "NMI"), ("ami", "AMI")):
        assert v[f"test/{ours}"] == pytest.approx(lib[theirs], abs=1e-12), ours
    ci = r.intervals["test/r_precision"]                          # 4 groups of one query: t with 3 df
    assert ci["n"] == 4 and ci["method"] == "t over 4 random query groups"
    assert ci["ci95"][0] < v["test/r_precision"] < ci["ci95"][1] <= 1.0
    # well-separated clusters: k-means finds the classes, NMI = AMI = 1
    emb, lab = clusters(n_per=10, n_classes=3)
    assert retrieval.clustering(emb, lab) == {"NMI": pytest.approx(1.0), "AMI": pytest.approx(1.0)}


def test_retrieval_equals_the_library_on_random_data_and_p1_equals_numpy(monkeypatch):
    from sketchembed.eval import retrieval

    searched = []

    def recording_search(index, queries, k, **kw):
        searched.append(len(queries) * k)
        return knn.search(index, queries, k, **kw)

    monkeypatch.setattr(retrieval, "search", recording_search)

    rng = np.random.default_rng(3)
    centers = rng.normal(size=(5, 12))
    ref_y, q_y = rng.integers(0, 5, 600), rng.integers(0, 5, 137)
    ref = (centers[ref_y] + rng.normal(size=(600, 12)) * 1.5).astype(np.float32)
    q = (centers[q_y] + rng.normal(size=(137, 12)) * 1.5).astype(np.float32)
    r = retrieval.retrieval_metrics(ref, ref_y, q, q_y, knn.nearest(ref, ref_y, q, 4), seed=7,
                                    bounds=retrieval.Bounds(max_queries=None, max_pairs=500))
    d2 = ((q[:, None, :].astype(np.float64) - ref[None, :, :]) ** 2).sum(-1)  # plain numpy P@1
    assert r.values["test/p@1"] == pytest.approx(float((ref_y[d2.argmin(1)] == q_y).mean()), abs=1e-12)
    lib = _calculator_reference(ref, ref_y, q, q_y, seed=7)
    # every query, in groups of at most max_pairs query x R neighbours (137 x ~130 > 20 groups): the same means
    assert len(searched) > retrieval.GROUPS and max(searched) <= 500
    assert r.values["test/r_precision"] == pytest.approx(lib["r_precision"], abs=1e-12)
    assert r.values["test/map@r"] == pytest.approx(lib["mean_average_precision_at_r"], abs=1e-12)
    assert r.values["test/nmi"] == pytest.approx(lib["NMI"], abs=1e-12)
    assert r.intervals["test/map@r"]["method"] == f"t over {len(searched)} random query groups"
    # max_queries: a reproducible sample of that many queries, its interval wider than on all of them
    a = retrieval.retrieval_metrics(ref, ref_y, q, q_y, knn.nearest(ref, ref_y, q, 1), seed=7,
                                    bounds=retrieval.Bounds(max_queries=40))
    b = retrieval.retrieval_metrics(ref, ref_y, q, q_y, knn.nearest(ref, ref_y, q, 1), seed=7,
                                    bounds=retrieval.Bounds(max_queries=40))
    assert a.values["n_retrieval_queries"] == len(a.rows) == 40 and np.array_equal(a.rows, b.rows)
    assert a.values == b.values and a.values["test/p@1"] == r.values["test/p@1"]  # P@1: every query
    width = lambda res: np.diff(res.intervals["test/r_precision"]["ci95"])[0]  # noqa: E731
    assert a.intervals["test/r_precision"]["n"] == 40 and width(a) > width(r)


def test_retrieval_query_sample_leaves_out_classes_not_in_the_index():
    from sketchembed.eval import retrieval

    rows = retrieval.query_sample(np.array([0, 2, 1, 2, 0]), np.array([0, 1, 1]), retrieval.Bounds(None), 0)
    assert sorted(rows) == [0, 2, 4]
    assert retrieval.r_max(np.array([0, 1, 1]), np.array([0, 5])) == 1


def test_saved_t_interval_is_read_back_not_replaced_by_wilson():
    from sketchembed.eval import stats

    value, ci = stats.batch_means_interval([0.5, 0.7, 0.6, 0.8], [2, 2, 2, 2])
    assert value == pytest.approx(0.65) and ci["method"] == "t over 4 random query groups"
    half = 3.182446305284263 * np.std([0.5, 0.7, 0.6, 0.8], ddof=1) / 2   # t(0.975, 3 df)
    assert ci["ci95"] == pytest.approx([0.65 - half, 0.65 + half])
    m = {"n_test": 8, "test/r_precision": value, "intervals": {"test/r_precision": ci}}
    got = stats.interval(m, "test/r_precision")
    assert (got.low, got.high, got.method) == (ci["ci95"][0], ci["ci95"][1], ci["method"])
    assert stats.batch_means_interval([0.4], [3]) == (pytest.approx(0.4), None)


# ---------------------------------------------------------------------------------- tsne + plots
def test_tsne_small_and_plots_write_pngs(tmp_path):
    from sketchembed.eval import plots, tsne

    emb, lab = clusters(n_per=8, n_classes=3)
    xy = tsne.tsne_map(emb, seed=0)
    assert xy.shape == (24, 2) and np.isfinite(xy).all()
    assert tsne.adapted_perplexity(24) < 24 / 3
    classes = ["apple", "pear", "bus"]
    outs = [
        plots.plot_tsne(tmp_path / "tsne.png", xy, lab, classes),
        plots.plot_neighbors(tmp_path / "neighbors.png", [square(), square(50, 50)], [0, -1],
                             [[square(), square(10, 0)], [square(), square(5, 5)]], [[0, 2], [1, 1]],
                             classes, distances=[[0.1, 0.2], [0.3, 0.4]]),
        plots.plot_confusion(tmp_path / "confusion.png", lab, np.roll(lab, 1), classes),
        plots.plot_early_recognition(tmp_path / "early_recognition.png", {"ours": {0.5: 0.6, 1.0: 0.8}},
                                     references={"study": {0.5: 0.777, 1.0: 0.867}}),
    ]
    for p in outs:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    grid = plots.image_grid(np.zeros((5, 1, 16, 16)), titles=list("abcde"), ncols=3)
    assert grid.ndim == 3 and grid.shape[2] == 3 and grid.dtype == np.uint8


def test_draw_sketch_respects_pen_up():
    from sketchembed.eval import plots

    fig = plots._new_figure(2, 2)
    ax = fig.add_subplot(1, 1, 1)
    plots.draw_sketch(ax, square())
    assert len(ax.lines) == 2                   # two strokes, no line joining them
    np.testing.assert_array_equal(ax.lines[1].get_xdata(), [10, 20])
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # y down, like the canvas


# ------------------------------------------------- a real (tiny) training: callbacks, index, suggest
def test_embedding_callback_logs_knn_and_probe(trained):
    m = trained["metrics"]
    for key in ("val/knn@1", "val/knn@3", "val/probe_acc"):
        assert key in m and 0.0 <= m[key] <= 1.0
    for key in ("test/knn@1", "test/knn@3", "test/probe_acc"):
        assert key in trained["test_metrics"]
    # the logged value is what the library computes from the same embeddings
    from sketchembed.eval.embed import embed_loader

    dm, model = trained["dm"], trained["model"]
    tr = embed_loader(model, dm.loader("train", 1.0, shuffle=True), rasterizer=dm.rasterizer, max_items=40)
    te = embed_loader(model, dm.loader("test", 1.0), rasterizer=dm.rasterizer)
    assert tr.logits is not None and tr.logits.shape == (40, 3) and len(set(tr.indices)) == 40
    want = knn.knn_accuracy(tr.embeddings, tr.labels, te.embeddings, te.labels, ks=(1, 3), n_classes=3)
    assert trained["test_metrics"]["test/knn@3"] == pytest.approx(want[3], abs=1e-6)
    assert trained["test_metrics"]["test/n"] == len(te.labels)  # the n of the confidence intervals


def test_sample_images_reach_tensorboard(trained):
    events = list(trained["logdir"].glob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(trained["logdir"]), size_guidance={"images": 0})
    acc.Reload()
    assert "samples/train" in acc.Tags()["images"]


def test_load_model_and_clear_errors(trained, tmp_path):
    from sketchembed.models import LSTMModel
    from sketchembed.models.checkpoint import open_checkpoint, read_checkpoint

    model = open_checkpoint(trained["ckpt"]).model
    assert isinstance(model, LSTMModel) and not model.training
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(ValueError, match=r"junk.ckpt: not a sketchembed checkpoint"):
        open_checkpoint(junk)
    import torch

    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": 1}}, foreign)
    with pytest.raises(ValueError, match="no model_kind"):
        open_checkpoint(foreign)
    ck = read_checkpoint(trained["ckpt"]).raw
    ck["hyper_parameters"]["model_kind"] = "transformer"
    odd = tmp_path / "odd.ckpt"
    torch.save(ck, odd)
    with pytest.raises(ValueError, match="unexpected model kind 'transformer'"):
        open_checkpoint(odd)
    with pytest.raises(ValueError, match="cannot be used here"):
        open_checkpoint(trained["ckpt"], kinds=("triplet",))


def test_index_build_and_suggest_cli(trained, tmp_path, capsys):
    from sketchembed.cli import main
    from sketchembed.models.checkpoint import file_sha256

    out = tmp_path / "index"
    assert main(["index", "build", "--ckpt", str(trained["ckpt"]), "--data", str(trained["data"]),
                 "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    index = knn.KNNIndex.load(out)
    assert len(index) == 48 and index.classes == CLASSES3
    assert index.ckpt_sha256 == file_sha256(trained["ckpt"])
    # K=1 on the index itself: every drawing finds itself
    assert knn.knn_accuracy(index.embeddings, index.labels, index.embeddings, index.labels, ks=(1,))[1] == 1.0
    row = 7
    sketch = _ndjson(tmp_path / "s.ndjson", index.drawing(row), word=CLASSES3[int(index.labels[row])])
    png = tmp_path / "s.png"
    capsys.readouterr()
    assert main(["suggest", "--ckpt", str(trained["ckpt"]), "--index", str(out), "--sketch", str(sketch),
                 "--k", "4", "--png", str(png), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    first = lines[2].split()
    assert first[0] == "1" and int(first[1]) == int(index.key_ids[row]) and float(first[-1]) < 1e-3
    assert len(lines) == 2 + 4 + 1 and png.read_bytes()[:4] == b"\x89PNG"
    assert lines[-1].startswith("note: rank 1 is at distance 0")  # the query is an indexed drawing
    # unfinished: half of the drawing gives another embedding, still 4 suggestions
    assert main(["suggest", "--ckpt", str(trained["ckpt"]), "--index", str(out), "--sketch", str(sketch),
                 "--k", "4", "--fraction", "0.5", "--device", "cpu"]) == 0
    half = capsys.readouterr().out.splitlines()
    assert f"{len(index.drawing(row)) // 2 + len(index.drawing(row)) % 2}/{len(index.drawing(row))} points" in half[0]


def test_suggest_errors(trained, tmp_path, capsys):
    import torch

    from sketchembed.cli import main
    from sketchembed.models.checkpoint import read_checkpoint

    out = tmp_path / "index"
    assert main(["index", "build", "--ckpt", str(trained["ckpt"]), "--data", str(trained["data"]),
                 "--out", str(out), "--quiet", "--max", "10"]) == 0
    assert "indexed 10 drawings" in capsys.readouterr().err
    bad = tmp_path / "bad.ndjson"
    bad.write_text('{"word": "apple", "key_id": "1", "drawing": [[[1, 2]]]}\n')
    assert main(["suggest", "--ckpt", str(trained["ckpt"]), "--index", str(out), "--sketch", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.ndjson" in err and len(err.strip().splitlines()) == 1
    other = tmp_path / "other.ckpt"
    ck = read_checkpoint(trained["ckpt"]).raw
    ck["epoch"] = 99                           # any change: another file, another hash
    torch.save(ck, other)
    good = _ndjson(tmp_path / "g.ndjson", _class_drawing(1, np.random.default_rng(1)))
    assert main(["suggest", "--ckpt", str(other), "--index", str(out), "--sketch", str(good)]) == 2
    assert "index was built with checkpoint" in capsys.readouterr().err
    assert main(["suggest", "--ckpt", str(other), "--index", str(out), "--sketch", str(good),
                 "--allow-mismatch", "--k", "3"]) == 0
    assert "warning: index was built" in capsys.readouterr().err


def test_metric_keys_are_built_and_read_back_one_way():
    from sketchembed import metric_keys as mk

    assert mk.key("test", "acc", 1.0) == "test/acc@100" and mk.key("val", "probe_acc") == "val/probe_acc"
    assert mk.key("val", mk.knn(3)) == "val/knn@3" and mk.knn(3, study_tie=True) == "knn@3_study_tie"
    assert mk.tagged("pred", 0.125) == "pred@12.5"
    for split, name, fraction in (("test", "acc", 0.5), ("human", "acc", 0.125), ("cv", "balanced_acc", 1.0)):
        parts = mk.parse(mk.key(split, name, fraction))
        assert (parts.split, parts.name, mk.tag_fraction(parts.tag)) == (split, name, fraction)
    assert mk.parse("test/knn@3_study_tie").figure == "knn@3_study_tie"
    assert mk.parse("n_test") is None and mk.tag_fraction("nan") is None and mk.tag_fraction("r") is None
    assert mk.split_of({"val/acc@100": 0.5}) == "val" and mk.split_of({"test/knn@3": 1, "val/x": 0}) == "test"


def test_train_and_eval_print_one_metrics_table():
    """Shares in % with their interval, other figures as numbers, the ``first`` figures first."""
    from rich.console import Console

    from sketchembed.eval.report import metrics_table
    from sketchembed.eval.stats import with_intervals

    m = with_intervals({"test/loss@100": 1.23456, "test/acc@50": 0.5, "test/knn@3": 0.6, "test/n": 40.0,
                        "val/acc@100": 0.9})
    console = Console(width=100, record=True)
    console.print(metrics_table(m, "run", first=("knn@3",)))
    rows = [ln for ln in console.export_text().splitlines() if "test/" in ln]
    assert [r.split()[1] for r in rows] == ["test/knn@3", "test/loss@100", "test/acc@50"]
    assert "60.0 %" in rows[0] and "44.6–73.7 %" in rows[0] and "1.2346" in rows[1]
    assert "val/" not in console.export_text() and "test/n " not in console.export_text()
