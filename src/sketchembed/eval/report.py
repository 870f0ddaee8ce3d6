"""`report.md` of one run, and `sketchembed report RUN_DIR…` (one comparison table of many runs).

Our numbers come from whatever data the run used (here usually the small real set); the study's
come from the full 10-class download on GPUs. They are printed side by side in a separate column
titled "study (full data, GPU)" so that nobody reads one as the other.

``metrics.json`` is a flat dict: accuracies in [0, 1] under Lightning-style keys
(``test/acc@50``, ``test/acc@100``, ``test/knn@3``, ``test/probe_acc``, ``test/triplet_acc``, ``test/acc@10`` …
for the early-recognition curve; ``val/…`` is used when a run has no test split) plus descriptive
fields (``model_kind``, ``dataset``, ``checkpoint``, ``n_train``, ``n_test``, ``human/acc@50`` …).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Mapping, Sequence

STUDY_COL = "study (full data, GPU)"
# (file, heading, caption) of the figures an eval run may leave in its dir
FIGURES = [("tsne.png", "t-SNE map", "t-SNE map of the test embeddings"),
           ("neighbors.png", "Nearest neighbours", "nearest neighbours (red frame: another class)"),
           ("confusion.png", "Confusion matrix", "confusion matrix (100 % of the drawing)"),
           ("early_recognition.png", "Early recognition", "accuracy vs share of the drawing")]

# What the study reports, per model kind and metric (strings: ranges and variants stay as reported).
STUDY: dict[str, dict[str, str]] = {
    "lstm": {"acc@50": "77.7", "acc@100": "86.7"},
    "combined": {"acc@50": "77.8 (end-to-end and transferred)",
                 "acc@100": "86.5 end-to-end / 87.3 transferred + fine-tuned",
                 "knn@3": "88.95"},
    "triplet": {"triplet_acc": "97–99.6 (by backbone)", "probe_acc": "82–87 (by backbone)",
                "knn@4": "86–91 (by backbone)"},
    "direct": {},
    # The study's README says 84 %; its notebook's saved output shows 72.1 % on 43 answers.
    "human": {"acc": "84 (its README) / 72.1 on 43 answers (its notebook's output)"},
}
# Triplet pre-training vs direct cross-entropy, best backbone (linear probe / KNN K=4).
STUDY_TRIPLET_VS_DIRECT = {"probe_acc": ("87", "85"), "knn@4": ("91", "89")}

CLASSIFICATION_ROWS = [("acc@50", "classification @ 50 % of the drawing"),
                       ("acc@100", "classification @ 100 % of the drawing")]
# Only in a run's own report (the comparison table keeps the study's columns).
BALANCED_ROWS = [("balanced_acc@50", "balanced accuracy @ 50 % of the drawing"),
                 ("balanced_acc@100", "balanced accuracy @ 100 % of the drawing")]
SPACE_ROWS = [("knn@1", "KNN K=1"), ("knn@3", "KNN K=3"), ("knn@4", "KNN K=4"), ("knn@5", "KNN K=5"),
              ("probe_acc", "linear probe (emb → 64 → classes)"), ("triplet_acc", "triplet accuracy")]
TABLE_COLUMNS = [k for k, _ in CLASSIFICATION_ROWS] + [k for k, _ in SPACE_ROWS]


def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def pct(v) -> str:
    f = _num(v)
    return "–" if f is None else f"{100 * f:.1f}"


def split_of(metrics: Mapping) -> str:
    """The split whose numbers a run reports: test if it has any, else val."""
    for split in ("test", "val"):
        if any(str(k).startswith(split + "/") for k in metrics):
            return split
    return "test"


def metric(metrics: Mapping, name: str, split: str | None = None):
    """``SPLIT/name``; for metrics that are not per fraction also ``SPLIT/name@100`` (training logs
    ``val/triplet_acc@100`` per eval dataloader, eval writes ``test/triplet_acc``)."""
    split = split or split_of(metrics)
    v = _num(metrics.get(f"{split}/{name}"))
    if v is None and "@" not in name:
        v = _num(metrics.get(f"{split}/{name}@100"))
    return v


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def early_curve(metrics: Mapping, split: str | None = None) -> dict[float, float]:
    """``{fraction: accuracy}`` from keys ``SPLIT/acc@P`` (P = percent of the drawing)."""
    split = split or split_of(metrics)
    pat = re.compile(rf"^{re.escape(split)}/acc@(\d+(?:\.\d+)?)$")
    curve = {}
    for k, v in metrics.items():
        m = pat.match(str(k))
        if m and _num(v) is not None:
            curve[float(m.group(1)) / 100] = float(v)
    return dict(sorted(curve.items()))


def render_report(metrics: Mapping, *, baseline: Mapping | None = None,
                  figures: Sequence[tuple[str, str, str]] = ()) -> str:
    """Markdown of one run. ``baseline``: a second run's metrics (triplet vs direct when kinds differ)."""
    kind = str(metrics.get("model_kind", "unknown"))
    split = split_of(metrics)
    study = STUDY.get(kind, {})
    lines = [f"# sketchembed report: {metrics.get('run_name') or kind}", ""]
    facts = [("model kind", kind), ("dataset", metrics.get("dataset")), ("split", split),
             ("classified by", metrics.get("classifier")),
             ("train drawings", metrics.get("n_train")), (f"{split} drawings", metrics.get(f"n_{split}")),
             ("drawings skipped (bad records)", metrics.get("n_skipped")),
             ("evaluated drawings also in the KNN index", metrics.get("n_test_in_index") or None),
             ("checkpoint", metrics.get("checkpoint"))]
    lines += [f"- **{k}**: {v}" for k, v in facts if v not in (None, "")]
    lines += ["", f"Our numbers are measured on this run's data ({metrics.get('dataset', 'see above')}); "
              f"the column *{STUDY_COL}* quotes the reference study (10 classes, full data, GPUs) "
              "for orientation only — they are not results of this run.", ""]

    cls_rows = [(label, pct(metric(metrics, key, split)), study.get(key, "–"))
                for key, label in CLASSIFICATION_ROWS + BALANCED_ROWS if metric(metrics, key, split) is not None]
    if cls_rows:
        lines += ["## Classification (early recognition)", ""]
        lines += _table(["metric (accuracy, %)", "this run", STUDY_COL], cls_rows)
        lines.append("")
    curve = early_curve(metrics, split)
    if len(curve) > 2:
        lines += ["### Accuracy by share of the drawing", ""]
        lines += _table(["% of drawing"] + [f"{100 * f:g}" for f in curve],
                        [["this run"] + [pct(v) for v in curve.values()]])
        lines.append("")
    space_rows = [(label, pct(metric(metrics, key, split)), study.get(key, "–"))
                  for key, label in SPACE_ROWS if metric(metrics, key, split) is not None]
    if space_rows:
        lines += ["## Representation space", ""]
        lines += _table(["metric (accuracy, %)", "this run", STUDY_COL], space_rows)
        lines.append("")
    per_class = metrics.get("per_class_acc@100")
    if isinstance(per_class, Mapping) and per_class:
        n = metrics.get("per_class_n") if isinstance(metrics.get("per_class_n"), Mapping) else {}
        lines += ["## Per-class accuracy (100 % of the drawing)", ""]
        lines += _table(["class", "drawings", "accuracy (%)"],
                        [(c, n.get(c, "–"), pct(v)) for c, v in per_class.items()])
        lines.append("")
    human = {k: _num(v) for k, v in metrics.items() if str(k).startswith("human/") and _num(v) is not None}
    if human:
        lines += ["## Humans", ""]
        lines += _table(["metric (accuracy, %)", "this person", STUDY_COL],
                        [(k, pct(v), STUDY["human"]["acc"]) for k, v in sorted(human.items())])
        lines.append("")
    if baseline is not None:
        lines += triplet_vs_direct(metrics, baseline)
    for name, heading, caption in figures:
        lines += [f"## {heading}", "", f"![{caption}]({name})", ""]
    return "\n".join(lines).rstrip() + "\n"


