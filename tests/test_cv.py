"""K-fold cross-validation (train/cv.py, eval/crossval.py, data.fold), test-time augmentation
(eval/tta.py) and weight averaging (averaging=ema)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from helpers import compose_cfg, load_ckpt, tiny
from sketchembed.corpus.embedded import open_embedded
from sketchembed.corpus.store import SPLIT_CODES
from sketchembed.data.datamodule import SketchDataModule, check_fold, fold_splits
from sketchembed.eval import crossval
from sketchembed.eval.stats import mcnemar, wilson
from sketchembed.eval.tta import PointTTA, embed_split, split_predictions
from sketchembed.messages import ConfigError
from sketchembed.train.callbacks import PerDrawingPredictions
from sketchembed.train.cv import cv_folds, fold_config, fold_model, run_cv

TEST, VAL, TRAIN = SPLIT_CODES["test"], SPLIT_CODES["val"], SPLIT_CODES["train"]


# ------------------------------------------------------------------------------------ the folds
@pytest.mark.parametrize("k", [2, 5])
def test_folds_test_every_drawing_once_stratified_and_disjoint(k):
    ds = open_embedded("study10")
    labels, keys = np.asarray(ds.labels), np.asarray(ds.key_ids)
    codes = np.stack([fold_splits(labels, keys, k, i, val_share=0.18) for i in range(k)])
    assert ((codes == TEST).sum(0) == 1).all()              # each drawing tested in exactly one fold
    per_class = np.stack([np.bincount(labels[c == TEST], minlength=len(ds.classes)) for c in codes])
    assert (per_class.max(0) - per_class.min(0) <= 1).all()  # stratified: classes dealt evenly
    for c in codes:                                          # every class trains and validates in every fold
        assert (np.bincount(labels[c == TRAIN], minlength=10) > 0).all()
        assert (np.bincount(labels[c == VAL], minlength=10) > 0).all()
    # deterministic by key_id and seed, not by row order
    perm = np.random.default_rng(0).permutation(len(labels))
    again = fold_splits(labels[perm], keys[perm], k, 0, val_share=0.18)
    assert np.array_equal(again, codes[0][perm])
    assert not np.array_equal(fold_splits(labels, keys, k, 0, seed=1, val_share=0.18), codes[0])


def test_datamodule_fold_rows_replace_the_splits():
    dm = SketchDataModule(fold={"k": 5, "index": 2})
    rows = {s: dm.rows(s) for s in ("train", "val", "test")}
    assert sum(len(r) for r in rows.values()) == 337
    assert len(np.unique(np.concatenate(list(rows.values())))) == 337   # no drawing in two parts
    plain = SketchDataModule()
    assert len(rows["test"]) in (67, 68) and not np.array_equal(rows["test"], plain.rows("test"))
    # the sequence scale comes from the fold's train part (test drawings never normalise inputs)
    assert dm.seq_std != pytest.approx(plain.seq_std, abs=1e-9)
    # val share: the dataset's own (51 of 286 non-test drawings) unless given
    assert abs(len(rows["val"]) / (len(rows["val"]) + len(rows["train"])) - 51 / 286) < 0.02
    dm2 = SketchDataModule(fold={"k": 5, "index": 2, "val_share": 0.5})
    assert abs(len(dm2.rows("val")) - len(dm2.rows("train"))) <= 10


@pytest.mark.parametrize("fold, message", [
    ({"k": 1, "index": 0}, "data.fold.k=1"),
    ({"k": 5, "index": 5}, "data.fold.index=5"),
    ({"k": 5, "index": 0, "folds": 3}, "data.fold.folds: unknown key"),
    ({"k": "5", "index": 0}, "data.fold.k='5'"),
    ({"k": 5, "index": 0, "val_share": 1.5}, "data.fold.val_share=1.5"),
    ([5, 0], "data.fold must be a mapping"),
])
def test_bad_fold_is_one_error_naming_the_key(fold, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        check_fold(fold)


def test_fold_and_test_dir_are_refused_together(tmp_path):
    with pytest.raises(ValueError, match="data.fold and data.test_dir"):
        SketchDataModule(fold={"k": 2, "index": 0}, test_dir=str(tmp_path))


# ------------------------------------------------------------------------------- pooling, tables
def _fold(keys, labels, pred100, knn):
    return {"key_ids": np.asarray(keys, np.uint64), "labels": np.asarray(labels), "pred@100": np.asarray(pred100),
            "pred@50": np.asarray(labels), "knn@3": np.asarray(knn)}


def test_pool_folds_and_metrics_by_hand():
    f0 = _fold([1, 2, 3], [0, 1, 2], [0, 1, 0], [0, 0, 0])        # @100: 2 of 3; knn: 1 of 3
    f1 = _fold([4, 5], [1, 1], [1, 1], [1, 0])                     # @100: 2 of 2; knn: 1 of 2
    pooled = crossval.pool_folds([f0, f1])
    assert pooled["fold"].tolist() == [0, 0, 0, 1, 1]
    assert pooled["correct/acc@100"].tolist() == [True, True, False, True, True]
    m = crossval.cv_metrics(pooled)
    assert m["cv/n"] == 5 and m["cv/folds"] == 2
    assert m["cv/acc@100"] == pytest.approx(4 / 5) and m["cv/knn@3"] == pytest.approx(2 / 5)
    assert m["cv_fold/acc@100"] == pytest.approx([2 / 3, 1.0])
    assert m["intervals"]["cv/acc@100"]["ci95"] == pytest.approx(list(wilson(4, 5)))
    assert m["intervals"]["cv/knn@3"]["n"] == 5
    with pytest.raises(ValueError, match="tested in more than one fold"):
        crossval.pool_folds([f0, _fold([3], [2], [2], [2])])


def _cv_dir(d: Path, keys, labels, pred100) -> Path:
    d.mkdir(parents=True)
    half = len(keys) // 2
    folds = [_fold(keys[:half], labels[:half], pred100[:half], pred100[:half]),
             _fold(keys[half:], labels[half:], pred100[half:], pred100[half:])]
    pooled = crossval.pool_folds(folds)
    crossval.write_cv(d, pooled, crossval.cv_metrics(pooled), d.name)
    return d


def test_report_compares_two_cv_runs_with_mcnemar_paired_by_key_id(tmp_path, capsys):
    from sketchembed.cli import main

    rng = np.random.default_rng(0)
    keys = np.arange(100, 160)
    labels = rng.integers(0, 10, 60)
    good = labels.copy()
    bad = labels.copy()
    bad[:25] = (bad[:25] + 1) % 10                     # 25 drawings only run a gets right
    a = _cv_dir(tmp_path / "cv_a", keys, labels, good)
    order = rng.permutation(60)                        # run b tested the drawings in another order
    b = _cv_dir(tmp_path / "cv_b", keys[order], labels[order], bad[order])
    out = tmp_path / "cmp.md"
    assert main(["report", str(a), str(b), "--out", str(out)]) == 0
    expected = mcnemar(good == labels, bad == labels).p_value
    text = out.read_text()
    row_b = next(ln for ln in text.splitlines() if ln.startswith("| cv_b"))
    assert f"p = {expected:.3g} ▼ (McNemar exact)" in row_b
    assert "100.0 [94.0–100.0]" in text                 # pooled accuracy [Wilson over n = 60]
    assert "McNemar" in capsys.readouterr().out
    # other drawings (another cv.seed, another dataset): no pairing, Fisher on the counts
    c = _cv_dir(tmp_path / "cv_c", keys + 1000, labels, bad)
    assert main(["report", str(a), str(c), "--out", str(out)]) == 0
    assert "(Fisher exact)" in out.read_text()
    # a folder of CV runs (a multirun's jobs): each run found below it, once, the reference first
    assert main(["report", str(a), str(tmp_path), "--out", str(out)]) == 0
    rows = [ln for ln in out.read_text().splitlines() if ln.startswith("| cv_") or ln.startswith(f"| {tmp_path.name}")]
    assert [r.split(" |")[0] for r in rows] == ["| cv_a (ref)", f"| {tmp_path.name}/cv_b", f"| {tmp_path.name}/cv_c"]


def test_report_cv_errors_are_one_line(tmp_path, capsys):
    from sketchembed.cli import main

    keys, labels = np.arange(10), np.arange(10) % 3
    a = _cv_dir(tmp_path / "a", keys, labels, labels)
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "train_metrics.json").write_text(json.dumps({"test/acc@100": 0.5}))
    assert main(["report", str(a), str(plain)]) == 2
    assert "no CV run (no cv_metrics.json) in it" in capsys.readouterr().err
    b = _cv_dir(tmp_path / "b", keys, labels, labels)
    (b / crossval.CV_PREDICTIONS).write_bytes(b"garbage")
    assert main(["report", str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert "cv_predictions.npz: unreadable" in err and len(err.strip().splitlines()) == 1
    np.savez(b / crossval.CV_PREDICTIONS, key_ids=np.zeros(10, np.uint64), labels=labels, fold=labels)
    assert main(["report", str(a), str(b)]) == 2
    assert "a key_id appears twice" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ the driver
def test_cv_config_checks():
    cfg = OmegaConf.create({"cv": {"folds": None}, "train": True, "test": True})
    assert cv_folds(cfg) is None
    for bad in (1, "5", True):
        cfg.cv.folds = bad
        with pytest.raises(ConfigError, match="cv.folds="):
            cv_folds(cfg)
    cfg.cv.folds = 3
    for key, bad in (("seed", "a"), ("val_share", 1.0)):
        with pytest.raises(ConfigError, match=f"cv.{key}="):
            cv_folds(OmegaConf.merge(cfg, {"cv": {key: bad}}))
    cfg.resume = "outputs/x"
    with pytest.raises(ConfigError, match="cannot be combined with resume"):
        cv_folds(cfg)


def test_models_from_needs_a_finished_cv_with_the_same_folds(tmp_path):
    """cv.models_from tests an earlier CV's fold models: only with train=false, only when that run
    split the drawings the same way, and only a checkpoint inside that fold's own checkpoints/."""
    src = tmp_path / "cv"
    cfg = OmegaConf.create({"cv": {"folds": 2, "seed": 0, "models_from": str(src)}, "train": False, "test": True})
    with pytest.raises(ConfigError, match="no readable cv_metrics.json"):
        cv_folds(cfg)
    src.mkdir()
    (src / crossval.CV_METRICS).write_text(json.dumps({"cv/folds": 3, "cv/seed": 0}))
    with pytest.raises(ConfigError, match=r"folds/seed \(3, 0\) differ"):
        cv_folds(cfg)
    (src / crossval.CV_METRICS).write_text(json.dumps({"cv/folds": 2, "cv/seed": 0}))
    assert cv_folds(cfg) == 2
    with pytest.raises(ConfigError, match="needs train=false"):
        cv_folds(OmegaConf.merge(cfg, {"train": True}))
    fold = src / "fold_1"
    (fold / "checkpoints").mkdir(parents=True)
    outside = tmp_path / "elsewhere.ckpt"
    outside.write_bytes(b"x")
    (fold / "train_metrics.json").write_text(json.dumps({"best_checkpoint": str(outside)}))
    with pytest.raises(ConfigError, match="fold 1 has no best checkpoint"):   # a name only, looked up in fold_1/
        fold_model(src, 1)
    (fold / "checkpoints" / "elsewhere.ckpt").write_bytes(b"x")
    assert fold_model(src, 1) == fold / "checkpoints" / "elsewhere.ckpt"
    (fold / "train_metrics.json").write_text("[1]")
    with pytest.raises(ConfigError, match="unreadable"):
        fold_model(src, 1)


