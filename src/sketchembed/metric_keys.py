"""Metric keys, built and read in one place: ``SPLIT/NAME`` or ``SPLIT/NAME@TAG``.

``test/acc@100`` (accuracy at 100 % of the drawing), ``val/knn@3`` (KNN with K = 3),
``test/knn@3_study_tie``, ``test/probe_acc``, ``human/acc@50``, ``cv/acc@100``: the split (or the
source: ``human``, ``cv``) before the slash, the figure's name after it; a per-fraction figure ends in
``@`` and the share of the drawing in percent (:func:`fraction_tag`). Training logs them, eval writes
them to ``metrics.json``, reports and sweeps read them: all through these functions (a leaf: it
imports nothing of sketchembed).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

# The splits a run reports figures of, in the order a report prefers them.
SPLITS = ("test", "val")
_PERCENT = re.compile(r"\d+(?:\.\d+)?")


def fraction_tag(fraction) -> str:
    """``1.0`` → ``"100"``, ``0.5`` → ``"50"``: the suffix of ``test/acc@100`` and friends (also of a
    batch's ``fraction`` given as a tensor)."""
    if hasattr(fraction, "flatten"):
        fraction = fraction.flatten()[0].item()
    pct = 100.0 * float(fraction)
    return str(int(round(pct))) if abs(pct - round(pct)) < 1e-6 else f"{pct:g}"


def tagged(name: str, fraction=None) -> str:
    """``acc`` at 0.5 → ``acc@50`` (``name`` itself without a fraction): a figure's name, also the key
    of its per-drawing predictions (``pred@50``)."""
    return name if fraction is None else f"{name}@{fraction_tag(fraction)}"


def knn(k: int, study_tie: bool = False) -> str:
    """``knn@3`` (strict vote) or ``knn@3_study_tie`` (the study's tie rule)."""
    return f"knn@{int(k)}" + ("_study_tie" if study_tie else "")


def key(split: str, name: str, fraction=None) -> str:
    """``key("test", "acc", 1.0)`` → ``test/acc@100``; ``key("val", "probe_acc")`` → ``val/probe_acc``."""
    return f"{split}/{tagged(name, fraction)}"


class Key(NamedTuple):
    split: str
    name: str        # without its tag: ``acc``, ``knn``, ``probe_acc``
    tag: str | None  # after ``@``: percent of the drawing (``acc@50``) or K (``knn@3``); None without one

    @property
    def figure(self) -> str:
        """The key without its split: ``acc@50``."""
        return self.name if self.tag is None else f"{self.name}@{self.tag}"


def parse(metric_key: str) -> Key | None:
    """``test/acc@12.5`` → ``Key("test", "acc", "12.5")``; None for a key without a split."""
    split, sep, rest = str(metric_key).partition("/")
    if not sep or not split or not rest:
        return None
    name, at, tag = rest.partition("@")
    return Key(split, name, tag if at else None)


def tag_fraction(tag: str) -> float | None:
    """A per-fraction tag back as the share of the drawing (``"50"`` → 0.5); None when not a number."""
    return float(tag) / 100 if isinstance(tag, str) and _PERCENT.fullmatch(tag) else None


def split_of(metrics: Mapping) -> str:
    """The split whose numbers a run reports: test if it has any, else val."""
    for split in SPLITS:
        if any(str(k).startswith(split + "/") for k in metrics):
            return split
    return SPLITS[0]


def of_split(metrics: Mapping, split: str) -> dict:
    """The entries of ``metrics`` whose key is ``split``'s (``test/…``), in their order."""
    return {k: v for k, v in metrics.items() if str(k).startswith(split + "/")}
