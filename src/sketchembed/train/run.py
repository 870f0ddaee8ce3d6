"""Training entry point: composes data, model, loss, miner, trainer, logger and callbacks from Hydra
configs (`conf/`), validates the combination before anything heavy is built, trains, tests with the
best checkpoint and prints the study-style table."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import lightning as L
import wandb
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from sketchembed.entry import conf_dir, end_line, hydra_choices, hydra_config, hydra_entry
from sketchembed.eval.report import metrics_table, run_facts
from sketchembed.eval.stats import split_n, with_intervals
from sketchembed.messages import ConfigError
from sketchembed.models import check_compatible
from sketchembed.nets.backbone import check_backbone
from sketchembed.registry import LOSSES, MODELS, TRIPLET, loss_kind
from sketchembed.train.compat import resume_after_whole_epochs
from sketchembed.train.console import is_tty
from sketchembed.train.cv import cv_folds, run_cv
from sketchembed.train.ranks import RankFailureReport, report_other_rank
from sketchembed.train.resume import (
    LAST,
    check_checkpoint_fits,
    continue_wandb_run,
    keep_config_unless_resumed,
    read_resumed,
    resume_argv,
)
from sketchembed.train.search import check_optimized_metric, optimized_value, resolve_metric
from sketchembed.train.validate import check_config
from sketchembed.wandb_run import WandbLogger, naming

__all__ = ["ConfigError", "conf_dir", "main", "train", "train_entry", "train_or_cv", "validate"]

log = logging.getLogger("sketchembed.train")


def _has_target(node: Any) -> bool:
    return isinstance(node, DictConfig) and "_target_" in node


def _get_class(cfg: DictConfig, key: str):
    target = OmegaConf.select(cfg, f"{key}._target_")
    if target is None:
        raise ConfigError(f"{key}: no _target_ given")
    try:
        return get_class(target)
    except Exception as e:  # unknown class path in a config
        raise ConfigError(f"{key}._target_={target!r} cannot be imported ({e.__class__.__name__})") from None


def validate(cfg: DictConfig) -> dict[str, Any]:
    """Checks that need no weights or data: value types and keys, the model/loss pairing, the backbone
    name, image size, the model's own argument checks."""
    check_config(cfg)
    choices = hydra_choices()
    model_cls = _get_class(cfg, "model")
    loss_cls = _get_class(cfg, "loss")
    model_choice = choices.get("model", MODELS.name_of(model_cls))  # model=… (a config name)
    loss_name = choices.get("loss", LOSSES.name_of(loss_cls))
    check_compatible(model_choice, loss_kind(loss_cls), loss_name=loss_name, model_cls=model_cls)
    has_cnn = "image" in model_cls.VIEWS or "snapshots" in model_cls.VIEWS
    if has_cnn and OmegaConf.select(cfg, "model.backbone") is not None:  # a model without one may draw images
        check_backbone(OmegaConf.select(cfg, "model.backbone"), int(cfg.data.image_size))
    model_cls.check_args({str(k): OmegaConf.select(cfg.model, str(k), throw_on_missing=False) for k in cfg.model})
    if loss_kind(loss_cls) == TRIPLET:
        _check_pk_batches(cfg, loss_name)
    _check_launch(cfg)
    return {"model_cls": model_cls, "loss_cls": loss_cls, "model_choice": model_choice,
            "loss_name": loss_name, "loss_kind": loss_kind(loss_cls)}


def _check_pk_batches(cfg: DictConfig, loss_name: str) -> None:
    """A triplet needs two drawings of a class and one of another in the batch: P x K batches
    (``data.sampler=pk``) of one class, or of one drawing per class, hold none, and the run would
    train nothing (loss 0) while exiting as if it had."""
    if OmegaConf.select(cfg, "data.sampler") != "pk":
        return
    for key, what in (("data.pk_p", "classes"), ("data.pk_k", "drawings of each class")):
        value = OmegaConf.select(cfg, key)
        if isinstance(value, int) and value < 2:
            raise ConfigError(f"{key}={value}: loss={loss_name} learns from triplets, which need at least 2 "
                              f"{what} in each batch (data.sampler=pk): set {key} >= 2")


def _check_launch(cfg: DictConfig) -> None:
    """A local multirun cannot host a DDP run that relaunches the script for its other ranks
    (Lightning would re-run the whole sweep command in each child)."""
    hc = hydra_config()
    if hc is None:
        return
    devices = OmegaConf.select(cfg, "trainer.devices")
    strategy = str(OmegaConf.select(cfg, "trainer.strategy") or "auto")
    launcher = str(OmegaConf.select(hc, "launcher._target_") or "")
    several = devices not in (1, "1", None) or int(OmegaConf.select(cfg, "trainer.num_nodes") or 1) > 1
    if (hc.mode == RunMode.MULTIRUN and several and strategy.startswith("ddp") and "spawn" not in strategy
            and launcher.endswith("BasicLauncher") and "LOCAL_RANK" not in os.environ):
        raise ConfigError(f"trainer.strategy={strategy} with trainer.devices={devices} cannot run inside a "
                          "local multirun (-m): start each run on its own, or use hydra/launcher=slurm")


