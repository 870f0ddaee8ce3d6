"""A KNN index of a prepared dataset, embedded once (`sketchembed index build` is
:mod:`sketchembed.commands.index`; the studio builds its index with the same function).

Suggestions then only embed the user's sketch; the index records which checkpoint (path and
sha256) made it, so a suggestion never silently mixes two embedding spaces.
"""

from __future__ import annotations

import time

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from torch.utils.data import DataLoader, Subset

from sketchembed.eval.embed import embed_loader
from sketchembed.eval.knn import KNNIndex, pack_points


def stratified_positions(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` positions of ``labels`` spread evenly over the classes (each class in turn gives one more
    random drawing until ``n`` are taken; small classes run out first), sorted ascending."""
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    lab = labels[order]
    by_class = np.argsort(lab, kind="stable")
    starts = np.searchsorted(lab[by_class], lab[by_class], side="left")
    rank = np.empty(len(lab), dtype=np.int64)
    rank[by_class] = np.arange(len(lab)) - starts  # how many of its class come before it
    take = np.lexsort((rng.random(len(lab)), rank))[:n]  # round by round, classes in random order
    return np.sort(order[take])


def build_index(model, dm, split: str, *, ckpt_path: str = "", ckpt_sha256: str = "", device=None,
                max_items: int | None = None, keep_drawings: bool = True, show_progress: bool = True,
                seed: int = 0):
    """Embed ``dm``'s ``split`` at 100 % with ``model`` → :class:`KNNIndex` (not yet saved).

    ``max_items`` keeps that many drawings sampled evenly across the classes (``seed``), never the
    first rows (the prepared data are sorted by class)."""
    loader = dm.loader(split, 1.0)
    n_total = len(loader.dataset)
    if max_items is not None and int(max_items) < n_total:
        ds = loader.dataset
        keep = stratified_positions(ds.labels, int(max_items), seed)
        loader = DataLoader(Subset(ds, keep.tolist()), batch_size=loader.batch_size, shuffle=False,
                            collate_fn=loader.collate_fn)
        n_total = len(keep)
    if show_progress:
        with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), transient=False, console=None) as bar:
            task = bar.add_task(f"embedding {split}", total=n_total)
            res = embed_loader(model, loader, rasterizer=dm.rasterizer, device=device,
                               with_logits=False, progress=lambda n: bar.advance(task, n))
    else:
        res = embed_loader(model, loader, rasterizer=dm.rasterizer, device=device, with_logits=False)
    store = dm.split_store(split)
    points = offsets = None
    if keep_drawings:
        points, offsets = pack_points([store.points(int(i)) for i in res.indices])
    return KNNIndex(embeddings=res.embeddings, labels=res.labels, key_ids=res.key_ids, classes=dm.class_names,
                    ckpt_path=str(ckpt_path), ckpt_sha256=ckpt_sha256, indices=res.indices, points=points,
                    offsets=offsets,
                    meta={"split": split, "data": str(store.root), "model_kind": getattr(model, "MODEL_KIND", ""),
                          "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
