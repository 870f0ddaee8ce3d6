"""`report.md` and `report.html` of one run, and the comparison of many runs (one table, train and
eval runs together: one row per trained model) that `sketchembed report RUN_DIR…`
(:mod:`sketchembed.commands.report`) prints and writes.

``report.html`` is the same report as one self-contained page (figures as base64 PNG data URIs,
the style inline, no script and no external URL): it opens from a file in any browser, with no
server, and can be mailed or attached as it is.

Our numbers come from whatever data the run used (here usually the small real set); the study's
come from the full 10-class download on GPUs. They are printed side by side in a separate column
titled "study (full data, GPU)" so that nobody reads one as the other.

``metrics.json`` is a flat dict: accuracies in [0, 1] under Lightning-style keys
(``test/acc@50``, ``test/acc@100``, ``test/knn@3``, ``test/probe_acc``, ``test/triplet_acc``, ``test/acc@10`` …
for the early-recognition curve; ``val/…`` is used when a run has no test split) plus descriptive
fields (``model_kind``, ``dataset``, ``checkpoint``, ``n_train``, ``n_test``, ``human/acc@50`` …),
the retrieval metrics (``test/p@1``, ``test/r_precision``, ``test/map@r``, ``test/nmi``, ``test/ami``,
see :mod:`sketchembed.eval.retrieval`) and ``intervals`` (n and 95 % interval per figure, see
:mod:`sketchembed.eval.stats`). Every accuracy in a report is shown with its interval; where the
run did not save its n, "–".
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from markdown_it import MarkdownIt
from rich.table import Table

from sketchembed import metric_keys
from sketchembed.eval.confusion import pairs_markdown
from sketchembed.eval.stats import (
    METHOD,
    Difference,
    Interval,
    accuracy_key,
    ci_text,
    interval,
    mcnemar,
    split_n,
    two_proportions,
)
from sketchembed.study import STUDY, STUDY_COL, STUDY_TRIPLET_VS_DIRECT

# (file, heading, caption) of the figures an eval run may leave in its dir
FIGURES = [("tsne.png", "t-SNE map", "t-SNE map of the test embeddings"),
           ("neighbors.png", "Nearest neighbours", "nearest neighbours (red frame: another class)"),
           ("confusion.png", "Confusion matrix", "confusion matrix (100 % of the drawing)"),
           ("per_class.png", "Per-class accuracy", "per-class accuracy, sorted (100 % of the drawing)"),
           ("early_recognition.png", "Early recognition", "accuracy vs share of the drawing")]

CLASSIFICATION_ROWS = [("acc@50", "classification @ 50 % of the drawing"),
                       ("acc@100", "classification @ 100 % of the drawing")]
# Only in a run's own report (the comparison table keeps the study's columns).
BALANCED_ROWS = [("balanced_acc@50", "balanced accuracy @ 50 % of the drawing"),
                 ("balanced_acc@100", "balanced accuracy @ 100 % of the drawing")]
SPACE_ROWS = [("knn@1", "KNN K=1"), ("knn@3", "KNN K=3"),
              ("knn@3_study_tie", "KNN K=3, study's tie rule (a tie with the true class counts)"),
              ("knn@4", "KNN K=4"), ("knn@5", "KNN K=5"),
              ("probe_acc", "linear probe (emb → 64 → classes)"), ("triplet_acc", "triplet accuracy")]
# Retrieval: the test drawings as queries against the KNN index (sketchembed.eval.retrieval).
RETRIEVAL_ROWS = [("p@1", "P@1"), ("r_precision", "R-precision"), ("map@r", "MAP@R"),
                  ("nmi", "NMI (k-means of the test embeddings)"), ("ami", "AMI (k-means of the test embeddings)")]
RETRIEVAL_NAMES = {k.partition("@")[0] for k, _ in RETRIEVAL_ROWS}  # as parsed: p@1 is "p"
TABLE_COLUMNS = [k for k, _ in CLASSIFICATION_ROWS] + [k for k, _ in SPACE_ROWS] + [k for k, _ in RETRIEVAL_ROWS]


def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def pct(v) -> str:
    f = _num(v)
    return "–" if f is None else f"{100 * f:.1f}"


def metric(metrics: Mapping, name: str, split: str | None = None):
    """``SPLIT/name``; for metrics that are not per fraction also ``SPLIT/name@100`` (training logs
    ``val/triplet_acc@100`` per eval dataloader, eval writes ``test/triplet_acc``)."""
    key = metric_key(metrics, name, split)
    return None if key is None else _num(metrics[key])


INTERVAL_NOTE = ("95 % interval: Wilson score interval over the n drawings (balanced and triplet accuracy: "
                 "an approximation, marked ≈); see docs/ARCHITECTURE.md, *Evaluation outputs*.")


def metric_key(metrics: Mapping, name: str, split: str | None = None) -> str | None:
    """The key :func:`metric` read ``name`` from (``SPLIT/name`` or ``SPLIT/name@100``), or None."""
    split = split or metric_keys.split_of(metrics)
    keys = [metric_keys.key(split, name)] + ([metric_keys.key(split, name, 1.0)] if "@" not in name else [])
    return next((k for k in keys if _num(metrics.get(k)) is not None), None)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> list[str]:
    """Markdown table; the first ``left`` (text) columns left-aligned, the others right-aligned."""
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" if i < left else "---:" for i in range(len(header))) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def early_curve(metrics: Mapping, split: str | None = None) -> dict[float, float]:
    """``{fraction: accuracy}`` from keys ``SPLIT/acc@P`` (P = percent of the drawing)."""
    split = split or metric_keys.split_of(metrics)
    curve = {}
    for k, v in metrics.items():
        parts = metric_keys.parse(k)
        if parts and parts.split == split and parts.name == "acc" and _num(v) is not None:
            fraction = metric_keys.tag_fraction(parts.tag)
            if fraction is not None:
                curve[fraction] = float(v)
    return dict(sorted(curve.items()))


def report_title(metrics: Mapping) -> str:
    return f"sketchembed report: {metrics.get('run_name') or metrics.get('model_kind', 'unknown')}"


def render_report(metrics: Mapping, *, baseline: Mapping | None = None,
                  figures: Sequence[tuple[str, str, str]] = ()) -> str:
    """Markdown of one run. ``baseline``: a second run's metrics (triplet vs direct when kinds differ)."""
    kind = str(metrics.get("model_kind", "unknown"))
    split = metric_keys.split_of(metrics)
    study = STUDY.get(kind, {})
    lines = [f"# {report_title(metrics)}", ""]
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

    def row(key, label):
        ci = interval(metrics, metric_key(metrics, key, split) or "")
        return (label, pct(metric(metrics, key, split)), ci_text(ci), ci.n if ci else "–", study.get(key, "–"))

    header = ["metric (accuracy, %)", "this run", "95 % interval", "n", STUDY_COL]
    cls_rows = [row(key, label) for key, label in CLASSIFICATION_ROWS + BALANCED_ROWS
                if metric(metrics, key, split) is not None]
    if cls_rows:
        lines += ["## Classification (early recognition)", ""]
        lines += _table(header, cls_rows)
        lines.append("")
    curve = early_curve(metrics, split)
    if len(curve) > 2:
        lines += ["### Accuracy by share of the drawing", ""]
        lines += _table(["% of drawing"] + [f"{100 * f:g}" for f in curve],
                        [["this run"] + [pct(v) for v in curve.values()]])
        lines.append("")
    space_rows = [row(key, label) for key, label in SPACE_ROWS if metric(metrics, key, split) is not None]
    if space_rows:
        lines += ["## Representation space", ""]
        lines += _table(header, space_rows)
        lines.append("")
    if cls_rows or space_rows:
        lines += [INTERVAL_NOTE, ""]
    lines += _retrieval_section(metrics, split, row)
    per_class = metrics.get("per_class_acc@100")
    if isinstance(per_class, Mapping) and per_class:
        n = metrics.get("per_class_n") if isinstance(metrics.get("per_class_n"), Mapping) else {}
        lines += ["## Per-class accuracy (100 % of the drawing)", ""]
        lines += _table(["class", "drawings", "accuracy (%)", "95 % interval"],  # worst first
                        [(c, n.get(c, "–"), pct(v), ci_text(interval(metrics, f"per_class_acc@100/{c}", v)))
                         for c, v in sorted(per_class.items(), key=_acc_key)])
        lines.append("")
    lines += pairs_markdown(metrics.get("confused_pairs") or [], len(metrics.get("classes") or per_class or ()))
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