def _instantiate_model(cfg: DictConfig, num_classes: int, loss_kind: str | None, resumed=None):
    """The model with its loss and (triplet-kind losses) miner injected, built here from the user's
    own config (the model records them by registered name; models instantiate nothing)."""
    parts = {"loss": instantiate(cfg.loss, _convert_="all") if _has_target(cfg.get("loss")) else None,
             "miner": None}
    if loss_kind == TRIPLET and _has_target(cfg.get("miner")):
        parts["miner"] = instantiate(cfg.miner, _convert_="all")
    # The user's config is resolved and its class looked up; what comes from a checkpoint
    # (_transferred_before) is passed as plain Python values, never through Hydra's resolution.
    args = OmegaConf.to_container(cfg.model, resolve=True)
    model_cls = get_class(args.pop("_target_"))
    return model_cls(**{**args, "num_classes": num_classes, **parts, **_transferred_before(cfg, resumed)})


def _transferred_before(cfg: DictConfig, resumed) -> dict:
    """Continuing (or testing) a checkpoint whose CNN was transferred: ``model.cnn_ckpt`` is not read.

    The checkpoint's weights replace the CNN anyway, so the source file need not exist any more (nor
    be found from another working directory); what the transfer set besides the weights (the
    source's ``normalize``, the record of the source) comes from the checkpoint's hyperparameters."""
    hp = resumed.record.args if resumed is not None else {}  # the read checkpoint's record
    source = hp.get("cnn_ckpt_source")
    if not source or OmegaConf.select(cfg, "model.cnn_ckpt", throw_on_missing=False) is None:
        return {}
    log.info("model.cnn_ckpt: not read, the CNN comes from ckpt_path=%s (transferred from %s)", cfg.ckpt_path, source)
    return {"cnn_ckpt": None, "cnn_ckpt_source": str(source), "normalize": bool(hp.get("normalize", False))}


def _callbacks(cfg: DictConfig, monitor: str) -> list:
    """The configured callbacks, adapted to the run: no checkpoints in a fast_dev_run, no learning-rate
    monitor without a logger, plain epoch lines instead of the Rich bar when stdout is no terminal."""
    fast_dev_run = bool(OmegaConf.select(cfg, "trainer.fast_dev_run", default=False))
    has_logger = any(_has_target(n) for n in (cfg.get("logger") or {}).values())
    bar_on = bool(OmegaConf.select(cfg, "trainer.enable_progress_bar", default=True))
    callbacks = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if not _has_target(node):
            continue
        cls = _get_class(cfg, f"callbacks.{name}")  # picked by class, whatever its name ends with
        if issubclass(cls, ModelCheckpoint):  # Lightning's and our LastCheckpoint
            if fast_dev_run:  # a smoke test must not leave a model-sized last.ckpt behind
                continue
            # "auto" = the model's own metric; an explicit `monitor: null` keeps Lightning's meaning
            # (no metric: the latest checkpoints, e.g. every_n_train_steps snapshots).
            if node.get("monitor") == "auto":
                node = OmegaConf.merge(node, {"monitor": monitor})
        if issubclass(cls, LearningRateMonitor) and not has_logger:
            continue  # Lightning refuses it without a logger (logger=none, debug=*)
        if bar_on and not is_tty() and issubclass(cls, RichProgressBar):
            node = OmegaConf.create({"_target_": "sketchembed.train.console.EpochLineProgress"})
        callbacks.append(instantiate(node))
    return callbacks


def _loggers(cfg: DictConfig) -> list:
    """The configured loggers (none for logger=none); wandb runs get their name and group here."""
    hydra_cfg = hydra_config()
    loggers = []
    for _, node in (cfg.get("logger") or {}).items():
        if _has_target(node):
            lg = instantiate(node)
            if isinstance(lg, WandbLogger):
                lg.set_naming(**naming(cfg, hydra_cfg))
            loggers.append(lg)
    return loggers


def _scalar_metrics(metrics: dict) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            continue
    return out


def print_table(metrics: dict[str, float], title: str) -> None:
    """The study's figures first (accuracy at 50 % and 100 % of the drawing), then the rest."""
    n = split_n(metrics, "test")
    Console().print(metrics_table(dict(sorted(metrics.items())), f"{title}, n = {n if n else '?'} drawings",
                                  first=("acc@50", "acc@100", "knn@3", "knn@4", "probe_acc", "triplet_acc")))


