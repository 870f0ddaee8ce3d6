"""`sketchembed report RUN_DIR…`: train and eval run dirs (or cross-validation run dirs) found on
disk, compared in one table (:mod:`sketchembed.eval.report` computes and renders it; here the runs
are read from their folders and the table printed to fit a terminal)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml
from rich import box
from rich.console import Console
from rich.table import Table

from sketchembed.eval.crossval import (
    CV_METRICS,
    cv_comparison_rows,
    cv_runs_in,
    load_cv,
)
from sketchembed.eval.report import (
    FACT_COLUMNS,
    Comparison,
    Run,
    compare_table,
    comparison,
    load_metrics,
    run_facts,
    study_rows,
)
from sketchembed.study import STUDY_COL


def _hydra(run_dir: Path) -> tuple[dict, dict]:
    """(config, group choices) Hydra saved in ``RUN_DIR/.hydra`` ({} where absent or unreadable)."""
    def load(name):
        try:
            data = yaml.safe_load((run_dir / ".hydra" / name).read_text())
        except (OSError, yaml.YAMLError):
            return {}
        return data if isinstance(data, dict) else {}

    choices = ((load("hydra.yaml").get("hydra") or {}).get("runtime") or {}).get("choices") or {}
    return load("config.yaml"), {k: str(v) for k, v in choices.items() if v is not None}



def find_metrics(paths: Sequence) -> list[Path]:
    """``metrics.json`` (eval) and ``train_metrics.json`` (train) files under the given dirs
    (recursively); a path may also name a json file directly."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
            continue
        if not p.is_dir():
            raise FileNotFoundError(f"run dir not found: {p}")
        found += sorted([*p.rglob("metrics.json"), *p.rglob("train_metrics.json")])
    seen, unique = set(), []
    for f in found:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            unique.append(f)
    return unique



def _overrides(run_dir: Path) -> str:
    f = run_dir / ".hydra" / "overrides.yaml"
    if not f.is_file():
        return ""
    items = [ln.strip()[2:].strip() for ln in f.read_text().splitlines() if ln.strip().startswith("- ")]
    # the checkpoint is in the run's label; hydra.* only places the run dir
    return " ".join(i.strip("'\"") for i in items if not i.startswith(("hydra.", "ckpt_path=")))


def _run_label(f: Path, roots: Sequence[Path]) -> str:
    for r in roots:
        try:
            rel = f.parent.resolve().relative_to(r.resolve())
            base = r.name if r.is_dir() else r.parent.name
            return str(Path(base) / rel) if str(rel) != "." else base
        except ValueError:
            continue
    return str(f.parent)


def _train_facts(run_dir: Path, trained: Mapping | None) -> dict:
    """Facts of a training run: saved in train_metrics.json (train.py writes them), else from .hydra."""
    config, choices = _hydra(run_dir)
    facts = run_facts(config, choices, choices.get("model")) if (config or choices) else {}
    for k, _ in FACT_COLUMNS + [("probe_epochs", "")]:
        if trained and trained.get(k) is not None:
            facts[k] = trained[k]
    return facts


def collect_runs(files: Sequence[Path], roots: Sequence[Path],
                 loaded: Mapping[Path, dict]) -> list[Run]:
    """One :class:`Run` per trained model: an eval run dir whose checkpoint lies in a training run dir
    (``RUN/checkpoints/X.ckpt``) takes that run's train-time figures and facts; a training run no
    eval refers to is a row of its own."""
    trains = {f.parent.resolve(): f for f in files if f.name == "train_metrics.json"}
    used: set[Path] = set()
    runs = []
    for f in files:
        if f.name == "train_metrics.json" or f not in loaded:
            continue
        m = loaded[f]
        ckpt = Path(str(m.get("checkpoint") or ""))
        train_dir = ckpt.parent.parent.resolve() if ckpt.parent.name == "checkpoints" else None
        trained = None
        if train_dir is not None and train_dir in trains and trains[train_dir] in loaded:
            trained = loaded[trains[train_dir]]
            used.add(train_dir)
        elif train_dir is not None and (train_dir / "train_metrics.json").is_file():
            try:
                trained = load_metrics(train_dir / "train_metrics.json")
            except ValueError:
                trained = None
        facts = _train_facts(train_dir, trained) if train_dir is not None else {}
        facts.setdefault("model_kind", m.get("model_kind"))
        facts["model_kind"] = facts.get("model_kind") or m.get("model_kind")
        if m.get("split") == "test_dir" or not facts.get("dataset"):
            facts["dataset"] = m.get("dataset")
        eval_cfg, _ = _hydra(f.parent)
        of = f"{train_dir.name}/{ckpt.name}" if train_dir is not None else ckpt.name  # the model evaluated
        label = _run_label(f, roots) + (f" ({of})" if ckpt.name else "")
        over = " ".join(o for o in [_overrides(train_dir) if train_dir else "", _overrides(f.parent)] if o)
        runs.append(Run(label, facts, over,
                        trained=trained, evaluated=m, eval_dir=f.parent,
                        eval_probe_steps=(eval_cfg.get("probe") or {}).get("steps")))
    for d, f in trains.items():
        if d in used or f not in loaded:
            continue
        runs.append(Run(_run_label(f, roots), _train_facts(f.parent, loaded[f]), _overrides(f.parent),
                        trained=loaded[f]))
    return runs



