"""A drawing made by a user (JSON strokes), checked and turned into the simplified points every model reads.

One rule for every entry point (the studio's ``/api/predict``, ``sketchembed suggest``): a list of
strokes ``[[x…], [y…]]`` or ``[[x…], [y…], [t…]]``, in Quick, Draw!'s simplified form (integers on
0–255) or raw canvas coordinates with or without a time row. Raw input goes through the dataset's own
simplification (:mod:`sketchembed.corpus.simplify`), so a user's sketch reaches a model exactly as a
drawing of the training files did. Every refusal is a :class:`UserDrawingError` (a ``ValueError``)
whose message names what is wrong in one line.

Raw input is checked before it is simplified, so the work stays small: coordinates within the raw
readers' limit (:data:`~sketchembed.corpus.sketch.RAW_COORD_LIMIT`, by their own
:func:`~sketchembed.corpus.sketch.check_strokes`), and :data:`MAX_SIMPLIFY_WORK` on points × ink length
(which also bounds the resampled points). The simplification resamples the ink at every pixel of the
0–255 canvas, then Ramer–Douglas–Peucker runs over those points once per level it keeps (up to one
level per raw point, on a zig-zag): a 500-point zig-zag within that bound took 5 s. So RDP also counts
its work and stops at :data:`MAX_RDP_VISITS` point visits (a few hundred ms at most). The real raw
drawings stay far below both (at most 1,174 points, 36,000 px of ink, 3.7e7 for the product and
460,000 RDP visits in ../shared/quickdraw's 9,513).
"""

from __future__ import annotations

from numbers import Real

import numpy as np

from sketchembed.corpus.simplify import CANVAS_MAX, TooMuchWork, simplify_strokes
from sketchembed.corpus.sketch import MIN_EXTENT, check_strokes, strokes_to_points

# the coordinate forms a user's drawing may come in (not file formats: see corpus/formats/registry.py)
COORDINATE_FORMS = ("auto", "raw", "simplified")
#: A raw drawing's points × its ink length on the 0–255 canvas (px) may be at most this: a bound on
#: the simplification's work (module docstring).
MAX_SIMPLIFY_WORK = 100_000_000
#: RDP's work on a raw drawing may be at most this many point visits (:func:`~sketchembed.data.
#: simplify.rdp_mask`): 4x the most a real raw drawing needs (module docstring).
MAX_RDP_VISITS = 2_000_000
# why a drawing is refused (UserDrawingError.kind)
INVALID, TAP, TOO_INTRICATE = "invalid", "tap", "too_intricate"


class UserDrawingError(ValueError):
    """A drawing refused. ``kind``: :data:`INVALID` (wrong shape, types or values), :data:`TAP` (all
    its points in one place: a tap, nothing drawn yet) or :data:`TOO_INTRICATE` (over a bound on the
    simplification's work; ``max_visits`` is set when RDP's own count stopped it)."""

    def __init__(self, message: str, kind: str = INVALID, max_visits: int | None = None):
        super().__init__(message)
        self.kind = kind
        self.max_visits = max_visits


