"""SketchModule: what every model shares — optimizer/scheduler, loss handling, eval metrics, embed API.

Models only say how to embed, how to classify and what their training loss is; metric names, the
per-fraction bookkeeping (dataloader 0 = whole drawing, 1 = first half) and checkpoint round trips
live here once.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from sketchembed import metric_keys
from sketchembed.messages import ConfigError
from sketchembed.metric import TripletAccuracy
from sketchembed.metric.distances import config_name
from sketchembed.metric.miners import mine_batch
from sketchembed.models.checkpoint import (
    FORMAT,
    FORMAT_KEY,
    PARTS,
    ModelRecord,
    PartRecord,
    build_model,
    part_record,
    read_checkpoint,
)
from sketchembed.models.optim import DEFAULT_OPTIMIZER, DEFAULT_SCHEDULER
from sketchembed.registry import (
    CLASSIFICATION,
    LOSSES,
    MINERS,
    MODELS,
    OPTIMIZERS,
    SCHEDULERS,
    TRIPLET,
    Registry,
    loss_kind,
    loss_names,
)

__all__ = ["DEFAULT_OPTIMIZER", "DEFAULT_SCHEDULER", "SketchModule", "build_part", "check_compatible", "part_spec"]

# What a classifier (HAS_CLASSIFIER) logs at every eval fraction (``val/acc@100``, ``val/loss@100``);
# a model with TRIPLET_METRICS logs TripletAccuracy.NAMES.
ACC, EVAL_LOSS = CLASSIFIER_METRICS = ("acc", "loss")

log = logging.getLogger(__name__)


def _size(low: int):
    def rule(value) -> str | None:
        return None if value >= low else f"must be >= {low}"
    return rule


def _probability(value) -> str | None:
    return None if 0 <= value < 1 else "must be in [0, 1) (a probability of dropping a unit)"


#: The rules of the models' shared layer arguments, one per key (:meth:`SketchModule.check_args`):
#: sizes (0 or less: a 0-d embedding trained and exited 0, -4 crashed in torch; ``mlp_hidden`` 0 is
#: the combined model's one-linear-layer head) and dropout probabilities (1 drops everything; torch
#: refuses others without naming the key).
ARG_RULES = {
    "embedding_dim": _size(1),
    "hidden": _size(1),
    "layers": _size(1),
    "mlp_hidden": _size(0),
    "dropout": _probability,
    "drop_rate": _probability,
}


def build_part(part: Any, what: str, default: str | None = None) -> nn.Module | None:
    """A loss or miner for training from a module (train.py builds it from the user's config), a
    registered name (``hinge``), or None (``default``'s name, or no part). Models instantiate
    nothing: a config mapping is refused, so no file's contents can become an object here."""
    if part is None:
        part = default
    if part is None or isinstance(part, nn.Module):
        return part
    if isinstance(part, str):
        return {"loss": LOSSES, "miner": MINERS}[what][part]()
    raise ValueError(f"{what}: expected a module or a registered name, got {part!r} (a config is built "
                     "into a module by train.py)")


def part_spec(part: nn.Module | None, registry: Registry) -> PartRecord | None:
    """The checkpoint record of a loss or miner: its registered (or ``pml:``) name and the plain init
    args read back from same-named attributes (our distances by their config name); what cannot be
    recorded plainly is left to its default."""
    if part is None:
        return None
    cls = type(part)
    name = registry.record_name(cls)
    if name is None:
        raise ValueError(f"{registry.what}: {cls.__module__}.{cls.__qualname__} is neither registered "
                         f"(sketchembed.registry, @….register) nor a {registry.library.module.__name__} class, "
                         "so a checkpoint could not name it: register it where it is defined")
    args: dict[str, Any] = {}
    for key, p in inspect.signature(cls.__init__).parameters.items():
        if key == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or not hasattr(part, key):
            continue
        value = getattr(part, key)
        if value is None or isinstance(value, (bool, int, float, str)):
            args[key] = value
        elif isinstance(value, (list, tuple)) and all(isinstance(v, (bool, int, float, str)) for v in value):
            args[key] = list(value)
        elif key == "distance" and config_name(value) is not None:
            args[key] = config_name(value)
    return PartRecord(name, args)


class SketchModule(L.LightningModule):
    """Shared plumbing. A model registers itself (``@MODELS.register("name")``, which sets
    ``MODEL_KIND``), implements ``embed``, ``_eval_outputs`` and ``training_loss``, and passes the
    shared arguments through: ``def __init__(self, <its own>, **common): super().__init__(**common)``
    first. ``hparams`` is the checkpoint's :class:`ModelRecord`: every init argument, and the loss,
    miner, optimizer and scheduler as ``{name, args}`` of their registered names.

    Args:
        num_classes: classes of the data (classifier width, accuracy metric).
        loss: a module, the user's ``_target_`` config or a registered name; default ``DEFAULT_LOSS``;
            a :class:`PartRecord` (a checkpoint's, :meth:`from_record`): not built, nothing to train.
        miner: PML-style ``miner(embeddings, labels) -> indices tuple`` for triplet-kind losses;
            None = the loss sees every valid triplet of the batch (PML's rule).
        optimizer: ``_partial_`` config of a registered optimizer (``OPTIMIZERS``: ``torch.optim``'s), or a record.
        scheduler: ``_partial_`` config of a registered scheduler stepped every optimizer step, or a
            record; None = constant.
    """

    MODEL_KIND: str = ""                 # set by @MODELS.register (model=...)
    VIEWS: frozenset[str] = frozenset()  # what the DataModule must serve: sequence, image, snapshots
    LOSS_KINDS: tuple[str, ...] = (CLASSIFICATION,)  # loss kinds it can train with
    DEFAULT_LOSS: str = "cross_entropy"
    MONITOR: str = "val/acc@100"         # checkpoint/sweep metric when optimized_metric=auto
    ENCODER_TRANSFERABLE: bool = False   # its ``encoder`` can seed combined's CNN (model.cnn_ckpt)
    HAS_CLASSIFIER: bool = True          # ``logits(batch)`` scores the classes; False: classes by KNN on ``embed``
    TRIPLET_METRICS: bool = False        # validation/test log triplet accuracy and distances of ``embed``

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Callers read the traits, so a model must declare them: one trained by a triplet loss alone
        has no classifier to train."""
        super().__init_subclass__(**kwargs)
        if tuple(cls.LOSS_KINDS) == (TRIPLET,) and cls.HAS_CLASSIFIER:
            raise TypeError(f"{cls.__qualname__}: LOSS_KINDS = ({TRIPLET!r},) trains no classifier: declare "
                            "HAS_CLASSIFIER = False (and TRIPLET_METRICS = True for its validation metrics)")

    def __init__(self, num_classes: int | None = None, loss: Any = None, miner: Any = None,
                 optimizer: Any = None, scheduler: Any = DEFAULT_SCHEDULER):
        super().__init__()
        self.save_hyperparameters(ignore=list(PARTS))  # the subclass's arguments too
        for key, value in list(self.hparams.items()):  # plain data: a tuple is saved as the list it reads back as
            if isinstance(value, tuple):
                self.hparams[key] = list(value)
        self.optimizer_record = part_record(DEFAULT_OPTIMIZER if optimizer is None else optimizer,
                                            "optimizer", "model.optimizer")
        lr = self.optimizer_record.args.get("lr")
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0):
            raise ValueError(f"model.optimizer.lr={lr} must be > 0")
        self.scheduler_record = None if scheduler is None else part_record(scheduler, "scheduler", "model.scheduler")
        if isinstance(loss, PartRecord):  # rebuilt from a checkpoint's record (from_record): nothing to train
            self.loss = self.miner = None
            records = (loss, miner)
            self.loss_kind, loss_name = loss_kind(LOSSES[loss.name]), loss.name
        else:
            self.loss = build_part(loss, "loss", self.DEFAULT_LOSS)
            self.loss_kind, loss_name = loss_kind(self.loss), LOSSES.name_of(self.loss)
        check_compatible(self.MODEL_KIND, self.loss_kind, loss_name=loss_name, model_cls=type(self))
        if not isinstance(loss, PartRecord):
            self.miner = build_part(miner, "miner")
            records = (part_spec(self.loss, LOSSES), part_spec(self.miner, MINERS))
            if self.miner is None and self.loss_kind == TRIPLET:
                log.info("no miner: %s sees every valid triplet of each batch", loss_name)
        self.num_classes = None if num_classes is None else int(num_classes)
        for key, rec in zip(PARTS, (*records, self.optimizer_record, self.scheduler_record)):
            self.hparams[key] = None if rec is None else rec.to_dict()
        self.hparams["model_kind"] = self.MODEL_KIND
        self.hparams[FORMAT_KEY] = FORMAT
        self._mining_stats: dict[str, torch.Tensor] = {}
        # One accuracy per (stage, fraction); created on first use (eval fractions are configurable).
        self.eval_acc = nn.ModuleDict()
        self.eval_triplet = nn.ModuleDict()  # same, for triplet accuracy (triplet-loss models)

    @classmethod
    def from_record(cls, record: ModelRecord) -> SketchModule:
        """The model a checkpoint's record describes (its weights still to load): the loss, miner,
        optimizer and scheduler stay records, nothing a file names is built or called."""
        loss = record.loss if record.loss is not None else PartRecord(cls.DEFAULT_LOSS)
        return cls(**record.args, loss=loss, miner=record.miner, optimizer=record.optimizer,
                   scheduler=record.scheduler)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, hparams_file=None, strict=None, **kwargs):
        """Lightning's loader would rebuild the parts a file names through Hydra; here the file is
        opened as data (:mod:`sketchembed.models.checkpoint`): a model of this kind, in eval mode."""
        if hparams_file is not None or kwargs:
            raise TypeError("load_from_checkpoint takes no hparams_file or overrides: "
                            "the checkpoint's record is the model")
        return build_model(read_checkpoint(checkpoint_path, map_location=map_location or "cpu"),
                           kinds=(cls.MODEL_KIND,))

    @property
    def record(self) -> ModelRecord:
        """What a checkpoint of this model says about it (its hparams, read as a record)."""
        return ModelRecord.read(dict(self.hparams), type(self).__name__)

    @classmethod
    def check_args(cls, args: Mapping[str, Any]) -> None:
        """Checks of its config arguments that need nothing built: ``train.py`` runs them before any
        data or weights, ``__init__`` again (a ConfigError names the key). Here: :data:`ARG_RULES`
        (a value that is not a number is the type check's, ``train.validate``)."""
        for key, rule in ARG_RULES.items():
            value = args.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                why = rule(value)
                if why is not None:
                    raise ConfigError(f"model.{key}={value}: {why}")

    @classmethod
    def eval_metrics(cls) -> tuple[str, ...]:
        """The names it logs at every eval fraction (``val/<name>@<tag>``), from its traits."""
        return ((CLASSIFIER_METRICS if cls.HAS_CLASSIFIER else ())
                + (TripletAccuracy.NAMES if cls.TRIPLET_METRICS else ()))

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
        """``(B, C)`` class scores at each drawing's last stroke end; None without a classifier."""
        return self._eval_outputs(batch)[1] if self.HAS_CLASSIFIER else None

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
        tag = metric_keys.fraction_tag(batch.get("fraction", 1.0))
        fraction = metric_keys.tag_fraction(tag)
        labels = batch["label"]
        bs = int(labels.shape[0])
        emb, logits = self._eval_outputs(batch)
        if self.HAS_CLASSIFIER:
            key, acc = self._accuracy(stage, tag)
            acc.update(logits.detach(), labels)
            self.log(metric_keys.key(stage, ACC, fraction), acc, on_step=False, on_epoch=True, batch_size=bs,
                     add_dataloader_idx=False, metric_attribute=f"eval_acc.{key}",
                     prog_bar=(tag == "100"))
            self.log(metric_keys.key(stage, EVAL_LOSS, fraction), nn.functional.cross_entropy(logits.float(), labels),
                     on_step=False, on_epoch=True, batch_size=bs, add_dataloader_idx=False, sync_dist=True)
        if self.TRIPLET_METRICS:
            key = f"{stage}_{tag}"
            if key not in self.eval_triplet:
                self.eval_triplet[key] = TripletAccuracy().to(self.device)
            self.eval_triplet[key].update(emb, labels)  # logged at the epoch's end: _log_triplet_metrics
        # Returned (not stored) so an embedding callback can collect them without a second pass.
        out = {"embeddings": emb.detach(), "labels": labels, "fraction": tag}
        if self.HAS_CLASSIFIER:
            out["logits"] = logits.detach()
        return out

    def _log_triplet_metrics(self, stage: str) -> None:
        """Epoch values from the summed in-batch triplets (TripletAccuracy syncs the ranks itself)."""
        for slot, metric in self.eval_triplet.items():
            if not slot.startswith(f"{stage}_") or not metric.update_called:
                continue
            tag = slot[len(stage) + 1:]
            for name, value in metric.compute().items():
                self.log(metric_keys.key(stage, name, metric_keys.tag_fraction(tag)), value,
                         prog_bar=(name == "triplet_acc" and tag == "100"))
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
        """The recorded optimizer and scheduler, built by their registered names (training only)."""
        groups = [g for g in self.param_groups() if g["params"]]
        rec = self.optimizer_record
        opt = OPTIMIZERS[rec.name](groups, **rec.args)
        if self.scheduler_record is None:
            return opt
        make, args = SCHEDULERS[self.scheduler_record.name], dict(self.scheduler_record.args)
        if "total_steps" in inspect.signature(make).parameters:
            args["total_steps"] = (max(1, int(self.trainer.estimated_stepping_batches))
                                   if self._trainer is not None else 1)
        sched = make(opt, **args)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


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