def _retrieval_section(metrics: Mapping, split: str, row) -> list[str]:
    """The retrieval table (P@1 … AMI, with each figure's interval method) and what it measured."""
    rows = [row(key, label) for key, label in RETRIEVAL_ROWS if metric(metrics, key, split) is not None]
    if not rows:
        return []
    methods = {label: ci.method for key, label in RETRIEVAL_ROWS
               if (ci := interval(metrics, metric_key(metrics, key, split) or "")) is not None}
    methods = {k: "Wilson score interval over the n queries" if v == METHOD else v for k, v in methods.items()}
    lines = ["## Retrieval (test drawings against the KNN index)", ""]
    lines += _table(["metric (%)", "this run", "95 % interval", "n", STUDY_COL], rows)
    lines += ["", f"Queries: the {split} drawings; reference: the KNN index ({metrics.get('n_train', '–')} train "
              f"drawings). P@1 over every query; R-precision and MAP@R over {metrics.get('n_retrieval_queries', '–')} "
              f"sampled queries, R up to {metrics.get('retrieval_r_max', '–')}; NMI and AMI from one k-means "
              "clustering (no interval). Computed by pytorch-metric-learning's AccuracyCalculator. "
              "Intervals: " + "; ".join(f"{k}: {v}" for k, v in methods.items()) + ".", ""]
    return lines