def test_bad_cv_value_through_the_entry_is_one_error_line(tmp_path, capsys):
    from sketchembed.train.run import train_entry, train_or_cv

    cfg = compose_cfg([*tiny("combined"), "cv.folds=1"], tmp_path)
    with pytest.raises(SystemExit) as e:
        train_entry("train", train_or_cv)(cfg)
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert e.value.code == 2 and len(errors) == 1 and "cv.folds=1: expected an integer >= 2" in errors[0]


def test_run_cv_pools_every_drawing_once(tmp_path):
    """The driver with a stand-in for training: each fold's config has its own fold, run dir and
    predictions callback; the pooled table covers all 337 drawings once."""
    cfg = compose_cfg([*tiny("combined"), "cv.folds=3", "logger=none"], tmp_path)
    seen = []

    def fake_train(fold_cfg):
        fold = OmegaConf.to_container(fold_cfg.data.fold)
        cb = fold_cfg.callbacks.test_predictions
        assert cb._target_.endswith("PerDrawingPredictions") and cb.dirpath == fold_cfg.paths.output_dir
        assert fold_cfg.trainer.default_root_dir == fold_cfg.paths.output_dir    # interpolations follow
        seen.append(fold)
        dm = SketchDataModule(fold=fold)
        ds = dm.dataset("test")
        pred = np.where(np.arange(len(ds)) % 2 == 0, ds.labels, (ds.labels + 1) % 10)
        Path(fold_cfg.paths.output_dir).mkdir(parents=True)
        np.savez(Path(fold_cfg.paths.output_dir) / PerDrawingPredictions.FILENAME, key_ids=ds.key_ids.astype(np.uint64),
                 labels=ds.labels, **{"pred@100": pred, "pred@50": ds.labels, "knn@3": ds.labels})
        return {}

    metrics = run_cv(cfg, fake_train)
    assert [f["index"] for f in seen] == [0, 1, 2] and {f["k"] for f in seen} == {3}
    assert metrics["cv/n"] == 337 and metrics["cv/acc@50"] == 1.0
    m, preds = crossval.load_cv(tmp_path)
    assert sorted(preds["key_ids"].tolist()) == sorted(np.asarray(open_embedded("study10").key_ids).tolist())
    assert m["cv/acc@100"] == pytest.approx(preds["correct/acc@100"].mean())
    assert "n = 337 drawings" in (tmp_path / crossval.CV_TABLE).read_text()