# `sketchembed report` prints tables at most this wide (a terminal); --wide prints every column.
TERMINAL_WIDTH = 100
LABEL_WIDTH = 24  # the run column folds beyond this


def _table_width(table: Table) -> int:
    """Columns ``table`` takes when nothing is folded (the run column folds at LABEL_WIDTH)."""
    return Console(width=10_000).measure(table).maximum


def _run_table(cmp: Comparison, keep: Sequence[int]) -> Table:
    header = cmp.header()
    t = Table(title=f"This project's runs ({len(cmp.runs)})", title_justify="left", box=box.SIMPLE_HEAD,
              show_edge=False, collapse_padding=True)  # no vertical rules: more figures fit
    for i in keep:
        t.add_column(header[i], justify="left" if i < cmp.n_text else "right", overflow="fold",
                     max_width=LABEL_WIDTH if i == 0 else None)
    for row in cmp.rows():  # figures: the interval on a second line keeps the columns narrow
        t.add_row(*[row[i] if i < cmp.n_text else row[i].replace(" [", "\n[", 1) for i in keep])
    return t


def fit_columns(cmp: Comparison, width: int | None = TERMINAL_WIDTH) -> tuple[list[int], list[int], list[int]]:
    """(shown, same, hidden) column indices of the runs table: text columns equal in every row
    (``same``) become one line above it, overrides are listed below it, and with a ``width`` the
    figures that would make the table wider are left out (``hidden``, named under the table; the
    first figure is always shown)."""
    header, rows = cmp.header(), cmp.rows()
    same = [i for i in range(1, cmp.n_text) if header[i] != "overrides" and len({r[i] for r in rows}) == 1]
    shown = [i for i in range(len(header)) if header[i] != "overrides" and i not in same]
    if width is None:
        return shown, same, []
    fixed = [i for i in shown if i < cmp.n_text or header[i] == "n"]
    keep = list(fixed)
    hidden = []
    for i in (i for i in shown if i not in fixed):
        if len(keep) == len(fixed) or _table_width(_run_table(cmp, sorted(keep + [i]))) <= width:
            keep.append(i)
        else:
            hidden.append(i)
    return sorted(keep), same, hidden


def print_comparison(cmp: Comparison, console: Console, wide: bool = False) -> None:
    """The same tables for the terminal (rich): text columns left, figures right; at most
    TERMINAL_WIDTH columns wide unless ``wide`` (the columns left out are named)."""
    header, rows = cmp.header(), cmp.rows()
    shown, same, hidden = fit_columns(cmp, None if wide else TERMINAL_WIDTH)
    facts = [f"{header[i]} {rows[0][i]}" for i in same if rows[0][i] != "–"]
    if facts:
        console.print("same in every row: " + ", ".join(facts), markup=False, highlight=False)
    console.print(_run_table(cmp, shown))
    if hidden:
        console.print(f"not shown (to fit {TERMINAL_WIDTH} columns; --wide shows them, --out FILE writes them): "
                      + ", ".join(header[i] for i in hidden), markup=False, highlight=False)
    for r in cmp.runs:
        if r.overrides:
            console.print(f"{r.label}: {r.overrides}", markup=False, highlight=False)
    for line in cmp.notes():
        console.print(line, markup=False, highlight=False)
    header, rows = study_rows(cmp.runs)
    if rows:
        s = Table(title=f"{STUDY_COL} — reference only, not our results", title_justify="left")
        for i, h in enumerate(header):
            s.add_column(h, justify="left" if i == 0 else "right")
        for row in rows:
            s.add_row(*row)
        console.print(s)