def _acc_key(item) -> float:
    v = _num(item[1])
    return math.inf if v is None else v


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


def metrics_table(metrics: Mapping, title: str, split: str = "test", first: Sequence[str] = ()) -> Table:
    """The console table of a run's ``SPLIT/…`` figures, printed at the end of train and of eval (one
    table, so both read alike): shares in % with their 95 % interval (Wilson, or as saved), other
    figures (losses, distances) as numbers; ``first``: figure names put first, in that order."""
    figures = {k: v for k, v in metric_keys.of_split(metrics, split).items()
               if k != metric_keys.key(split, "n") and isinstance(v, float)}
    order = [k for k in (metric_keys.key(split, name) for name in first) if k in figures]
    t = Table(title=title)
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_column("95 % interval", justify="right")
    for k in order + [k for k in figures if k not in order]:
        v, ci = figures[k], interval(metrics, k)
        share = ci is not None or accuracy_key(k) is not None or metric_keys.parse(k).name in RETRIEVAL_NAMES
        t.add_row(k, "–" if not math.isfinite(v) else f"{100 * v:.1f} %" if share else f"{v:.4f}",
                  ci_text(ci, " %") if ci else "")
    return t


HTML_STYLE = """body{font:15px/1.45 system-ui,sans-serif;color:#111;background:#fff;max-width:1100px;margin:2em auto;
padding:0 1em}table{border-collapse:collapse;margin:.6em 0 1.2em}th,td{border:1px solid #bbb;padding:.25em .6em}
th{background:#eef}tr:nth-child(even) td{background:#f7f7fa}img{max-width:100%;border:1px solid #ddd}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ccc}"""


