"""Evaluation at the study's scale: the KNN vote rules, the blockwise exact search, the study's probe,
streamed embedding, readable 345-class outputs, per-stage timing — and (slow) the whole pipeline
on a generated set of 200,000 drawings."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from sketchembed.eval.confusion import confused_pairs, most_confused_classes, pairs_markdown, per_class_sorted
from sketchembed.eval.embed import embed_loader
from sketchembed.eval.knn import faiss, knn_predict, neighbor_labels, resolve_backend, search, study_tie_correct, vote
from sketchembed.eval.plots import plot_confusion, plot_per_class, plot_tsne
from sketchembed.eval.probe import linear_probe
from sketchembed.eval.report import render_report
from sketchembed.eval.stages import Stages

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ vote rules
def test_study_tie_rule_on_a_hand_made_example():
    # K=3 neighbours (nearest first) and true classes:
    nl = np.array([[0, 1, 2],   # 1-1-1 tie, true 2 among the tied: study correct; strict says 0 (nearest)
                   [0, 1, 2],   # 1-1-1 tie, true 3 not among them: wrong under both
                   [1, 1, 0],   # 2-1 majority 1, true 0: wrong under both
                   [1, 0, 0]])  # 2-1 majority 0 (not the nearest's class), true 0: right under both
    y = np.array([2, 3, 0, 0])
    np.testing.assert_array_equal(study_tie_correct(nl, 3, y, 4), [True, False, False, True])
    np.testing.assert_array_equal(vote(nl, 3, 4) == y, [False, False, False, True])
    # K=1 has no ties: both rules agree; K=2 with a 1-1 tie counts either member under the study's rule
    np.testing.assert_array_equal(study_tie_correct(nl, 1, y, 4), vote(nl, 1, 4) == y)
    np.testing.assert_array_equal(study_tie_correct(nl, 2, np.array([1, 1, 0, 0]), 4), [True, True, False, True])


def test_strict_rule_breaks_ties_by_distance():
    nl = np.array([[3, 1, 1, 3], [1, 3, 3, 1], [2, 0, 0, 1]])
    # 2-2 ties go to the class of the nearer neighbour; a majority beats a nearer single vote
    np.testing.assert_array_equal(vote(nl, 4, 4), [3, 1, 0])
    np.testing.assert_array_equal(vote(nl, 3, 4), [1, 3, 0])


# ------------------------------------------------------------------------------------------ search
@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_blockwise_search_equals_sklearn(backend):
    from sklearn.neighbors import NearestNeighbors

    if backend == "faiss" and faiss is None:
        pytest.skip("faiss not installed")
    rng = np.random.default_rng(0)
    index = rng.standard_normal((1000, 24)).astype(np.float32)
    queries = rng.standard_normal((333, 24)).astype(np.float32)
    # blocks smaller than both sets: the running top-k merges across index blocks and query blocks
    idx, d2 = search(index, queries, 7, backend=backend, query_block=50, index_block=128)
    dist, want = NearestNeighbors(n_neighbors=7).fit(index).kneighbors(queries)
    np.testing.assert_array_equal(idx, want)
    np.testing.assert_allclose(d2, dist ** 2, rtol=1e-4, atol=1e-4)
    # float16 (a halved index) is read block by block as float32
    idx16, _ = search(index.astype(np.float16), queries, 3, backend=backend, index_block=100)
    assert (idx16 == want[:, :3]).mean() > 0.97


def test_knn_predict_matches_sklearn_classifier_and_exclude_self():
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(1)
    x = rng.standard_normal((400, 8)).astype(np.float32)
    y = rng.integers(0, 5, 400)
    q = rng.standard_normal((100, 8)).astype(np.float32)
    pred = knn_predict(x, y, q, ks=(1, 5), n_classes=5, backend="torch")
    np.testing.assert_array_equal(pred[1], KNeighborsClassifier(1).fit(x, y).predict(q))
    loo = neighbor_labels(x, y, x, 1, exclude_self=True, backend="torch")[:, 0]
    want = KNeighborsClassifier(2).fit(x, y).kneighbors(x, return_distance=False)[:, 1]
    np.testing.assert_array_equal(loo, y[want])


def test_search_errors():
    x = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="knn.backend='annoy'"):
        search(x, x, 1, backend="annoy")
    with pytest.raises(ValueError, match="K=4 needs"):
        search(x, x, 4, backend="torch")
    # only torch searches off the CPU, and auto picks it there (no GPU needed to check the choice)
    with pytest.raises(ValueError, match="knn.device=cuda: only knn.backend=torch"):
        search(x, x, 1, backend="sklearn", device="cuda")
    assert resolve_backend("auto", "cuda") == "torch"
    assert resolve_backend("auto", "cpu") == ("faiss" if faiss is not None else "torch")
    np.testing.assert_array_equal(search(x[:2] + 1, x, 2, device="cpu")[0], search(x[:2] + 1, x, 2)[0])
    with pytest.raises(ValueError, match="NaN"):
        neighbor_labels(np.full((3, 4), np.nan, np.float32), np.zeros(3), x, 1)


# ------------------------------------------------------------------------------------------ probe
def test_probe_steps_is_the_studys_shape_and_deterministic():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((4, 16)) * 4
    y = np.repeat(np.arange(4), 100)
    x = (centers[y] + rng.standard_normal((400, 16))).astype(np.float32)
    a = linear_probe(x, y, {"train": (x, y)}, n_classes=4, steps=300, hidden=64, lr=1e-3, seed=3)
    b = linear_probe(x.astype(np.float16), y, {"train": (x, y)}, n_classes=4, steps=300, seed=3)
    assert a.accuracy["train"] > 0.95
    assert [m.out_features for m in a.model if isinstance(m, torch.nn.Linear)] == [64, 4]
    np.testing.assert_array_equal(a.predict(x), linear_probe(x, y, n_classes=4, steps=300, seed=3).predict(x))
    assert abs(a.accuracy["train"] - b.accuracy["train"]) < 0.05
    with pytest.raises(ValueError, match="probe.steps"):
        linear_probe(x, y, steps=0)


# ------------------------------------------------------------------------------------------ embedding
class _Fake(torch.nn.Module):
    """A model whose embedding is the batch's ``x`` and logits its first 3 columns."""

    views = ("sequence",)

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def embed(self, batch):
        return batch["x"] * self.w

    def logits(self, batch):
        return batch["x"][:, :3]


