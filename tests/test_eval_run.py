"""`python eval.py ckpt_path=…`: a real (tiny) training, then the eval entry end to end.

Every number in metrics.json is checked against a recomputation from the run's predictions.npz (or
from the data itself), so a wrong label mapping, a misaligned fraction or a wrong count fails here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
FIGURES = ("tsne.png", "neighbors.png", "confusion.png", "per_class.png", "early_recognition.png")
STAGES = ("load", "embed_train", "embed_test", "knn", "retrieval", "probe", "metrics", "tsne", "figures")
# cheap but complete evals: every output is written
FAST = ["probe.steps=60", "batch_size=128"]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", WANDB_MODE="offline", WANDB_SILENT="true",
               HYDRA_FULL_ERROR="0")
    env.pop("PROJECT_ROOT", None)
    return env


def _run(script: str, *overrides: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / script), *overrides], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _train(out: Path, *overrides: str) -> Path:
    r = _run("train.py", *overrides, "trainer.max_epochs=1", "logger=none", "test=false",
             "callbacks.sample_images=null", "callbacks.embedding_eval=null", "callbacks.progress=null",
             "callbacks.lr_monitor=null",
             f"hydra.run.dir={out}")
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = out / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    return ckpt


def _eval(out: Path, ckpt: Path, *overrides: str, logger: str = "none") -> dict:
    r = _run("eval.py", f"ckpt_path={ckpt}", f"hydra.run.dir={out}", f"logger={logger}", *FAST, *overrides)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


def _eval_fails(tmp_path: Path, *overrides: str) -> str:
    """Runs eval.py expecting the one-line error; returns it."""
    r = _run("eval.py", f"hydra.run.dir={tmp_path / 'run'}", "logger=none", *overrides)
    err = r.stderr.strip()
    assert r.returncode == 2, (r.returncode, err[-3000:])
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("error: "), err[-3000:]
    return last


@pytest.fixture(scope="module")
def lstm_ckpt(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("lstm"), "model=lstm", "model.hidden=16", "model.layers=1")


@pytest.fixture(scope="module")
def triplet_ckpt(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("triplet"), "model=triplet", "backbone=test_resnet",
                  "data.image_size=32", "model.embedding_dim=16")


@pytest.fixture(scope="module")
def study10():
    from sketchembed.corpus.embedded import open_embedded

    return open_embedded("study10")


def _check_consistent(out: Path, m: dict) -> dict:
    """What holds for every eval run: outputs present, metrics = recomputation from predictions.npz."""
    import warnings

    from sklearn.metrics import balanced_accuracy_score, confusion_matrix

    for name in FIGURES + ("report.md", "predictions.npz"):
        assert (out / name).is_file(), name
    for name in FIGURES:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
    pred = dict(np.load(out / "predictions.npz"))
    classes = [str(c) for c in pred["classes"]]
    assert classes == m["classes"]
    y = pred["labels"]
    n, C = len(y), len(classes)
    assert m["n_test"] == m["n_evaluated"] == n == len(pred["key_ids"]) == len(pred["indices"]) > 0
    fr = [float(f) for f in pred["fractions"]]
    assert fr == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    curve_rows = pred["curve_rows"]
    assert m["n_curve"] == len(curve_rows) == min(n, m.get("_curve_max_eval", n))
    for f in fr:
        tag = str(round(100 * f))
        yf = y if tag in ("50", "100") else y[curve_rows]
        acc = float((pred[f"pred@{tag}"] == yf).mean())
        assert m[f"test/acc@{tag}"] == pytest.approx(acc, abs=1e-12)
        assert m["early_recognition"][tag] == pytest.approx(acc, abs=1e-12)
    assert m["early_recognition"]["100"] == m["test/acc@100"]
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true" on a subset of classes
        warnings.simplefilter("ignore", UserWarning)
        for tag in ("50", "100"):
            want = balanced_accuracy_score(y, pred[f"pred@{tag}"])
            assert m[f"test/balanced_acc@{tag}"] == pytest.approx(want, abs=1e-12)
    cm = np.array(m["confusion_matrix"])
    assert cm.shape == (C, C) and cm.sum() == n
    np.testing.assert_array_equal(cm, confusion_matrix(y, pred["pred@100"], labels=list(range(C))))
    for i, c in enumerate(classes):
        rows = y == i
        assert m["per_class_n"][c] == int(rows.sum())
        want = float((pred["pred@100"][rows] == i).mean()) if rows.any() else None
        assert m["per_class_acc@100"][c] == (pytest.approx(want) if want is not None else None)
    from sketchembed.eval.knn import study_tie_correct, vote

    nl = pred["knn_neighbor_labels"]
    for k in (1, 3, 4, 5):
        assert m[f"test/knn@{k}"] == pytest.approx(float((pred[f"knn@{k}"] == y).mean()), abs=1e-12)
        np.testing.assert_array_equal(pred[f"knn@{k}"], vote(nl, k, C))
        tie = float(study_tie_correct(nl, k, y, C).mean())
        assert m[f"test/knn@{k}_study_tie"] == pytest.approx(tie, abs=1e-12)
        assert m[f"test/knn@{k}_study_tie"] >= m[f"test/knn@{k}"]  # the study's rule is never stricter
    assert m["test/knn@1_study_tie"] == m["test/knn@1"]
    pairs = m["confused_pairs"]
    off = cm - np.diag(np.diag(cm))
    assert [p["total"] for p in pairs] == sorted((p["total"] for p in pairs), reverse=True)
    if pairs:
        assert pairs[0]["total"] == int(np.triu(off + off.T, 1).max())
        a, b = classes.index(pairs[0]["a"]), classes.index(pairs[0]["b"])
        assert (pairs[0]["a_as_b"], pairs[0]["b_as_a"]) == (cm[a, b], cm[b, a])
    stages = json.loads((out / "stages.json").read_text())
    assert list(stages["stages"]) == list(STAGES)
    assert all(r["wall_s"] >= 0 and r["peak_rss_mb"] > 0 for r in stages["stages"].values())
    assert m["test/probe_acc"] == pytest.approx(float((pred["probe"] == y).mean()), abs=1e-12)
    from sketchembed.eval.stats import wilson

    k100 = int((pred["pred@100"] == y).sum())  # every accuracy saved with n and its 95 % interval
    assert m["intervals"]["test/acc@100"] == {"n": n, "ci95": pytest.approx(list(wilson(k100, n))), "method": "wilson"}
    assert {f"test/knn@{k}" for k in (1, 3, 4, 5)} | {"test/probe_acc", "test/acc@10"} <= set(m["intervals"])
    assert isinstance(m["n_skipped"], int) and m["n_skipped"] >= 0
    # retrieval: P@1 = the nearest indexed drawing's class (the KNN search's first column), Wilson over
    # every drawing; R-precision / MAP@R on the sampled queries with their group t interval
    assert m["test/p@1"] == pytest.approx(float((nl[:, 0] == y).mean()), abs=1e-12)
    assert m["intervals"]["test/p@1"]["method"] == "wilson" and m["intervals"]["test/p@1"]["n"] == n
    rows = pred["retrieval_rows"]
    assert (len(rows) == len(np.unique(rows)) == m["n_retrieval_queries"]
            == min(n, m.get("_retrieval_max_queries", 2000)))
    assert m["retrieval_r_max"] == int(np.bincount(pred["index_labels"])[np.unique(y[rows])].max())
    for key in ("test/r_precision", "test/map@r"):
        low, high = m["intervals"][key]["ci95"]
        assert 0 <= low <= m[key] <= high <= 1 and m["intervals"][key]["method"].startswith("t over")
    for key in ("test/nmi", "test/ami"):
        assert -1 <= m[key] <= 1 and key not in m["intervals"]          # one clustering: no interval
    report = (out / "report.md").read_text()
    for name in FIGURES:
        assert f"]({name})" in report, name
    from sketchembed.eval.report import pct

    assert f"| classification @ 100 % of the drawing | {pct(m['test/acc@100'])} |" in report
    assert f"| KNN K=4 | {pct(m['test/knn@4'])} |" in report
    assert f"| R-precision | {pct(m['test/r_precision'])} |" in report and "| NMI " in report
    html = (out / "report.html").read_text()
    assert f"<td>R-precision</td>\n<td style=\"text-align:right\">{pct(m['test/r_precision'])}</td>" in html
    tie_row = f"| KNN K=3, study's tie rule (a tie with the true class counts) | {pct(m['test/knn@3_study_tie'])} |"
    assert m["model_kind"] != "combined" or any(  # ours, its interval and n, then the study's figure
        line.startswith(tie_row) and line.endswith("| 88.95 |") for line in report.splitlines())
    if pairs:
        assert "## Most confused pairs" in report and f"| {pairs[0]['a']} | {pairs[0]['b']} |" in report
    return pred


# ------------------------------------------------------------------------------------------ classifier
def test_eval_classifier_on_test_split(lstm_ckpt, study10, tmp_path):
    out = tmp_path / "run"
    m = _eval(out, lstm_ckpt)
    pred = _check_consistent(out, m)
    assert m["model_kind"] == "lstm" and m["classifier"] == "logits"
    assert m["classes"] == study10.classes and m["split"] == "test"
    test_rows = study10.indices("test")
    np.testing.assert_array_equal(np.sort(pred["indices"]), np.sort(test_rows))
    np.testing.assert_array_equal(pred["labels"], np.asarray(study10.labels)[pred["indices"]])
    assert m["n_train"] == len(study10.indices("train"))
    assert m["n_skipped"] == 0 and m["n_test_in_index"] == 0
    assert "test/triplet_acc" not in m
    assert "- **classified by**: logits" in (out / "report.md").read_text()


def test_knn_k1_on_the_index_itself_is_perfect(lstm_ckpt, study10, tmp_path):
    """data.test_dir = the training dataset itself (a prepared dir: every row): the train drawings are
    the index, so their nearest neighbour is themselves. retrieval.enabled=false: no retrieval keys."""
    out = tmp_path / "run"
    m = _eval(out, lstm_ckpt, f"data.test_dir={study10.root}", "tsne.enabled=false", "neighbors.n_refs=0",
              "retrieval.enabled=false")
    assert not {"test/p@1", "test/r_precision", "test/nmi", "n_retrieval_queries"} & set(m)
    assert "retrieval" not in json.loads((out / "stages.json").read_text())["stages"]
    assert "## Retrieval" not in (out / "report.md").read_text()
    pred = dict(np.load(out / "predictions.npz"))
    assert m["n_test"] == len(study10) and m["split"] == "test_dir"
    train_keys = np.asarray(study10.key_ids)[study10.indices("train")]
    in_index = np.isin(pred["key_ids"], train_keys)
    assert m["n_test_in_index"] == int(in_index.sum()) == len(train_keys)
    np.testing.assert_array_equal(pred["knn@1"][in_index], pred["labels"][in_index])
    # labels come from the prepared dir's class names, identical to the training labels here
    np.testing.assert_array_equal(pred["labels"], np.asarray(study10.labels)[pred["indices"]])


# ------------------------------------------------------------------------------------------ test_dir
def test_eval_test_dir_of_real_files(lstm_ckpt, shared_quickdraw, tmp_path):
    """Simplified and raw ndjson, a subset of the trained classes, one corrupt line (a counted skip);
    logged to wandb offline (the default logger)."""
    folder = tmp_path / "drawings"
    folder.mkdir()
    for name, kind in (("apple", "simplified"), ("banana", "simplified"), ("pear", "raw")):
        (folder / f"{name}.ndjson").write_bytes((shared_quickdraw / kind / f"{name}.ndjson").read_bytes())
    lines = (folder / "banana.ndjson").read_text().splitlines(keepends=True)
    lines[2] = '{"word": "banana", "key_id": "12", "drawing": [[[1, 2\n'
    (folder / "banana.ndjson").write_text("".join(lines))

    def keys(name):
        out = set()
        for line in (folder / f"{name}.ndjson").read_text().splitlines():
            try:
                out.add(int(json.loads(line)["key_id"]))
            except ValueError:
                pass
        return out

    expected = {c: keys(c) for c in ("apple", "banana", "pear")}
    out = tmp_path / "run"
    m = _eval(out, lstm_ckpt, f"data.test_dir={folder}", logger="wandb")
    pred = _check_consistent(out, m)
    assert m["n_skipped"] == 1 and "banana.ndjson" in m["skipped"][0]["file"]
    assert m["n_test"] == sum(len(v) for v in expected.values())
    classes = m["classes"]
    got = Counter(classes[i] for i in pred["labels"])
    assert got == {c: len(v) for c, v in expected.items()}
    # labels by class name: each drawing carries the class of the file it came from
    for key, lab in zip(pred["key_ids"].tolist(), pred["labels"]):
        assert key in expected[classes[lab]]
    cm = np.array(m["confusion_matrix"])
    absent = [i for i, c in enumerate(classes) if c not in expected]
    assert cm[absent].sum() == 0 and all(m["per_class_acc@100"][classes[i]] is None for i in absent)
    assert list((out / "wandb").glob("offline-run-*")), "no offline wandb run"
    assert "drawings skipped (bad records)**: 1" in (out / "report.md").read_text()


# ------------------------------------------------------------------------------------------ triplet
def test_eval_triplet_checkpoint_classified_by_knn(triplet_ckpt, study10, tmp_path):
    """Also: knn.max_train caps the index with a random subset of the train split, not its first rows
    (which are sorted by class); curve_max_eval measures the curve's other fractions on a subset, and
    retrieval.max_queries R-precision and MAP@R."""
    out = tmp_path / "run"
    m = _eval(out, triplet_ckpt, "knn.max_train=60", "curve_max_eval=20", "knn.backend=torch",
              "retrieval.max_queries=12")
    m["_curve_max_eval"] = 20
    m["_retrieval_max_queries"] = 12
    pred = _check_consistent(out, m)
    assert m["n_train"] == len(pred["index_key_ids"]) == 60
    train_rows = study10.indices("train")
    assert set(pred["index_key_ids"].tolist()) <= set(np.asarray(study10.key_ids)[train_rows].tolist())
    assert len(set(pred["index_labels"].tolist())) >= 8  # the first 60 train rows hold 2-3 classes
    assert m["model_kind"] == "triplet" and m["classifier"] == "knn@4"
    np.testing.assert_array_equal(pred["pred@100"], pred["knn@4"])
    assert m["test/acc@100"] == m["test/knn@4"]
    assert 0.0 <= m["test/triplet_acc"] <= 1.0 and m["test/d_pos"] >= 0
    assert "| triplet accuracy |" in (out / "report.md").read_text()


def test_report_reads_triplet_acc_as_logged_in_training():
    from sketchembed.eval.report import metric, render_report

    train_logged = {"model_kind": "triplet", "val/triplet_acc@100": 0.91, "val/triplet_acc@50": 0.5}
    assert metric(train_logged, "triplet_acc") == 0.91
    assert metric({"test/triplet_acc": 0.8, "test/triplet_acc@100": 0.7}, "triplet_acc") == 0.8
    assert "| triplet accuracy | 91.0 |" in render_report(train_logged)


# ------------------------------------------------------------------------------------------ bad input
def test_not_a_checkpoint(tmp_path):
    from omegaconf import OmegaConf

    from sketchembed.commands.evaluate import _ckpt_path

    junk = tmp_path / "model.ckpt"
    junk.write_text("not a checkpoint\n")
    assert "model.ckpt: not a sketchembed checkpoint" in _eval_fails(tmp_path, f"ckpt_path={junk}")
    with pytest.raises(ValueError, match="ckpt_path=PATH is required"):
        _ckpt_path(OmegaConf.create({"ckpt_path": "???"}))
    with pytest.raises(FileNotFoundError, match="missing.ckpt: no such file"):
        _ckpt_path(OmegaConf.create({"ckpt_path": str(tmp_path / "missing.ckpt")}))


def test_checkpoint_of_another_kind(lstm_ckpt, triplet_ckpt, tmp_path):
    import torch
    from omegaconf import OmegaConf

    from sketchembed.commands.evaluate import _datamodule
    from sketchembed.models.checkpoint import open_checkpoint

    ck = torch.load(lstm_ckpt, map_location="cpu", weights_only=True)
    ck["hyper_parameters"]["model_kind"] = "vae"
    torch.save(ck, tmp_path / "vae.ckpt")
    with pytest.raises(ValueError, match=r"vae.ckpt: unexpected model kind 'vae'"):
        open_checkpoint(tmp_path / "vae.ckpt")
    ck.pop("SketchDataModule")  # a model checkpoint without the data state eval needs
    with pytest.raises(ValueError, match="nodata.ckpt: checkpoint carries no data state"):
        _datamodule(OmegaConf.create({"batch_size": 8, "seed": 0}), ck, tmp_path / "nodata.ckpt", ("sequence",))
    ck = torch.load(triplet_ckpt, map_location="cpu", weights_only=True)
    ck["hyper_parameters"]["model_kind"] = "lstm"  # a triplet network's weights claiming to be an LSTM
    torch.save(ck, tmp_path / "liar.ckpt")
    with pytest.raises(ValueError, match=r"liar.ckpt: checkpoint does not fit model kind 'lstm'"):
        open_checkpoint(tmp_path / "liar.ckpt")


@pytest.mark.parametrize("override,needle", [
    ("batch_size=0", "batch_size must be an integer >= 1, got 0"),  # was: the default batch size
    ("batch_size=abc", "batch_size must be an integer >= 1, got 'abc'"),  # was: invalid literal for int()
    ("data.max_eval=0", "data.max_eval must be an integer >= 1 or null, got 0"),  # was: all drawings
    ("data.max_eval=-5", "data.max_eval must be an integer >= 1 or null, got -5"),  # was: negative dimensions
    ("data.num_workers=-1", "data.num_workers must be an integer >= 0"),
    ("seed=x", "seed must be an integer >= 0"),
    ("neighbors.k=many", "neighbors.k must be an integer >= 0"),
    ("retrieval.max_queries=0", "retrieval.max_queries must be an integer >= 1 or null, got 0"),
    ("retrieval.max_pairs=lots", "retrieval.max_pairs must be an integer >= 1, got 'lots'"),
    ("retrieval.enabled=maybe", "retrieval.enabled must be true or false, got 'maybe'"),
])
def test_odd_eval_values_name_their_key(override, needle):
    from omegaconf import OmegaConf

    from sketchembed.commands.evaluate import EvalSettings

    cfg = OmegaConf.merge(OmegaConf.load(REPO / "conf" / "eval.yaml"), OmegaConf.from_dotlist([override]))
    with pytest.raises(ValueError, match=re.escape(needle)):
        EvalSettings.from_config(cfg)


def test_eval_settings_are_read_once_typed_from_the_config():
    """conf/eval.yaml's values, typed; the stages read these, never the config again."""
    import dataclasses

    import numpy as np
    from omegaconf import OmegaConf

    from sketchembed.commands.evaluate import EvalSettings

    cfg = OmegaConf.merge(OmegaConf.load(REPO / "conf" / "eval.yaml"),
                          OmegaConf.from_dotlist(["fractions=[0.3]", "knn.ks=[5,1,5]", "embed_dtype=float16",
                                                  "data.image_size=48", "knn.max_train=null"]))
    st = EvalSettings.from_config(cfg)
    assert st.fractions == (0.3, 0.5, 1.0) and st.ks == (1, 5) and st.dtype is np.float16
    assert st.inputs == {"image_size": 48}
    assert st.max_train is None and st.batch_size == 256 and st.retrieval.max_pairs == 4_000_000
    with pytest.raises(dataclasses.FrozenInstanceError):
        st.batch_size = 1  # type: ignore[misc]
    for override, needle in (("knn.max_train=3", "knn.max_train must be an integer >= 5 (the largest K) or null"),
                             ("tsne.enabled=maybe", "tsne.enabled must be true or false, got 'maybe'"),
                             ("knn.query_block=null", "knn.query_block must be an integer >= 1, got None")):
        with pytest.raises(ValueError, match=re.escape(needle)):
            EvalSettings.from_config(OmegaConf.merge(cfg, OmegaConf.from_dotlist([override])))