def test_fold_config_keeps_a_configured_predictions_callback(tmp_path):
    cfg = compose_cfg([*tiny("combined"), "cv.folds=2", "tta=scale_shift"], tmp_path)
    fold = fold_config(cfg, 2, 1, tmp_path / "fold_1")
    assert fold.callbacks.test_predictions.tta.views[0] == [1.0, 0, 0]      # TTA kept
    assert fold.callbacks.test_predictions.dirpath == str(tmp_path / "fold_1")
    assert fold.data.fold.index == 1 and fold.cv.folds is None


@pytest.mark.slow
def test_cv_end_to_end_two_tiny_folds(tmp_path):
    """A real 2-fold CV through train.py's entry: every drawing tested once, and each fold's pooled
    figures are the ones its own test logged (same model, same drawings)."""
    from sketchembed.train.run import train_entry, train_or_cv

    over = [o for o in tiny("combined") if not o.startswith("trainer.limit_test_batches")]
    cfg = compose_cfg([*over, "cv.folds=2", "callbacks.embedding_eval.max_train=1000"], tmp_path)
    train_entry("train", train_or_cv)(cfg)
    m, preds = crossval.load_cv(tmp_path)
    assert m["cv/n"] == 337 and len(np.unique(preds["key_ids"])) == 337
    for i in range(2):
        fold = json.loads((tmp_path / f"fold_{i}" / "train_metrics.json").read_text())
        assert m["cv_fold/acc@100"][i] == pytest.approx(fold["test/acc@100"], abs=1e-6)
        assert m["cv_fold/knn@3"][i] == pytest.approx(fold["test/knn@3"], abs=1e-6)
    # the same fold models tested again (cv.models_from, train=false): the same predictions, drawing by drawing
    again = tmp_path / "again"
    cfg = compose_cfg([*over, "cv.folds=2", "callbacks.embedding_eval.max_train=1000", "train=false",
                       f"cv.models_from={tmp_path}"], again)
    train_entry("train", train_or_cv)(cfg)
    m2, preds2 = crossval.load_cv(again)
    order, order2 = np.argsort(preds["key_ids"]), np.argsort(preds2["key_ids"])
    assert m2["cv/n"] == 337
    for key in ("correct/acc@100", "correct/acc@50", "correct/knn@3"):
        assert (preds[key][order] == preds2[key][order2]).all(), key


