"""Point-level augmentations of one drawing.

They act on the ``(N, 3)`` points ``(x, y, pen_up)`` before anything else, so the sequence view and
the rendered views (image, snapshots) are all derived from the same augmented drawing and stay
consistent. Runs in DataLoader workers (numpy, one drawing at a time); the randomness comes only from
the ``rng`` passed in, so a seeded generator reproduces the result exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["PointAugment"]


class PointAugment:
    """Random stroke dropout, one affine per drawing about its centre, then gaussian point jitter.

    Args (all neutral by default, so ``PointAugment()`` returns its input unchanged):
        scale: ``(lo, hi)``: isotropic scale factor, uniform.
        rotate_deg: rotation uniform in ``[-rotate_deg, rotate_deg]`` degrees.
        shear: shear factors (x and y, independently) uniform in ``[-shear, shear]``.
        translate: shift per axis uniform in ``[-translate, translate]`` canvas px; the drawing's
            centre is kept on the canvas.
        jitter: std of gaussian noise added to every point, canvas px.
        stroke_dropout: probability of dropping each stroke (never all of them).
        p: probability that a drawing is augmented at all.
        canvas: canvas side (256 for the simplified data); points may leave it, the rasterizer clips.

    The affine is ``A = rotation @ shear @ scale`` applied about the centre of the drawing's bounding
    box (before dropout, so kept strokes stay where the affine puts them regardless of the others).
    """

    def __init__(self, scale: Sequence[float] = (1.0, 1.0), rotate_deg: float = 0.0,
                 shear: float = 0.0, translate: float = 0.0, jitter: float = 0.0,
                 stroke_dropout: float = 0.0, p: float = 1.0, canvas: float = 256.0):
        scale = tuple(float(s) for s in scale) if isinstance(scale, Sequence) else (float(scale),)
        if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
            raise ValueError(f"scale must be (lo, hi) with 0 < lo <= hi, got {scale}")
        for name, v in (("rotate_deg", rotate_deg), ("shear", shear), ("translate", translate),
                        ("jitter", jitter), ("canvas", canvas)):
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v}")
        if not 0 <= stroke_dropout <= 1 or not 0 <= p <= 1:
            raise ValueError(f"stroke_dropout and p must lie in [0, 1], got {stroke_dropout}, {p}")
        self.scale = scale
        self.rotate_deg = float(rotate_deg)
        self.shear = float(shear)
        self.translate = float(translate)
        self.jitter = float(jitter)
        self.stroke_dropout = float(stroke_dropout)
        self.p = float(p)
        self.canvas = float(canvas)

    def __repr__(self) -> str:
        return (f"PointAugment(scale={self.scale}, rotate_deg={self.rotate_deg}, shear={self.shear}, "
                f"translate={self.translate}, jitter={self.jitter}, "
                f"stroke_dropout={self.stroke_dropout}, p={self.p}, canvas={self.canvas})")

    @property
    def _affine_is_identity(self) -> bool:
        return self.scale == (1.0, 1.0) and not (self.rotate_deg or self.shear or self.translate)

    def __call__(self, points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``(N, 3)`` points -> augmented ``(N', 3)`` float32 points (N' < N after stroke dropout)."""
        return self.augment(points, rng)[0]

    def augment(self, points: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Like ``__call__`` but also returns the ``(2, 3)`` affine applied (before jitter):
        ``new_xy = affine[:, :2] @ xy + affine[:, 2]``; tests use it to check that views agree."""
        pts = np.array(points, dtype=np.float32)           # a copy, never the caller's array
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise ValueError(f"points must be (N, 3), got {pts.shape}")
        eye = np.array([[1, 0, 0], [0, 1, 0]], dtype=np.float64)
        if len(pts) == 0 or (self.p < 1 and rng.random() >= self.p):
            return pts, eye
        centre = (pts[:, :2].min(0).astype(np.float64) + pts[:, :2].max(0)) / 2
        if self.stroke_dropout > 0:
            pts = self._drop_strokes(pts, rng)
        affine = eye
        if not self._affine_is_identity:
            affine = self._sample_affine(centre, rng)
            xy = pts[:, :2].astype(np.float64) @ affine[:, :2].T + affine[:, 2]
            pts[:, :2] = xy
        if self.jitter > 0:
            pts[:, :2] += rng.normal(0.0, self.jitter, size=(len(pts), 2)).astype(np.float32)
        return pts, affine

    def _sample_affine(self, centre: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        lo, hi = self.scale
        s = rng.uniform(lo, hi) if hi > lo else lo
        a = math.radians(rng.uniform(-self.rotate_deg, self.rotate_deg)) if self.rotate_deg else 0.0
        shx, shy = rng.uniform(-self.shear, self.shear, size=2) if self.shear else (0.0, 0.0)
        t = rng.uniform(-self.translate, self.translate, size=2) if self.translate else np.zeros(2)
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        A = rot @ np.array([[1.0, shx], [shy, 1.0]]) @ np.diag([s, s])
        new_centre = np.clip(centre + t, 0.0, self.canvas)
        return np.concatenate([A, (new_centre - A @ centre)[:, None]], axis=1)

    def _drop_strokes(self, pts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Drop whole strokes, keeping at least one; each kept stroke still ends with pen_up = 1."""
        ends = np.flatnonzero(pts[:, 2] > 0.5) + 1
        if len(ends) == 0 or ends[-1] != len(pts):          # an open last stroke counts as one
            ends = np.append(ends, len(pts))
        n = len(ends)
        keep = rng.random(n) >= self.stroke_dropout
        if not keep.any():
            keep[rng.integers(n)] = True
        if keep.all():
            return pts
        sizes = np.diff(np.concatenate([[0], ends]))
        out = pts[np.repeat(keep, sizes)]
        out[-1, 2] = 1.0
        return out