def triplet_vs_direct(a: Mapping, b: Mapping) -> list[str]:
    """Table comparing a triplet-trained and a direct (cross-entropy) run; empty if kinds do not fit."""
    runs = {str(m.get("model_kind")): m for m in (a, b)}
    if set(runs) != {"triplet", "direct"}:
        return []
    t, d = runs["triplet"], runs["direct"]
    rows = []
    for key, label in SPACE_ROWS + CLASSIFICATION_ROWS:
        tv, dv = metric(t, key), metric(d, key)
        if tv is None and dv is None:
            continue
        st = STUDY_TRIPLET_VS_DIRECT.get(key, ("–", "–"))
        rows.append((label, pct(tv), pct(dv), f"{st[0]} vs {st[1]}" if key in STUDY_TRIPLET_VS_DIRECT else "–"))
    if not rows:
        return []
    return ["## Triplet pre-training vs direct cross-entropy", ""] + _table(
        ["metric (accuracy, %)", "triplet (this run)", "direct (this run)", f"{STUDY_COL}: triplet vs direct"],
        rows) + [""]


def write_report(run_dir, metrics: Mapping, *, baseline: Mapping | None = None) -> Path:
    """Write ``RUN_DIR/report.md`` (figures present in the run dir are embedded)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    figures = [f for f in FIGURES if (run_dir / f[0]).is_file()]
    out = run_dir / "report.md"
    out.write_text(render_report(metrics, baseline=baseline, figures=figures))
    return out


# -------------------------------------------------------------------------- comparison of many runs
def find_metrics(paths: Sequence) -> list[Path]:
    """``metrics.json`` files under the given dirs (recursively); ``train_metrics.json`` where a run
    dir has no ``metrics.json``. A path may also name a json file directly."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
            continue
        if not p.is_dir():
            raise FileNotFoundError(f"run dir not found: {p}")
        evals = sorted(p.rglob("metrics.json"))
        dirs = {f.parent for f in evals}
        trains = [f for f in sorted(p.rglob("train_metrics.json")) if f.parent not in dirs]
        found += sorted(evals + trains)
    seen, unique = set(), []
    for f in found:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            unique.append(f)
    return unique


