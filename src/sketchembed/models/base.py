"""SketchModule: what every model shares — optimizer/scheduler, loss handling, eval metrics, embed API.

Models only say how to embed, how to classify and what their training loss is; metric names, the
per-fraction bookkeeping (dataloader 0 = whole drawing, 1 = first half) and checkpoint round trips
live here once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Callable

import lightning as L
import torch
from torch import nn

# Config group names of the losses (conf/loss/*.yaml) → class path; used to name losses in errors and
# to accept a plain name where a loss is expected.
LOSS_CLASSES = {
    "cross_entropy": "sketchembed.metric.losses.CrossEntropy",
    "hinge": "sketchembed.metric.losses.HingeTripletLoss",
    "softmax_triplet": "sketchembed.metric.losses.SoftmaxTripletLoss",
}
SCHEDULERS = ("none", "cosine")


def _get_class(path: str):
    from hydra.utils import get_class

    return get_class(path)


def loss_name(loss: Any) -> str:
    """The config name of a loss (``hinge``) for messages; the class name when it is not a known one."""
    if isinstance(loss, str):
        return loss
    cls = loss if isinstance(loss, type) else type(loss)
    path = f"{cls.__module__}.{cls.__qualname__}"
    for name, p in LOSS_CLASSES.items():
        if p == path:
            return name
    return cls.__name__


def build_loss(loss: Any, default: str) -> nn.Module:
    """A loss module from a module, a ``{_target_: ...}`` mapping (checkpoints), a name, or None."""
    if loss is None:
        loss = default
    if isinstance(loss, nn.Module):
        return loss
    if isinstance(loss, str):
        if loss not in LOSS_CLASSES:
            raise ValueError(f"loss={loss!r} is unknown; choose one of {sorted(LOSS_CLASSES)}")
        return _get_class(LOSS_CLASSES[loss])()
    if isinstance(loss, Mapping) or hasattr(loss, "keys"):
        from hydra.utils import instantiate

        if "_target_" not in loss:
            raise ValueError(f"loss: a mapping needs a _target_, got {dict(loss)!r}")
        return instantiate(loss)
    raise ValueError(f"loss: expected a loss module, a config with _target_ or a name, got {loss!r}")


def loss_spec(loss: nn.Module) -> dict[str, Any]:
    """A ``{_target_, **init args}`` record of a loss, so ``load_from_checkpoint`` can rebuild it.

    Init args are read back from same-named attributes (the losses keep them); plain values only.
    """
    import inspect

    cls = type(loss)
    spec: dict[str, Any] = {"_target_": f"{cls.__module__}.{cls.__qualname__}"}
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or not hasattr(loss, name):
            continue
        value = getattr(loss, name)
        if value is None or isinstance(value, (bool, int, float, str)):
            spec[name] = value
        elif isinstance(value, (list, tuple)) and all(isinstance(v, (bool, int, float, str)) for v in value):
            spec[name] = list(value)
        elif name == "distance":
            spec[name] = _distance_name(value)
    return spec


def _distance_name(distance) -> str | None:
    """Config name of a distance instance (``squared_euclidean``), so the record stays plain."""
    from sketchembed.metric import distances

    for key, cls in getattr(distances, "_BY_NAME", {}).items():
        if type(distance) is cls:
            return key
    raise ValueError(f"loss.distance: {type(distance).__name__} has no config name; cannot record it")


def fraction_tag(fraction: Any) -> str:
    """``1.0`` → ``"100"``, ``0.5`` → ``"50"``: the suffix of ``val/acc@100`` and friends."""
    if isinstance(fraction, torch.Tensor):
        fraction = fraction.flatten()[0].item()
    pct = 100.0 * float(fraction)
    return str(int(round(pct))) if abs(pct - round(pct)) < 1e-6 else f"{pct:g}"


class SketchModule(L.LightningModule):
    """Shared plumbing. Subclasses set the class attributes and implement ``embed``, ``_eval_outputs``
    and ``training_loss``; they call ``self.save_hyperparameters(ignore=["loss"])`` then
    ``self._setup_common(...)`` in ``__init__``."""

    MODEL_KIND: str = ""                 # config name of the model (model=...)
    VIEWS: frozenset[str] = frozenset()  # what the DataModule must serve: sequence, image, snapshots
    LOSS_KIND: str = "classification"    # the loss kind it trains with ("triplet" / "classification")
    DEFAULT_LOSS: str = "cross_entropy"
    MONITOR: str = "val/acc@100"         # checkpoint/sweep metric when optimized_metric=auto
    MONITOR_MODE: str = "max"

    def _setup_common(self, *, loss: Any, num_classes: int | None, lr: float, weight_decay: float,
                      scheduler: str, warmup_steps: int, min_lr_ratio: float) -> None:
        if scheduler not in SCHEDULERS:
            raise ValueError(f"model.scheduler={scheduler!r}: choose one of {SCHEDULERS}")
        if lr <= 0:
            raise ValueError(f"model.lr={lr} must be > 0")
        self.loss = build_loss(loss, self.DEFAULT_LOSS)
        check_compatible(self.MODEL_KIND, getattr(self.loss, "kind", None), loss_name=loss_name(self.loss),
                         model_cls=type(self))
        self.num_classes = None if num_classes is None else int(num_classes)
        self.hparams["loss"] = loss_spec(self.loss)
        self.hparams["model_kind"] = self.MODEL_KIND
        # One accuracy per (stage, fraction); created on first use (eval fractions are configurable).
        self.eval_acc = nn.ModuleDict()
        self.eval_triplet = nn.ModuleDict()  # same, for triplet accuracy (triplet-loss models)

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
        return loss

    # ---- evaluation ------------------------------------------------------------------------
    def _accuracy(self, stage: str, tag: str):
        key = f"{stage}_{tag}"
        if key not in self.eval_acc:
            from torchmetrics.classification import MulticlassAccuracy

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
            self.log(f"{stage}/acc@{tag}", acc, on_step=False, on_epoch=True, batch_size=bs,
                     add_dataloader_idx=False, metric_attribute=f"eval_acc.{key}",
                     prog_bar=(tag == "100"))
            self.log(f"{stage}/loss@{tag}", nn.functional.cross_entropy(logits.float(), labels),
                     on_step=False, on_epoch=True, batch_size=bs, add_dataloader_idx=False, sync_dist=True)
        if self.LOSS_KIND == "triplet":
            key = f"{stage}_{tag}"
            if key not in self.eval_triplet:
                from sketchembed.metric import TripletAccuracy

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
        hp = self.hparams
        groups = [g for g in self.param_groups() if g["params"]]
        opt = torch.optim.AdamW(groups, lr=float(hp.lr), weight_decay=float(hp.weight_decay))
        warmup = int(hp.warmup_steps)
        if hp.scheduler == "none" and warmup <= 0:
            return opt
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer is not None else 1
        opt_fn = _lr_lambda(hp.scheduler, warmup, total, float(hp.min_lr_ratio))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, opt_fn)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _lr_lambda(kind: str, warmup: int, total: int, min_ratio: float) -> Callable[[int], float]:
    """Linear warmup, then constant (``none``) or cosine decay to ``min_ratio`` of each group's lr."""

    def fn(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if kind == "cosine":
            t = min(1.0, (step - warmup) / max(1, total - warmup))
            return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))
        return 1.0

    return fn


def check_compatible(model_name: str, loss_kind: str | None, loss_name: str | None = None,
                     model_cls: type | None = None, **_: Any) -> None:
    """Fail early (before data or weights) when a loss cannot train a model, naming both config keys."""
    if model_cls is None:
        from sketchembed.models import MODELS

        if model_name not in MODELS:
            raise ValueError(f"model={model_name!r} is unknown; choose one of {sorted(MODELS)}")
        model_cls = MODELS[model_name]
    loss_name = loss_name or str(loss_kind)
    expected = getattr(model_cls, "LOSS_KINDS", None) or (model_cls.LOSS_KIND,)
    if loss_kind not in ("triplet", "classification"):
        raise ValueError(f"loss={loss_name}: its class declares no kind ('triplet' or 'classification'), "
                         f"so it cannot be checked against model={model_name}")
    if loss_kind not in expected:
        what = ("a triplet loss on embeddings (loss=hinge or loss=softmax_triplet)" if expected == ("triplet",)
                else "a classification loss on logits (loss=cross_entropy)")
        raise ValueError(f"loss={loss_name} is incompatible with model={model_name}: the model needs {what}, "
                         f"{loss_name} is a {loss_kind} loss")
