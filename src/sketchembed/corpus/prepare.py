"""`sketchembed data prepare`: per-class files → one prepared dataset (see :mod:`sketchembed.corpus.store`).

Inputs are files or directories (searched recursively) of ``<class>.ndjson`` (simplified or raw),
``<class>.bin`` or ``<class>.npz``; the file name is the class. Raw drawings are simplified with the
dataset's own simplification, so a prepared dataset always holds simplified 0–255 coordinates.
Class names are Quick, Draw!'s 345 unless ``classes="from-files"``, which takes every file name as a
class (other sketch datasets in the same formats). Files found but not used — a name that is not a
class, a class not asked for, another format than ``--format`` — are listed, with the reason, in
the manifest's ``ignored_files`` and the printed summary.

Splits are a function of the key_id, not of file order: within a class, drawings are ranked by a
seeded 64-bit hash of their key_id; the first ``n_test`` ranks are test, the next ``n_val`` val, the
rest train. Preparing the same drawings from files in another order gives the same split, and
adding drawings moves only drawings at the two boundaries: under the study rule (fixed counts) at
most two per added drawing, always towards train (test → val → train), so a drawing once used for
training or model selection never lands in the test set; under the fraction rule the counts grow
with the class, so a few boundary drawings can also move from train to val/test.

* rule ``study`` (default): 5,000 val + 5,000 test per class, the rest train — for classes with at
  least ``study_min_factor`` × (val + test) drawings (30,000 by default, so train keeps ≥ 2/3);
  smaller classes get the fraction rule, and the manifest records which rule each class got;
* rule ``fractions``: round(f_val·n) val and round(f_test·n) test (at least one each when n ≥ 3).

The same key_id seen twice in a class (e.g. raw and simplified copies) is kept once — simplified
files are read first, so the simplified copy wins and raw duplicates are not even simplified. A
key_id already kept in another class is a counted bad input (it would carry two labels). ``.npz``
files carry no key_ids (theirs are made up from the drawing), so a class with an ``.npz`` beside
files of another kind gets a warning (manifest ``warnings``): copies across them are kept twice.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from sketchembed.corpus.categories import CATEGORIES, CATEGORY_SET, resolve_classes
from sketchembed.corpus.formats import FileFormat, discover, format_of, kinds, read_drawings, reading_order, suffix_list
from sketchembed.corpus.simplify import simplify_drawing
from sketchembed.corpus.sketch import CANVAS_MAX, DataFormatError, Drawing, SkipReport, check_strokes, strokes_to_points
from sketchembed.corpus.store import SPLIT_CODES, PreparedDataset, PreparedWriter, check_target

DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)
#: Kinds whose files carry no key_ids (sketch-rnn's .npz: prepare makes them up), so a drawing there
#: and its copy in a file of another kind cannot be recognised as one drawing.
NO_KEY_IDS = ("npz",)
_BATCH = 4096  # drawings per pending batch (cross-class duplicate check, bulk writes)

# --------------------------------------------------------------------------------------------
# splits


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A well-mixed 64-bit hash (SplitMix64 finalizer), vectorized; wraps modulo 2**64 on purpose."""
    x = np.asarray(x, dtype=np.uint64).copy()
    with np.errstate(over="ignore"):
        x += np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return x


def key_hash(key_ids: np.ndarray, seed: int = 0) -> np.ndarray:
    """The rank key of each drawing: a seeded hash of its key_id (independent of file order)."""
    salt = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
    return _splitmix64(np.asarray(key_ids, dtype=np.uint64) ^ salt)


def split_sizes(n: int, rule: str, *, val_per_class: int, test_per_class: int,
                fractions: Sequence[float], study_min_factor: float = 3.0) -> tuple[str, int, int]:
    """``(rule applied, n_val, n_test)`` for a class of ``n`` drawings (see the module docstring)."""
    if rule == "study" and n >= study_min_factor * (val_per_class + test_per_class):
        return "study", val_per_class, test_per_class
    _, fv, ft = fractions
    n_val, n_test = int(round(fv * n)), int(round(ft * n))
    if n >= 3:
        n_val = max(n_val, 1) if fv > 0 else 0
        n_test = max(n_test, 1) if ft > 0 else 0
    else:
        n_val = n_test = 0
    while n_val + n_test > n:  # only possible with fractions that leave train ~0
        if n_val >= n_test and n_val:
            n_val -= 1
        else:
            n_test -= 1
    return "fractions", n_val, n_test


