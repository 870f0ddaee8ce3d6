"""Per-drawing predictions of a split, optionally with test-time augmentation (TTA).

TTA: each drawing is seen in a few deterministic versions (``PointTTA.views``: a scale about the
canvas centre and a shift, in canvas units, applied to the points before truncation, so the image,
the snapshots and the sequence all see the same drawing) and the model's logits and embeddings are
averaged over them. The view ``[1, 0, 0]`` is the drawing itself. Only the queries are augmented;
the KNN index (the train split) is embedded as it is.

:func:`split_predictions` gives what a comparison of runs needs per drawing: its key_id and label,
the head's prediction at each eval fraction (``pred@100``, ``pred@50`` — the keys of eval's
``predictions.npz``) and the strict KNN vote (``knn@K``, index = the train split).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch.utils.data import DataLoader

from sketchembed import metric_keys
from sketchembed.data.datamodule import SketchSplit
from sketchembed.eval.embed import Embedded, embed_loader
from sketchembed.eval.knn import neighbor_labels, vote


class PointTTA:
    """Deterministic point views ``[scale, dx, dy]`` (scale about the centre of the ``canvas``,
    shift in canvas units) whose outputs are averaged."""

    def __init__(self, views: Sequence[Sequence[float]] = ((1.0, 0.0, 0.0),), canvas: float = 256.0):
        checked = []
        for i, v in enumerate(views):
            if len(v) != 3 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
                raise ValueError(f"tta.views[{i}]={list(v)!r}: expected [scale, dx, dy] numbers")
            if not v[0] > 0:
                raise ValueError(f"tta.views[{i}]: scale must be > 0, got {v[0]}")
            checked.append(tuple(float(x) for x in v))
        if not checked:
            raise ValueError("tta.views: give at least one view ([1, 0, 0] = the drawing itself)")
        self.views = tuple(checked)
        self.centre = float(canvas) / 2

    def transform(self, view: tuple[float, float, float]):
        """The view as a point augmentation ``(points, rng) -> points`` (the rng is not used)."""
        scale, dx, dy = view
        centre = self.centre

        def apply(points: np.ndarray, rng=None) -> np.ndarray:
            out = np.array(points, dtype=np.float32, copy=True)
            out[:, :2] = (out[:, :2] - centre) * scale + centre
            out[:, 0] += dx
            out[:, 1] += dy
            return out

        return apply


def embed_split(model, dm, split: str, fraction: float = 1.0, tta: PointTTA | None = None,
                max_items: int | None = None) -> Embedded:
    """Embeddings (and logits) of ``split`` at ``fraction``; with ``tta`` the mean over its views."""
    if tta is None:
        return embed_loader(model, dm.loader(split, fraction), rasterizer=dm.rasterizer, max_items=max_items)
    base = dm.dataset(split)
    runs = []
    for view in tta.views:
        ds = SketchSplit(base.store, base.rows, base.labels, augment=tta.transform(view), seed=base.seed)
        loader = DataLoader(ds, batch_size=dm.eval_batch_size, shuffle=False, collate_fn=dm.collate(fraction))
        runs.append(embed_loader(model, loader, rasterizer=dm.rasterizer, max_items=max_items))
    first = runs[0]
    logits = None if first.logits is None else np.mean([r.logits for r in runs], axis=0)
    return Embedded(embeddings=np.mean([r.embeddings for r in runs], axis=0).astype(np.float32), logits=logits,
                    labels=first.labels, indices=first.indices, key_ids=first.key_ids)


def split_predictions(model, dm, split: str = "test", *, k: int = 3, tta: PointTTA | None = None,
                      max_train: int | None = None) -> dict[str, np.ndarray]:
    """``{key_ids, labels, pred@TAG (per eval fraction, classifiers only), knn@K}`` for every drawing of
    ``split`` (in the DataModule's order); KNN over the train split (``max_train``: a cap)."""
    full = embed_split(model, dm, split, 1.0, tta)
    out = {"key_ids": full.key_ids.astype(np.uint64), "labels": full.labels.astype(np.int64)}
    for f in dm.eval_fractions:
        e = full if f == 1.0 else embed_split(model, dm, split, f, tta)
        if e.logits is not None:
            out[metric_keys.tagged("pred", f)] = e.logits.argmax(1).astype(np.int64)
    train = embed_loader(model, dm.loader("train", 1.0), rasterizer=dm.rasterizer, max_items=max_train,
                         with_logits=False)
    if len(train) >= k:
        nl = neighbor_labels(train.embeddings, train.labels, full.embeddings, k)
        out[metric_keys.knn(k)] = vote(nl, k, dm.num_classes).astype(np.int64)
    return out
