"""The Quick, Draw! dataset's own simplification of raw drawings, reproduced.

Google describes it as: align to the top-left, scale uniformly into 0–255, resample at 1-pixel
spacing, Ramer–Douglas–Peucker with ε = 2.0. Comparing with Google's simplified files for the same
``key_id`` (``../shared/quickdraw``: raw/ vs simplified/) pins down the details that description
leaves open:

* the scale is ``(x - min) * 255 / max_extent`` with one extent for both axes (the larger of the
  x and y ranges over the whole drawing), kept in floating point — rounding here costs most matches;
* resampling is by **arc length** along the whole stroke (points at 0, 1, 2, … px from the start,
  carried across vertices, plus the stroke's last point), so the raw vertices themselves are *not*
  kept; densifying segments while keeping the vertices changes nothing and matches ~1 %;
* RDP runs on those floating-point points with the perpendicular distance to the *infinite line*
  through the chord (distance to the start point when the chord has zero length, i.e. a closed
  stroke), splitting at the first point of maximal distance when it is ``> ε``;
* coordinates are rounded to integers only at the very end;
* a raw one-point stroke (a dot, which real raw files contain) or a zero-length stroke becomes two
  identical points, as in Google's files.

The remaining differences come from near-ties in RDP (points on a segment parallel to the chord
are equidistant up to floating-point noise, and which one Google's code picked is not recoverable):
see tests/test_simplify.py for the agreement measured on all pairs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace

import numpy as np

from sketchembed.corpus.sketch import CANVAS_MAX, Drawing

EPSILON = 2.0
#: What one RDP level costs beyond its points (its ~25 numpy passes), in point visits: measured on
#: zig-zags, a level takes ~190 µs and a point visit ~250 ns (2 busy CPU cores).
LEVEL_VISITS = 1_000


class TooMuchWork(ValueError):
    """RDP stopped before it would visit more points than the caller's ``max_visits``."""

    def __init__(self, max_visits: int):
        super().__init__(f"its simplification needs more than {max_visits:,} point visits")
        self.max_visits = max_visits


def normalize_to_canvas(strokes: Sequence[np.ndarray], size: float = CANVAS_MAX) -> list[np.ndarray]:
    """Align to the top-left and scale uniformly so the larger extent spans 0–``size`` (float).

    Used by the simplification and for sources whose coordinates are in another frame (sketch-rnn
    stroke-3 deltas). Extra columns (raw time) are dropped. A drawing with no extent stays at 0.
    """
    xy = [np.asarray(s, dtype=np.float64)[:, :2] for s in strokes]
    if not xy:
        return []
    allp = np.concatenate(xy)
    lo = allp.min(axis=0)
    extent = float((allp.max(axis=0) - lo).max())
    if extent > 0:
        return [(s - lo) * size / extent for s in xy]
    return [s - lo for s in xy]


def resample(stroke: np.ndarray, spacing: float = 1.0) -> np.ndarray:
    """Points every ``spacing`` px of arc length, plus the last point; at least two points."""
    s = np.asarray(stroke, dtype=np.float64)[:, :2]
    seg = np.hypot(*np.diff(s, axis=0).T)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    total = arc[-1] if len(arc) else 0.0
    if not total > 0:  # a dot or a stroke that never moves: two identical points, as Google's files
        return s[[0, -1]].copy()
    q = np.arange(0.0, total, spacing)
    if q[-1] < total:
        q = np.append(q, total)
    return np.stack([np.interp(q, arc, s[:, 0]), np.interp(q, arc, s[:, 1])], axis=1)