def assign_splits(labels: np.ndarray, key_ids: np.ndarray, classes: Sequence[str], *, rule: str = "study",
                  val_per_class: int = 5000, test_per_class: int = 5000,
                  fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0,
                  study_min_factor: float = 3.0) -> tuple[np.ndarray, dict[str, str]]:
    """int8 split code per drawing and the rule each class got. Ties in the hash break by key_id."""
    labels = np.asarray(labels, dtype=np.int64)
    key_ids = np.asarray(key_ids, dtype=np.uint64)
    order = np.lexsort((key_ids, key_hash(key_ids, seed), labels))
    counts = np.bincount(labels, minlength=len(classes))
    starts = np.concatenate([[0], np.cumsum(counts)])
    rank_split = np.zeros(len(labels), dtype=np.int8)
    per_class = {}
    for c, name in enumerate(classes):
        a = starts[c]
        applied, n_val, n_test = split_sizes(int(counts[c]), rule, val_per_class=val_per_class,
                                             test_per_class=test_per_class, fractions=fractions,
                                             study_min_factor=study_min_factor)
        per_class[name] = applied
        rank_split[a:a + n_test] = SPLIT_CODES["test"]
        rank_split[a + n_test:a + n_test + n_val] = SPLIT_CODES["val"]
    splits = np.empty(len(labels), dtype=np.int8)
    splits[order] = rank_split
    return splits, per_class


# --------------------------------------------------------------------------------------------
# inputs


@dataclass
class Source:
    path: Path
    cls: str
    kind: str  # one of the registry's kinds (simplified | raw | binary | npz | …)
    format: FileFormat
    read: int = 0
    kept: int = 0
    duplicates: int = 0
    simplified_here: int = 0

    def to_json(self) -> dict:
        return {"file": str(self.path), "class": self.cls, "kind": self.kind, "bytes": self.path.stat().st_size,
                "sha256": _file_sha256(self.path), "drawings_read": self.read, "kept": self.kept,
                "duplicates": self.duplicates, "simplified_from_raw": self.simplified_here}


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


FROM_FILES = "from-files"


def resolve_class_spec(spec: str | Sequence[str], found: dict[str, list[Path]]) -> list[str]:
    """``all`` = every Quick, Draw! class with a file among the inputs (dataset order);
    ``from-files`` = every file name, whatever it is (sorted); ``study`` = the ten study classes;
    otherwise Quick, Draw! names (comma-separated or a list)."""
    key = spec.strip().lower() if isinstance(spec, str) else None
    if key == FROM_FILES:
        if not found:
            raise FileNotFoundError(f"no per-class files (<class>{suffix_list(', <class>')}) among the inputs")
        return sorted(found)
    if key == "all":
        classes = [c for c in CATEGORIES if c in found]
        if not classes:
            names = ", ".join(map(repr, sorted(found)[:5])) + ("…" if len(found) > 5 else "")
            others = (f" (found {names}: use --classes {FROM_FILES} for class names outside Quick, Draw!)"
                      if found else "")
            raise FileNotFoundError(f"no per-class files (<class>{suffix_list('/')} named after a "
                                    f"Quick, Draw! category) among the inputs{others}")
        return classes
    try:
        classes = resolve_classes(spec)
    except ValueError as e:
        raise ValueError(f"{e}; --classes {FROM_FILES} reads every file, whatever its name") from None
    missing = [c for c in classes if c not in found]
    if missing:
        raise FileNotFoundError(f"no input file for class(es) {', '.join(map(repr, missing))} "
                                f"(expected files named <class>{suffix_list('/')})")
    return classes


# --------------------------------------------------------------------------------------------
# reading


