"""Training entry point: composes data, model, loss, miner, trainer, logger and callbacks from Hydra
configs (`conf/`), validates the combination before anything heavy is built, trains, tests with the
best checkpoint and prints the study-style table."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sketchembed.train.ranks import RankFailureReport, report_other_rank
from sketchembed.train.resume import check_checkpoint_fits, continue_wandb_run, resume_argv
from sketchembed.train.validate import ConfigError, check_config

log = logging.getLogger("sketchembed.train")


def _choices() -> dict[str, str]:
    """The option picked in each config group (model=…, loss=…), for error messages and run names."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return {k: str(v) for k, v in HydraConfig.get().runtime.choices.items() if v is not None}
    except Exception:  # outside a Hydra app (tests composing configs by hand)
        return {}


def _has_target(node: Any) -> bool:
    return isinstance(node, DictConfig) and "_target_" in node


def _get_class(cfg: DictConfig, key: str):
    from hydra.utils import get_class

    target = OmegaConf.select(cfg, f"{key}._target_")
    if target is None:
        raise ConfigError(f"{key}: no _target_ given")
    try:
        return get_class(target)
    except Exception as e:  # unknown class path in a config
        raise ConfigError(f"{key}._target_={target!r} cannot be imported ({e.__class__.__name__})") from None


def validate(cfg: DictConfig) -> dict[str, Any]:
    """Checks that need no weights or data: value types and keys, the model/loss pairing, the backbone
    name, image size."""
    from sketchembed.models import check_compatible
    from sketchembed.nets.backbone import check_backbone
    from sketchembed.registry import LOSSES, MODELS, loss_kind

    check_config(cfg)
    choices = _choices()
    model_cls = _get_class(cfg, "model")
    loss_cls = _get_class(cfg, "loss")
    model_name = choices.get("model", MODELS.name_of(model_cls))
    loss_name = choices.get("loss", LOSSES.name_of(loss_cls))
    check_compatible(model_name, loss_kind(loss_cls), loss_name=loss_name, model_cls=model_cls)
    has_cnn = "image" in model_cls.VIEWS or "snapshots" in model_cls.VIEWS
    if has_cnn and OmegaConf.select(cfg, "model.backbone") is not None:  # a model without one may draw images
        check_backbone(OmegaConf.select(cfg, "model.backbone"), int(cfg.data.image_size))
    # `cnn_ckpt: ???` merged over combined's `cnn_ckpt: null` stays null (OmegaConf keeps a value
    # when merging MISSING onto it): the explicit model.transfer says the CNN must be transferred.
    if OmegaConf.select(cfg, "model.transfer") and OmegaConf.select(cfg, "model.cnn_ckpt") is None:
        raise ConfigError("model.cnn_ckpt is required for a transfer run (model.transfer=true, set by "
                          "model=combined_transfer): model.cnn_ckpt=PATH of a triplet/direct checkpoint")
    _check_launch(cfg)
    return {"model_cls": model_cls, "loss_cls": loss_cls, "model_name": model_name,
            "loss_name": loss_name, "loss_kind": loss_kind(loss_cls)}


