"""SketchModule: what every model shares — optimizer/scheduler, loss handling, eval metrics, embed API.

Models only say how to embed, how to classify and what their training loss is; metric names, the
per-fraction bookkeeping (dataloader 0 = whole drawing, 1 = first half) and checkpoint round trips
live here once.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import logging
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from pytorch_metric_learning.distances import BaseDistance
from pytorch_metric_learning.losses import BaseMetricLossFunction
from pytorch_metric_learning.miners import BaseMiner
from pytorch_metric_learning.reducers import BaseReducer
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torchmetrics.classification import MulticlassAccuracy

from sketchembed.data.inputs import fraction_tag
from sketchembed.metric import TripletAccuracy
from sketchembed.metric.distances import config_name
from sketchembed.metric.miners import mine_batch
from sketchembed.models import optim
from sketchembed.registry import CLASSIFICATION, LOSSES, MINERS, MODELS, TRIPLET, loss_kind, loss_names
from sketchembed.safeload import UnsafeCheckpointError

# What a classifier logs at every eval fraction (``val/acc@100``, ``val/loss@100``); triplet-loss
# models log TripletAccuracy.NAMES instead.
ACC, EVAL_LOSS = CLASSIFIER_METRICS = ("acc", "loss")

log = logging.getLogger(__name__)

# The Python defaults of every model = conf/model/optimizer/adamw.yaml and conf/model/scheduler/warmup_cosine.yaml
# (tests/test_models.py holds them equal).
DEFAULT_OPTIMIZER = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1.0e-3, "weight_decay": 1.0e-4}
DEFAULT_SCHEDULER = {"_target_": "sketchembed.models.optim.warmup_cosine", "_partial_": True,
                     "warmup_steps": 0, "eta_min": 0.0}
# Init arguments of checkpoints written before the optimizer/scheduler were injected.
_LEGACY_KEYS = {"lr", "weight_decay", "warmup_steps", "min_lr_ratio", "class_names"}
# What a model writes into its hparams after init (a record, not an argument): ignored on load.
RECORD_KEYS = {"model_kind", "pretrained_init"}


# What a checkpoint's hyper_parameters may name as a ``_target_``: loading one rebuilds its loss, miner,
# optimizer and scheduler through Hydra, which imports and calls what a target names. A checkpoint is
# data, so only registered losses and miners, and parts of these kinds from these packages, are
# accepted (checked before anything is built).
TARGET_PACKAGES = ("torch.optim", "pytorch_metric_learning", "sketchembed")
TARGET_KINDS = (Optimizer, LRScheduler, BaseMetricLossFunction, BaseMiner, BaseDistance, BaseReducer)


def target_problem(target: Any) -> str | None:
    """Why a checkpoint may not name ``target`` (None: an optimizer, scheduler, loss, miner, distance
    or reducer). Only modules inside :data:`TARGET_PACKAGES` are ever imported to find out."""
    if not isinstance(target, str):
        return f"a {type(target).__name__}, not a name"
    if target in {f"{c.__module__}.{c.__qualname__}" for c in (*LOSSES.values(), *MINERS.values())}:
        return None  # a registered part, your own module's too (already imported: nothing to import)
    module, _, attr = target.rpartition(".")
    if not any(module == p or module.startswith(p + ".") for p in TARGET_PACKAGES):
        return f"outside {', '.join(TARGET_PACKAGES)}"
    if any(part.startswith("_") for part in module.split(".")):
        return "in a private module"  # e.g. a __main__, which would run on import
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError):
        return "not found"
    if isinstance(obj, type) and (issubclass(obj, TARGET_KINDS) or obj in LOSSES.values() or obj in MINERS.values()):
        return None
    if callable(obj) and getattr(obj, "__module__", None) == optim.__name__ and not attr.startswith("_"):
        return None  # a scheduler factory (warmup_cosine)
    return "not an optimizer, scheduler, loss, miner, distance or reducer"


def check_targets(hparams: Any, where: str) -> None:
    """Refuse (:class:`UnsafeCheckpointError`, one line naming ``where`` and the key) a checkpoint
    whose hyper_parameters name any ``_target_`` that :func:`target_problem` rejects."""
    def walk(node: Any, key: str) -> None:
        if isinstance(node, Mapping):
            if "_target_" in node:
                why = target_problem(node["_target_"])
                if why:
                    raise UnsafeCheckpointError(
                        f"{where}: refused: hyper_parameters.{key}._target_={str(node['_target_'])[:80]!r} is "
                        f"{why} (a checkpoint may only name an optimizer, scheduler, loss, miner, distance or "
                        f"reducer)")
            for k, v in node.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                walk(v, f"{key}[{i}]")

    walk(hparams, "")


def build_part(part: Any, what: str, default: str | None = None) -> nn.Module | None:
    """A loss or miner from a module, a ``{_target_: ...}`` mapping (configs, checkpoints), a
    registered name (``hinge``), or None (``default``'s name, or no part)."""
    if part is None:
        part = default
    if part is None or isinstance(part, nn.Module):
        return part
    if isinstance(part, str):
        return {"loss": LOSSES, "miner": MINERS}[what][part]()
    if isinstance(part, Mapping) or hasattr(part, "keys"):
        if "_target_" not in part:
            raise ValueError(f"{what}: a mapping needs a _target_, got {dict(part)!r}")
        return instantiate(part, _convert_="all")
    raise ValueError(f"{what}: expected a module, a config with _target_ or a name, got {part!r}")


def part_spec(part: nn.Module | None) -> dict[str, Any] | None:
    """A ``{_target_, **init args}`` record of a loss or miner, so ``load_from_checkpoint`` can
    rebuild it. Init args are read back from same-named attributes (plain values; our distances by
    their config name); what cannot be recorded plainly is left to its default."""
    if part is None:
        return None
    cls = type(part)
    spec: dict[str, Any] = {"_target_": f"{cls.__module__}.{cls.__qualname__}"}
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or not hasattr(part, name):
            continue
        value = getattr(part, name)
        if value is None or isinstance(value, (bool, int, float, str)):
            spec[name] = value
        elif isinstance(value, (list, tuple)) and all(isinstance(v, (bool, int, float, str)) for v in value):
            spec[name] = list(value)
        elif name == "distance" and config_name(value) is not None:
            spec[name] = config_name(value)
    return spec


def _legacy_optim(scheduler: str, legacy: dict[str, Any]) -> tuple[dict, dict | None]:
    """(optimizer, scheduler) configs equal to the old ``lr / weight_decay / scheduler /
    warmup_steps / min_lr_ratio`` arguments, so older checkpoints still load. (``min_lr_ratio`` was
    per group; ``eta_min`` is one floor: equal for the single-group models and the default ratio 0.)"""
    lr = float(legacy.get("lr", DEFAULT_OPTIMIZER["lr"]))
    opt = dict(DEFAULT_OPTIMIZER, lr=lr, weight_decay=float(legacy.get("weight_decay", DEFAULT_OPTIMIZER["weight_decay"])))
    warmup = int(legacy.get("warmup_steps", 0))
    if scheduler == "cosine":
        return opt, dict(DEFAULT_SCHEDULER, warmup_steps=warmup,
                         eta_min=float(legacy.get("min_lr_ratio", 0.0)) * lr)
    if scheduler != "none":
        raise ValueError(f"model.scheduler={scheduler!r}: give a scheduler config (conf/model/scheduler/) or null")
    if warmup <= 1:
        return opt, None
    return opt, {"_target_": "torch.optim.lr_scheduler.LinearLR", "_partial_": True,
                 "start_factor": 1.0 / warmup, "end_factor": 1.0, "total_iters": warmup - 1}


class SketchModule(L.LightningModule):
    """Shared plumbing. A model registers itself (``@MODELS.register("name")``, which sets
    ``MODEL_KIND``), implements ``embed``, ``_eval_outputs`` and ``training_loss``, and passes the
    shared arguments through: ``def __init__(self, <its own>, **common): super().__init__(**common)``
    first. Every init argument lands in ``hparams`` (the loss and miner as ``_target_`` records).

    Args:
        num_classes: classes of the data (classifier width, accuracy metric).
        loss: a module, a ``_target_`` config or a registered name; default ``DEFAULT_LOSS``.
        miner: PML-style ``miner(embeddings, labels) -> indices tuple`` for triplet-kind losses;
            None = the loss sees every valid triplet of the batch (PML's rule).
        optimizer: ``_partial_`` config of a ``torch.optim`` class (or a callable params → optimizer).
        scheduler: ``_partial_`` config of an LR scheduler stepped every optimizer step; None = constant.
    """

    MODEL_KIND: str = ""                 # set by @MODELS.register (model=...)
    VIEWS: frozenset[str] = frozenset()  # what the DataModule must serve: sequence, image, snapshots
    LOSS_KINDS: tuple[str, ...] = (CLASSIFICATION,)  # loss kinds it can train with
    DEFAULT_LOSS: str = "cross_entropy"
    MONITOR: str = "val/acc@100"         # checkpoint/sweep metric when optimized_metric=auto
    ENCODER_TRANSFERABLE: bool = False   # its ``encoder`` can seed combined's CNN (model.cnn_ckpt)

    # `**legacy` reads back checkpoints of older versions; a config may not use it (train/validate.py).
    CONFIG_CLOSED_KWARGS = True

    def __init__(self, num_classes: int | None = None, loss: Any = None, miner: Any = None,
                 optimizer: Any = None, scheduler: Any = DEFAULT_SCHEDULER, **legacy: Any):
        super().__init__()
        for key in RECORD_KEYS & set(legacy):
            legacy.pop(key)
        unknown = set(legacy) - _LEGACY_KEYS
        if unknown:
            # ValueError (bad input, one line): e.g. a checkpoint of another model kind
            raise ValueError(f"{type(self).__name__} got unknown arguments {sorted(unknown)}")
        if optimizer is None and (isinstance(scheduler, str) or legacy):
            optimizer, scheduler = _legacy_optim(scheduler if isinstance(scheduler, str) else "none", legacy)
        elif isinstance(scheduler, str):
            raise ValueError(f"model.scheduler={scheduler!r}: give a scheduler config (conf/model/scheduler/) "
                             "or null for a constant rate")
        self.save_hyperparameters(ignore=["loss", "miner", *legacy])  # the subclass's arguments too
        for key in legacy:
            self.hparams.pop(key, None)
        self.optimizer_factory = _checked_optimizer(DEFAULT_OPTIMIZER if optimizer is None else optimizer)
        self.scheduler_factory = None if scheduler is None else _partial(scheduler, "model.scheduler")
        self.loss = build_part(loss, "loss", self.DEFAULT_LOSS)
        check_compatible(self.MODEL_KIND, loss_kind(self.loss), loss_name=LOSSES.name_of(self.loss),
                         model_cls=type(self))
        self.miner = build_part(miner, "miner")
        if self.miner is None and loss_kind(self.loss) == TRIPLET:
            log.info("no miner: %s sees every valid triplet of each batch", LOSSES.name_of(self.loss))
        self.num_classes = None if num_classes is None else int(num_classes)
        self.hparams["loss"] = _plain(loss) if _is_mapping(loss) else part_spec(self.loss)
        self.hparams["miner"] = _plain(miner) if _is_mapping(miner) else part_spec(self.miner)
        self.hparams["optimizer"] = _plain(optimizer) if optimizer is not None else copy.deepcopy(DEFAULT_OPTIMIZER)
        self.hparams["scheduler"] = _plain(scheduler)
        self.hparams["model_kind"] = self.MODEL_KIND
        self._mining_stats: dict[str, torch.Tensor] = {}
        # One accuracy per (stage, fraction); created on first use (eval fractions are configurable).
        self.eval_acc = nn.ModuleDict()
        self.eval_triplet = nn.ModuleDict()  # same, for triplet accuracy (triplet-loss models)

    @classmethod
    def check_args(cls, args: Mapping[str, Any]) -> None:
        """Checks of its config arguments that need nothing built: ``train.py`` runs them before any
        data or weights, ``__init__`` again (a ConfigError names the key)."""

    @classmethod
    def eval_metrics(cls) -> tuple[str, ...]:
        """The names it logs at every eval fraction (``val/<name>@<tag>``): a model trained by a
        triplet loss alone has no classifier head."""
        return TripletAccuracy.NAMES if tuple(cls.LOSS_KINDS) == (TRIPLET,) else CLASSIFIER_METRICS

    def _record_backbone(self, encoder) -> None:
        """Keep the resolved backbone name (not a config mapping) in hparams: checkpoints stay plain."""
        self.hparams["backbone"] = encoder.backbone_name

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Weights are in the state dict: loading a checkpoint must never try to download them.
        hp = checkpoint.get("hyper_parameters")
        if hp is not None and hp.get("pretrained"):
            hp["pretrained"] = False
            hp["pretrained_init"] = True

    # ---- the API every consumer (eval, callbacks, suggest) uses -------------------------------
    @property
    def views(self) -> frozenset[str]:
        return self.VIEWS

    def embed(self, batch: dict) -> torch.Tensor:
        """``(B, D)``: the representation at each drawing's last stroke end."""
        raise NotImplementedError

    def logits(self, batch: dict) -> torch.Tensor | None:
        """``(B, C)`` class scores at each drawing's last stroke end; None for pure embedding models."""
        return self._eval_outputs(batch)[1]

    def forward(self, batch: dict) -> torch.Tensor:
        return self.embed(batch)

    def _eval_outputs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(embeddings, logits or None) in one pass — classifiers override to share the encoder."""
        return self.embed(batch), None

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, extra scalars to log under train/)."""
        raise NotImplementedError

    # ---- training --------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, extra = self.training_loss(batch)
        bs = int(batch["label"].shape[0])
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        for k, v in extra.items():
            self.log(f"train/{k}", v, batch_size=bs)
        if self._mining_stats:
            self.log_dict(self._mining_stats, on_step=True, on_epoch=True, batch_size=1)
            self._mining_stats = {}
        return loss

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor):
        """The configured miner's tuples for a triplet-kind loss: ``self.loss(*self.mine(e, y))``.
        Keeps the step's statistics (``miner/*``) for ``training_step`` to log."""
        mined, self._mining_stats = mine_batch(self.miner, embeddings, labels)
        return mined

    # ---- evaluation ------------------------------------------------------------------------
    def _accuracy(self, stage: str, tag: str):
        key = f"{stage}_{tag}"
        if key not in self.eval_acc:
            self.eval_acc[key] = MulticlassAccuracy(num_classes=self.num_classes, average="micro").to(self.device)
        return key, self.eval_acc[key]

    def _eval_step(self, batch: dict, stage: str) -> dict[str, torch.Tensor]:
        tag = fraction_tag(batch.get("fraction", 1.0))
        labels = batch["label"]
        bs = int(labels.shape[0])
        emb, logits = self._eval_outputs(batch)
        if logits is not None:
            key, acc = self._accuracy(stage, tag)
            acc.update(logits.detach(), labels)
            self.log(f"{stage}/{ACC}@{tag}", acc, on_step=False, on_epoch=True, batch_size=bs,
                     add_dataloader_idx=False, metric_attribute=f"eval_acc.{key}",
                     prog_bar=(tag == "100"))
            self.log(f"{stage}/{EVAL_LOSS}@{tag}", nn.functional.cross_entropy(logits.float(), labels),
                     on_step=False, on_epoch=True, batch_size=bs, add_dataloader_idx=False, sync_dist=True)
        if loss_kind(self.loss) == TRIPLET:
            key = f"{stage}_{tag}"
            if key not in self.eval_triplet:
                self.eval_triplet[key] = TripletAccuracy().to(self.device)
            self.eval_triplet[key].update(emb, labels)  # logged at the epoch's end: _log_triplet_metrics
        # Returned (not stored) so an embedding callback can collect them without a second pass.
        out = {"embeddings": emb.detach(), "labels": labels, "fraction": tag}
        if logits is not None:
            out["logits"] = logits.detach()
        return out

    def _log_triplet_metrics(self, stage: str) -> None:
        """Epoch values from the summed in-batch triplets (TripletAccuracy syncs the ranks itself)."""
        for key, metric in self.eval_triplet.items():
            if not key.startswith(f"{stage}_") or not metric.update_called:
                continue
            tag = key[len(stage) + 1:]
            for name, value in metric.compute().items():
                self.log(f"{stage}/{name}@{tag}", value, prog_bar=(name == "triplet_acc" and tag == "100"))
            metric.reset()

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0):
        return self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0):
        return self._eval_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._log_triplet_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_triplet_metrics("test")

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0):
        emb, logits = self._eval_outputs(batch)
        return {"embeddings": emb, "logits": logits, "index": batch.get("index")}

    # ---- optimisation ----------------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer parameter groups (trainable parameters only); override for per-part learning rates."""
        return [{"name": "all", "params": [p for p in self.parameters() if p.requires_grad]}]

    def configure_optimizers(self):
        groups = [g for g in self.param_groups() if g["params"]]
        opt = self.optimizer_factory(groups)
        if self.scheduler_factory is None:
            return opt
        make = self.scheduler_factory
        if "total_steps" in inspect.signature(make).parameters:
            total = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer is not None else 1
            sched = make(opt, total_steps=total)
        else:
            sched = make(opt)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _is_mapping(x: Any) -> bool:
    return isinstance(x, Mapping) or (x is not None and hasattr(x, "keys"))