class _ClassPass:
    """Everything kept for one class, before it goes to the writer in batches.

    Holds at most ``_BATCH`` drawings; checks each batch against the key_ids of earlier classes
    (a sorted uint64 array, 8 bytes per drawing) instead of one Python set for the whole corpus.
    """

    def __init__(self, cls: str, label: int, writer: PreparedWriter, report: SkipReport,
                 prev_keys: np.ndarray, prev_labels: np.ndarray, classes: Sequence[str],
                 words: frozenset[str] | None):
        self.cls, self.label, self.writer, self.report, self.words = cls, label, writer, report, words
        self.prev_keys, self.prev_labels, self.classes = prev_keys, prev_labels, classes
        self.seen: set[int] = set()
        self.parts: list[np.ndarray] = []  # point blocks
        self.lengths: list[int] = []
        self.keys: list[int] = []
        self.srcs: list[Source] = []
        self.kept = 0

    def add_block(self, points: np.ndarray, lengths: Sequence[int], keys: Sequence[int], src: Source) -> None:
        self.parts.append(points)
        self.lengths.extend(lengths)
        self.keys.extend(keys)
        self.srcs.extend([src] * len(keys))
        if len(self.keys) >= _BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.keys:
            return
        keys = np.array(self.keys, dtype=np.uint64)
        lengths = np.array(self.lengths, dtype=np.int64)
        points = np.concatenate(self.parts) if len(self.parts) > 1 else self.parts[0]
        keep = np.ones(len(keys), dtype=bool)
        if len(self.prev_keys):
            pos = np.minimum(np.searchsorted(self.prev_keys, keys), len(self.prev_keys) - 1)
            clash = self.prev_keys[pos] == keys
            for j in np.flatnonzero(clash):
                other = self.classes[int(self.prev_labels[pos[j]])]
                self.seen.discard(int(keys[j]))
                self.report.bad(self.srcs[j].path, f"key_id {int(keys[j])}",
                                f"key_id already kept in class {other!r} (a drawing with two labels)")
            keep = ~clash
        for j in np.flatnonzero(keep):
            self.srcs[j].kept += 1
        if keep.all():
            self.writer.add_many(points, lengths, self.label, keys)
        elif keep.any():
            row_keep = np.repeat(keep, lengths)
            self.writer.add_many(points[row_keep], lengths[keep], self.label, keys[keep])
        self.kept += int(keep.sum())
        self.parts, self.lengths, self.keys, self.srcs = [], [], [], []


def _read(src: Source, cp: _ClassPass, fmt: str, fast: bool, advance) -> None:
    """One file into the class pass: through the format's bulk reader where it has one (simplified
    ndjson: blocks of ready point arrays, same drawings and skips as its record reader) and
    ``fast``, else drawing by drawing. ``advance(n)`` moves the progress bar by n file bytes."""
    read_blocks = src.format.read_blocks
    if not (fast and read_blocks is not None and src.kind not in src.format.raw_kinds):
        for d in read_drawings(src.path, report=cp.report, word=cp.cls, words=cp.words):
            src.read += 1
            _take_drawing(d, src, cp, fmt)
        advance(src.path.stat().st_size)
        return
    for item in read_blocks(src.path, report=cp.report, word=cp.cls, words=cp.words):
        if isinstance(item, Drawing):
            src.read += 1
            _take_drawing(item, src, cp, fmt)
            continue
        src.read += len(item.key_ids)
        keep = np.ones(len(item.key_ids), dtype=bool)
        for j, k in enumerate(item.key_ids):
            if k in cp.seen:
                keep[j] = False
                src.duplicates += 1
            else:
                cp.seen.add(k)
        if keep.all():
            cp.add_block(item.points, item.lengths, item.key_ids, src)
        elif keep.any():
            cp.add_block(item.points[np.repeat(keep, item.lengths)], item.lengths[keep],
                         [k for k, g in zip(item.key_ids, keep) if g], src)
        advance(item.nbytes)


