"""A drawing posted to the studio, checked and turned into the simplified points every model reads.

The page sends raw canvas coordinates (with a time row); a script may send Quick, Draw!'s simplified
strokes. Raw input goes through the dataset's own simplification (:mod:`sketchembed.data.simplify`),
so a sketch drawn in the browser reaches the model exactly as a drawing of the training files did.
Every refusal is a :class:`BadInput` whose message names what is wrong in one line.
"""

from __future__ import annotations

import math
from numbers import Real

import numpy as np

from sketchembed.data.simplify import CANVAS_MAX, simplify_strokes
from sketchembed.data.sketch import check_strokes, points_to_strokes, strokes_to_points

MAX_STROKES = 256
MAX_POINTS = 20_000
MAX_BODY_BYTES = 2 * 1024 * 1024
FORMATS = ("auto", "raw", "simplified")


class BadInput(ValueError):
    """A request the studio refuses; ``status`` is the HTTP code it answers with."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


def _row(values, where: str) -> np.ndarray:
    if not isinstance(values, list):
        raise BadInput(f"{where} must be a list of numbers, got {type(values).__name__}", 400)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, Real):
            raise BadInput(f"{where} must hold numbers only, found {type(v).__name__} {str(v)[:20]!r}", 400)
    arr = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise BadInput(f"{where} holds NaN or infinity")
    return arr


def parse_strokes(drawing) -> list[np.ndarray]:
    """``[[[x…], [y…](, [t…])], …]`` → ``(n, 2 or 3)`` float arrays, with the caps enforced."""
    if not isinstance(drawing, list):
        raise BadInput(f"'drawing' must be a list of strokes [[x…], [y…]], got {type(drawing).__name__}", 400)
    if not drawing:
        raise BadInput("'drawing' is empty (no strokes)")
    if len(drawing) > MAX_STROKES:
        raise BadInput(f"'drawing' has {len(drawing)} strokes, at most {MAX_STROKES} are accepted", 413)
    strokes, total = [], 0
    for i, stroke in enumerate(drawing):
        if not isinstance(stroke, list) or len(stroke) not in (2, 3):
            got = f"{len(stroke)} rows" if isinstance(stroke, list) else type(stroke).__name__
            raise BadInput(f"stroke {i} must be [[x…], [y…]] or [[x…], [y…], [t…]], got {got}", 400)
        names = ("x", "y", "t")
        n = len(stroke[0]) if isinstance(stroke[0], list) else -1
        total += max(n, 0)
        if total > MAX_POINTS:
            raise BadInput(f"'drawing' has more than {MAX_POINTS} points", 413)
        rows = [_row(r, f"stroke {i} {names[j]}") for j, r in enumerate(stroke)]
        for j, r in enumerate(rows[1:], start=1):
            if len(r) != len(rows[0]):
                raise BadInput(f"stroke {i}: x has {len(rows[0])} values but {names[j]} has {len(r)}")
        if len(rows[0]) == 0:
            raise BadInput(f"stroke {i} has no points")
        strokes.append(np.stack(rows, axis=1))
    return strokes


def is_simplified(strokes: list[np.ndarray]) -> bool:
    """Looks like Quick, Draw!'s simplified form: x/y only, integers on 0–255, no one-point strokes."""
    return all(s.shape[1] == 2 and len(s) >= 2 and np.all(s == np.rint(s)) and s.min() >= 0
               and s.max() <= CANVAS_MAX for s in strokes)


def to_points(drawing, fmt: str = "auto") -> np.ndarray:
    """The posted drawing as simplified ``(N, 3)`` int16 points ``(x, y, pen_up)``.

    ``fmt``: ``raw`` (any frame, simplified here), ``simplified`` (used as is) or ``auto``
    (simplified when it looks so, see :func:`is_simplified`; a time row always means raw).
    """
    if fmt not in FORMATS:
        raise BadInput(f"'format' must be one of {', '.join(FORMATS)}, got {str(fmt)[:40]!r}")
    strokes = parse_strokes(drawing)
    if fmt == "auto":
        fmt = "simplified" if is_simplified(strokes) else "raw"
    if fmt == "raw":
        strokes = simplify_strokes(strokes)  # a one-point stroke (a tap) becomes a dot of two points
    why = check_strokes(strokes, coord_max=CANVAS_MAX)  # the readers' rule: e.g. a lone dot is refused
    if why:
        raise BadInput(f"{fmt} drawing: {why}")
    return strokes_to_points(strokes)


def parse_k(value, default: int, upper: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        if not (isinstance(value, float) and math.isfinite(value) and value == int(value)):
            raise BadInput(f"'k' must be an integer, got {str(value)[:20]!r}")
        value = int(value)
    if not 1 <= value <= upper:
        raise BadInput(f"'k' must be in 1..{upper}, got {value}")
    return int(value)


def strokes_json(points: np.ndarray) -> list[list[list[int]]]:
    """``(N, 3)`` points → the Quick, Draw! stroke lists ``[[[x…], [y…]], …]`` the page draws."""
    return [[s[:, 0].astype(int).tolist(), s[:, 1].astype(int).tolist()] for s in points_to_strokes(points)]
