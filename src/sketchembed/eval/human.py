"""The human test: drawings sampled at 50 % / 100 %, shown as text, answers scored (the terminal
session is `sketchembed human`, :mod:`sketchembed.commands.human`; the studio runs the same test).

The study compares its models with humans (its two figures: ``sketchembed.study.STUDY["human"]``); this
lets anyone produce that number on the same data and fractions the models are evaluated on. Drawings are
drawn as text with braille characters (2 x 4 dots per character: a 64 x 64 dot canvas in 32 x 16
characters), so the terminal session works over ssh with nothing installed.

Each drawing is shown once, at one fraction (seeing it at 50 % first would help at 100 %).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from sketchembed import metric_keys
from sketchembed.data.inputs import DEFAULTS, keep_count

BRAILLE_BASE = 0x2800
# dot bit for (row 0..3, col 0..1) inside one braille cell
_DOT = np.array([[0x01, 0x08], [0x02, 0x10], [0x04, 0x20], [0x40, 0x80]], dtype=np.int32)


def rasterize_dots(points, size: int = 64, canvas: float = DEFAULTS.canvas) -> np.ndarray:
    """``(size, size)`` bool: strokes sampled densely enough to leave no gaps at this resolution."""
    pts = np.asarray(points, dtype=np.float64)
    img = np.zeros((size, size), dtype=bool)
    if len(pts) == 0:
        return img
    scale = (size - 1) / (canvas - 1)
    xy = np.clip(pts[:, :2] * scale, 0, size - 1)
    starts = np.concatenate([[0], np.flatnonzero(pts[:-1, 2] > 0.5) + 1])
    ends = np.concatenate([np.flatnonzero(pts[:-1, 2] > 0.5) + 1, [len(pts)]])
    for a, b in zip(starts, ends):
        s = xy[a:b]
        if len(s) == 1:
            img[int(round(s[0, 1])), int(round(s[0, 0]))] = True
            continue
        seg_len = np.ceil(np.abs(np.diff(s, axis=0)).max(axis=1)).astype(int) + 1
        for (p, q), m in zip(zip(s[:-1], s[1:]), seg_len):
            t = np.linspace(0.0, 1.0, int(m) + 1)[:, None]
            line = np.rint(p + (q - p) * t).astype(int)
            img[line[:, 1], line[:, 0]] = True
    return img


def braille(points, width: int = 32, height: int = 16, canvas: float = DEFAULTS.canvas) -> list[str]:
    """Text lines drawing ``points`` in ``width x height`` braille characters."""
    size = max(2 * width, 4 * height)
    img = rasterize_dots(points, size, canvas)[: 4 * height, : 2 * width]
    cells = img.reshape(height, 4, width, 2)
    codes = (cells * _DOT[None, :, None, :]).sum(axis=(1, 3))
    return ["".join(chr(BRAILLE_BASE + int(c)) for c in row) for row in codes]


@dataclass
class Item:
    row: int
    label: int
    key_id: int
    fraction: float
    points: np.ndarray


def sample_items(ds, n: int, fractions: Sequence[float], seed: int = 0, split: str = "test") -> list[Item]:
    """``n`` distinct drawings of ``split`` (seeded), fractions dealt out evenly, in shuffled order."""
    rows = ds.indices(split)
    if len(rows) == 0:
        raise ValueError(f"{ds.root}: the {split} split is empty")
    fractions = [float(f) for f in fractions]
    if not fractions or not all(0 < f <= 1 for f in fractions):
        raise ValueError(f"--fractions must be in (0, 1], got {fractions}")
    rng = np.random.default_rng(seed)
    n = min(int(n), len(rows))
    chosen = rng.choice(rows, size=n, replace=False)
    fr = [fractions[i % len(fractions)] for i in range(n)]
    rng.shuffle(fr)
    items = []
    for r, f in zip(chosen, fr):
        pts = np.asarray(ds.points(int(r)), dtype=np.int16).copy()
        keep = keep_count(len(pts), f)  # the truncation of evaluation (default fraction_rule)
        pts = pts[:keep]
        pts[-1, 2] = 1
        items.append(Item(int(r), int(ds.labels[r]), int(ds.key_ids[r]), f, pts))
    return items


def parse_answer(text: str, classes: Sequence[str]) -> int | None:
    """Class index from ``3`` (1-based), a name, or an unambiguous name prefix; None if unclear."""
    t = text.strip().lower()
    if not t:
        return None
    if t.isdigit():
        i = int(t) - 1
        return i if 0 <= i < len(classes) else None
    names = [c.lower() for c in classes]
    if t in names:
        return names.index(t)
    hits = [i for i, c in enumerate(names) if c.startswith(t)]
    return hits[0] if len(hits) == 1 else None


@dataclass
class Results:
    shown: dict[float, int] = field(default_factory=dict)
    correct: dict[float, int] = field(default_factory=dict)
    answers: list[dict] = field(default_factory=list)

    def add(self, item: Item, guess: int) -> None:
        self.shown[item.fraction] = self.shown.get(item.fraction, 0) + 1
        ok = int(guess == item.label)
        self.correct[item.fraction] = self.correct.get(item.fraction, 0) + ok
        self.answers.append({"row": item.row, "key_id": item.key_id, "fraction": item.fraction,
                             "label": item.label, "guess": guess, "correct": bool(ok)})

    def accuracy(self) -> dict[float, float]:
        return {f: self.correct[f] / self.shown[f] for f in sorted(self.shown)}

    def metrics(self) -> dict[str, float]:
        """``human/acc@50`` … in the metrics.json convention (mergeable into a run's report)."""
        return {metric_keys.key("human", "acc", f): a for f, a in self.accuracy().items()}