def _take_drawing(d: Drawing, src: Source, cp: _ClassPass, fmt: str) -> None:
    k = int(d.key_id)
    if k in cp.seen:
        src.duplicates += 1
        return
    is_raw = d.strokes[0].shape[1] == 3
    if fmt != "auto" and src.format.kind_of_drawing(is_raw) != fmt:
        form = "raw" if is_raw else "simplified"
        cp.report.bad(src.path, f"key_id {k}", f"{form} drawing where --format {fmt} was asked")
        return
    if is_raw:
        d = simplify_drawing(d)
        src.simplified_here += 1
    why = check_strokes(d.strokes, coord_max=CANVAS_MAX, allow_single_point_strokes=True)
    if why:  # only reachable through a reader/simplifier bug: never store off-canvas points
        cp.report.bad(src.path, f"key_id {k}", f"after conversion: {why}")
        return
    cp.seen.add(k)
    pts = strokes_to_points(d.strokes)
    cp.add_block(pts, [len(pts)], [k], src)


# --------------------------------------------------------------------------------------------
# the whole preparation


def _progress(enabled: bool, console=None) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                    TextColumn("{task.fields[drawings]:,} drawings"), TimeElapsedColumn(),
                    TimeRemainingColumn(), disable=not enabled, console=console or Console(stderr=True),
                    transient=False)


