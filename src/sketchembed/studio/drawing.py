"""A drawing posted to the studio: its size caps, then the one rule for users' drawings.

The page sends raw canvas coordinates (with a time row); a script may send Quick, Draw!'s simplified
strokes. Both are read by :func:`sketchembed.corpus.user_drawing.user_drawing_points` (the rule
``sketchembed suggest`` uses too), which simplifies raw input the dataset's way — here within the
request's work budget (:mod:`sketchembed.studio.budget`). Every refusal is a :class:`BadInput` whose
message names what is wrong in one line (its status by the rule of :mod:`sketchembed.studio.errors`).
"""

from __future__ import annotations

import math

import numpy as np

from sketchembed.corpus.sketch import points_to_strokes
from sketchembed.corpus.user_drawing import MAX_RDP_VISITS, TAP, TOO_INTRICATE, UserDrawingError, user_drawing_points
from sketchembed.studio.budget import LIGHT_RDP_VISITS, MAX_MODEL_POINTS, MAX_POINTS, MAX_STROKES, Work
from sketchembed.studio.errors import BadInput

__all__ = ["parse_k", "strokes_json", "to_points"]


def _check_size(drawing) -> None:
    """The studio's caps (413), checked before anything is parsed."""
    if not isinstance(drawing, list):
        return
    if len(drawing) > MAX_STROKES:
        raise BadInput(f"'drawing' has {len(drawing)} strokes, at most {MAX_STROKES} are accepted", 413)
    total = sum(len(s[0]) for s in drawing if isinstance(s, list) and s and isinstance(s[0], list))
    if total > MAX_POINTS:
        raise BadInput(f"'drawing' has more than {MAX_POINTS} points", 413)


def to_points(drawing, fmt: str = "auto", work: Work | None = None) -> np.ndarray:
    """The posted drawing as simplified ``(N, 3)`` int16 points ``(x, y, pen_up)`` (see
    :func:`~sketchembed.corpus.user_drawing.user_drawing_points`; ``fmt``: auto, raw or simplified).

    A light ``work`` simplifies within :data:`LIGHT_RDP_VISITS` first and, over it, moves to the heavy
    lane and simplifies again within :data:`MAX_RDP_VISITS` (the light try costs little: it stopped)."""
    _check_size(drawing)
    light = work is not None and not work.heavy
    try:
        points = user_drawing_points(drawing, fmt, LIGHT_RDP_VISITS if light else MAX_RDP_VISITS)
    except UserDrawingError as e:
        if light and e.max_visits is not None:
            work.go_heavy(f"a simplification of more than {LIGHT_RDP_VISITS:,} point visits")
            return to_points(drawing, fmt, work)
        raise BadInput(str(e), 413 if e.kind == TOO_INTRICATE else 422, "tap" if e.kind == TAP else None) from None
    if len(points) > MAX_MODEL_POINTS:
        raise BadInput(f"'drawing' has {len(points):,} points once simplified; the model reads at most "
                       f"{MAX_MODEL_POINTS:,}", 413)
    return points


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
