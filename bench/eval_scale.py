"""`python -m bench eval_scale`: `python eval.py` at the study's scale on this machine, timed per stage.

1. Ten classes: the synthetic 1.5 M-drawing set of ``bench.prepare`` (1.4 M train / 50 k val / 50 k
   test by the study's split), a checkpoint of the CPU default backbone trained for a few steps
   (speed and memory do not depend on how well it is trained), then the whole eval in a child
   process: its ``stages.json`` gives wall time and peak resident memory of each stage (embed, KNN,
   probe, t-SNE, figures); the child's own peak is its ``VmHWM``.
2. The exact KNN search of ``sketchembed.eval.knn`` by backend (faiss, torch matmul) over 100 k
   (eval's default index) and 1.4 M (the whole train split) indexed embeddings, 10 k queries: the
   ``knn.backend=auto`` choice rests on this.
3. 345 classes (a synthetic set over every category): the same eval, with the size of
   ``confusion.png`` and the time of the figures, which must stay small at 345 classes.

Sizes are arguments (`python -m bench.eval_scale --help`), so the section can be checked small;
``--quick`` is the smoke run `make bench ARGS=--quick` uses.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench import save_json
from bench.prepare import write_synthetic
from sketchembed import STUDY_CLASSES
from sketchembed.corpus.categories import CATEGORIES

REPO = Path(__file__).resolve().parents[1]
FULL = dict(drawings=1_500_000, max_train=100_000, max_eval=None, drawings_345=345_000, max_eval_345=20_000,
            knn_index=(100_000, 1_400_000), knn_queries=10_000, model="triplet")
QUICK = dict(drawings=20_000, max_train=2_000, max_eval=500, drawings_345=345 * 60, max_eval_345=1_000,
             knn_index=(2_000,), knn_queries=500, model="triplet")
# the CPU default backbone and image size (README, "Choosing the CPU default")
MODEL_OVERRIDES = {"triplet": ["model=triplet", "backbone=test_resnet", "data.image_size=64"],
                   "combined": ["model=combined", "backbone=test_resnet", "data.image_size=64"]}

_CHILD_PREPARE = r"""
import json, sys
from sketchembed.corpus.prepare import prepare
ds = prepare([sys.argv[1]], sys.argv[2], "all")
print(json.dumps({"n": len(ds), "split_totals": ds.manifest["split_totals"]}))
"""


def _env() -> dict:
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", HYDRA_FULL_ERROR="0",
               PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    env.pop("PROJECT_ROOT", None)
    return env


def _python(args: list[str], what: str, timeout: float | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, *args], cwd=REPO, env=_env(), capture_output=True, text=True,
                       timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {r.returncode}):\n{r.stderr[-4000:]}")
    return r


def build_dataset(work: Path, n_drawings: int, classes, seed: int = 0) -> tuple[Path, dict]:
    """Synthetic per-class ndjson (``bench.prepare``'s generator) prepared into ``work/prepared``."""
    src = work / "simplified"
    src.mkdir(parents=True, exist_ok=True)
    write_synthetic(src, n_drawings, classes=classes, seed=seed)
    out = work / "prepared"
    r = _python(["-c", _CHILD_PREPARE, str(src), str(out)], "prepare")
    return out, json.loads(r.stdout.strip().splitlines()[-1])


def synthetic_prepared(n_drawings: int, classes=STUDY_CLASSES, seed: int = 0,
                       cache: Path = REPO / ".bench" / "synthetic") -> Path:
    """A prepared synthetic set of ``n_drawings`` (built once, then reused from ``cache``)."""
    work = cache / f"{len(classes)}classes-{n_drawings}-seed{seed}"
    prepared = work / "prepared"
    if not (prepared / "manifest.json").is_file():
        build_dataset(work, n_drawings, classes, seed)
        shutil.rmtree(work / "simplified", ignore_errors=True)
    return prepared


def train_checkpoint(prepared: Path, out: Path, model: str = "triplet", steps: int = 2,
                     extra: tuple[str, ...] = (), overrides: list[str] | None = None) -> Path:
    """A checkpoint of ``model`` (or of the run ``overrides`` name) after ``steps`` training steps on
    ``prepared`` (no validation)."""
    model_args = MODEL_OVERRIDES[model] if overrides is None else overrides
    _python([str(REPO / "train.py"), *model_args, f"data.root={prepared}", "trainer.max_epochs=1",
             f"trainer.limit_train_batches={steps}", "trainer.limit_val_batches=0", "test=false", "logger=none",
             "callbacks.sample_images=null", "callbacks.embedding_eval=null", "callbacks.progress=null",
             "callbacks.lr_monitor=null", f"hydra.run.dir={out}", *extra], "train.py")
    ckpt = out / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise RuntimeError(f"train.py wrote no checkpoint under {out}")
    return ckpt


def run_eval(ckpt: Path, out: Path, *overrides: str) -> dict:
    """`python eval.py` in a child; its stages.json, a few metrics, wall time and output sizes."""
    t = time.perf_counter()
    _python([str(REPO / "eval.py"), f"ckpt_path={ckpt}", f"hydra.run.dir={out}", "logger=none", *overrides], "eval.py")
    wall = time.perf_counter() - t
    stages = json.loads((out / "stages.json").read_text())
    m = json.loads((out / "metrics.json").read_text())
    from PIL import Image

    sizes = {}
    for png in sorted(out.glob("*.png")):
        with Image.open(png) as im:
            sizes[png.name] = list(im.size)
    return {"wall_s": round(wall, 1), "eval_stages_wall_s": stages["total_wall_s"],
            "peak_rss_mb": stages["peak_rss_mb"], "peak_resets": stages["peak_resets"],
            "stages": {k: {"wall_s": round(v["wall_s"], 1), "peak_rss_mb": round(v["peak_rss_mb"]),
                           **{x: v[x] for x in v if x not in ("wall_s", "peak_rss_mb")}}
                       for k, v in stages["stages"].items()},
            "n_train": m["n_train"], "n_test": m["n_test"], "n_curve": m["n_curve"],
            "classes": len(m["classes"]), "png_px": sizes, "confused_pairs": len(m.get("confused_pairs") or [])}


def knn_backends(index_sizes, n_queries: int, dim: int = 256, k: int = 5, seed: int = 0) -> list[dict]:
    """Exact search time of each backend on gaussian embeddings (brute force: cost is data-blind);
    with CUDA also the torch search on the GPU (``knn.device=cuda``), ``torch_cuda_s``."""
    from sketchembed.eval.knn import faiss, search

    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n_queries, dim), dtype=np.float32)
    runs = [("faiss", "cpu")] if faiss is not None else []
    runs += [("torch", "cpu")] + ([("torch", "cuda")] if torch.cuda.is_available() else [])
    rows = []
    for n in index_sizes:
        x = rng.standard_normal((int(n), dim), dtype=np.float32)
        row = {"index": int(n), "queries": n_queries, "dim": dim, "k": k}
        ref = None
        for backend, device in runs:
            name = backend if device == "cpu" else f"{backend}_{device}"
            if device != "cpu":
                search(x[:1000], q[:100], k, backend=backend, device=device)  # CUDA context and kernels
                torch.cuda.synchronize()
            t = time.perf_counter()
            idx, _ = search(x, q, k, backend=backend, device=device)
            row[f"{name}_s"] = round(time.perf_counter() - t, 2)
            if ref is not None:
                row["same_neighbours" if device == "cpu" else f"same_neighbours_{device}"] = \
                    round(float((idx == ref).mean()), 5)
            ref = idx if ref is None else ref
        if "faiss_s" in row:
            row["torch_over_faiss"] = round(row["torch_s"] / row["faiss_s"], 2)
        if "torch_cuda_s" in row:
            row["cuda_over_fastest_cpu"] = round(row["torch_cuda_s"] / min(row.get("faiss_s", 1e9), row["torch_s"]), 3)
        rows.append(row)
        del x
    return rows


