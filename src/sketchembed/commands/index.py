"""`sketchembed index build`: embed a prepared dataset with a checkpoint and save the KNN index
(:func:`sketchembed.eval.index.build_index`) to a folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from sketchembed.data.datamodule import SketchDataModule
from sketchembed.eval.embed import pick_device
from sketchembed.eval.index import build_index
from sketchembed.eval.knn import index_target_problem
from sketchembed.models.checkpoint import file_sha256, open_checkpoint


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="sketchembed checkpoint (.ckpt)")
    parser.add_argument("--data", required=True, help="prepared dataset dir or embedded name (study10, others335)")
    parser.add_argument("--split", default="train", choices=("train", "val", "test"))
    parser.add_argument("--out", required=True,
                        help="index folder to write: a new path, an empty folder or an earlier index")
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
