"""Dropping training batches by their snapshot load (``data.max_mean_snapshots``).

The study's ``combined_model.py`` renders a snapshot at every stroke end and skips a batch whose
drawings average more than 7 of them (GPU memory). :class:`MaxMeanStrokes` reproduces that as a
batch-sampler wrapper, so skipped batches cost nothing (they are never read or rendered). Stroke
counts are those of the stored drawings (before augmentation, which may drop strokes).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from sketchembed.data.samplers import WrappedBatches


def stroke_counts(store, rows: np.ndarray, *, chunk_drawings: int = 1 << 18) -> np.ndarray:
    """Strokes (points with pen_up = 1) of each of ``rows``, int64; one vectorized pass in chunks."""
    rows = np.asarray(rows, dtype=np.int64)
    offsets = np.asarray(store.offsets)
    pts = store.all_points
    n = len(offsets) - 1
    counts = np.zeros(n, dtype=np.int64)
    wanted = np.zeros(n, dtype=bool)
    wanted[rows] = True
    for a in range(0, n, chunk_drawings):
        b = min(n, a + chunk_drawings)
        if not wanted[a:b].any():
            continue
        pen = np.asarray(pts[offsets[a]:offsets[b], 2]) > 0
        counts[a:b] = np.add.reduceat(pen, offsets[a:b] - offsets[a])  # every drawing has >= 1 point
    return counts[rows]


class MaxMeanStrokes(WrappedBatches):
    """Yields the batches of ``batch_sampler`` whose items average at most ``max_mean`` strokes.

    ``strokes[i]`` is the stroke count of item ``i`` (a position the inner sampler yields). The
    length is exact: the inner sampler's epoch is walked once per epoch to count the kept batches.
    """

    def __init__(self, batch_sampler, strokes: np.ndarray, max_mean: float):
        super().__init__(batch_sampler)
        self.strokes = np.asarray(strokes, dtype=np.int64)
        self.max_mean = float(max_mean)
        self._len: tuple[int, int] | None = None  # (epoch, kept batches)

    def _keep(self, batch) -> bool:
        return float(self.strokes[np.asarray(batch, dtype=np.int64)].mean()) <= self.max_mean

    def __iter__(self) -> Iterator[list[int]]:
        return (batch for batch in self.batch_sampler if self._keep(batch))

    def __len__(self) -> int:
        if self._len is None or self._len[0] != self.epoch:
            kept = sum(1 for _ in iter(self))
            if kept == 0:
                raise ValueError(f"data.max_mean_snapshots={self.max_mean:g} drops every training batch "
                                 f"(the drawings average more stroke ends than that)")
            self._len = (self.epoch, kept)
        return self._len[1]
