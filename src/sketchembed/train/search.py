"""Which validation metrics a composed training run will log, so that a metric to optimize (sweeps,
best checkpoint) is checked when the config is composed — not after the first epoch."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from sketchembed.messages import short_list
from sketchembed.registry import TRIPLET

TRIPLET_METRICS = ("triplet_acc", "d_pos", "d_neg")  # TripletAccuracy.compute()
CLASSIFIER_METRICS = ("acc", "loss")                 # SketchModule._eval_step with logits


def val_metrics(cfg: DictConfig) -> set[str]:
    """The ``val/…`` metric names a run of ``cfg`` logs at every validation."""
    from hydra.utils import get_class

    from sketchembed.models.base import fraction_tag

    model_cls = get_class(str(cfg.model._target_))
    fractions = OmegaConf.select(cfg, "data.eval_fractions", default=[1.0]) or [1.0]
    tags = [fraction_tag(f) for f in fractions]
    # a model trained by a triplet loss alone has no classifier head (registry's loss kinds)
    names = TRIPLET_METRICS if tuple(getattr(model_cls, "LOSS_KINDS", ())) == (TRIPLET,) else CLASSIFIER_METRICS
    out = {f"val/{n}@{t}" for n in names for t in tags}
    emb = OmegaConf.select(cfg, "callbacks.embedding_eval", default=None)
    if isinstance(emb, DictConfig) and "_target_" in emb:
        out |= {f"val/knn@{int(k)}" for k in (emb.get("ks") or ())}
        if emb.get("probe", True):
            out.add("val/probe_acc")
    return out


def check_optimized_metric(cfg: DictConfig) -> None:
    """``optimized_metric`` (when not ``auto``) must be a metric this model logs: a ValueError naming
    the key and what the model logs instead."""
    metric = cfg.get("optimized_metric")
    if not metric or metric == "auto" or not cfg.get("train", True):
        return
    logged = val_metrics(cfg)
    if metric not in logged:
        model = str(cfg.model._target_).rsplit(".", 1)[-1]
        raise ValueError(f"optimized_metric={metric!r} is not logged by {model}; it logs: "
                         f"{short_list(sorted(logged))} (optimized_metric=auto picks the model's own)")
