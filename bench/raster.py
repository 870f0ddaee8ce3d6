"""Rasterizer throughput with ALL stroke-end snapshots (and the final image alone), beside an OpenCV
reference that renders the classic way in the same run: one drawing at a time, ``cv2.polylines`` per
stroke on a 265 px canvas and a bicubic ``cv2.resize`` to the output size after each stroke.

Both produce the same thing, a float32 ``(M, 1, size, size)`` stack of snapshots per batch of real
drawings from ``../shared/quickdraw/simplified`` (repeated to ``n_drawings``); ``mad`` is their mean
absolute difference, to show the two render alike. Threads: as the process has them.

``study_match`` compares our rasterizer at the study's settings (``conf/data/study.yaml``: 255 px
canvas + 5 px border, black ink on white, 224 px) with the study's own way of rendering
(``cv2.polylines`` of thickness 3, anti-aliased, on the white 265 px canvas, bicubic resize to 224):
the mean absolute pixel difference of the final images in [0, 1], and after the per-image
standardisation both feed the CNN (in standard deviations). It does so at the config's
``line_width`` and at the nominal 3: an anti-aliased cv2 line of thickness 3 inks about 5.4 px across
(5 full pixels and two partial ones), so the config's width is the measured closest match.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from sketchembed.data.inputs import InputSettings
from sketchembed.data.raster import Rasterizer, per_image_standardize, stroke_ends

SHARED = Path(os.environ.get("SKETCHEMBED_SHARED", Path(__file__).resolve().parents[2] / "shared"))
BATCH = 256
CUDA_BATCHES = (256, 2048, 8192)   # drawings per rasterizer call on the GPU
CUDA_REPEAT = 8              # the GPU rows render the drawings this many times over (16,384 drawings)
CV_CANVAS = 265
DEFAULTS = InputSettings()   # the rasterizer's default geometry, which the OpenCV reference copies
STUDY_DATA = Path(__file__).resolve().parents[1] / "conf" / "data" / "study.yaml"
STUDY_CV_THICKNESS = 3   # the study's cv2.polylines thickness, on its 255 px canvas + 5 px border


def load_points(n: int, root: Path = SHARED / "quickdraw" / "simplified") -> list[np.ndarray]:
    """Real drawings as (N, 3) float32 points, all files in name order, repeated to ``n``."""
    files = sorted(root.glob("*.ndjson"))
    if not files:
        raise FileNotFoundError(f"no .ndjson drawings in {root} (set SKETCHEMBED_SHARED)")
    from sketchembed.corpus.formats import read_drawings

    out: list[np.ndarray] = []
    for f in files:
        for d in read_drawings(f):
            out.append(d.points().astype(np.float32))
            if len(out) >= n:
                return out
    return [out[i % len(out)] for i in range(n)]


def pad(drawings: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(d) for d in drawings)
    pts = np.zeros((len(drawings), T, 3), np.float32)
    for i, d in enumerate(drawings):
        pts[i, : len(d)] = d
    return torch.from_numpy(pts), torch.tensor([len(d) for d in drawings])


def opencv_snapshots(drawings: list[np.ndarray], size: int, line_width: float = DEFAULTS.line_width,
                     padding: float = DEFAULTS.padding, final_only: bool = False,
                     background: str = DEFAULTS.background) -> np.ndarray:
    """The classic per-drawing loop, same geometry as :class:`Rasterizer`'s defaults;
    ``background="white"``: black ink on a white canvas (the study), values in [0, 1] as drawn."""
    paper, ink = (255, 0) if background == "white" else (0, 255)
    ends = [np.flatnonzero(d[:, 2] > 0) + 1 for d in drawings]
    counts = [1 if final_only else len(e) for e in ends]
    out = np.empty((sum(counts), 1, size, size), np.float32)
    canvas = np.zeros((CV_CANVAS, CV_CANVAS), np.uint8)
    m = 0
    for d, e in zip(drawings, ends):
        canvas[:] = paper
        # Point c sits at c + padding in cv2's pixel-centre coordinates; shift=1 keeps the half.
        xy = np.rint((d[:, :2] + padding) * 2).astype(np.int32)
        start = 0
        for k, stop in enumerate(e):
            cv2.polylines(canvas, [xy[start:stop]], False, ink, int(round(line_width)), cv2.LINE_AA, 1)
            start = stop
            if not final_only or k == len(e) - 1:
                img = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_CUBIC)
                np.multiply(img, np.float32(1 / 255), out=out[m, 0], casting="unsafe")
                m += 1
    return out


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run(n_drawings: int = 2048, quick: bool = False) -> list[dict]:
    if quick:
        n_drawings = min(n_drawings, 256)
    repeats = 1 if quick else 2
    drawings = load_points(n_drawings)
    batches = [drawings[i:i + BATCH] for i in range(0, len(drawings), BATCH)]
    padded = [pad(b) for b in batches]
    n_snaps = int(sum(int(d[:, 2].sum()) for d in drawings))
    rows: list[dict] = []
    for size in (64, 224):
        r = Rasterizer(size)
        for view in ("snapshots", "image"):
            final_only = view == "image"
            n_img = len(drawings) if final_only else n_snaps

            def torch_all():
                for p, n in padded:
                    if final_only:
                        r(p, n)
                    else:
                        r.all_snapshots(p, n)

            def cv_all():
                for b in batches:
                    opencv_snapshots(b, size, r.line_width, r.padding, final_only)

            p, n = padded[0]
            mine = r(p, n) if final_only else r.all_snapshots(p, n)[0]          # warm-up + check
            ref = torch.from_numpy(opencv_snapshots(batches[0], size, r.line_width, r.padding,
                                                    final_only))
            mad = float((mine - ref).abs().mean())
            t_torch = _best(torch_all, repeats)
            t_cv = _best(cv_all, repeats)
            for method, t in (("torch", t_torch), ("opencv", t_cv)):
                rows.append(dict(size=size, view=view, method=method, drawings=len(drawings),
                                 images=n_img, seconds=round(t, 4),
                                 drawings_per_s=round(len(drawings) / t, 1),
                                 images_per_s=round(n_img / t, 1),
                                 speedup_vs_opencv=round(t_cv / t, 3), mad_vs_opencv=round(mad, 4),
                                 threads=torch.get_num_threads(), batch=BATCH, device="cpu"))
    if torch.cuda.is_available():
        rows.extend(cuda_rows(drawings, n_snaps, quick))
    _print(rows)
    study = study_match(drawings)
    for row in study:
        print(f"study inputs vs the study's cv2 rendering ({row['drawings']} drawings, {row['size']} px), "
              f"line_width {row['line_width']} ({row['setting']}): MAD {row['mad']} in [0, 1], "
              f"{row['mad_standardized']} std after per-image standardisation")
    rows.extend(study)
    return rows


def _cv_chunk(args) -> int:
    """Worker: render a chunk the classic way; returns the image count (the images stay in the worker,
    as the GPU's stay on the GPU)."""
    chunk, size, line_width, padding, final_only = args
    return len(opencv_snapshots(chunk, size, line_width, padding, final_only))


def cuda_rows(drawings: list[np.ndarray], n_snaps: int, quick: bool, device: str = "cuda") -> list[dict]:
    """The rasterizer on the GPU (batches already on the device; timed with a sync) beside OpenCV on
    every CPU core (one worker process per core, chunks of ``BATCH`` drawings), on the same drawings
    repeated ``CUDA_REPEAT`` times."""
    dev = torch.device(device)
    on_gpu = dev.type == "cuda"
    repeat = 1 if quick else CUDA_REPEAT
    many = drawings * repeat
    procs = os.cpu_count() or 1
    name = torch.cuda.get_device_name(dev) if on_gpu else str(dev)
    rows = []
    with mp.get_context("fork").Pool(procs, initializer=cv2.setNumThreads, initargs=(1,)) as pool:
        warm = [(drawings[:8], 64, DEFAULTS.line_width, DEFAULTS.padding, True)] * procs
        pool.map(_cv_chunk, warm)                                               # workers up
        for size in (64, 224):
            r = Rasterizer(size)
            for view in ("snapshots", "image"):
                final_only = view == "image"
                n_img = len(many) if final_only else n_snaps * repeat
                chunks = [(many[i:i + BATCH], size, r.line_width, r.padding, final_only)
                          for i in range(0, len(many), BATCH)]
                t = time.perf_counter()
                assert sum(pool.map(_cv_chunk, chunks)) == n_img
                t_cv = time.perf_counter() - t
                rows.append(dict(size=size, view=view, method=f"opencv-{procs}proc", batch=BATCH,
                                 drawings=len(many), images=n_img, seconds=round(t_cv, 4),
                                 drawings_per_s=round(len(many) / t_cv, 1), images_per_s=round(n_img / t_cv, 1),
                                 speedup_vs_opencv=1.0, mad_vs_opencv=0.0, threads=procs, device="cpu"))
                for batch in CUDA_BATCHES:
                    padded = [tuple(x.to(dev) for x in pad(many[i:i + batch])) for i in range(0, len(many), batch)]
                    ends = [stroke_ends(p, n) for p, n in padded]

                    def go(padded=padded, ends=ends, r=r, final_only=final_only):
                        for (p, n), (sb, sp) in zip(padded, ends):
                            r(p, n) if final_only else r.snapshots(p, n, sb, sp)
                        if on_gpu:
                            torch.cuda.synchronize(dev)

                    p, n = padded[0]
                    mine = (r(p, n) if final_only else r.snapshots(p, n, *ends[0])).cpu()       # warm-up + check
                    ref = torch.from_numpy(opencv_snapshots(many[:batch], size, r.line_width, r.padding, final_only))
                    t = _best(go, 1 if quick else 3)
                    rows.append(dict(size=size, view=view, method=f"torch-{dev.type}", batch=batch, drawings=len(many),
                                     images=n_img, seconds=round(t, 4), drawings_per_s=round(len(many) / t, 1),
                                     images_per_s=round(n_img / t, 1), speedup_vs_opencv=round(t_cv / t, 3),
                                     mad_vs_opencv=round(float((mine - ref).abs().mean()), 4), threads=procs,
                                     device=name))
                    del padded, ends, go                                 # go's defaults hold the batches
                    if on_gpu:
                        torch.cuda.empty_cache()
    rows.extend(chunk_sweep(many, dev, quick))
    best = max((x for x in rows
                if x["method"] == f"torch-{dev.type}" and x["size"] == 224 and x["view"] == "snapshots"),
               key=lambda x: x["images_per_s"])
    print(f"goal at 224 px, snapshots: >= 1,000,000 snapshots/s on the GPU and >= 10x OpenCV on {procs} cores: "
          f"{best['images_per_s']:,.0f}/s (batch {best['batch']}), {best['speedup_vs_opencv']:.1f}x")
    return rows


def chunk_sweep(drawings: list[np.ndarray], dev: torch.device, quick: bool, size: int = 224,
                batch: int = 2048) -> list[dict]:
    """Snapshots/s at ``size`` px by the rasterizer's work-chunk size (``CHUNK_ELEMS`` rests on this)."""
    padded = [tuple(x.to(dev) for x in pad(drawings[i:i + batch])) for i in range(0, len(drawings), batch)]
    ends = [stroke_ends(p, n) for p, n in padded]
    n_img = sum(int(sb.numel()) for sb, _ in ends)
    rows = []
    for log2 in (21, 23, 25, 27):
        r = Rasterizer(size, chunk_elems=1 << log2)

        def go():
            for (p, n), (sb, sp) in zip(padded, ends):
                r.snapshots(p, n, sb, sp)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)

        r.snapshots(*padded[0], *ends[0])
        t = _best(go, 1 if quick else 2)
        rows.append(dict(size=size, view="snapshots", method=f"torch-{dev.type}-chunk2^{log2}", batch=batch,
                         drawings=len(drawings), images=n_img, seconds=round(t, 4),
                         drawings_per_s=round(len(drawings) / t, 1), images_per_s=round(n_img / t, 1),
                         speedup_vs_opencv=None, mad_vs_opencv=None, device=str(dev), chunk_elems=1 << log2))
    return rows


