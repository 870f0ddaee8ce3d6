"""Uncertainty of our accuracies: 95 % Wilson intervals, and whether two runs differ beyond noise.

With 51 test drawings one drawing moves an accuracy by 2 points; every accuracy we print or save
therefore carries its n and a 95 % interval. Where they live in ``metrics.json`` and
``train_metrics.json``: a parallel ``intervals`` dict (see :func:`with_intervals`), so the flat
keys that others read (``test/acc@100`` …) stay as they are.

What the intervals mean, honestly:

* accuracy @P %, KNN@K, linear probe: a share of n drawings, so the Wilson score interval of a
  binomial proportion is the textbook interval (drawings taken as independent draws).
* balanced accuracy (mean per-class recall) is not a share of n; its interval is the Wilson interval
  of its value at n drawings — an approximation (too narrow when classes are very unequal).
* triplet accuracy is a share of *triplets*, which share drawings; its interval uses n = drawings,
  not triplets (the triplet count would give a falsely narrow interval) — also an approximation.
* P@1 (retrieval: the nearest indexed drawing has the query's class) is a share of n queries: Wilson.
* R-precision and MAP@R are means of per-query values in [0, 1], known only as means of random query
  groups (:mod:`sketchembed.eval.retrieval`): a t interval over the group means
  (:func:`batch_means_interval`), saved with its own ``method``; :func:`interval` reads it back.

Two runs are compared with McNemar's exact test when both have per-drawing predictions on the same
drawings (paired: it looks only at the drawings on which they disagree), else with Fisher's exact
test on the two counts (unpaired: for two runs on the same drawings it is conservative).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from sketchembed import metric_keys

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
METHOD = "wilson"
# Figures (a key without its split, see sketchembed.metric_keys) whose values are accuracies in [0, 1].
_ACCURACY = re.compile(r"(?:balanced_)?acc@[\d.]+|knn@\d+(?:_study_tie)?|probe_acc|triplet_acc(?:@[\d.]+)?|p@1")
APPROXIMATE = ("balanced_acc", "triplet_acc")


def wilson(successes: float, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n`` (no continuity correction).

    ``successes`` may be fractional (balanced accuracy × n); ``n == 0`` gives ``(nan, nan)``."""
    if n <= 0:
        return float("nan"), float("nan")
    if not 0 <= successes <= n:
        raise ValueError(f"successes={successes} outside [0, n={n}]")
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # at p = 0 or 1 the bound is exactly 0 or 1 (rounding would leave 0.9999999999999999)
    return (0.0 if successes == 0 else max(0.0, centre - half)), (1.0 if successes == n else min(1.0, centre + half))


@dataclass(frozen=True)
class Interval:
    """An accuracy with its n and 95 % interval (all in [0, 1])."""

    value: float
    n: int
    low: float
    high: float
    approximate: bool = False
    method: str = METHOD

    @classmethod
    def of(cls, value: float, n: int, *, approximate: bool = False) -> Interval:
        low, high = wilson(min(max(float(value), 0.0), 1.0) * int(n), int(n))
        return cls(float(value), int(n), low, high, approximate)

    def as_dict(self) -> dict:
        d = {"n": self.n, "ci95": [self.low, self.high], "method": self.method}
        if self.approximate:
            d["approximate"] = True
        return d

    def pct(self) -> str:
        """``78.4 [65.4–87.5]`` (percent, one decimal)."""
        return f"{100 * self.value:.1f} [{100 * self.low:.1f}–{100 * self.high:.1f}]"


def ci_text(ci: Interval | None, unit: str = "") -> str:
    """``65.4–87.5`` (percent; ``unit`` appended), `` ≈`` marking an approximate interval; "–" when unknown."""
    if ci is None:
        return "–"
    return f"{100 * ci.low:.1f}–{100 * ci.high:.1f}{unit}{' ≈' if ci.approximate else ''}"


def accuracy_key(key: str) -> metric_keys.Key | None:
    """``key`` read (split, name, tag; an optional ``best/`` before it) when it names an accuracy, else None."""
    parts = metric_keys.parse(str(key).removeprefix("best/"))
    return parts if parts is not None and _ACCURACY.fullmatch(parts.figure) else None


def _finite(v) -> float | None:
    if isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def split_n(metrics: Mapping, split: str) -> int | None:
    """Drawings behind ``split``'s accuracies: ``SPLIT/n`` (logged in training) or ``n_SPLIT`` (eval)."""
    for name in (metric_keys.key(split, "n"), f"n_{split}"):
        v = _finite(metrics.get(name))
        if v is not None and v > 0:
            return int(v)
    return None