def _row(values, where: str) -> np.ndarray:
    if not isinstance(values, list):
        raise UserDrawingError(f"{where} must be a list of numbers, got {type(values).__name__}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, Real):
            raise UserDrawingError(f"{where} must hold numbers only, found {type(v).__name__} {str(v)[:20]!r}")
    arr = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise UserDrawingError(f"{where} holds NaN or infinity")
    return arr


def parse_strokes(drawing) -> list[np.ndarray]:
    """``[[[x…], [y…](, [t…])], …]`` → ``(n, 2 or 3)`` float arrays."""
    if not isinstance(drawing, list):
        raise UserDrawingError(f"'drawing' must be a list of strokes [[x…], [y…]]: a {type(drawing).__name__} "
                               f"is not a list of strokes")
    if not drawing:
        raise UserDrawingError("'drawing' is empty (no strokes)")
    names = ("x", "y", "t")
    strokes = []
    for i, stroke in enumerate(drawing):
        if not isinstance(stroke, list) or len(stroke) not in (2, 3):
            got = f"{len(stroke)} rows" if isinstance(stroke, list) else type(stroke).__name__
            raise UserDrawingError(f"stroke {i} must be [[x…], [y…]] or [[x…], [y…], [t…]], got {got}")
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


def is_tap(strokes: list[np.ndarray]) -> bool:
    """All points in one place (the readers' :data:`~sketchembed.corpus.sketch.MIN_EXTENT`): a tap."""
    xy = np.concatenate([s[:, :2] for s in strokes])
    with np.errstate(over="ignore"):  # ±1e308: an infinite extent, refused later by the coordinate limit
        return float((xy.max(axis=0) - xy.min(axis=0)).max()) < MIN_EXTENT


def check_raw(strokes: list[np.ndarray]) -> str | None:
    """Why a raw drawing is not simplified, or None: the raw readers' rule (:func:`check_strokes`:
    coordinates within ±RAW_COORD_LIMIT, an extent; a tap counted as the dot of two points it becomes),
    then the bound on the simplification's work (:func:`work_problem`)."""
    return readers_problem(strokes) or work_problem(strokes)


def readers_problem(strokes: list[np.ndarray]) -> str | None:
    """The raw readers' verdict on a raw drawing (a tap counted as the dot of two points it becomes)."""
    return check_strokes([s if len(s) > 1 else np.repeat(s, 2, axis=0) for s in strokes], coord_max=None)


def work_problem(strokes: list[np.ndarray]) -> str | None:
    """Why a raw drawing (checked by the readers' rule) is too much work to simplify, or None."""
    n, ink = sum(len(s) for s in strokes), ink_length(strokes)
    if n * ink > MAX_SIMPLIFY_WORK:
        return (f"too intricate to simplify: {n:,} points along {ink:,.0f} px of ink on the 0–{CANVAS_MAX} canvas "
                f"(points × ink at most {MAX_SIMPLIFY_WORK:,})")
    return None


def user_drawing_points(drawing, fmt: str = "auto", max_visits: int = MAX_RDP_VISITS) -> np.ndarray:
    """A user's stroke list as simplified ``(N, 3)`` int16 points ``(x, y, pen_up)``.

    ``fmt``: ``raw`` (any frame, simplified here), ``simplified`` (used as is) or ``auto``
    (simplified when it looks so, see :func:`is_simplified`; a time row always means raw).
    ``max_visits``: RDP's work budget (the studio tries a smaller one first).
    """
    if fmt not in COORDINATE_FORMS:
        raise UserDrawingError(f"'format' must be one of {', '.join(COORDINATE_FORMS)}, got {str(fmt)[:40]!r}")
    strokes = parse_strokes(drawing)
    if fmt == "auto":
        fmt = "simplified" if is_simplified(strokes) else "raw"
    if is_tap(strokes):  # the readers' rule (check_strokes) would say "drawing spans 0"
        raise UserDrawingError(f"{fmt} drawing: a single tap, not a drawing (all its points in one place)", TAP)
    if fmt == "raw":
        why = readers_problem(strokes)
        if why:
            raise UserDrawingError(f"raw drawing: {why}")
        why = work_problem(strokes)
        if why:
            raise UserDrawingError(f"raw drawing: {why}", TOO_INTRICATE)
        try:
            strokes = simplify_strokes(strokes, max_visits=max_visits)  # a tap becomes a dot of two points
        except TooMuchWork as e:
            raise UserDrawingError(f"raw drawing: too intricate to simplify: {e}", TOO_INTRICATE, max_visits) from None
    why = check_strokes(strokes, coord_max=CANVAS_MAX)  # the readers' rule: e.g. a lone dot is refused
    if why:
        raise UserDrawingError(f"{fmt} drawing: {why}")
    return strokes_to_points(strokes)