def render_html(markdown: str, title: str) -> str:
    """One self-contained HTML page of a report's markdown: raw HTML in the text is escaped (the
    metrics file is data), images must already be data URIs, the style is inline."""
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{HTML_STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n")


def png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def write_report(run_dir, metrics: Mapping, *, baseline: Mapping | None = None) -> Path:
    """Write ``RUN_DIR/report.md`` (figures present in the run dir are embedded) and the same report
    as ``RUN_DIR/report.html``, one self-contained page (figures inside as data URIs)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    figures = [f for f in FIGURES if (run_dir / f[0]).is_file()]
    out = run_dir / "report.md"
    out.write_text(render_report(metrics, baseline=baseline, figures=figures))
    inline = [(png_data_uri(run_dir / name), heading, caption) for name, heading, caption in figures]
    (run_dir / "report.html").write_text(render_html(render_report(metrics, baseline=baseline, figures=inline),
                                                     report_title(metrics)),
                                         encoding="utf-8")
    return out


# -------------------------------------------------------------------------- comparison of many runs
# Facts that identify a run (one row each), in table order.
FACT_COLUMNS = [("model_kind", "model kind"), ("backbone", "backbone"), ("loss", "loss"), ("miner", "miner"),
                ("seed", "seed"), ("dataset", "data")]
# Per-drawing predictions in predictions.npz, per metric (for McNemar's paired test).
PAIRED_KEYS = {"acc@50": "pred@50", "acc@100": "pred@100", "knn@1": "knn@1", "knn@3": "knn@3",
               "knn@4": "knn@4", "knn@5": "knn@5", "probe_eval": "probe",
               "p@1": "knn@1"}  # P@1 is right exactly where the nearest neighbour's class (knn@1) is


def run_facts(config: Mapping, choices: Mapping, model_kind: str | None) -> dict:
    """What identifies a training run in a comparison: model kind, backbone (not for the LSTM, which
    has none), loss, miner (only with a metric loss), seed, dataset, train-time probe epochs.
    ``config``: the run's config (resolved, or Hydra's saved ``config.yaml``); ``choices``: the option
    picked per config group."""
    loss = choices.get("loss")
    data = config.get("data") if isinstance(config.get("data"), Mapping) else {}
    cbs = config.get("callbacks") if isinstance(config.get("callbacks"), Mapping) else {}
    probe = cbs.get("embedding_eval") if isinstance(cbs.get("embedding_eval"), Mapping) else {}
    return {"model_kind": model_kind or choices.get("model"),
            "backbone": None if model_kind == "lstm" else choices.get("backbone"),
            "loss": loss, "miner": choices.get("miner") if loss and loss != "cross_entropy" else None,
            "seed": config.get("seed"), "dataset": data.get("root"),
            "probe_epochs": probe.get("probe_epochs") if probe.get("probe", True) else None}


@dataclass
class Run:
    """One trained model: its training run's metrics and/or an evaluation of one of its checkpoints."""

    label: str
    facts: dict
    overrides: str = ""
    trained: dict | None = None     # train_metrics.json (train.py: test split, train-time probe)
    evaluated: dict | None = None   # metrics.json (eval.py)
    eval_dir: Path | None = None
    eval_probe_steps: int | None = None
    _predictions: dict | None = field(default=None, repr=False)

    @property
    def main(self) -> dict:
        return self.evaluated if self.evaluated is not None else (self.trained or {})

    @property
    def split(self) -> str:
        return metric_keys.split_of(self.main)

    @property
    def n(self) -> int | None:
        if self.evaluated is not None:
            return split_n(self.evaluated, "test")
        return split_n(self.main, self.split)

    def interval(self, col: str) -> Interval | None:
        """The column's accuracy with its interval (None: not measured, or n unknown)."""
        if col == "probe_train":
            src = self.trained or {}
            key = metric_key(src, "probe_acc")
        elif col == "probe_eval":
            src = self.evaluated or {}
            key = metric_key(src, "probe_acc")
        else:
            src = self.main
            key = metric_key(src, col)
        return interval(src, key) if key else None

    def value(self, col: str) -> float | None:
        src = {"probe_train": self.trained, "probe_eval": self.evaluated}.get(col, self.main) or {}
        return metric(src, "probe_acc" if col.startswith("probe_") else col)

    def predictions(self) -> dict | None:
        """``predictions.npz`` of the evaluation (None without one)."""
        if self._predictions is None and self.eval_dir is not None and (self.eval_dir / "predictions.npz").is_file():
            with np.load(self.eval_dir / "predictions.npz", allow_pickle=False) as z:
                self._predictions = {k: z[k] for k in z.files}
        return self._predictions