# --------------------------------------------------------------------------- test-time augmentation
class _Centroid(torch.nn.Module):
    """A stand-in model: embedding = the drawing's centroid, logits = a fixed linear map of it."""

    views = ("sequence",)

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(2, 10)

    def embed(self, batch):
        pts, n = batch["points"][..., :2], batch["lengths"]
        mask = (torch.arange(pts.shape[1])[None] < n[:, None]).float()[..., None]
        return (pts * mask).sum(1) / n[:, None]

    def logits(self, batch):
        return self.head(self.embed(batch))


def test_tta_views_are_checked_and_averaged():
    with pytest.raises(ValueError, match=r"tta.views\[1\]"):
        PointTTA([[1, 0, 0], [0, 1, 1]])
    with pytest.raises(ValueError, match=r"tta.views\[0\]"):
        PointTTA([[1, 0]])
    pts = np.array([[0, 0, 0], [256, 128, 1]], np.float32)
    moved = PointTTA(canvas=256).transform((0.5, 10, -4))(pts)
    assert moved[:, :2].tolist() == [[74.0, 60.0], [202.0, 124.0]] and moved[:, 2].tolist() == [0, 1]
    dm = SketchDataModule(views=("sequence",), max_eval=20)
    model = _Centroid()
    plain = embed_split(model, dm, "test")
    same = embed_split(model, dm, "test", tta=PointTTA([[1, 0, 0]]))
    assert np.allclose(plain.embeddings, same.embeddings) and np.allclose(plain.logits, same.logits)
    shifted = embed_split(model, dm, "test", tta=PointTTA([[1, 0, 0], [1, 20, 0]]))
    assert np.allclose(shifted.embeddings, plain.embeddings + [10, 0], atol=1e-4)   # the mean of both views
    preds = split_predictions(model, dm, "test", k=3)
    assert set(preds) == {"key_ids", "labels", "pred@100", "pred@50", "knn@3"}
    assert np.array_equal(preds["pred@100"], plain.logits.argmax(1))