def load_metrics(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable metrics file ({e.__class__.__name__}: {e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: metrics file must hold a JSON object")
    return data


def _overrides(run_dir: Path) -> str:
    f = run_dir / ".hydra" / "overrides.yaml"
    if not f.is_file():
        return ""
    items = [ln.strip()[2:].strip() for ln in f.read_text().splitlines() if ln.strip().startswith("- ")]
    return " ".join(i.strip("'\"") for i in items)


def _run_label(f: Path, roots: Sequence[Path]) -> str:
    for r in roots:
        try:
            rel = f.parent.resolve().relative_to(r.resolve())
            base = r.name if r.is_dir() else r.parent.name
            return str(Path(base) / rel) if str(rel) != "." else base
        except ValueError:
            continue
    return str(f.parent)


def compare_table(runs: Sequence[tuple[str, dict, str]]) -> str:
    """Markdown comparison of ``(label, metrics, overrides)`` runs, our numbers only, then the study's."""
    cols = [c for c in TABLE_COLUMNS if any(metric(m, c) is not None for _, m, _ in runs)]
    has_over = any(o for _, _, o in runs)
    header = ["run", "model kind", "split"] + (["overrides"] if has_over else []) + [f"{c} (%)" for c in cols]
    rows = []
    for label, m, over in runs:
        rows.append([label, str(m.get("model_kind", "?")), split_of(m)] + ([over or "–"] if has_over else [])
                    + [pct(metric(m, c)) for c in cols])
    lines = [f"## This project's runs ({len(runs)})", ""] + _table(header, rows) + [""]
    runs_by_kind: dict[str, dict] = {}
    for _, m, _ in runs:
        runs_by_kind.setdefault(str(m.get("model_kind")), m)
    if "triplet" in runs_by_kind and "direct" in runs_by_kind:
        lines += triplet_vs_direct(runs_by_kind["triplet"], runs_by_kind["direct"])
    kinds = [k for k in dict.fromkeys(str(m.get("model_kind")) for _, m, _ in runs) if STUDY.get(k)]
    if kinds:
        scols = [c for c in TABLE_COLUMNS if any(c in STUDY[k] for k in kinds)]
        lines += [f"## {STUDY_COL} — reference only, not our results", ""]
        lines += _table(["model kind"] + [f"{c} (%)" for c in scols],
                        [[k] + [STUDY[k].get(c, "–") for c in scols] for k in kinds])
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="run dirs (searched recursively for metrics.json, e.g. a Hydra multirun dir) or json files")
    parser.add_argument("--out", metavar="FILE", help="also write the markdown table to FILE")


def run(args) -> int:
    files = find_metrics(args.runs)
    if not files:
        raise FileNotFoundError(f"no metrics.json under {', '.join(map(str, args.runs))}")
    roots = [Path(p) for p in args.runs]
    named = {Path(p).resolve() for p in args.runs if Path(p).is_file()}
    runs, skipped = [], []
    for f in files:
        try:
            runs.append((_run_label(f, roots), load_metrics(f), _overrides(f.parent)))
        except ValueError as e:
            if f.resolve() in named:  # a file asked for by name must be readable
                raise
            skipped.append(str(e))  # e.g. a crashed sweep job: counted, not fatal
    if skipped:
        print(f"skipped {len(skipped)} unreadable metrics file(s):\n  " + "\n  ".join(skipped), file=sys.stderr)
    if not runs:
        raise ValueError(f"no readable metrics.json under {', '.join(map(str, args.runs))}")
    text = compare_table(runs)
    sys.stdout.write(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 0