def load_metrics(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"{path}: unreadable metrics file ({e.__class__.__name__}: {e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: metrics file must hold a JSON object")
    return data


def _columns(runs: Sequence[Run]) -> list[tuple[str, str]]:
    """(column id, header) of the accuracies any run has; the two probes apart and named."""
    cols = []
    for c in TABLE_COLUMNS:
        if c == "probe_acc":
            for cid, who, unit, lengths in (
                    ("probe_train", "train-time", "ep", [r.facts.get("probe_epochs") for r in runs]),
                    ("probe_eval", "eval", "steps", [r.eval_probe_steps for r in runs])):
                if any(r.value(cid) is not None for r in runs):
                    ep = {e for e, r in zip(lengths, runs) if r.value(cid) is not None} - {None}
                    cols.append((cid, f"probe, {who}" + (f" ({ep.pop()} {unit})" if len(ep) == 1 else "") + " (%)"))
        elif any(r.value(c) is not None for r in runs):
            cols.append((c, f"{c} (%)"))
    return cols


def compare(a: Run, b: Run, col: str) -> Difference | None:
    """Does ``col`` differ between runs a and b beyond noise? McNemar (paired) when both evaluations
    left predictions for the same drawings, else Fisher (unpaired); None when n is unknown or the
    figure is not a share of n (R-precision, MAP@R: means; NMI, AMI)."""
    pa, pb, key = a.predictions(), b.predictions(), PAIRED_KEYS.get(col)
    if pa is not None and pb is not None and key in pa and key in pb and "key_ids" in pa and "key_ids" in pb:
        ka, kb = pa["key_ids"], pb["key_ids"]
        if len(ka) == len(kb) and len(np.unique(ka)) == len(ka) and set(ka.tolist()) == set(kb.tolist()):
            ia, ib = np.argsort(ka), np.argsort(kb)
            return mcnemar(pa[key][ia] == pa["labels"][ia], pb[key][ib] == pb["labels"][ib])
    ia, ib = a.interval(col), b.interval(col)
    # Fisher compares two counts: not for approximate intervals, nor for means (R-precision …)
    if ia is None or ib is None or ia.approximate or ib.approximate or METHOD != ia.method or METHOD != ib.method:
        return None
    return two_proportions(ia, ib)