def with_intervals(metrics: Mapping, n_overrides: Mapping[str, int] | None = None) -> dict:
    """``metrics`` plus ``intervals``: ``{key: {"n", "ci95": [low, high], "method"[, "approximate"]}}``
    for every accuracy key whose split's n is known (``SPLIT/n`` or ``n_SPLIT``; ``n_overrides[key]``
    for figures measured on a sample of the split), and for ``per_class_acc@100`` (key
    ``per_class_acc@100/CLASS``, n from ``per_class_n``)."""
    out = dict(metrics)
    intervals: dict[str, dict] = {}
    for key, v in metrics.items():
        m = accuracy_key(key)
        value = _finite(v)
        if m is None or value is None:
            continue
        n = (n_overrides or {}).get(key, split_n(metrics, m.split))
        if n is None:
            continue
        intervals[key] = Interval.of(value, n, approximate=m.name.startswith(APPROXIMATE)).as_dict()
    per_class, per_n = metrics.get("per_class_acc@100"), metrics.get("per_class_n")
    if isinstance(per_class, Mapping) and isinstance(per_n, Mapping):
        for c, v in per_class.items():
            value, n = _finite(v), _finite(per_n.get(c))
            if value is not None and n:
                intervals[f"per_class_acc@100/{c}"] = Interval.of(value, int(n)).as_dict()
    out["intervals"] = intervals
    return out


def interval(metrics: Mapping, key: str, value: float | None = None) -> Interval | None:
    """The interval of ``metrics[key]`` (or of ``value``, for nested figures such as per-class
    accuracy): n as saved in ``intervals``, else the split's n; None when the value or n is unknown.
    An interval saved with another method than Wilson's (R-precision …) is read back as saved."""
    value = _finite(metrics.get(key) if value is None else value)
    if value is None:
        return None
    saved = (metrics.get("intervals") or {}).get(key) if isinstance(metrics.get("intervals"), Mapping) else None
    if isinstance(saved, Mapping) and _finite(saved.get("n")):
        n = int(saved["n"])
        bounds = saved.get("ci95")
        if saved.get("method", METHOD) != METHOD and isinstance(bounds, list) and len(bounds) == 2 \
                and all(_finite(b) is not None for b in bounds):
            return Interval(value, n, float(bounds[0]), float(bounds[1]), method=str(saved["method"]))
    else:
        m = accuracy_key(key)
        n = split_n(metrics, m.split) if m else None
        if n is None:
            return None
    name = accuracy_key(key)
    return Interval.of(value, n, approximate=bool(name and name.name.startswith(APPROXIMATE)))


def batch_means_interval(means, sizes, confidence: float = CONFIDENCE) -> tuple[float, dict | None]:
    """(overall mean, its interval dict or None) of a mean known only per group of random queries:
    the size-weighted mean of the group ``means``, and a t interval over them (G - 1 df; the groups
    are random and of near-equal ``sizes``), clipped to [0, 1]. Fewer than 2 groups: no interval."""
    from scipy.stats import t as student_t  # here, not at the top: scipy.stats takes seconds to import

    means, sizes = np.asarray(means, np.float64), np.asarray(sizes, np.float64)
    value = float((means * sizes).sum() / sizes.sum())
    if len(means) < 2:
        return value, None
    half = float(student_t.ppf(1 - (1 - confidence) / 2, len(means) - 1) * means.std(ddof=1) / math.sqrt(len(means)))
    return value, Interval(value, int(sizes.sum()), max(0.0, value - half), min(1.0, value + half),
                           method=f"t over {len(means)} random query groups").as_dict()


# ------------------------------------------------------------------------------ two runs compared
@dataclass(frozen=True)
class Difference:
    """Outcome of comparing one accuracy of two runs."""

    p_value: float
    test: str          # "McNemar exact (paired, n=…)" / "Fisher exact (unpaired)"

    @property
    def beyond_noise(self) -> bool:
        return self.p_value < ALPHA


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> Difference:
    """McNemar's exact test on per-drawing correctness of two runs on the same drawings (aligned)."""
    from scipy.stats import binomtest  # here, not at the top: scipy.stats takes seconds to import

    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if a.shape != b.shape:
        raise ValueError(f"paired predictions differ in length: {a.shape} vs {b.shape}")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    p = 1.0 if only_a + only_b == 0 else float(binomtest(only_a, only_a + only_b, 0.5).pvalue)
    return Difference(p, f"McNemar exact (paired, n={len(a)}, discordant {only_a}/{only_b})")


def two_proportions(a: Interval, b: Interval) -> Difference:
    """Fisher's exact test on ``round(value × n)`` correct of n for each run (unpaired)."""
    from scipy.stats import fisher_exact  # here, not at the top: scipy.stats takes seconds to import

    ka, kb = round(a.value * a.n), round(b.value * b.n)
    _, p = fisher_exact([[ka, a.n - ka], [kb, b.n - kb]])
    return Difference(float(p), "Fisher exact (unpaired)")