def test_embed_loader_streams_into_preallocated_arrays():
    x = torch.randn(50, 6)
    batches = [{"x": x[a:a + 8], "label": torch.arange(a, min(a + 8, 50)) % 3, "index": torch.arange(a, min(a + 8, 50)),
                "key_id": torch.arange(a, min(a + 8, 50))} for a in range(0, 50, 8)]

    class Loader(list):
        dataset = range(20)  # announces fewer rows than it yields: the buffers grow

    e = embed_loader(_Fake(), Loader(batches), dtype=np.float16, keep_logits=False)
    assert e.embeddings.dtype == np.float16 and e.embeddings.shape == (50, 6) and e.logits is None
    np.testing.assert_allclose(e.embeddings, x.numpy(), atol=1e-2)
    np.testing.assert_array_equal(e.predictions(), x[:, :3].argmax(1).numpy())
    np.testing.assert_array_equal(e.indices, np.arange(50))
    e = embed_loader(_Fake(), Loader(batches), max_items=13)
    assert len(e) == 13 and e.logits.shape == (13, 3)


# ------------------------------------------------------------------------------------------ 345 classes
def _big_confusion(C=345, n=20_000, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, n)
    p = np.where(rng.random(n) < 0.6, y, rng.integers(0, C, n))
    p[(y == 7) & (rng.random(n) < 0.5)] = 9  # a known strongly confused pair
    return y, p