def _check_launch(cfg: DictConfig) -> None:
    """A local multirun cannot host a DDP run that relaunches the script for its other ranks
    (Lightning would re-run the whole sweep command in each child)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except Exception:
        return
    devices = OmegaConf.select(cfg, "trainer.devices")
    strategy = str(OmegaConf.select(cfg, "trainer.strategy") or "auto")
    launcher = str(OmegaConf.select(hc, "launcher._target_") or "")
    several = devices not in (1, "1", None) or int(OmegaConf.select(cfg, "trainer.num_nodes") or 1) > 1
    if (hc.mode == RunMode.MULTIRUN and several and strategy.startswith("ddp") and "spawn" not in strategy
            and launcher.endswith("BasicLauncher") and "LOCAL_RANK" not in os.environ):
        raise ConfigError(f"trainer.strategy={strategy} with trainer.devices={devices} cannot run inside a "
                          "local multirun (-m): start each run on its own, or use hydra/launcher=slurm")


def _instantiate_model(cfg: DictConfig, num_classes: int, loss_kind: str | None):
    """The model with its loss and (triplet-kind losses) miner configs injected; the model builds
    them and keeps the configs as the record of what it trained with."""
    from hydra.utils import instantiate

    from sketchembed.registry import TRIPLET

    parts = {"loss": OmegaConf.to_container(cfg.loss, resolve=True), "miner": None}
    if loss_kind == TRIPLET and _has_target(cfg.get("miner")):
        parts["miner"] = OmegaConf.to_container(cfg.miner, resolve=True)
    return instantiate(cfg.model, num_classes=num_classes, **parts, _recursive_=False, _convert_="all")


def _callbacks(cfg: DictConfig, monitor: str) -> list:
    """The configured callbacks, adapted to the run: no checkpoints in a fast_dev_run, no learning-rate
    monitor without a logger, plain epoch lines instead of the Rich bar when stdout is no terminal."""
    from hydra.utils import instantiate

    from sketchembed.train.console import is_tty

    fast_dev_run = bool(OmegaConf.select(cfg, "trainer.fast_dev_run", default=False))
    has_logger = any(_has_target(n) for n in (cfg.get("logger") or {}).values())
    bar_on = bool(OmegaConf.select(cfg, "trainer.enable_progress_bar", default=True))
    callbacks = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if not _has_target(node):
            continue
        target = str(node._target_)
        if target.endswith("Checkpoint"):  # ModelCheckpoint and our LastCheckpoint
            if fast_dev_run:  # a smoke test must not leave a model-sized last.ckpt behind
                continue
            # "auto" = the model's own metric; an explicit `monitor: null` keeps Lightning's meaning
            # (no metric: the latest checkpoints, e.g. every_n_train_steps snapshots).
            if node.get("monitor") == "auto":
                node = OmegaConf.merge(node, {"monitor": monitor})
        if target.endswith("LearningRateMonitor") and not has_logger:
            continue  # Lightning refuses it without a logger (logger=none, debug=*)
        if target.endswith("RichProgressBar") and bar_on and not is_tty():
            node = OmegaConf.create({"_target_": "sketchembed.train.console.EpochLineProgress"})
        callbacks.append(instantiate(node))
    return callbacks


def _loggers(cfg: DictConfig) -> list:
    """The configured loggers (none for logger=none); wandb runs get their name and group here."""
    from hydra.utils import instantiate

    from sketchembed.train.wandb_run import WandbLogger, naming

    hydra_cfg = None
    try:
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.get()
    except Exception:  # outside a Hydra app
        pass
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
    """The study's table (accuracy at 50 % and 100 % of the drawing) for this run."""
    from rich.console import Console
    from rich.table import Table

    from sketchembed.eval.stats import ci_text, interval, split_n

    n = split_n(metrics, "test")
    table = Table(title=f"{title}, n = {n if n else '?'} drawings")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("95 % interval (Wilson)", justify="right")
    order = ["test/acc@50", "test/acc@100", "test/knn@3", "test/knn@4", "test/probe_acc",
             "test/triplet_acc"]
    keys = [k for k in order if k in metrics] + sorted(
        k for k in metrics if k.startswith("test/") and k not in order and k != "test/n")
    for k in keys:
        v = metrics[k]
        ci = interval(metrics, k)
        table.add_row(k, f"{100 * v:.1f} %" if ("acc" in k or "knn" in k) else f"{v:.4f}",
                      ci_text(ci, " %") if ci else "")
    Console().print(table)


def train(cfg: DictConfig) -> dict[str, float]:
    """Train (and test) from a composed config; returns the final metrics."""
    import lightning as L
    from hydra.utils import instantiate

    checked = validate(cfg)
    model_cls = checked["model_cls"]
    L.seed_everything(int(cfg.seed), workers=True)

    augment = instantiate(cfg.augment) if _has_target(cfg.get("augment")) else None
    datamodule = instantiate(cfg.data, augment=augment, views=sorted(model_cls.VIEWS),
                             _convert_="all")
    model = _instantiate_model(cfg, datamodule.num_classes, checked["loss_kind"])
    if cfg.get("ckpt_path"):  # read safely and matched to the config before Lightning opens it
        check_checkpoint_fits(cfg.ckpt_path, model, checked["model_name"])

    monitor = cfg.get("optimized_metric") or "auto"
    if monitor == "auto":
        monitor = model_cls.MONITOR
    callbacks = _callbacks(cfg, monitor)
    callbacks.append(RankFailureReport(cfg.paths.output_dir))  # DDP: the failing rank's own error
    continue_wandb_run(cfg)
    loggers = _loggers(cfg)
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    hparams = OmegaConf.to_container(cfg, resolve=True)
    hparams["choices"] = _choices()
    for lg in loggers:
        lg.log_hyperparams(hparams)

    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, float] = {}
    if cfg.get("train", True):
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
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
        from sketchembed.eval.report import run_facts
        from sketchembed.eval.stats import with_intervals

        kind = getattr(model_cls, "MODEL_KIND", "") or checked["model_name"]
        saved = with_intervals({**metrics, **run_facts(hparams, hparams["choices"], kind)})
        (out_dir / "train_metrics.json").write_text(json.dumps(saved, indent=2, sort_keys=True))
        if cfg.get("test", True):
            print_table({k: v for k, v in metrics.items() if isinstance(v, float)},
                        f"{checked['model_name']} on {Path(str(cfg.data.root)).name} (test split)")
    for lg in loggers:
        if hasattr(lg, "experiment") and lg.__class__.__name__ == "WandbLogger":
            import wandb

            wandb.finish()
    return metrics