def study_match(drawings: list[np.ndarray]) -> list[dict]:
    """MAD of our final images at ``conf/data/study.yaml`` (and at the nominal 3 px) vs its cv2 rendering."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(STUDY_DATA)
    size, padding, canvas = int(cfg.image_size), float(cfg.padding), float(cfg.canvas)
    ref = torch.cat([torch.from_numpy(opencv_snapshots(drawings[i:i + BATCH], size, STUDY_CV_THICKNESS, padding,
                                                       True, "white"))
                     for i in range(0, len(drawings), BATCH)])
    out = []
    for setting, width in (("conf/data/study.yaml", float(cfg.line_width)), ("nominal", float(STUDY_CV_THICKNESS))):
        r = Rasterizer(size, width, padding, canvas, background=cfg.background)
        mine = torch.cat([r.style(r(*pad(drawings[i:i + BATCH]))) for i in range(0, len(drawings), BATCH)])
        out.append(dict(size=size, view="image", method="torch-vs-study-cv2", setting=setting, line_width=width,
                        drawings=len(drawings), mad=round(float((mine - ref).abs().mean()), 4),
                        mad_standardized=round(float((per_image_standardize(mine) - per_image_standardize(ref))
                                                     .abs().mean()), 4)))
    return out


def _print(rows: list[dict]) -> None:
    cols = {"size": "px", "view": "view", "method": "method", "batch": "batch", "drawings_per_s": "drawings/s",
            "images_per_s": "images/s", "speedup_vs_opencv": "x opencv", "mad_vs_opencv": "MAD"}
    title = (f"rasterizer ({rows[0]['drawings']} real drawings, batches of {BATCH}, "
             f"{rows[0]['threads']} threads)")
    try:
        from rich.console import Console
        from rich.table import Table

        t = Table(title=title)
        for c in cols.values():
            t.add_column(c, justify="right")
        for row in rows:
            t.add_row(*[str(row[c]) for c in cols])
        Console(width=max(100, Console().width)).print(t)
    except ImportError:
        print(title)
        print("  ".join(cols.values()))
        for row in rows:
            print("  ".join(str(row[c]) for c in cols))


if __name__ == "__main__":
    run()