# ------------------------------------------------------------------------------- weight averaging
def test_ema_is_a_config_switch_after_the_eval_callbacks(tmp_path):
    cfg = compose_cfg([*tiny("combined"), "averaging=ema"], tmp_path)
    names = list(cfg.callbacks)
    assert cfg.callbacks.weight_averaging._target_.endswith("BatchNormEMA")
    # the validation's embedding eval must run while the averaged weights are swapped in
    assert names.index("weight_averaging") > names.index("embedding_eval")


class _BNNet(torch.nn.Module):
    """A stand-in LightningModule: embed = BatchNorm over a batch's points' first feature row."""

    def __init__(self):
        super().__init__()
        self.bn = torch.nn.BatchNorm1d(3, momentum=0.1)
        self.device = torch.device("cpu")

    def embed(self, batch):
        return self.bn(batch["x"])


def test_ema_recomputes_batchnorm_for_the_averaged_weights():
    """The averaged weights get BatchNorm statistics of their own: the plain mean over at most
    bn_batches training batches (not an average of other weights' statistics); momentum and mode
    are restored, and a model without BatchNorm is left alone."""
    from types import SimpleNamespace

    from sketchembed.train.callbacks import BatchNormEMA

    gen = torch.Generator().manual_seed(0)
    batches = [{"x": torch.randn(8, 3, generator=gen) * (i + 1) + i} for i in range(5)]
    seen = []

    class DM:
        def train_dataloader(self):
            return iter(batches)

        def on_after_batch_transfer(self, batch, idx):
            seen.append(batch)
            return batch

    net = _BNNet().eval()
    net.bn.running_mean.fill_(100.0)
    cb = BatchNormEMA(decay=0.9, bn_batches=3)
    cb.recompute_batchnorm(SimpleNamespace(datamodule=DM()), net)
    x = torch.cat([b["x"] for b in batches[:3]])
    means = torch.stack([b["x"].mean(0) for b in batches[:3]]).mean(0)
    assert len(seen) == 3 and torch.allclose(net.bn.running_mean, means, atol=1e-6)
    assert not torch.allclose(net.bn.running_mean, x.mean(0) * 0 + 100.0)
    assert net.bn.momentum == 0.1 and not net.training
    plain = torch.nn.Linear(3, 3)
    plain.device = torch.device("cpu")
    seen.clear()
    cb.recompute_batchnorm(SimpleNamespace(datamodule=DM()), plain)
    assert seen == []
    for bad in ({"use_buffers": True}, {"bn_batches": 0}, {"bn_batches": True}):
        with pytest.raises(ValueError, match="callbacks.weight_averaging"):
            BatchNormEMA(**bad)