def conf_dir() -> str:
    """`conf/` of the checkout (configs are not installed with the package)."""
    here = Path(__file__).resolve()
    for parent in [Path.cwd(), *here.parents]:
        if (parent / "conf" / "train.yaml").is_file():
            return str(parent / "conf")
    raise FileNotFoundError("conf/train.yaml not found: run from a sketchembed checkout")


def _unwrap(e: BaseException) -> BaseException:
    while e.__cause__ is not None and type(e).__name__ == "InstantiationException":
        e = e.__cause__
    return e


def optimized_value(cfg: DictConfig, result) -> float | None:
    """What the entry returns to Hydra (the sweeper maximizes it): ``optimized_metric`` ("auto": the
    model's own metric), its best value over the run's validations when the checkpoint tracked it,
    else its last value. A named metric the run never logged is a ConfigError naming the key."""
    metric = cfg.get("optimized_metric")
    if not isinstance(result, dict) or not metric:
        return None
    if metric == "auto":
        metric = getattr(_get_class(cfg, "model"), "MONITOR", None)
        if metric is None:
            return None
    value = result.get(f"best/{metric}", result.get(metric))
    if value is None:
        if not cfg.get("train", True) or cfg.get("optimized_metric") == "auto":
            return None
        logged = sorted(k for k in result if k.startswith("val/"))
        raise ConfigError(f"optimized_metric={metric!r} was not logged by this run; it logged {logged}")
    return float(value)


def _save_traceback(e: BaseException) -> str | None:
    """Write ``e``'s traceback to ``error.log`` in the run dir; its path, or None outside a run."""
    import traceback

    try:
        from hydra.core.hydra_config import HydraConfig

        path = Path(HydraConfig.get().runtime.output_dir) / "error.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(traceback.format_exception(e)))
        return str(path)
    except Exception:
        return None


def hydra_entry(config_name: str, fn):
    """Run ``fn(cfg)`` as a Hydra app whose misconfigurations end in one line, not a traceback."""
    import hydra

    os.environ.setdefault("PROJECT_ROOT", str(Path(conf_dir()).parent))
    from sketchembed.train.console import quiet_sweeper

    quiet_sweeper(sys.argv[1:])

    @hydra.main(version_base="1.3", config_path=conf_dir(), config_name=config_name)
    def _main(cfg: DictConfig):
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        from sketchembed.data.sketch import DataFormatError

        from sketchembed.train.extras import start_run

        started = time.time()
        try:
            start_run(cfg)
            result = fn(cfg)
            return optimized_value(cfg, result)
        except Exception as e:
            inner = _unwrap(e)
            report_other_rank(inner, started)  # DDP: exits with the failing rank's line
            if isinstance(inner, (ConfigError, DataFormatError, FileNotFoundError, ValueError,
                                  MisconfigurationException)):
                msg = " ".join(str(inner).split())  # one line
                # A ValueError may also be a bug rather than bad input: its stack is kept on disk.
                trace = _save_traceback(e)
                where = f" (traceback: {trace})" if trace else ""
                print(f"error: {msg}{where}", file=sys.stderr)
                sys.exit(2)
            raise

    return _main


def main() -> None:
    try:  # `resume=<run dir>`: that run's overrides, run dir and last checkpoint, before Hydra starts
        sys.argv = resume_argv(sys.argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    hydra_entry("train", train)()


if __name__ == "__main__":
    main()