# ------------------------------------------------------------------------ cross-validation runs
def _label(run_dir: Path, root: Path) -> str:
    """A CV run's name in tables: the argument's name, then its path below it."""
    rel = run_dir.relative_to(root) if run_dir != root else Path()
    return str(Path(root.name or str(root)) / rel) if str(rel) != "." else (root.name or str(root))


def report_cv(paths: Sequence, ref_text: str | None = None, out: str | None = None,
              console: Console | None = None) -> int:
    """``sketchembed report CV_DIR…``: the CV runs side by side, each tested against the reference (the
    first, or the first whose dir name contains ``ref_text``) drawing by drawing."""
    found = {str(p): cv_runs_in(p) for p in paths}
    not_cv = [p for p, dirs in found.items() if not dirs]
    if not_cv:
        raise ValueError(f"{not_cv[0]}: no CV run (no {CV_METRICS}) in it; compare CV runs only with CV runs")
    labels: dict[Path, str] = {}  # each run once, named after the first argument that holds it
    for root, ds in found.items():
        for d in ds:
            labels.setdefault(d.resolve(), _label(d, Path(root)))
    runs = [(label, load_cv(d)) for d, label in labels.items()]
    ref = 0
    if ref_text:
        hits = [i for i, (label, _) in enumerate(runs) if ref_text in label]
        if not hits:
            raise ValueError(f"--ref {ref_text!r} matches no CV run ({', '.join(label for label, _ in runs)})")
        ref = hits[0]
    header, rows = cv_comparison_rows(runs, ref)
    note = ("Cells: pooled accuracy over all n drawings [95 % Wilson interval]. vs ref: McNemar's exact test "
            "on the same drawings paired by key_id (Fisher on the counts when the drawings differ); ▲/▼: "
            "p < 0.05, each cell tested on its own.")
    console = console or Console(width=250)
    t = Table(title=f"Cross-validation runs ({len(runs)})", title_justify="left")
    for i, h in enumerate(header):
        t.add_column(h, justify="left" if i == 0 else "right", overflow="fold")
    for r in rows:
        t.add_row(*r)
    console.print(t)
    console.print(note, markup=False, highlight=False)
    if out:
        md = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
        md += ["| " + " | ".join(r) + " |" for r in rows]
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text("\n".join(md + ["", note]) + "\n")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="train and/or eval run dirs (searched recursively for metrics.json and "
                             "train_metrics.json, e.g. a Hydra multirun dir) or json files; or cross-validation "
                             "run dirs (cv_metrics.json: train.py cv.folds=K), compared drawing by drawing")
    parser.add_argument("--ref", metavar="TEXT",
                        help="the reference run (first whose label contains TEXT; default: the first row)")
    parser.add_argument("--out", metavar="FILE", help="also write the tables as markdown to FILE")
    parser.add_argument("--wide", action="store_true",
                        help=f"print every column (default: the table fits {TERMINAL_WIDTH} columns, the "
                             "columns left out are named)")


def run(args) -> int:
    if any(cv_runs_in(p) for p in args.runs):  # cross-validation runs: their own pooled, paired table
        return report_cv(args.runs, args.ref, args.out)
    files = find_metrics(args.runs)
    if not files:
        raise FileNotFoundError(f"no metrics.json or train_metrics.json under {', '.join(map(str, args.runs))}")
    roots = [Path(p) for p in args.runs]
    named = {Path(p).resolve() for p in args.runs if Path(p).is_file()}
    loaded, skipped = {}, []
    for f in files:
        try:
            loaded[f] = load_metrics(f)
        except ValueError as e:
            if f.resolve() in named:  # a file asked for by name must be readable
                raise
            skipped.append(str(e))  # e.g. a crashed sweep job: counted, not fatal
    if skipped:
        print(f"skipped {len(skipped)} unreadable metrics file(s):\n  " + "\n  ".join(skipped), file=sys.stderr)
    if not loaded:
        raise ValueError(f"no readable metrics.json under {', '.join(map(str, args.runs))}")
    cmp = comparison(collect_runs(files, roots, loaded), args.ref)
    shown, _, _ = fit_columns(cmp, None)
    # --wide: as wide as the widest table, so that no column is cut (a terminal scrolls or wraps)
    width = max(_table_width(_run_table(cmp, shown)), TERMINAL_WIDTH) if args.wide else TERMINAL_WIDTH
    print_comparison(cmp, Console(width=width), wide=args.wide)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(compare_table(cmp))
    return 0
