"""Runs every benchmark section and prints its figures and ratios.

`python -m bench` (all), `python -m bench raster prepare` (some), `--quick` for a short smoke run."""

from __future__ import annotations

import argparse
import importlib
import platform
import time
from pathlib import Path

import torch

from bench import save_json

SECTIONS = {
    "raster": "bench.raster",
    "train": "bench.train_throughput",
    "prepare": "bench.prepare",
    "eval_scale": "bench.eval_scale",
    "studio": "bench.studio",
    # CUDA only (skipped without a GPU; --quick checks them small on the CPU)
    "train_gpu": "bench.train_gpu",
    "eval_gpu": "bench.eval_gpu",
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench")
    # checked by hand: argparse refuses an empty nargs="*" list when `choices` is set
    p.add_argument("sections", nargs="*", help=f"any of {', '.join(SECTIONS)} (default: all)")
    p.add_argument("--quick", action="store_true", help="small sizes: checks the benchmarks run")
    p.add_argument("--json", type=Path, default=Path(".bench/results.json"))
    args = p.parse_args(argv)
    args.sections = args.sections or list(SECTIONS)
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        p.error(f"unknown section {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, cuda {torch.cuda.is_available()}")
    results = {}
    for name in args.sections:
        t0 = time.perf_counter()
        print(f"\n== {name} ==")
        mod = importlib.import_module(SECTIONS[name])
        results[name] = mod.run(quick=args.quick)
        print(f"({name}: {time.perf_counter() - t0:.0f} s)")
    save_json(args.json, results)
    print(f"\nfigures saved to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