def test_confused_pairs_table():
    cm = np.array([[5, 3, 0], [4, 6, 1], [0, 2, 9]])
    pairs = confused_pairs(cm, ["a", "b", "c"], top=5)
    assert [(p["a"], p["b"], p["a_as_b"], p["b_as_a"], p["total"]) for p in pairs] == \
        [("a", "b", 3, 4, 7), ("b", "c", 1, 2, 3)]
    assert pairs[0]["share"] == pytest.approx(7 / (8 + 11))
    assert confused_pairs(np.diag([3, 4]), ["a", "b"]) == []
    np.testing.assert_array_equal(most_confused_classes(cm, 2), [0, 1])
    assert [r[0] for r in per_class_sorted(cm, ["a", "b", "c"])] == ["b", "a", "c"]
    md = "\n".join(pairs_markdown(pairs, 3))
    assert "| a | b | 3 | 4 | 7 | 36.8 |" in md


def test_345_class_figures_stay_small_and_fast(tmp_path):
    from sklearn.metrics import confusion_matrix

    from sketchembed.corpus.categories import CATEGORIES

    y, p = _big_confusion()
    classes = list(CATEGORIES)
    t = time.perf_counter()
    plot_confusion(tmp_path / "confusion.png", y, p, classes, max_classes=30)
    cm = confusion_matrix(y, p, labels=range(345))
    plot_per_class(tmp_path / "per_class.png", cm, classes)
    xy = np.random.default_rng(0).standard_normal((5000, 2))
    plot_tsne(tmp_path / "tsne.png", xy, y[:5000], classes)
    assert time.perf_counter() - t < 30  # a few seconds on a quiet machine; 66 s before at 345 classes
    for name, limit in (("confusion.png", 2500), ("per_class.png", 1500), ("tsne.png", 1500)):
        with Image.open(tmp_path / name) as im:
            assert max(im.size) < limit, (name, im.size)
    pairs = confused_pairs(cm, classes, top=10)
    assert {pairs[0]["a"], pairs[0]["b"]} == {classes[7], classes[9]}
    assert 7 in most_confused_classes(cm, 30) and 9 in most_confused_classes(cm, 30)


def test_report_lists_pairs_and_sorted_per_class():
    m = {"model_kind": "combined", "classes": ["a", "b", "c"], "test/acc@100": 0.5, "test/knn@3": 0.6,
         "test/knn@3_study_tie": 0.7, "per_class_acc@100": {"a": 0.9, "b": 0.2, "c": 0.5},
         "per_class_n": {"a": 10, "b": 10, "c": 10},
         "confused_pairs": confused_pairs(np.array([[9, 1, 0], [6, 2, 2], [0, 5, 5]]), ["a", "b", "c"])}
    text = render_report(m)
    assert "| KNN K=3 | 60.0 |" in text
    assert "| KNN K=3, study's tie rule (a tie with the true class counts) | 70.0 |" in text
    assert text.split("study's tie rule")[1].split("\n")[0].rstrip().endswith("| 88.95 |")
    assert text.index("| b | 10 | 20.0 |") < text.index("| c | 10 | 50.0 |") < text.index("| a | 10 | 90.0 |")
    assert "## Most confused pairs" in text and "| a | b | 1 | 6 | 7 |" in text


