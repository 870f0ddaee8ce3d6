"""A drawing made by a user (JSON strokes), checked and turned into the simplified points every model reads.

One rule for every entry point (the studio's ``/api/predict``, ``sketchembed suggest``): a list of
strokes ``[[x…], [y…]]`` or ``[[x…], [y…], [t…]]``, in Quick, Draw!'s simplified form (integers on
0–255) or raw canvas coordinates with or without a time row. Raw input goes through the dataset's own
simplification (:mod:`sketchembed.data.simplify`), so a user's sketch reaches a model exactly as a
drawing of the training files did. Every refusal is a :class:`UserDrawingError` (a ``ValueError``)
whose message names what is wrong in one line.

Raw input is checked before it is simplified, so the work stays small: coordinates within the raw
readers' limit (:data:`~sketchembed.data.sketch.RAW_COORD_LIMIT`, by their own
:func:`~sketchembed.data.sketch.check_strokes`), and :data:`MAX_SIMPLIFY_WORK` on points × ink length.
The simplification resamples the ink at every pixel of the 0–255 canvas, then Ramer–Douglas–Peucker
runs over those points once per level it keeps (up to one level per raw point, on a zig-zag): a
20,000-point zig-zag within the studio's caps took a minute and a gigabyte. The real raw drawings
stay far below the limit (at most 1,174 points, 36,000 px of ink, 3.7e7 for the product in
../shared/quickdraw's 9,513), and the slowest drawing at the limit (a zig-zag) simplifies in 1–2 s.
"""

from __future__ import annotations

from numbers import Real

import numpy as np

from sketchembed.data.simplify import CANVAS_MAX, simplify_strokes
from sketchembed.data.sketch import check_strokes, strokes_to_points

# the coordinate forms a user's drawing may come in (not file formats: see data/formats/registry.py)
COORDINATE_FORMS = ("auto", "raw", "simplified")
#: A raw drawing's points × its ink length on the 0–255 canvas (px) may be at most this: a bound on
#: the simplification's work (module docstring).
MAX_SIMPLIFY_WORK = 100_000_000


class UserDrawingError(ValueError):
    """A drawing refused; ``malformed`` = the JSON has the wrong shape or types (not just bad values)."""

    def __init__(self, message: str, malformed: bool = False):
        super().__init__(message)
        self.malformed = malformed


def _row(values, where: str) -> np.ndarray:
    if not isinstance(values, list):
        raise UserDrawingError(f"{where} must be a list of numbers, got {type(values).__name__}", True)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, Real):
            raise UserDrawingError(f"{where} must hold numbers only, found {type(v).__name__} {str(v)[:20]!r}", True)
    arr = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise UserDrawingError(f"{where} holds NaN or infinity")
    return arr


def parse_strokes(drawing) -> list[np.ndarray]:
    """``[[[x…], [y…](, [t…])], …]`` → ``(n, 2 or 3)`` float arrays."""
    if not isinstance(drawing, list):
        raise UserDrawingError(f"'drawing' must be a list of strokes [[x…], [y…]]: a {type(drawing).__name__} "
                               f"is not a list of strokes", True)
    if not drawing:
        raise UserDrawingError("'drawing' is empty (no strokes)")
    names = ("x", "y", "t")
    strokes = []
    for i, stroke in enumerate(drawing):
        if not isinstance(stroke, list) or len(stroke) not in (2, 3):
            got = f"{len(stroke)} rows" if isinstance(stroke, list) else type(stroke).__name__
            raise UserDrawingError(f"stroke {i} must be [[x…], [y…]] or [[x…], [y…], [t…]], got {got}", True)
        rows = [_row(r, f"stroke {i} {names[j]}") for j, r in enumerate(stroke)]
        for j, r in enumerate(rows[1:], start=1):
            if len(r) != len(rows[0]):
                raise UserDrawingError(f"x/{names[j]} length mismatch, stroke {i}: x has {len(rows[0])} values "
                                       f"but {names[j]} has {len(r)}")
        if len(rows[0]) == 0:
            raise UserDrawingError(f"stroke {i} has no points")
        strokes.append(np.stack(rows, axis=1))
    return strokes


def is_simplified(strokes: list[np.ndarray]) -> bool:
    """Looks like Quick, Draw!'s simplified form: x/y only, integers on 0–255, no one-point strokes."""
    return all(s.shape[1] == 2 and len(s) >= 2 and np.all(s == np.rint(s)) and s.min() >= 0
               and s.max() <= CANVAS_MAX for s in strokes)


def ink_length(strokes: list[np.ndarray]) -> float:
    """Length of the strokes' ink once the drawing is scaled onto the 0–255 canvas (its larger extent
    spans 255, as the simplification scales it); the drawing must have an extent (check it first)."""
    xy = np.concatenate([s[:, :2] for s in strokes])
    extent = float((xy.max(axis=0) - xy.min(axis=0)).max())
    raw = sum(float(np.hypot(*np.diff(s[:, :2], axis=0).T).sum()) for s in strokes)
    return raw * CANVAS_MAX / extent


def check_raw(strokes: list[np.ndarray]) -> str | None:
    """Why a raw drawing is not simplified, or None: the raw readers' rule (:func:`check_strokes`:
    coordinates within ±RAW_COORD_LIMIT, an extent; a tap counted as the dot of two points it becomes),
    then the bound on the simplification's work."""
    why = check_strokes([s if len(s) > 1 else np.repeat(s, 2, axis=0) for s in strokes], coord_max=None)
    if why:
        return why
    n, ink = sum(len(s) for s in strokes), ink_length(strokes)
    if n * ink > MAX_SIMPLIFY_WORK:
        return (f"too intricate to simplify: {n:,} points along {ink:,.0f} px of ink on the 0–{CANVAS_MAX} canvas "
                f"(points × ink at most {MAX_SIMPLIFY_WORK:,})")
    return None


def user_drawing_points(drawing, fmt: str = "auto") -> np.ndarray:
    """A user's stroke list as simplified ``(N, 3)`` int16 points ``(x, y, pen_up)``.

    ``fmt``: ``raw`` (any frame, simplified here), ``simplified`` (used as is) or ``auto``
    (simplified when it looks so, see :func:`is_simplified`; a time row always means raw).
    """
    if fmt not in COORDINATE_FORMS:
        raise UserDrawingError(f"'format' must be one of {', '.join(COORDINATE_FORMS)}, got {str(fmt)[:40]!r}")
    strokes = parse_strokes(drawing)
    if fmt == "auto":
        fmt = "simplified" if is_simplified(strokes) else "raw"
    if fmt == "raw":
        why = check_raw(strokes)
        if why:
            raise UserDrawingError(f"raw drawing: {why}")
        strokes = simplify_strokes(strokes)  # a one-point stroke (a tap) becomes a dot of two points
    why = check_strokes(strokes, coord_max=CANVAS_MAX)  # the readers' rule: e.g. a lone dot is refused
    if why:
        raise UserDrawingError(f"{fmt} drawing: {why}")
    return strokes_to_points(strokes)
