"""The in-memory drawing and the error/skip bookkeeping every reader shares.

A drawing travels through the framework in one of two forms:

* ``Drawing.strokes``: a list of ``(n, 2)`` (simplified) or ``(n, 3)`` (raw: x, y, t ms) arrays,
  as the dataset's files hold them;
* a *points* array ``(N, 3)`` of ``(x, y, pen_up)`` in drawing order, with ``pen_up = 1`` on the last
  point of each stroke. This is what prepared datasets store and what both views are built from.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np


class DataFormatError(ValueError):
    """Bad input, always naming the file and the position (line or byte offset) where it was found."""

    def __init__(self, path, position: str | None, reason: str):
        self.path = str(path)
        self.position = position
        self.reason = reason
        where = f"{self.path}:{position}" if position else self.path
        super().__init__(f"{where}: {reason}")


@dataclass
class Drawing:
    key_id: int
    word: str
    strokes: list[np.ndarray]
    countrycode: str = ""
    recognized: bool = True
    timestamp: str | int | None = None

    @property
    def n_points(self) -> int:
        return int(sum(len(s) for s in self.strokes))

    def points(self) -> np.ndarray:
        return strokes_to_points(self.strokes)


def strokes_to_points(strokes: Iterable[np.ndarray], dtype=np.int16) -> np.ndarray:
    """Strokes → ``(N, 3)`` ``(x, y, pen_up)``; pen_up marks each stroke's last point."""
    parts = []
    for s in strokes:
        s = np.asarray(s)
        p = np.zeros((len(s), 3), dtype=dtype)
        p[:, :2] = np.rint(s[:, :2]) if np.issubdtype(dtype, np.integer) else s[:, :2]
        p[-1, 2] = 1
        parts.append(p)
    if not parts:
        return np.zeros((0, 3), dtype=dtype)
    return np.concatenate(parts)


def points_to_strokes(points: np.ndarray) -> list[np.ndarray]:
    """Inverse of :func:`strokes_to_points` (x, y only). A missing final pen_up closes the last stroke."""
    points = np.asarray(points)
    ends = np.flatnonzero(points[:, 2] > 0) + 1
    if len(ends) == 0 or ends[-1] != len(points):
        ends = np.append(ends, len(points))
    starts = np.concatenate([[0], ends[:-1]])
    return [points[a:b, :2].copy() for a, b in zip(starts, ends) if b > a]


@dataclass
class SkipReport:
    """Counts bad inputs that were skipped, so they are reported at the end instead of vanishing.

    ``on_error='raise'`` turns the first one into a :class:`DataFormatError` instead.
    """

    on_error: str = "skip"
    max_listed: int = 50
    count: int = 0
    items: list[tuple[str, str, str]] = field(default_factory=list)

    def __post_init__(self):
        if self.on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {self.on_error!r}")

    def bad(self, path, position: str | None, reason: str) -> None:
        if self.on_error == "raise":
            raise DataFormatError(path, position, reason)
        self.count += 1
        if len(self.items) < self.max_listed:
            self.items.append((str(path), position or "", reason))

    def merge(self, other: SkipReport) -> None:
        self.count += other.count
        room = self.max_listed - len(self.items)
        self.items.extend(other.items[: max(room, 0)])

    def summary(self) -> str:
        if not self.count:
            return "no bad inputs"
        lines = [f"skipped {self.count:,} bad input(s):"]
        lines += [f"  {p}:{pos}: {r}" if pos else f"  {p}: {r}" for p, pos, r in self.items]
        if self.count > len(self.items):
            lines.append(f"  … and {self.count - len(self.items):,} more")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"count": self.count,
                "items": [{"file": p, "position": pos, "reason": r} for p, pos, r in self.items]}

    @classmethod
    def from_json(cls, data: dict) -> SkipReport:
        """The report a manifest's ``skipped`` holds (for its summary)."""
        return cls(count=int(data.get("count", 0)),
                   items=[(i["file"], i["position"], i["reason"]) for i in data.get("items", [])])


#: Simplified drawings lie on the integer canvas 0–CANVAS_MAX (the dataset's simplification).
CANVAS_MAX = 255
#: Raw coordinates (canvas pixels) beyond ± this are refused: the real raw drawings span
#: −1,013…2,755 (tests/test_formats.py, slow); a million-pixel coordinate is a broken record.
RAW_COORD_LIMIT = 100_000.0
#: A drawing must span at least this much (larger of its x and y ranges, in its own units) before
#: it is scaled onto the canvas: all points in one place carry no shape, and scaling a near-zero
#: extent up to 255 would blow rounding noise into a drawing.
MIN_EXTENT = 1.0


def check_strokes(strokes: list[np.ndarray], *, coord_max: float | None = CANVAS_MAX,
                  allow_single_point_strokes: bool = False) -> str | None:
    """Why a drawing is unusable, or None. Used by every reader so they agree on what is bad.

    ``coord_max=None`` is for data on no fixed canvas (raw, stroke-3): coordinates must then lie
    within ±``RAW_COORD_LIMIT``. Every drawing must span at least ``MIN_EXTENT``.
    """
    if len(strokes) == 0:
        return "empty drawing (no strokes)"
    if coord_max is not None:
        lo_ok, hi_ok, span = 0.0, coord_max, f"0–{coord_max:g}"
    else:
        lo_ok, hi_ok, span = -RAW_COORD_LIMIT, RAW_COORD_LIMIT, f"±{RAW_COORD_LIMIT:,.0f}"
    total = 0
    for i, s in enumerate(strokes):
        if len(s) == 0:
            return f"stroke {i} has no points"
        if len(s) == 1 and not allow_single_point_strokes:
            return f"stroke {i} has a single point"
        if not np.all(np.isfinite(s[:, :2])):
            return f"stroke {i} has non-finite coordinates"
        if s[:, :2].min() < lo_ok or s[:, :2].max() > hi_ok:
            return f"stroke {i} has coordinates outside {span}"
        total += len(s)
    if total < 2:
        return "drawing has a single point"
    xy = np.concatenate([np.asarray(s)[:, :2] for s in strokes])
    extent = float((xy.max(axis=0) - xy.min(axis=0)).max())
    if extent < MIN_EXTENT:
        return f"drawing spans {extent:g} (all points in one place; at least {MIN_EXTENT:g} needed)"
    return None
