"""`python -m bench prepare`: preparing the full ten-class download (~1.5 M drawings), timed.

Real data this large is not reachable here, and only volume matters for speed and memory, so the
benchmark writes a synthetic ten-class simplified ndjson set of the same size and shape (random-walk
strokes, ~5 strokes and ~45 points per drawing, real 16-digit key_ids) and prepares it in a child
process, so wall time and peak RSS are the preparation's own. Peak RSS is the child's ``VmHWM``
(/proc/self/status, per address space): ``ru_maxrss`` would not do, as Linux carries the parent's
high-water mark over fork + exec into it.

Beside it, the same run measures its reference: a child that only ``json.loads`` every line of the
same files (the floor for any stdlib-JSON parser), and the generic reader path (``fast=False``) on
one class, to show what the simplified fast path buys.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from sketchembed import STUDY_CLASSES

_CHILD_PREPARE = r"""
import json, re, sys, time
from sketchembed.corpus.prepare import prepare
def peak_mb():
    return int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1)) / 1024
src, out, classes, fast = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
t = time.perf_counter()
ds = prepare([src], out, classes, fast=fast)
wall = time.perf_counter() - t
print(json.dumps({"wall_s": wall, "n": len(ds), "points": int(ds.manifest["n_points"]),
                  "peak_rss_mb": peak_mb(),
                  "split_totals": ds.manifest["split_totals"],
                  "rules": sorted(set(ds.manifest["split_rule"]["per_class"].values()))}))
"""

_CHILD_JSON_FLOOR = r"""
import json, re, sys, time
from pathlib import Path
def peak_mb():
    return int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1)) / 1024
t = time.perf_counter(); n = 0
loads = json.loads
for f in sorted(Path(sys.argv[1]).glob("*.ndjson")):
    with open(f, "rb") as fh:
        for line in fh:
            loads(line); n += 1
print(json.dumps({"wall_s": time.perf_counter() - t, "n": n,
                  "peak_rss_mb": peak_mb()}))
"""


def write_synthetic(root: Path, n_drawings: int, classes=STUDY_CLASSES, seed: int = 0,
                    block: int = 20_000) -> int:
    """Write ``n_drawings`` random-walk drawings spread over ``classes`` as ``<class>.ndjson``; returns bytes.

    Vectorized per block of drawings (one cumsum for all strokes), so 1.5 M drawings take ~1 min.
    """
    rng = np.random.default_rng(seed)
    per = [n_drawings // len(classes) + (i < n_drawings % len(classes)) for i in range(len(classes))]
    # distinct 16-digit key_ids, as real ones: a random start and random positive gaps
    gaps = rng.integers(1, 2_000_000_000, n_drawings, dtype=np.int64)
    all_keys = (4_500_000_000_000_000 + np.cumsum(gaps)).astype(np.uint64)
    all_keys = all_keys[rng.permutation(n_drawings)].tolist()
    total_bytes, k0 = 0, 0
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    for cls, n in zip(classes, per):
        with open(root / f"{cls}.ndjson", "w") as f:
            for a in range(0, n, block):
                m = min(block, n - a)
                n_strokes = np.clip(rng.poisson(4.0, m) + 1, 1, 30)
                lens = np.clip(rng.poisson(7.0, int(n_strokes.sum())) + 2, 2, 120)
                steps = rng.integers(-18, 19, (int(lens.sum()), 2))
                stroke_start = np.cumsum(lens) - lens
                steps[stroke_start] = rng.integers(20, 236, (len(lens), 2))  # each stroke starts anew
                walk = np.cumsum(steps, axis=0)
                walk -= np.repeat(walk[stroke_start] - steps[stroke_start], lens, axis=0)
                np.clip(walk, 0, 255, out=walk)
                xs, ys = walk[:, 0].tolist(), walk[:, 1].tolist()
                lens_l, ns_l = lens.tolist(), n_strokes.tolist()
                lines, p, si = [], 0, 0
                for j in range(m):
                    strokes = []
                    for _ in range(ns_l[j]):
                        q = p + lens_l[si]
                        strokes.append([xs[p:q], ys[p:q]])
                        p, si = q, si + 1
                    lines.append(dumps({"word": cls, "countrycode": "US",
                                        "timestamp": "2017-03-10 22:17:57.57466 UTC", "recognized": True,
                                        "key_id": str(all_keys[k0 + j]), "drawing": strokes}))
                k0 += m
                text = "\n".join(lines) + "\n"
                f.write(text)
                total_bytes += len(text)
    return total_bytes


def _child(code: str, *args: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{r.stderr[-4000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def run(n_drawings: int = 1_500_000, quick: bool = False) -> list[dict]:
    if quick:
        n_drawings = min(n_drawings, 20_000)
    results = []
    with tempfile.TemporaryDirectory(prefix="sketchembed-bench-prepare-") as tmp:
        tmp = Path(tmp)
        src = tmp / "simplified"
        src.mkdir()
        t = time.perf_counter()
        nbytes = write_synthetic(src, n_drawings)
        print(f"generated {n_drawings:,} drawings ({nbytes / 2**20:.0f} MiB ndjson, 10 classes) "
              f"in {time.perf_counter() - t:.0f} s")

        floor = _child(_CHILD_JSON_FLOOR, str(src))
        fast = _child(_CHILD_PREPARE, str(src), str(tmp / "prepared"), "all", "1")
        one = STUDY_CLASSES[0]
        generic = _child(_CHILD_PREPARE, str(src), str(tmp / "prepared_generic"), one, "0")
        fast_one = _child(_CHILD_PREPARE, str(src), str(tmp / "prepared_one"), one, "1")
        store_mb = sum(f.stat().st_size for f in (tmp / "prepared").iterdir()) / 2**20
        if fast["n"] != n_drawings:
            raise RuntimeError(f"prepared {fast['n']} drawings, generated {n_drawings}")

        results.append({"name": "prepare (simplified ndjson, fast path)", "drawings": fast["n"],
                        "points": fast["points"], "wall_s": round(fast["wall_s"], 1),
                        "drawings_per_s": round(fast["n"] / fast["wall_s"]),
                        "peak_rss_mb": round(fast["peak_rss_mb"]), "input_mb": round(nbytes / 2**20),
                        "store_mb": round(store_mb), "split_totals": fast["split_totals"],
                        "split_rules": fast["rules"]})
        results.append({"name": "reference: json.loads of every line only", "drawings": floor["n"],
                        "wall_s": round(floor["wall_s"], 1),
                        "drawings_per_s": round(floor["n"] / floor["wall_s"]),
                        "peak_rss_mb": round(floor["peak_rss_mb"]),
                        "prepare_over_floor": round(fast["wall_s"] / floor["wall_s"], 2)})
        results.append({"name": f"one class ({one}): generic reader vs fast path", "drawings": generic["n"],
                        "generic_wall_s": round(generic["wall_s"], 1), "fast_wall_s": round(fast_one["wall_s"], 1),
                        "generic_drawings_per_s": round(generic["n"] / generic["wall_s"]),
                        "fast_drawings_per_s": round(fast_one["n"] / fast_one["wall_s"]),
                        "speedup": round(generic["wall_s"] / fast_one["wall_s"], 2),
                        "generic_peak_rss_mb": round(generic["peak_rss_mb"])})
    for r in results:
        print("  " + ", ".join(f"{k}={v}" for k, v in r.items()))
    return results


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