def train(cfg: DictConfig) -> dict[str, float]:
    """Train (and test) from a composed config; returns the final metrics."""
    checked = validate(cfg)
    model_cls = checked["model_cls"]
    L.seed_everything(int(cfg.seed), workers=True)

    augment = instantiate(cfg.augment) if _has_target(cfg.get("augment")) else None
    datamodule = instantiate(cfg.data, augment=augment, views=sorted(model_cls.VIEWS),
                             _convert_="all")
    # read safely (once) and matched to the config before Lightning opens it
    resumed = read_resumed(cfg.ckpt_path) if cfg.get("ckpt_path") else None
    model = _instantiate_model(cfg, datamodule.num_classes, checked["loss_kind"], resumed)
    if resumed is not None:
        check_checkpoint_fits(cfg.ckpt_path, model, checked["model_choice"], resumed)
    start_step = None if resumed is None else int(resumed.raw.get("global_step", 0))
    del resumed
    if hasattr(model, "check_transfer_inputs"):  # a transferred CNN sees drawings as it was trained to
        model.check_transfer_inputs(datamodule.inputs)

    monitor = resolve_metric(cfg, model_cls)
    callbacks = _callbacks(cfg, monitor)
    callbacks.append(RankFailureReport(cfg.paths.output_dir))  # DDP: the failing rank's own error
    continue_wandb_run(cfg)
    loggers = _loggers(cfg)
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    resume_after_whole_epochs(trainer)

    hparams = OmegaConf.to_container(cfg, resolve=True)
    hparams["choices"] = hydra_choices()
    for lg in loggers:
        lg.log_hyperparams(hparams)

    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, float] = {}
    trained = False
    if cfg.get("train", True):
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
        trained = trainer.global_step != start_step
        if not trained:
            log.warning(_nothing_to_continue(cfg, trainer))
        metrics.update(_scalar_metrics(trainer.callback_metrics))
        ckpt_cb = trainer.checkpoint_callback
        if ckpt_cb is not None and ckpt_cb.monitor == monitor and ckpt_cb.best_model_score is not None:
            # the value the best checkpoint holds (what `test` evaluates and a sweep should optimize)
            metrics[f"best/{monitor}"] = float(ckpt_cb.best_model_score)
    if cfg.get("test", True):
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") if cfg.get("train", True) else ""
        ckpt = best or (None if cfg.get("train", True) else cfg.get("ckpt_path"))
        trainer.test(model, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
        metrics.update(_scalar_metrics(trainer.callback_metrics))
        metrics["best_checkpoint"] = ckpt or ""
    if trainer.is_global_zero:
        kind = model_cls.MODEL_KIND or checked["model_choice"]
        earlier = _earlier_metrics(out_dir / "train_metrics.json", trained) if cfg.get("resume") else {}
        saved = with_intervals({**earlier, **metrics, **run_facts(hparams, hparams["choices"], kind)})
        (out_dir / "train_metrics.json").write_text(json.dumps(saved, indent=2, sort_keys=True))
        if cfg.get("test", True):
            print_table({k: v for k, v in metrics.items() if isinstance(v, float)},
                        f"{checked['model_choice']} on {Path(str(cfg.data.root)).name} (test split)")
        best = metrics.get("best_checkpoint") or getattr(trainer.checkpoint_callback, "best_model_path", "")
        print(end_line(out_dir, [("best checkpoint", [best]), ("last", [out_dir / LAST]),
                                 ("metrics", [out_dir / "train_metrics.json"])]), flush=True)
    for lg in loggers:
        if isinstance(lg, L.pytorch.loggers.WandbLogger):
            wandb.finish()
    return metrics


def train_or_cv(cfg: DictConfig) -> dict:
    """``cv.folds=K``: K-fold cross-validation of this config (train/cv.py); else one run."""
    return run_cv(cfg, train) if cv_folds(cfg) else train(cfg)


def _nothing_to_continue(cfg: DictConfig, trainer) -> str:
    what = f"resume={cfg.resume}" if cfg.get("resume") else f"ckpt_path={cfg.ckpt_path}"
    return (f"{what}: nothing to continue, the run is complete (epoch {trainer.current_epoch}, step "
            f"{trainer.global_step}; trainer.max_epochs={trainer.max_epochs}, trainer.max_steps={trainer.max_steps}): "
            "raise one of them to train longer")


def _earlier_metrics(path: Path, trained: bool) -> dict:
    """What the run recorded before this continuation (its intervals are recomputed with the new
    values); a continuation that logs a metric again replaces it, the others stay — except, once it
    trained further, the test of a best checkpoint that may no longer be the run's."""
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(earlier, dict):
        return {}
    stale = ("test/", "best_checkpoint") if trained else ()
    return {k: v for k, v in earlier.items() if k != "intervals" and not k.startswith(stale)}


def train_entry(config_name: str, fn):
    """The Hydra entry (sketchembed.entry) with training's hooks: the optimized metric checked before
    the run and returned to a sweeper after it; a DDP rank's failure reported by that rank."""
    return hydra_entry(config_name, fn, check=check_optimized_metric, result=optimized_value,
                       on_error=report_other_rank)


def main() -> None:
    try:  # `resume=<run dir>`: that run's overrides, run dir and last checkpoint, before Hydra starts
        sys.argv = resume_argv(sys.argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    with keep_config_unless_resumed(sys.argv):
        train_entry("train", train_or_cv)()


if __name__ == "__main__":
    main()
