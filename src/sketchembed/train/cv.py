"""K-fold cross-validation: ``python train.py cv.folds=K [overrides]``.

On a small dataset one test split is a noisy judge (51 drawings: one drawing moves an accuracy by two
points). CV trains K runs in this process, one after another, each with the DataModule's
``data.fold = {k: K, index: i, seed: cv.seed, val_share: cv.val_share}``: fold i of ALL the
dataset's drawings is its test part, its val part (checkpoint selection) comes from the other folds,
stratified by class and fixed by the key_id hash (``data.datamodule.fold_splits``). Each fold run
lives in ``<run dir>/fold_<i>/`` (train_metrics.json, checkpoints, and the per-drawing
``test_predictions.npz`` of :class:`~sketchembed.train.callbacks.PerDrawingPredictions`); the run dir gets
the pooled table over every drawing (``sketchembed.eval.crossval``: cv_metrics.json, cv.md,
cv_predictions.npz), which ``sketchembed report CV_DIR CV_DIR`` compares pairwise.

``cv.models_from=CV_DIR train=false`` trains nothing: fold i tests CV_DIR's fold-i model (its best
checkpoint) under this config, e.g. with ``tta=scale_shift``, so a test-time choice is judged on the
very models it would change, paired drawing by drawing with CV_DIR's own table.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from sketchembed.entry import hydra_choices
from sketchembed.eval.crossval import CV_METRICS, cv_metrics, pool_folds, print_cv, write_cv
from sketchembed.messages import ConfigError
from sketchembed.train.callbacks import PerDrawingPredictions

log = logging.getLogger("sketchembed.train")

_PREDICTIONS_TARGET = f"{PerDrawingPredictions.__module__}.{PerDrawingPredictions.__qualname__}"


def cv_folds(cfg: DictConfig) -> int | None:
    """``cv.folds`` checked: None (no CV) or an integer >= 2; a ConfigError naming the key otherwise."""
    folds = OmegaConf.select(cfg, "cv.folds", default=None)
    if folds is None:
        return None
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ConfigError(f"cv.folds={folds!r}: expected an integer >= 2 (or null: no cross-validation)")
    for key, why in (("resume", "a CV run is not resumable fold by fold"),
                     ("ckpt_path", "each fold trains its own model"),
                     ("data.test_dir", "a fold's test part is one fold of the dataset's own drawings"),
                     ("data.fold", "cv.folds sets it per fold")):
        if OmegaConf.select(cfg, key, default=None) is not None:
            raise ConfigError(f"cv.folds={folds} cannot be combined with {key} ({why})")
    seed, share = OmegaConf.select(cfg, "cv.seed", default=0), OmegaConf.select(cfg, "cv.val_share", default=None)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"cv.seed={seed!r}: expected an integer (the fold assignment's key_id hash seed)")
    if share is not None and (isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share < 1):
        raise ConfigError(f"cv.val_share={share!r}: expected a number in (0, 1), or null (the dataset's own share)")
    models_from = OmegaConf.select(cfg, "cv.models_from", default=None)
    if models_from is None and (not cfg.get("train", True) or not cfg.get("test", True)):
        raise ConfigError(f"cv.folds={folds} needs train=true and test=true (each fold trains, then tests)")
    if models_from is not None:
        if cfg.get("train", True) or not cfg.get("test", True):
            raise ConfigError(f"cv.models_from={models_from}: needs train=false and test=true (each fold tests "
                              "that run's model)")
        _check_models_from(Path(str(models_from)), folds, seed)
    return folds


def _check_models_from(src: Path, folds: int, seed: int) -> None:
    """The earlier CV run must have split the drawings the same way, or a fold's model has seen its test."""
    try:
        theirs = json.loads((src / CV_METRICS).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cv.models_from={src}: no readable {CV_METRICS} ({type(e).__name__}); "
                          "give a finished CV run dir") from None
    if not isinstance(theirs, dict) or theirs.get("cv/folds") != folds or theirs.get("cv/seed") != seed:
        got = (theirs.get("cv/folds"), theirs.get("cv/seed")) if isinstance(theirs, dict) else "?"
        raise ConfigError(f"cv.models_from={src}: its folds/seed {got} differ from cv.folds={folds}, cv.seed={seed} "
                          "(each fold's model must not have seen that fold's test drawings)")


def fold_model(src: Path, index: int) -> Path:
    """Fold ``index``'s best checkpoint in CV run ``src``: the file name its train_metrics.json gives,
    looked up in that fold's own checkpoints/ (a name only: the file cannot point elsewhere)."""
    fold_dir = src / f"fold_{index}"
    try:
        best = json.loads((fold_dir / "train_metrics.json").read_text()).get("best_checkpoint")
    except (OSError, ValueError, AttributeError) as e:
        raise ConfigError(f"cv.models_from={src}: {fold_dir}/train_metrics.json unreadable ({type(e).__name__})") \
            from None
    path = fold_dir / "checkpoints" / Path(str(best or "")).name
    if not best or not path.is_file():
        raise ConfigError(f"cv.models_from={src}: fold {index} has no best checkpoint ({path} missing)")
    return path


def fold_config(cfg: DictConfig, k: int, index: int, out_dir: Path) -> DictConfig:
    """The config of fold ``index``: its data.fold, its own run dir, per-drawing test predictions on."""
    fold = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with open_dict(fold):
        fold.cv.folds = None
        fold.data.fold = {"k": k, "index": index, "seed": int(cfg.cv.seed), "val_share": cfg.cv.val_share}
        fold.paths.output_dir = str(out_dir)
        if fold.get("callbacks") is None:
            fold.callbacks = {}
        node = fold.callbacks.get("test_predictions")
        if not (isinstance(node, DictConfig) and node.get("_target_") == _PREDICTIONS_TARGET):
            fold.callbacks.test_predictions = {"_target_": _PREDICTIONS_TARGET}
        fold.callbacks.test_predictions.dirpath = str(out_dir)
        models_from = OmegaConf.select(cfg, "cv.models_from", default=None)
        if models_from is not None:
            fold.ckpt_path = str(fold_model(Path(str(models_from)), index))
    return fold


def run_cv(cfg: DictConfig, train_fn: Callable[[DictConfig], dict]) -> dict:
    """Train and test every fold with ``train_fn`` (train.py's ``train``), then pool and write the
    table; returns the pooled metrics (``cv/acc@100`` …)."""
    k = cv_folds(cfg)
    out_dir = Path(cfg.paths.output_dir)
    folds = []
    for i in range(k):
        fold_dir = out_dir / f"fold_{i}"
        log.info("cross-validation: fold %d of %d -> %s", i + 1, k, fold_dir)
        train_fn(fold_config(cfg, k, i, fold_dir))
        pred_file = fold_dir / PerDrawingPredictions.FILENAME
        if not pred_file.is_file():
            raise RuntimeError(f"fold {i}: {pred_file} was not written (the fold's test did not run)")
        with np.load(pred_file, allow_pickle=False) as z:
            folds.append({name: z[name] for name in z.files})
    pooled = pool_folds(folds)
    model = hydra_choices().get("model") or OmegaConf.select(cfg, "model._target_", default="?").rsplit(".", 1)[-1]
    title = f"{model} on {Path(str(cfg.data.root)).name}"
    metrics = cv_metrics(pooled, {"seed": cfg.get("seed"), "dataset": str(cfg.data.root), "cv/seed": int(cfg.cv.seed)})
    write_cv(out_dir, pooled, metrics, title)
    print_cv(metrics, title)
    return metrics