@dataclass
class Comparison:
    runs: list[Run]
    columns: list[tuple[str, str]]
    ref: int
    diffs: dict[tuple[int, str], Difference]

    def cell(self, i: int, col: str) -> str:
        r = self.runs[i]
        v, ci = r.value(col), r.interval(col)
        if v is None:
            return "–"
        text = pct(v) + (f" [{ci_text(ci)}]" if ci else "")
        d = self.diffs.get((i, col))
        if d is not None and d.beyond_noise:
            text += " ▲" if v > self.runs[self.ref].value(col) else " ▼"
        return text

    def header(self) -> list[str]:
        has_over = any(r.overrides for r in self.runs)
        return (["run"] + [h for _, h in FACT_COLUMNS] + ["split"] + (["overrides"] if has_over else [])
                + ["n"] + [h for _, h in self.columns])

    def rows(self) -> list[list[str]]:
        has_over = any(r.overrides for r in self.runs)
        out = []
        for i, r in enumerate(self.runs):
            facts = [str(r.facts.get(k)) if r.facts.get(k) not in (None, "") else "–" for k, _ in FACT_COLUMNS]
            out.append([r.label + (" (ref)" if i == self.ref and len(self.runs) > 1 else "")] + facts
                       + [r.split] + ([r.overrides or "–"] if has_over else [])
                       + [str(r.n or "–")] + [self.cell(i, c) for c, _ in self.columns])
        return out

    @property
    def n_text(self) -> int:
        """Number of left-aligned (text) columns."""
        return 1 + len(FACT_COLUMNS) + 1 + (1 if any(r.overrides for r in self.runs) else 0)

    def notes(self) -> list[str]:
        lines = ["Cells: accuracy [95 % Wilson interval over n drawings; ≈ approximate]."]
        if len(self.runs) < 2:
            return lines
        ref = self.runs[self.ref].label
        tests = sorted({d.test.split(" (")[0] for d in self.diffs.values()})
        lines.append(f"▲/▼: differs from the reference run {ref} beyond noise (p < 0.05; "
                     f"tests used: {', '.join(tests) or 'none possible (n unknown)'}; McNemar where both runs "
                     "have predictions.npz for the same drawings, else Fisher on the counts, which is "
                     "conservative for runs on the same drawings; each cell tested on its own, no "
                     "multiple-comparison correction).")
        beyond = [(i, c, d) for (i, c), d in self.diffs.items() if d.beyond_noise]
        heads = dict(self.columns)
        for i, c, d in beyond:
            lines.append(f"- {self.runs[i].label} vs {ref}: {heads[c].replace(' (%)', '')} "
                         f"{pct(self.runs[i].value(c))} vs {pct(self.runs[self.ref].value(c))} %, "
                         f"p = {d.p_value:.3g}, {d.test}")
        if not beyond:
            lines.append(f"No run differs from {ref} beyond noise.")
        return lines


def comparison(runs: Sequence[Run], ref: str | None = None) -> Comparison:
    """The comparison of ``runs`` against a reference run: the one whose label contains ``ref``,
    else the first."""
    runs = list(runs)
    idx = 0
    if ref:
        hits = [i for i, r in enumerate(runs) if ref in r.label]
        if not hits:
            raise ValueError(f"--ref {ref!r} matches no run (runs: {', '.join(r.label for r in runs[:12])})")
        idx = hits[0]
    cols = _columns(runs)
    diffs = {}
    for i, r in enumerate(runs):
        if i == idx:
            continue
        for c, _ in cols:
            if r.value(c) is not None and runs[idx].value(c) is not None:
                d = compare(runs[idx], r, c)
                if d is not None:
                    diffs[(i, c)] = d
    return Comparison(runs, cols, idx, diffs)


def study_rows(runs: Sequence[Run]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the study's figures for the model kinds among ``runs`` (shown apart)."""
    kinds = [k for k in dict.fromkeys(str(r.facts.get("model_kind")) for r in runs) if STUDY.get(k)]
    scols = [c for c in TABLE_COLUMNS if any(c in STUDY[k] for k in kinds)]
    return ["model kind"] + [f"{c} (%)" for c in scols], [[k] + [STUDY[k].get(c, "–") for c in scols] for k in kinds]


def compare_table(cmp: Comparison) -> str:
    """Markdown: our runs (with intervals and differences), then the study's figures apart."""
    lines = [f"## This project's runs ({len(cmp.runs)})", ""]
    lines += _table(cmp.header(), cmp.rows(), left=cmp.n_text) + [""] + cmp.notes() + [""]
    by_kind: dict[str, dict] = {}
    for r in cmp.runs:
        by_kind.setdefault(str(r.facts.get("model_kind")), {**r.main, "model_kind": r.facts.get("model_kind")})
    if "triplet" in by_kind and "direct" in by_kind:
        lines += triplet_vs_direct(by_kind["triplet"], by_kind["direct"])
    header, rows = study_rows(cmp.runs)
    if rows:
        lines += [f"## {STUDY_COL} — reference only, not our results", ""] + _table(header, rows) + [""]
    return "\n".join(lines).rstrip() + "\n"