# ------------------------------------------------------------------------------------------ stages, config
def test_stages_record_time_and_peak_memory():
    st = Stages()
    with st("big") as info:
        a = np.ones(40 * 2**20 // 8)  # 40 MiB, touched
        info["n"] = len(a)
        del a
    with st("small"):
        pass
    s = st.summary()
    assert list(s["stages"]) == ["big", "small"] and s["stages"]["big"]["n"] == 40 * 2**20 // 8
    assert s["peak_rss_mb"] >= s["stages"]["big"]["peak_rss_mb"] > 40
    if s["peak_resets"]:
        assert s["stages"]["small"]["peak_rss_mb"] < s["stages"]["big"]["peak_rss_mb"]


@pytest.mark.parametrize("override,key", [("knn.backend=annoy", "knn.backend"), ("knn.device=gpu0", "knn.device"),
                                          ("embed_dtype=int8", "embed_dtype"),
                                          ("knn.max_train=2", "knn.max_train"), ("probe.steps=0", "probe.steps"),
                                          ("curve_max_eval=-1", "curve_max_eval"), ("knn.ks=[0]", "knn.ks"),
                                          ("knn.ks=[a]", "knn.ks"), ("probe.lr=fast", "probe.lr"),
                                          ("tsne.perplexity=0", "tsne.perplexity")])
def test_bad_eval_settings_name_their_key(override, key):
    from sketchembed.commands.evaluate import EvalSettings

    cfg = OmegaConf.merge(OmegaConf.load(REPO / "conf" / "eval.yaml"), OmegaConf.from_dotlist([override]))
    with pytest.raises(ValueError, match=re.escape(key)):
        EvalSettings.from_config(cfg)


def test_eval_defaults_are_the_studys():
    cfg = OmegaConf.load(REPO / "conf" / "eval.yaml")
    assert cfg.knn.max_train == 100_000 and 3 in cfg.knn.ks
    assert (cfg.probe.hidden, cfg.probe.steps, cfg.probe.lr) == (64, 300, 1e-3)


# ------------------------------------------------------------------------------------------ slow
def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="2", WANDB_MODE="offline", WANDB_SILENT="true", HYDRA_FULL_ERROR="0",
               PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.pop("PROJECT_ROOT", None)
    return env


@pytest.mark.slow
def test_whole_pipeline_on_200k_generated_drawings(tmp_path):
    """Generate 200,000 drawings -> prepare -> a few training steps -> eval.py (KNN over 20,000 train
    drawings, probe, t-SNE of 1,000, figures): every output there, memory bounded."""
    code = (f"import sys; sys.path[:0] = [{str(REPO)!r}]\n"
            "from pathlib import Path\n"
            "from bench.eval_scale import build_dataset, train_checkpoint, run_eval\n"
            "from sketchembed import STUDY_CLASSES\n"
            "import json\n"
            f"work = Path({str(tmp_path)!r})\n"
            "prepared, facts = build_dataset(work, 200_000, STUDY_CLASSES)\n"
            "ckpt = train_checkpoint(prepared, work / 'train', 'triplet', steps=3)\n"
            "r = run_eval(ckpt, work / 'eval', 'knn.max_train=20000', 'data.max_eval=3000', 'curve_max_eval=500',\n"
            "             'tsne.max_points=1000')\n"
            "print(json.dumps({'facts': facts, 'eval': r}))\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True, text=True,
                       timeout=1800)
    assert p.returncode == 0, p.stderr[-4000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert sum(res["facts"]["split_totals"].values()) == 200_000
    r = res["eval"]
    assert r["n_train"] == 20_000 and r["n_test"] == 3000 and r["n_curve"] == 500 and r["classes"] == 10
    assert set(r["stages"]) >= {"load", "embed_train", "embed_test", "knn", "probe", "tsne", "figures"}
    assert r["peak_rss_mb"] < 3000, r["stages"]
    out = tmp_path / "eval"
    m = json.loads((out / "metrics.json").read_text())
    for key in ("test/acc@100", "test/acc@10", "test/knn@3", "test/knn@3_study_tie", "test/probe_acc"):
        assert 0 <= m[key] <= 1, key
    for name in ("tsne.png", "confusion.png", "per_class.png", "neighbors.png", "early_recognition.png", "report.md"):
        assert (out / name).is_file(), name


def test_curve_subset_is_cut_like_the_whole_split():
    """The curve's sampled fractions go through the DataModule's own collate (its fraction rule and
    sequence origin), so a sampled drawing is cut exactly as in the whole-split loader."""
    from sketchembed.data.datamodule import SketchDataModule
    from sketchembed.eval.embed import subset_loader

    dm = SketchDataModule(root="study10", fraction_rule="study", seq_norm="none", seq_origin=(122.5, 122.5),
                          eval_batch_size=8)
    whole = next(iter(dm.loader("test", 0.3)))
    part = next(iter(subset_loader(dm, "test", [0, 1, 2], 0.3)))
    for key in ("lengths", "image_lengths"):
        np.testing.assert_array_equal(part[key].numpy(), whole[key][:3].numpy())
    for key in ("seq", "stroke_ends"):
        np.testing.assert_array_equal(part[key].numpy(), whole[key][:3, :part[key].shape[1]].numpy())
