"""The metric a run optimizes (sweeps, best checkpoint): which one ``optimized_metric`` names ("auto"
= the model's own), whether the composed run logs it (checked when the config is composed, not
after the first epoch), and the value a sweeper gets."""

from __future__ import annotations

from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from sketchembed import metric_keys
from sketchembed.messages import ConfigError, short_list


def _model_cls(cfg: DictConfig) -> type:
    return get_class(str(cfg.model._target_))


def resolve_metric(cfg: DictConfig, model_cls: type | None = None) -> str | None:
    """The metric ``cfg`` optimizes: ``optimized_metric``, where "auto" (or none given) is the
    model's own ``MONITOR``; None for a model that names none."""
    metric = cfg.get("optimized_metric") or "auto"
    if metric != "auto":
        return str(metric)
    return getattr(model_cls or _model_cls(cfg), "MONITOR", None)


def val_metrics(cfg: DictConfig) -> set[str]:
    """The ``val/…`` metric names a run of ``cfg`` logs at every validation."""
    model_cls = _model_cls(cfg)
    fractions = OmegaConf.select(cfg, "data.eval_fractions", default=[1.0]) or [1.0]
    out = {metric_keys.key("val", n, f) for n in model_cls.eval_metrics() for f in fractions}
    emb = OmegaConf.select(cfg, "callbacks.embedding_eval", default=None)
    if isinstance(emb, DictConfig) and "_target_" in emb:
        out |= {metric_keys.key("val", metric_keys.knn(k)) for k in (emb.get("ks") or ())}
        if emb.get("probe", True):
            out.add(metric_keys.key("val", "probe_acc"))
    return out


def check_optimized_metric(cfg: DictConfig) -> None:
    """``optimized_metric`` (when not ``auto``) must be a metric this model logs: a ValueError naming
    the key and what the model logs instead."""
    metric = cfg.get("optimized_metric")
    if not metric or metric == "auto" or not cfg.get("train", True) or "model" not in cfg:
        return
    logged = val_metrics(cfg)
    if metric not in logged:
        model = str(cfg.model._target_).rsplit(".", 1)[-1]
        raise ValueError(f"optimized_metric={metric!r} is not logged by {model}; it logs: "
                         f"{short_list(sorted(logged))} (optimized_metric=auto picks the model's own)")


def optimized_value(cfg: DictConfig, result: Any) -> float | None:
    """What the entry returns to Hydra (the sweeper maximizes it): the optimized metric's best value
    over the run's validations when the checkpoint tracked it, else its last value. A named metric
    the run never logged is a ConfigError naming the key."""
    if not isinstance(result, dict) or not cfg.get("optimized_metric"):
        return None
    metric = resolve_metric(cfg)
    if metric is None:
        return None
    value = result.get(f"best/{metric}", result.get(metric))
    if value is None:
        if not cfg.get("train", True) or cfg.get("optimized_metric") == "auto":
            return None
        logged = sorted(metric_keys.of_split(result, "val"))
        raise ConfigError(f"optimized_metric={metric!r} was not logged by this run; it logs {logged}")
    return float(value)