@pytest.mark.slow
def test_ema_checkpoint_holds_the_average_and_eval_opens_it(tmp_path):
    from sketchembed.models.checkpoint import open_checkpoint
    from sketchembed.train.run import train, train_entry

    cfg = compose_cfg([*tiny("combined"), "averaging=ema",
                       "trainer.max_steps=3", "trainer.limit_train_batches=3"], tmp_path)
    train_entry("train", train)(cfg)
    best = next(p for p in (tmp_path / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt")
    ckpt = load_ckpt(best)
    assert "current_model_state" in ckpt
    key = next(k for k in ckpt["state_dict"] if k.endswith("weight") and ckpt["state_dict"][k].is_floating_point())
    assert not torch.equal(ckpt["state_dict"][key], ckpt["current_model_state"][key])
    model = open_checkpoint(best).model
    assert torch.equal(model.state_dict()[key], ckpt["state_dict"][key])
    # continuing the run restores both the trained and the averaged weights (Lightning's callback state)
    more = compose_cfg([*tiny("combined"), "averaging=ema", "trainer.max_steps=6", "trainer.max_epochs=2",
                        "trainer.limit_train_batches=3", f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}"],
                       tmp_path / "more")
    train_entry("train", train)(more)
    last = load_ckpt(tmp_path / "more" / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 6 and "current_model_state" in last


@pytest.mark.slow
def test_tta_in_the_training_test_logs_its_figures_with_intervals(tmp_path):
    from sketchembed.train.run import train, train_entry

    cfg = compose_cfg([*tiny("combined"), "tta=scale_shift"], tmp_path)
    train_entry("train", train)(cfg)
    m = json.loads((tmp_path / "train_metrics.json").read_text())
    with np.load(tmp_path / PerDrawingPredictions.FILENAME) as z:
        n = len(z["labels"])
        assert m["test_tta/acc@100"] == pytest.approx(float((z["pred@100"] == z["labels"]).mean()), abs=1e-6)
    assert n == 51 and m["test_tta/n"] == 51 and m["intervals"]["test_tta/acc@100"]["n"] == 51
    assert "test_tta/knn@3" in m and "test_tta/acc@50" in m