def test_eval_refuses_other_channels_than_the_checkpoints(lstm_ckpt, tmp_path):
    last = _eval_fails(tmp_path, f"ckpt_path={lstm_ckpt}", "+data.channels=[ink,order]")
    assert "data.channels=['ink', 'order']" in last and "trained on channels ['ink']" in last


def test_odd_eval_value_is_one_line_and_exit_2(tmp_path):
    ckpt = tmp_path / "any.ckpt"  # the settings are checked before the checkpoint is read
    ckpt.write_bytes(b"")
    last = _eval_fails(tmp_path, f"ckpt_path={ckpt}", "batch_size=abc")
    assert "batch_size must be an integer >= 1, got 'abc'" in last


@pytest.mark.parametrize("case", ["unknown_class", "empty"])
def test_bad_test_dir(lstm_ckpt, shared_quickdraw, tmp_path, case):
    folder = tmp_path / "drawings"
    folder.mkdir()
    if case == "unknown_class":
        (folder / "apple.ndjson").write_bytes((shared_quickdraw / "simplified" / "apple.ndjson").read_bytes())
        (folder / "cat.ndjson").write_bytes((shared_quickdraw / "simplified" / "cat.ndjson").read_bytes())
        (folder / "not a class.ndjson").write_text("")
        last = _eval_fails(tmp_path, f"ckpt_path={lstm_ckpt}", f"data.test_dir={folder}")
        assert "cat.ndjson" in last and "not a class.ndjson" in last and "unknown to the model" in last
    else:
        (folder / "notes.txt").write_text("no drawings here")
        last = _eval_fails(tmp_path, f"ckpt_path={lstm_ckpt}", f"data.test_dir={folder}")
        assert f"data.test_dir={folder}: no per-class files" in last


# ------------------------------------------------------------------------------------------ slow
@pytest.mark.slow
def test_eval_combined_checkpoint(tmp_path):
    ckpt = _train(tmp_path / "train", "model=combined", "backbone=test_resnet", "data.image_size=32",
                  "model.embedding_dim=16", "model.hidden=16", "model.layers=1", "model.mlp_hidden=16")
    out = tmp_path / "run"
    m = _eval(out, ckpt)
    _check_consistent(out, m)
    assert m["model_kind"] == "combined" and m["classifier"] == "logits"
