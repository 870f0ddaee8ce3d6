"""`sketchembed index build`: embed a prepared dataset once and save a KNN index of it.

Suggestions then only embed the user's sketch; the index records which checkpoint (path and
sha256) made it, so a suggestion never silently mixes two embedding spaces.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from torch.utils.data import DataLoader, Subset

from sketchembed.data.datamodule import SketchDataModule
from sketchembed.eval.embed import embed_loader, pick_device
from sketchembed.eval.knn import KNNIndex, index_target_problem, pack_points
from sketchembed.models.checkpoint import file_sha256, open_checkpoint


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="sketchembed checkpoint (.ckpt)")
    parser.add_argument("--data", required=True, help="prepared dataset dir or embedded name (study10, others335)")
    parser.add_argument("--split", default="train", choices=("train", "val", "test"))
    parser.add_argument("--out", required=True, help="index folder to write: a new path, an empty folder or an earlier index")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 …")
    parser.add_argument("--max", type=int, default=None,
                        help="index at most this many drawings, sampled evenly across the classes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --max sample")
    parser.add_argument("--no-drawings", action="store_true",
                        help="do not copy the drawings into the index (smaller; suggest --png then cannot draw)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def check_options(args) -> None:
    """The options, before anything is loaded or embedded: a bad one is one line naming it."""
    for name, value, low in (("--batch-size", args.batch_size, 1), ("--max", args.max, 1), ("--seed", args.seed, 0)):
        if value is not None and value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    why = index_target_problem(args.out)
    if why:
        raise ValueError(f"--out {args.out}: {why}")


def run(args) -> int:
    check_options(args)
    device = pick_device(args.device)
    model, inputs, _, _ = open_checkpoint(args.ckpt, map_location=device)
    dm = SketchDataModule.from_inputs(inputs, args.data, views=tuple(sorted(model.views)), eval_fractions=(1.0,),
                                      eval_batch_size=args.batch_size)
    index = build_index(model, dm, args.split, ckpt_path=str(Path(args.ckpt).resolve()),
                        ckpt_sha256=file_sha256(args.ckpt), device=device, max_items=args.max,
                        keep_drawings=not args.no_drawings, show_progress=not args.quiet, seed=args.seed)
    out = index.save(args.out)
    counts = np.bincount(index.labels, minlength=len(index.classes))
    print(f"indexed {len(index)} drawings ({args.split} of {dm.split_store(args.split).root}), "
          f"dim {index.dim}, {int((counts > 0).sum())} classes → {out}", file=sys.stderr)
    return 0
