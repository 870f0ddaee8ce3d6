"""`sketchembed data stats DIR`: what a prepared dataset holds, to check it before training on it.

Per class and split counts, points and strokes per drawing (computed from the arrays, in one
vectorized pass), the split rule each class got, duplicates and the skipped inputs the manifest lists.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from sketchembed.corpus.embedded import EMBEDDED_NAMES, embedded_dataset_path
from sketchembed.corpus.sketch import DataFormatError, SkipReport
from sketchembed.corpus.store import ARRAYS, SPLIT_NAMES, PreparedDataset, is_count

# Console width when stdout is not a terminal: wide enough for every column (tables do not pad).
LOG_WIDTH = 400


def _is_skipped(v) -> bool:
    return (type(v) is dict and is_count(v.get("count", 0)) and type(v.get("items", [])) is list
            and all(type(i) is dict and all(type(i.get(k)) is str for k in ("file", "position", "reason"))
                    for i in v.get("items", [])))


#: The manifest's informational fields stats shows: (default, check, what it must be).
_EXTRAS = {
    "split_rule": ({}, lambda v: type(v) is dict and type(v.get("per_class", {})) is dict
                   and all(type(r) is str for r in v.get("per_class", {}).values()),
                   "an object whose per_class maps classes to rule names"),
    "duplicates": (0, is_count, "a non-negative integer"),
    "simplified_from_raw": (0, is_count, "a non-negative integer"),
    "skipped": ({"count": 0, "items": []}, _is_skipped,
                "an object with count and items (file, position, reason)"),
    "sources": ([], lambda v: type(v) is list, "a list"),
}


def manifest_extras(ds: PreparedDataset) -> dict:
    """The fields of :data:`_EXTRAS` (defaults where absent), checked: a hand-edited value is one
    ``DataFormatError`` naming manifest.json and the field, not a traceback in the table code."""
    out = {}
    for key, (default, ok, want) in _EXTRAS.items():
        value = ds.manifest.get(key, default)
        if not ok(value):
            raise DataFormatError(ds.root / "manifest.json", None, f"field {key!r} must be {want}")
        out[key] = value
    return out


def compute_stats(ds: PreparedDataset, *, chunk_points: int = 1 << 24) -> dict:
    """Counts and per-drawing size statistics (strokes counted from pen_up, chunk by chunk)."""
    n, c = len(ds), len(ds.classes)
    labels = np.asarray(ds.labels, dtype=np.int64)
    splits = np.asarray(ds.splits, dtype=np.int64)
    counts = np.zeros((c, 3), dtype=np.int64)
    np.add.at(counts, (labels, splits), 1)
    offsets = np.asarray(ds.offsets)
    n_points = np.diff(offsets)
    # strokes per drawing = pen_up marks in its range, summed over chunks of whole drawings
    pts = ds.all_points
    n_strokes = np.zeros(n, dtype=np.int64)
    i = 0
    while i < n:
        j = int(np.searchsorted(offsets, offsets[i] + chunk_points, side="right")) - 1
        j = min(max(j, i + 1), n)
        pen = np.asarray(pts[offsets[i]:offsets[j], 2], dtype=np.int64)
        n_strokes[i:j] = np.add.reduceat(pen, offsets[i:j] - offsets[i])
        i = j

    def describe(x: np.ndarray) -> dict:
        if len(x) == 0:
            return {}
        q = np.percentile(x, [5, 50, 95])
        return {"mean": round(float(x.mean()), 2), "min": int(x.min()), "p5": float(q[0]),
                "median": float(q[1]), "p95": float(q[2]), "max": int(x.max())}

    per_class = {}
    for i, name in enumerate(ds.classes):
        m = labels == i
        per_class[name] = {**dict(zip(SPLIT_NAMES, map(int, counts[i]))), "total": int(counts[i].sum()),
                           "points_mean": round(float(n_points[m].mean()), 1) if m.any() else 0.0,
                           "strokes_mean": round(float(n_strokes[m].mean()), 2) if m.any() else 0.0}
    man = manifest_extras(ds)
    return {
        "root": str(ds.root), "n_drawings": n, "n_points": int(len(pts)), "classes": c,
        "splits": dict(zip(SPLIT_NAMES, map(int, counts.sum(0)))),
        "per_class": per_class,
        "points_per_drawing": describe(n_points),
        "strokes_per_drawing": describe(n_strokes),
        "split_rule": {k: v for k, v in man["split_rule"].items() if k != "per_class"},
        "split_rule_per_class": man["split_rule"].get("per_class", {}),
        "duplicates": man["duplicates"],
        "simplified_from_raw": man["simplified_from_raw"],
        "skipped": man["skipped"],
        "sources": len(man["sources"]),
    }


def render(st: dict, console=None) -> None:
    if console is None:
        console = Console()
        if not console.is_terminal:  # a file or pipe: rich would cut the table at 80 columns
            console = Console(width=LOG_WIDTH)
    s = st["splits"]
    console.print(f"[bold]{st['root']}[/]: {st['n_drawings']:,} drawings, {st['n_points']:,} points, "
                  f"{st['classes']} classes — train {s['train']:,} / val {s['val']:,} / test {s['test']:,}")
    rules = st["split_rule_per_class"]
    t = Table("class", "train", "val", "test", "total", "points/drawing", "strokes/drawing", "split rule")
    for name, r in st["per_class"].items():
        t.add_row(name, f"{r['train']:,}", f"{r['val']:,}", f"{r['test']:,}", f"{r['total']:,}",
                  f"{r['points_mean']:.1f}", f"{r['strokes_mean']:.2f}", rules.get(name, "?"))
    console.print(t)
    for what in ("points_per_drawing", "strokes_per_drawing"):
        d = st[what]
        if d:
            console.print(f"{what.replace('_', ' ')}: mean {d['mean']}, min {d['min']}, p5 {d['p5']:g}, "
                          f"median {d['median']:g}, p95 {d['p95']:g}, max {d['max']}")
    console.print(f"from {st['sources']} source file(s); duplicates dropped {st['duplicates']:,}; "
                  f"simplified from raw {st['simplified_from_raw']:,}")
    skipped = SkipReport.from_json(st["skipped"])
    console.print(skipped.summary(), markup=False, style="yellow" if skipped.count else None)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Statistics of a prepared dataset (counts per class/split, sizes, skipped inputs)."
    parser.add_argument("root", type=Path, help=f"prepared dataset directory (or {' / '.join(EMBEDDED_NAMES)})")
    parser.add_argument("--json", action="store_true", help="print the statistics as JSON")
    parser.add_argument("--verify", action="store_true", help="also check the points' sha256")


def run(args: argparse.Namespace) -> int:
    root = args.root
    if not root.exists() and str(root) in EMBEDDED_NAMES:
        root = embedded_dataset_path(str(root))
    ds = PreparedDataset(root, verify=args.verify)
    st = compute_stats(ds)
    if args.verify:
        st["verified"] = list(ARRAYS)
    if args.json:
        print(json.dumps(st, indent=1, ensure_ascii=False))
    else:
        render(st)
        if args.verify:  # PreparedDataset raised on any mismatch
            print(f"verified: the sha256 of {', '.join(ARRAYS)} match the manifest ({st['n_points']:,} points)")
    return 0