def rdp_mask(points: np.ndarray, bounds: np.ndarray, epsilon: float = EPSILON,
             max_visits: int | None = None) -> np.ndarray:
    """Ramer–Douglas–Peucker over many polylines at once; returns the keep-mask over ``points``.

    ``bounds`` is ``(m, 2)`` inclusive ``(first, last)`` indices of each polyline in ``points``.
    The recursion is run level by level: every open interval of every polyline is split in one
    vectorised pass, so the Python loop runs once per recursion depth rather than once per split.
    Same arithmetic and tie rule (first maximum) as the textbook recursive version.
    ``max_visits``: a work budget (points visited, :data:`LEVEL_VISITS` per level); a zig-zag makes
    one level per vertex over all its points, so its work is raised as :class:`TooMuchWork` instead.
    """
    pts = np.asarray(points, dtype=np.float64)
    keep = np.zeros(len(pts), dtype=bool)
    bounds = np.asarray(bounds, dtype=np.int64).reshape(-1, 2)
    keep[bounds[:, 0]] = True
    keep[bounds[:, 1]] = True
    lo, hi = bounds[:, 0], bounds[:, 1]
    open_ = hi - lo >= 2
    lo, hi = lo[open_], hi[open_]
    visits = 0
    while len(lo):
        cnt = hi - lo + 1  # endpoints included: their distance is 0, as in the recursive version
        visits += int(cnt.sum()) + LEVEL_VISITS
        if max_visits is not None and visits > max_visits:
            raise TooMuchWork(max_visits)
        starts = np.concatenate([[0], np.cumsum(cnt)[:-1]])
        seg_id = np.repeat(np.arange(len(lo)), cnt)
        idx = np.arange(cnt.sum()) - starts[seg_id] + lo[seg_id]
        a, b = pts[lo][seg_id], pts[hi][seg_id]
        p = pts[idx]
        d = b - a
        length = np.hypot(d[:, 0], d[:, 1])
        with np.errstate(divide="ignore", invalid="ignore"):
            line = np.abs(d[:, 0] * (p[:, 1] - a[:, 1]) - d[:, 1] * (p[:, 0] - a[:, 0])) / length
        dist = np.where(length > 0, line, np.hypot(p[:, 0] - a[:, 0], p[:, 1] - a[:, 1]))
        best = np.maximum.reduceat(dist, starts)
        at_max = np.flatnonzero(dist == best[seg_id])
        _, first = np.unique(seg_id[at_max], return_index=True)
        split = idx[at_max[first]]
        go = best > epsilon
        keep[split[go]] = True
        lo, hi, split = lo[go], hi[go], split[go]
        new_lo = np.concatenate([lo, split])
        new_hi = np.concatenate([split, hi])
        open_ = new_hi - new_lo >= 2
        lo, hi = new_lo[open_], new_hi[open_]
    return keep


def rdp(points: np.ndarray, epsilon: float = EPSILON) -> np.ndarray:
    """RDP of one polyline (float points kept as they are)."""
    points = np.asarray(points, dtype=np.float64)
    if len(points) < 3:
        return points.copy()
    return points[rdp_mask(points, np.array([[0, len(points) - 1]]), epsilon)]


def simplify_many(drawings_strokes: Sequence[Sequence[np.ndarray]], epsilon: float = EPSILON,
                  spacing: float = 1.0, max_visits: int | None = None) -> list[list[np.ndarray]]:
    """Simplify many drawings' strokes in one RDP pass (cheaper per drawing than one at a time);
    ``max_visits``: RDP's work budget (:func:`rdp_mask`)."""
    dense, owner = [], []
    for j, strokes in enumerate(drawings_strokes):
        for s in normalize_to_canvas(strokes):
            dense.append(resample(s, spacing))
            owner.append(j)
    out: list[list[np.ndarray]] = [[] for _ in drawings_strokes]
    if not dense:
        return out
    sizes = np.array([len(s) for s in dense])
    ends = np.cumsum(sizes)
    pts = np.concatenate(dense)
    keep = rdp_mask(pts, np.stack([ends - sizes, ends - 1], axis=1), epsilon, max_visits)
    kept_ends = np.cumsum(keep)[ends - 1]
    kept = np.rint(pts[keep]).astype(np.int64)
    for j, part in zip(owner, np.split(kept, kept_ends[:-1])):
        out[j].append(part)
    return out


def simplify_strokes(strokes: Sequence[np.ndarray], epsilon: float = EPSILON,
                     spacing: float = 1.0, max_visits: int | None = None) -> list[np.ndarray]:
    """Raw strokes (any frame, x/y in the first two columns) → simplified int64 ``(n, 2)`` strokes."""
    return simplify_many([strokes], epsilon, spacing, max_visits)[0]


def simplify_drawing(drawing: Drawing, epsilon: float = EPSILON) -> Drawing:
    """A raw drawing as the dataset's simplified form (strokes ``(n, 2)`` int on 0–255)."""
    return replace(drawing, strokes=simplify_strokes(drawing.strokes, epsilon))


def simplify_drawings(drawings: Iterable[Drawing], epsilon: float = EPSILON,
                      batch: int = 256) -> Iterator[Drawing]:
    """Stream :func:`simplify_drawing` over many drawings, ``batch`` at a time for speed."""
    buf: list[Drawing] = []
    for d in drawings:
        buf.append(d)
        if len(buf) >= batch:
            yield from _flush(buf, epsilon)
            buf = []
    yield from _flush(buf, epsilon)


def _flush(buf: list[Drawing], epsilon: float) -> Iterator[Drawing]:
    for d, strokes in zip(buf, simplify_many([d.strokes for d in buf], epsilon)):
        yield replace(d, strokes=strokes)
