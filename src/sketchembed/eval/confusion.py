"""What a confusion matrix says when it is too large to look at (345 classes): the most confused
pairs, the classes most involved in confusions, per-class accuracy sorted.

Pairs are unordered (``a`` taken for ``b`` plus ``b`` taken for ``a``), each direction kept, because
two classes that look alike usually fail both ways; their ``share`` is that count over the two
classes' evaluated drawings.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confused_pairs(cm: np.ndarray, classes: Sequence[str], top: int = 20) -> list[dict]:
    """The ``top`` unordered class pairs with the most confusions, most first (ties: class order)."""
    cm = np.asarray(cm, dtype=np.int64)
    off = cm - np.diag(np.diag(cm))
    both = np.triu(off + off.T, k=1)
    n_per = cm.sum(1)
    i, j = np.nonzero(both)
    order = np.lexsort((j, i, -both[i, j]))[:max(0, int(top))]
    out = []
    for a, b in zip(i[order], j[order]):
        total = int(both[a, b])
        n = int(n_per[a] + n_per[b])
        out.append({"a": classes[a], "b": classes[b], "a_as_b": int(cm[a, b]), "b_as_a": int(cm[b, a]),
                    "total": total, "share": total / n if n else None})
    return out


def most_confused_classes(cm: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` classes most involved in confusions (errors made plus errors drawn), in
    class order; the rest of the top-n filled by class order when fewer classes are confused."""
    cm = np.asarray(cm, dtype=np.int64)
    off = cm - np.diag(np.diag(cm))
    involvement = off.sum(0) + off.sum(1)
    order = np.lexsort((np.arange(len(cm)), -involvement))
    return np.sort(order[:min(int(n), len(cm))])


def per_class_sorted(cm: np.ndarray, classes: Sequence[str]) -> list[tuple[str, int, float]]:
    """``(class, n, accuracy)`` of the classes with evaluated drawings, worst first (ties: class order)."""
    cm = np.asarray(cm)
    n = cm.sum(1)
    rows = [(classes[i], int(n[i]), float(cm[i, i] / n[i])) for i in range(len(classes)) if n[i]]
    return sorted(rows, key=lambda r: r[2])


def pairs_markdown(pairs: Sequence[dict], n_classes: int) -> list[str]:
    """The "Most confused pairs" section of report.md (empty when nothing was confused)."""
    if not pairs:
        return []
    lines = [f"## Most confused pairs (top {len(pairs)} of the {n_classes * (n_classes - 1) // 2} class pairs, "
             "100 % of the drawing)", "",
             "| class a | class b | a taken for b | b taken for a | total | share of a + b (%) |",
             "|---|---|---:|---:|---:|---:|"]
    for p in pairs:
        share = "–" if p["share"] is None else f"{100 * p['share']:.1f}"
        lines.append(f"| {p['a']} | {p['b']} | {p['a_as_b']} | {p['b_as_a']} | {p['total']} | {share} |")
    return lines + [""]