def run(quick: bool = False, **sizes) -> dict:
    cfg = dict(QUICK if quick else FULL)
    cfg.update({k: v for k, v in sizes.items() if v is not None})
    model = cfg["model"]
    results: dict = {"settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}}
    common = [f"knn.max_train={cfg['max_train'] if cfg['max_train'] else 'null'}"]
    with tempfile.TemporaryDirectory(prefix="sketchembed-bench-eval-") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        prepared, facts = build_dataset(tmp / "ten", cfg["drawings"], STUDY_CLASSES)
        print(f"  {cfg['drawings']:,} synthetic drawings, 10 classes, prepared in {time.perf_counter() - t:.0f} s: "
              f"{facts['split_totals']}")
        ckpt = train_checkpoint(prepared, tmp / "ten" / "train", model)
        ten = run_eval(ckpt, tmp / "ten" / "eval", *common,
                       *([f"data.max_eval={cfg['max_eval']}"] if cfg["max_eval"] else []))
        results["eval_10_classes"] = {"model": model, "drawings": cfg["drawings"], **ten}
        _print_eval("10 classes", ten)

        results["knn_backends"] = knn_backends(cfg["knn_index"], cfg["knn_queries"])
        for r in results["knn_backends"]:
            print("  knn: " + ", ".join(f"{k}={v}" for k, v in r.items()))

        prepared, facts = build_dataset(tmp / "c345", cfg["drawings_345"], CATEGORIES, seed=1)
        ckpt = train_checkpoint(prepared, tmp / "c345" / "train", model)
        big = run_eval(ckpt, tmp / "c345" / "eval", *common, f"data.max_eval={cfg['max_eval_345']}")
        results["eval_345_classes"] = {"model": model, "drawings": cfg["drawings_345"], **big}
        _print_eval("345 classes", big)
    return results


def _print_eval(title: str, r: dict) -> None:
    print(f"  eval, {title}: {r['n_train']:,} train (index, probe), {r['n_test']:,} test "
          f"({r['n_curve']:,} at the curve's other fractions): {r['wall_s']:.0f} s, peak {r['peak_rss_mb']:.0f} MiB")
    print(f"    {'stage':<12}{'wall s':>9}{'peak MiB':>10}")
    for name, s in r["stages"].items():
        print(f"    {name:<12}{s['wall_s']:>9.1f}{s['peak_rss_mb']:>10}")
    if "confusion.png" in r["png_px"]:
        w, h = r["png_px"]["confusion.png"]
        print(f"    confusion.png {w} x {h} px, {r['confused_pairs']} confused pairs listed")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.eval_scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke sizes")
    p.add_argument("--drawings", type=int, help=f"ten-class set size (default {FULL['drawings']:,})")
    p.add_argument("--max-train", type=int, help="knn.max_train of the evals (0 = the whole train split)")
    p.add_argument("--max-eval", type=int, help="data.max_eval of the ten-class eval (default: all test)")
    p.add_argument("--drawings-345", type=int, help=f"345-class set size (default {FULL['drawings_345']:,})")
    p.add_argument("--max-eval-345", type=int, help="data.max_eval of the 345-class eval")
    p.add_argument("--knn-index", type=int, nargs="+", help="index sizes of the KNN backend comparison")
    p.add_argument("--knn-queries", type=int, help="queries of the KNN backend comparison")
    p.add_argument("--model", choices=sorted(MODEL_OVERRIDES), help="model kind (default triplet)")
    p.add_argument("--json", type=Path, help="write the figures here")
    a = p.parse_args(argv)
    res = run(quick=a.quick, drawings=a.drawings, max_train=a.max_train, max_eval=a.max_eval,
              drawings_345=a.drawings_345, max_eval_345=a.max_eval_345,
              knn_index=tuple(a.knn_index) if a.knn_index else None, knn_queries=a.knn_queries, model=a.model)
    save_json(a.json, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
