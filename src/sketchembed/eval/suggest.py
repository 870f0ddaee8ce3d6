"""`sketchembed suggest`: the drawings of an index most similar to a (possibly unfinished) sketch.

The sketch is embedded at its last stroke end — the same place every model reads its prediction —
so a half-drawn sketch gets suggestions for what it looks like so far; ``--fraction`` cuts a
finished one to try that out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def read_sketch(path, line: int = 1):
    """The ``line``-th drawing (1-based) of a sketch file, as simplified ``(n, 3)`` points."""
    from sketchembed.data.formats import read_drawings
    from sketchembed.data.sketch import DataFormatError, SkipReport

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sketch file not found: {path}")
    if line < 1:
        raise ValueError(f"--line must be >= 1, got {line}")
    report = SkipReport(on_error="raise")
    drawing = None
    try:
        # any class name: the sketch's word is only shown, and a model may know classes outside Quick, Draw!
        for i, d in enumerate(read_drawings(path, on_error="raise", report=report, words=None), start=1):
            if i == line:
                drawing = d
                break
    except DataFormatError:
        raise
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataFormatError(path, None, f"cannot read sketch ({e.__class__.__name__}: {e})") from None
    if drawing is None:
        raise DataFormatError(path, None, f"no drawing number {line} in the file")
    if drawing.strokes and np.asarray(drawing.strokes[0]).shape[1] >= 3:  # raw: x, y, t
        from sketchembed.data.simplify import simplify_drawing

        drawing = simplify_drawing(drawing)
    points = drawing.points()
    if len(points) < 2:
        raise DataFormatError(path, f"drawing {line}", "fewer than 2 points")
    return drawing, points


def check_index_matches(index, ckpt_path, ckpt_sha256: str, allow_mismatch: bool = False) -> str | None:
    """Error (or, with ``allow_mismatch``, a warning returned) when the index was built by another model."""
    if not index.ckpt_sha256 or index.ckpt_sha256 == ckpt_sha256:
        return None
    msg = (f"index was built with checkpoint {index.ckpt_path or '?'} (sha256 {index.ckpt_sha256[:12]}…), "
           f"not {ckpt_path} (sha256 {ckpt_sha256[:12]}…): distances across two embedding spaces mean nothing; "
           f"rebuild it with `sketchembed index build`")
    if not allow_mismatch:
        raise ValueError(msg)
    return "warning: " + msg


def rasterizer_for(settings: dict):
    """The :class:`Rasterizer` a checkpoint's model was trained with (``settings`` = :func:`data_settings`)."""
    from sketchembed.data.raster import Rasterizer

    return Rasterizer(settings["image_size"], settings["line_width"], settings["padding"],
                      settings.get("canvas", 256.0), background=settings.get("background", "black"),
                      standardize=settings.get("standardize", False))


def embed_sketches(model, drawings, settings: dict, *, rasterizer=None, fraction: float = 1.0, device=None):
    """:func:`embed_points` with a checkpoint's data settings: ``(emb, logits or None, points, lengths)``."""
    from sketchembed.eval.embed import embed_points

    return embed_points(model, drawings, seq_std=settings["seq_std"],
                        rasterizer=rasterizer if rasterizer is not None else rasterizer_for(settings),
                        fraction=fraction, max_snapshots=settings.get("max_snapshots"),
                        fraction_rule=settings.get("fraction_rule", "ceil"),
                        seq_origin=settings.get("seq_origin", (0.0, 0.0)), device=device)


def suggest(model, index, points, settings: dict, *, k: int = 8, fraction: float = 1.0, device=None):
    """``(idx, dist, shown_points)``: the ``k`` nearest indexed drawings of ``points`` cut at ``fraction``."""
    if not 0 < fraction <= 1:
        raise ValueError(f"--fraction must be in (0, 1], got {fraction}")
    emb, _, pts, lengths = embed_sketches(model, [points], settings, fraction=fraction, device=device)
    idx, dist = index.query(emb, k)
    return idx[0], dist[0], pts[0, :lengths[0]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="checkpoint the index was built with")
    parser.add_argument("--index", required=True, help="index dir from `sketchembed index build`")
    parser.add_argument("--sketch", required=True, help=".ndjson (simplified or raw), .bin or .npz file")
    parser.add_argument("--line", type=int, default=1, help="which drawing of the file (1-based)")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--fraction", type=float, default=1.0, help="use only this share of the points")
    parser.add_argument("--png", help="also draw the sketch and its neighbours into this PNG")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--allow-mismatch", action="store_true",
                        help="only warn when the index was built with another checkpoint")


def run(args) -> int:
    from sketchembed.eval.checkpoint import data_settings, file_sha256, load_model, read_checkpoint
    from sketchembed.eval.index import pick_device
    from sketchembed.eval.knn import KNNIndex

    if args.k < 1:
        raise ValueError(f"--k must be >= 1, got {args.k}")
    index = KNNIndex.load(args.index)
    ckpt = read_checkpoint(args.ckpt)
    warning = check_index_matches(index, args.ckpt, file_sha256(args.ckpt), args.allow_mismatch)
    if warning:
        print(warning, file=sys.stderr)
    drawing, points = read_sketch(args.sketch, args.line)
    device = pick_device(args.device)
    model = load_model(args.ckpt, map_location=device)
    idx, dist, shown = suggest(model, index, points, data_settings(ckpt, args.ckpt), k=args.k,
                               fraction=args.fraction, device=device)
    n_strokes = int((shown[:, 2] > 0.5).sum())
    print(f"# {args.sketch} drawing {args.line} ({drawing.word or 'no label'}), {len(shown)}/{len(points)} "
          f"points, {n_strokes} strokes; {len(idx)} nearest of {len(index)}")
    print(f"{'rank':>4}  {'key_id':>20}  {'class':<24} {'distance':>9}")
    for r, (i, d) in enumerate(zip(idx, dist), start=1):
        print(f"{r:>4}  {int(index.key_ids[i]):>20}  {index.classes[int(index.labels[i])]:<24} {float(d):>9.4f}")
    if args.png:
        if index.points is None:
            raise ValueError(f"{args.index}: built with --no-drawings, cannot draw --png")
        from sketchembed.eval.plots import plot_neighbors

        ref = index.classes.index(drawing.word) if drawing.word in index.classes else None
        title = f"your sketch ({100 * args.fraction:g} %)" if args.fraction < 1 else "your sketch"
        plot_neighbors(args.png, [shown], [ref], [[index.drawing(int(i)) for i in idx]],
                       [[int(index.labels[i]) for i in idx]], index.classes, distances=[dist], ref_titles=[title])
        print(f"wrote {args.png}", file=sys.stderr)
    return 0