def _plain(x: Any) -> Any:
    """A config mapping as plain dicts (hparams stay plain data); a callable is not recorded."""
    if x is None or not _is_mapping(x):
        return None
    return {k: _plain(v) if _is_mapping(v) else (list(v) if isinstance(v, tuple) else v) for k, v in x.items()}


def _partial(cfg: Any, key: str):
    """``params → object`` from a ``_partial_`` config (or a callable given as is)."""
    if callable(cfg) and not _is_mapping(cfg):
        return cfg
    if not _is_mapping(cfg) or "_target_" not in cfg:
        raise ValueError(f"{key}: expected a config with _target_ and _partial_: true, got {cfg!r}")
    return instantiate(dict(_plain(cfg), _partial_=True))


def _checked_optimizer(cfg: Any):
    if _is_mapping(cfg) and "lr" in cfg and not float(cfg["lr"]) > 0:
        raise ValueError(f"model.optimizer.lr={cfg['lr']} must be > 0")
    return _partial(cfg, "model.optimizer")


def check_compatible(model: str, loss_kind: str | None, loss_name: str | None = None,
                     model_cls: type | None = None) -> None:
    """Fail early (before data or weights) when a loss cannot train a model, naming both config keys
    (``model``: the model=… choice; its registered class unless ``model_cls`` is given)."""
    if model_cls is None:
        model_cls = MODELS[model]
    loss_name = loss_name or str(loss_kind)
    expected = model_cls.LOSS_KINDS
    if loss_kind not in (TRIPLET, CLASSIFICATION):
        raise ValueError(f"loss={loss_name}: its class declares no kind ('{TRIPLET}' or '{CLASSIFICATION}') "
                         f"and is no PML loss, so it cannot be checked against model={model}")
    if loss_kind not in expected:
        names = " or ".join(f"loss={n}" for n in loss_names(expected[0]))
        what = (f"a triplet loss on embeddings ({names})" if expected == (TRIPLET,)
                else f"a classification loss on logits ({names})")
        raise ValueError(f"loss={loss_name} is incompatible with model={model}: the model needs {what}, "
                         f"{loss_name} is a {loss_kind} loss")
