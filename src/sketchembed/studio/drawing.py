"""A drawing posted to the studio: its size caps, then the one rule for users' drawings.

The page sends raw canvas coordinates (with a time row); a script may send Quick, Draw!'s simplified
strokes. Both are read by :func:`sketchembed.data.user_drawing.user_drawing_points` (the rule
``sketchembed suggest`` uses too), which simplifies raw input the dataset's way. Every refusal is a
:class:`BadInput` whose message names what is wrong in one line.
"""

from __future__ import annotations

import math

import numpy as np

from sketchembed.data.sketch import points_to_strokes
from sketchembed.data.user_drawing import UserDrawingError, user_drawing_points

__all__ = ["MAX_BODY_BYTES", "MAX_POINTS", "MAX_STROKES", "BadInput", "parse_k", "strokes_json",
           "to_points"]

MAX_STROKES = 256
MAX_POINTS = 20_000
MAX_BODY_BYTES = 2 * 1024 * 1024


class BadInput(ValueError):
    """A request the studio refuses; ``status`` is the HTTP code it answers with."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


def _check_size(drawing) -> None:
    """The studio's caps (413), checked before anything is parsed."""
    if not isinstance(drawing, list):
        return
    if len(drawing) > MAX_STROKES:
        raise BadInput(f"'drawing' has {len(drawing)} strokes, at most {MAX_STROKES} are accepted", 413)
    total = sum(len(s[0]) for s in drawing if isinstance(s, list) and s and isinstance(s[0], list))
    if total > MAX_POINTS:
        raise BadInput(f"'drawing' has more than {MAX_POINTS} points", 413)


def to_points(drawing, fmt: str = "auto") -> np.ndarray:
    """The posted drawing as simplified ``(N, 3)`` int16 points ``(x, y, pen_up)`` (see
    :func:`~sketchembed.data.user_drawing.user_drawing_points`; ``fmt``: auto, raw or simplified)."""
    _check_size(drawing)
    try:
        return user_drawing_points(drawing, fmt)
    except UserDrawingError as e:
        raise BadInput(str(e), 400 if e.malformed else 422) from None


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