def prepare(inputs: str | os.PathLike | Iterable, out, classes: str | Sequence[str] = "all", *,
            fmt: str = "auto", split: str = "study", val_per_class: int = 5000, test_per_class: int = 5000,
            fractions: Sequence[float] = DEFAULT_FRACTIONS, on_error: str = "skip", seed: int = 0,
            study_min_factor: float = 3.0, progress: bool = False, fast: bool = True,
            console=None, warn=None) -> PreparedDataset:
    """Prepare per-class files into a dataset at ``out`` (replaced atomically); returns it opened.
    ``out`` must pass :func:`~sketchembed.corpus.store.check_target` (checked before any input is read).

    ``classes``: names, ``"study"``, ``"all"`` (every category with a file among ``inputs``) or
    ``"from-files"`` (every file name is a class, Quick, Draw!'s or not). ``fmt``: which files to
    use, a kind of the format registry (``auto`` = every registered one; ``simplified``/``raw`` pick
    ndjson files by their content). ``split``: ``study`` or ``fractions`` (module docstring).
    ``fast=False`` reads every file drawing by drawing, without a format's block reader (same
    result, slower). ``warn(line)``: where the writer says what it left in place (a folder beside
    ``out`` that holds files it did not write; default: a warning).
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    inputs = list(inputs)
    if fmt not in ("auto", *kinds()):
        raise ValueError(f"unknown format {fmt!r} (auto, {', '.join(kinds())})")
    if split not in ("study", "fractions"):
        raise ValueError(f"split must be 'study' or 'fractions', got {split!r}")
    fractions = tuple(float(f) for f in fractions)
    if (len(fractions) != 3 or not all(map(math.isfinite, fractions)) or min(fractions) < 0
            or abs(sum(fractions) - 1) > 1e-6):
        raise ValueError(f"fractions must be three non-negative numbers (train, val, test) summing to 1, "
                         f"got {fractions}")
    if val_per_class < 0 or test_per_class < 0:
        raise ValueError("val/test per class must be >= 0")
    check_target(out, inputs)  # before reading anything: refused outputs cost nothing
    report = SkipReport(on_error=on_error)
    found = discover(inputs)
    class_list = resolve_class_spec(classes, found)
    any_name = isinstance(classes, str) and classes.strip().lower() == FROM_FILES
    words = None if any_name else CATEGORY_SET
    t0 = time.perf_counter()

    ignored: list[dict] = []
    notes: list[str] = []  # one line each, in the manifest and printed by the command
    for stem in sorted(set(found) - set(class_list)):
        why = ("not a Quick, Draw! category (--classes from-files takes every file name as a class)"
               if stem not in CATEGORY_SET else "class not asked for (--classes)")
        ignored += [{"file": str(f), "reason": why} for f in found[stem]]
    plan: list[list[Source]] = []
    for cls in class_list:
        srcs = []
        for path in found[cls]:
            file_format = format_of(path)
            kind = file_format.kind_of(path)
            if fmt != "auto" and kind != fmt:
                ignored.append({"file": str(path), "reason": f"{kind} file, --format {fmt} asked"})
                continue
            srcs.append(Source(path, cls, kind, file_format))
        if not srcs:
            raise FileNotFoundError(f"class {cls!r}: no {fmt} file among {', '.join(map(str, found[cls]))}")
        srcs.sort(key=lambda s: (reading_order(s.kind), str(s.path)))  # simplified copies win duplicates
        plan.append(srcs)
        keyless = sorted({s.kind for s in srcs if s.kind in NO_KEY_IDS})
        if keyless and any(s.kind not in NO_KEY_IDS for s in srcs):
            others = sorted({s.kind for s in srcs if s.kind not in NO_KEY_IDS})
            notes.append(f"class {cls!r}: its {'/'.join(keyless)} file(s) carry no key_ids, so copies of a "
                         f"drawing there and in its {'/'.join(others)} file(s) are not found as duplicates "
                         f"(both are kept)")
    total_bytes = sum(s.path.stat().st_size for srcs in plan for s in srcs)

    writer = PreparedWriter(out, class_list, inputs=inputs, warn=warn)
    prev_keys = np.zeros(0, dtype=np.uint64)
    prev_labels = np.zeros(0, dtype=np.int16)
    with writer, _progress(progress, console) as bar:
        task = bar.add_task("prepare", total=total_bytes, drawings=0)
        for label, (cls, srcs) in enumerate(zip(class_list, plan)):
            class_report = SkipReport(on_error=on_error)  # this class's skips, for its error if it ends empty
            cp = _ClassPass(cls, label, writer, class_report, prev_keys, prev_labels, class_list, words)
            start = len(writer)
            for src in srcs:
                bar.update(task, description=f"{cls} ({src.kind})")
                _read(src, cp, fmt, fast, lambda n: bar.update(task, advance=n, drawings=len(writer)))
                cp.flush()
                bar.update(task, drawings=len(writer))
            report.merge(class_report)
            if cp.kept == 0:
                files = ", ".join(str(s.path) for s in srcs)
                first = [f"{Path(p).name}:{pos}: {why}" if pos else f"{Path(p).name}: {why}"
                         for p, pos, why in class_report.items]
                more = "; …" if class_report.count > 3 else ""
                bad = (f"{class_report.count} bad record(s), first: {'; '.join(first[:3])}{more}"
                       if class_report.count else "no drawings in them")
                raise DataFormatError(srcs[0].path, None, f"class {cls!r} has no valid drawings (files: {files}; "
                                                          f"{bad})")
            new = np.sort(writer.key_ids[start:])
            at = np.searchsorted(prev_keys, new)
            prev_keys = np.insert(prev_keys, at, new)
            prev_labels = np.insert(prev_labels, at, np.int16(label))

        del prev_keys, prev_labels
        splits, per_class = assign_splits(writer.labels, writer.key_ids, class_list, rule=split,
                                          val_per_class=val_per_class, test_per_class=test_per_class,
                                          fractions=fractions, seed=seed, study_min_factor=study_min_factor)
        sources = [s for srcs in plan for s in srcs]
        extra = {
            "split_rule": {
                "rule": split, "val_per_class": val_per_class, "test_per_class": test_per_class,
                "fractions": list(fractions), "study_min_per_class": study_min_factor * (val_per_class
                                                                                       + test_per_class),
                "seed": seed, "per_class": per_class,
                "how": "within a class, drawings ranked by splitmix64(key_id ^ splitmix64(seed)) "
                       "(ties by key_id): first n_test ranks test, next n_val val, rest train",
            },
            "sources": [s.to_json() for s in sources],
            "ignored_files": ignored,
            "warnings": notes,
            "skipped": report.to_json(),
            "duplicates": sum(s.duplicates for s in sources),
            "simplified_from_raw": sum(s.simplified_here for s in sources),
            "prepare_seconds": round(time.perf_counter() - t0, 2),
        }
        ds = writer.close(extra, splits=splits)
    return ds


def summary(ds: PreparedDataset) -> str:
    m = ds.manifest
    t = m["split_totals"]
    lines = [f"{ds.root}: {len(ds):,} drawings, {m['n_points']:,} points, {len(ds.classes)} classes "
             f"(train {t['train']:,} / val {t['val']:,} / test {t['test']:,})",
             f"duplicates dropped: {m.get('duplicates', 0):,}; simplified from raw here: "
             f"{m.get('simplified_from_raw', 0):,}"]
    rules = m.get("split_rule", {}).get("per_class", {})
    by_rule: dict[str, list[str]] = {}
    for c, r in rules.items():
        by_rule.setdefault(r, []).append(c)
    for r, cs in by_rule.items():
        lines.append(f"split rule {r}: {len(cs)} class(es)" + (f" ({', '.join(cs[:10])}{'…' if len(cs) > 10 else ''})"))
    lines.append(SkipReport.from_json(m.get("skipped", {})).summary())
    ignored = m.get("ignored_files", [])
    if ignored:
        lines.append(f"ignored {len(ignored)} file(s):")
        lines += [f"  {i['file']}: {i['reason']}" for i in ignored[:10]]
        if len(ignored) > 10:
            lines.append(f"  … and {len(ignored) - 10} more (manifest.json, ignored_files)")
    else:
        lines.append("no ignored files")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# command line


def _fractions_arg(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        parts = ()
    if not all(map(math.isfinite, parts)):
        parts = ()
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"three finite numbers train,val,test like 0.7,0.15,0.15, got {text!r}")
    return parts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Turn per-class Quick, Draw! files into one prepared (memory-mapped) dataset."
    parser.add_argument("--input", "-i", nargs="+", required=True, metavar="DIR_OR_FILE",
                        help=f"per-class files (<class>{suffix_list('/')}) or directories searched recursively")
    parser.add_argument("--out", "-o", required=True, type=Path,
                        help="output folder: a new path, an empty folder or an earlier prepared dataset "
                             "(replaced atomically); anything else is refused")
    parser.add_argument("--classes", default="all",
                        help="a,b,… | study | all (every Quick, Draw! class found; default) | from-files "
                             "(every file name is a class: sketch datasets with other class names)")
    parser.add_argument("--format", dest="fmt", default="auto", choices=["auto", *kinds()],
                        help="which files to use (default: all; simplified/raw: ndjson files by their content)")
    parser.add_argument("--split", default="study", choices=["study", "fractions"],
                        help="study: 5,000 val + 5,000 test per class (fractions for small classes)")
    parser.add_argument("--val-per-class", type=int, default=5000, help="val drawings per class under --split study")
    parser.add_argument("--eval-per-class", type=int, default=None, help=argparse.SUPPRESS)  # its old name
    parser.add_argument("--test-per-class", type=int, default=5000)
    parser.add_argument("--fractions", type=_fractions_arg, default=DEFAULT_FRACTIONS, metavar="TRAIN,VAL,TEST")
    parser.add_argument("--on-error", default="skip", choices=["skip", "raise"])
    parser.add_argument("--seed", type=int, default=0, help="salt of the key_id hash that orders splits")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    if args.eval_per_class is not None:
        print("note: --eval-per-class is now called --val-per-class (it sets the val split only)", file=sys.stderr)
        args.val_per_class = args.eval_per_class
    ds = prepare(args.input, args.out, args.classes, fmt=args.fmt, split=args.split,
                 val_per_class=args.val_per_class, test_per_class=args.test_per_class,
                 fractions=args.fractions, on_error=args.on_error, seed=args.seed,
                 progress=not args.no_progress and sys.stderr.isatty(),
                 warn=lambda line: print(f"warning: {line}", file=sys.stderr))
    for line in ds.manifest.get("warnings", []):
        print(f"warning: {line}", file=sys.stderr)
    print(summary(ds))
    return 0
