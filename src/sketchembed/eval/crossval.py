"""Cross-validation results: the folds' per-drawing predictions pooled into one table over ALL the
drawings, and two CV runs compared drawing by drawing.

A CV run dir (written by ``train.py cv.folds=K``, ``sketchembed.train.cv``) holds

* ``cv_predictions.npz``: per drawing (each once) ``key_ids``, ``labels``, ``fold``, the predictions
  (``pred@50``, ``pred@100``, ``knn@3``: the keys of eval's ``predictions.npz``) and their
  correctness (``correct/acc@50``, ``correct/acc@100``, ``correct/knn@3``);
* ``cv_metrics.json``: flat ``cv/acc@100`` … (the pooled accuracy = mean over all n drawings),
  ``cv/n``, per-fold accuracies, and the 95 % Wilson ``intervals`` over the n pooled drawings;
* ``cv.md``: the same table in markdown.

Pooling over folds makes n the whole dataset (337 drawings for study10, not one 51-drawing test
split), and two CV runs with the same ``cv.seed`` test every drawing once each, so McNemar's exact
test pairs them by key_id (:func:`compare_cv`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from sketchembed import metric_keys
from sketchembed.eval.stats import Difference, ci_text, interval, mcnemar, two_proportions, with_intervals

CV_METRICS = "cv_metrics.json"
CV_PREDICTIONS = "cv_predictions.npz"
CV_TABLE = "cv.md"
# (metric, prediction key in a fold's test_predictions.npz, label in tables)
CV_COLUMNS = (("acc@50", "pred@50", "classification @50 %"), ("acc@100", "pred@100", "classification @100 %"),
              ("knn@3", "knn@3", "KNN K=3 (strict vote)"))
_REQUIRED = ("key_ids", "labels", "fold")
_MAX_DRAWINGS = 50_000_000  # a CV predictions file is read whole: refuse absurd sizes up front


def pool_folds(folds: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One table of the folds' test predictions: every drawing once (a key_id in two folds' test
    parts is a ValueError), ``fold`` = the fold that tested it, ``correct/<metric>`` per metric that
    every fold predicted."""
    if not folds:
        raise ValueError("no folds to pool")
    keys = [pred for _, pred, _ in CV_COLUMNS if all(pred in f for f in folds)]
    out = {"key_ids": np.concatenate([np.asarray(f["key_ids"], np.uint64) for f in folds]),
           "labels": np.concatenate([np.asarray(f["labels"], np.int64) for f in folds]),
           "fold": np.concatenate([np.full(len(f["labels"]), i, np.int64) for i, f in enumerate(folds)])}
    uniq, counts = np.unique(out["key_ids"], return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"{int((counts > 1).sum())} drawing(s) tested in more than one fold (key_id "
                         f"{int(uniq[counts > 1][0])}): the folds' test parts must be disjoint")
    for metric, pred, _ in CV_COLUMNS:
        if pred in keys:
            out[pred] = np.concatenate([np.asarray(f[pred], np.int64) for f in folds])
            out[metric_keys.key("correct", metric)] = out[pred] == out["labels"]
    return out


def cv_metrics(pooled: Mapping[str, np.ndarray], facts: Mapping | None = None) -> dict:
    """Flat ``cv/<metric>`` (pooled accuracy), ``cv/n``, ``cv/folds``, per-fold accuracies and their
    spread, with 95 % Wilson intervals over the n pooled drawings (``intervals``)."""
    fold = np.asarray(pooled["fold"])
    k = int(fold.max()) + 1 if len(fold) else 0
    out: dict = {"cv/n": int(len(fold)), "cv/folds": k, **(facts or {})}
    for metric, _, _ in CV_COLUMNS:
        correct = pooled.get(metric_keys.key("correct", metric))
        if correct is None:
            continue
        correct = np.asarray(correct, bool)
        out[metric_keys.key("cv", metric)] = float(correct.mean())
        per_fold = [float(correct[fold == i].mean()) for i in range(k)]
        out[metric_keys.key("cv_fold", metric)] = per_fold
        out[metric_keys.key("cv_fold_std", metric)] = float(np.std(per_fold, ddof=1)) if k > 1 else 0.0
    return with_intervals(out)


def cv_markdown(metrics: Mapping, title: str) -> str:
    """``cv.md``: one row per metric, pooled accuracy [95 % Wilson] and the per-fold accuracies."""
    k, n = metrics.get("cv/folds"), metrics.get("cv/n")
    lines = [f"# {title}", "", f"{k}-fold cross-validation, every drawing tested once: n = {n} drawings.", "",
             "| metric | accuracy, % [95 % interval] | per fold, % | fold std, points |", "|---|---:|---|---:|"]
    for metric, _, label in CV_COLUMNS:
        if metric_keys.key("cv", metric) not in metrics:
            continue
        folds = " / ".join(f"{100 * v:.1f}" for v in metrics[metric_keys.key("cv_fold", metric)])
        std = 100 * metrics[metric_keys.key("cv_fold_std", metric)]
        lines.append(f"| {label} | {_cell(metrics, metric)} | {folds} | {std:.1f} |")
    lines += ["", "Interval: Wilson score interval over the n pooled per-drawing results (the folds' models "
              "differ, so it treats the CV as one classifier of n drawings)."]
    return "\n".join(lines) + "\n"


def _cell(metrics: Mapping, metric: str) -> str:
    v = metrics.get(metric_keys.key("cv", metric))
    if v is None:
        return "–"
    ci = interval(metrics, metric_keys.key("cv", metric))
    return f"{100 * v:.1f}" + (f" [{ci_text(ci)}]" if ci else "")


def print_cv(metrics: Mapping, title: str, console: Console | None = None) -> None:
    """The CV table on the console."""
    t = Table(title=f"{title}: {metrics.get('cv/folds')}-fold CV, n = {metrics.get('cv/n')} drawings")
    for h, j in (("metric", "left"), ("accuracy %", "right"), ("95 % interval (Wilson)", "right"),
                 ("per fold %", "left")):
        t.add_column(h, justify=j)
    for metric, _, label in CV_COLUMNS:
        if metric_keys.key("cv", metric) in metrics:
            ci = interval(metrics, metric_keys.key("cv", metric))
            t.add_row(label, f"{100 * metrics[metric_keys.key('cv', metric)]:.1f}", ci_text(ci) if ci else "",
                      " / ".join(f"{100 * v:.1f}" for v in metrics[metric_keys.key("cv_fold", metric)]))
    (console or Console()).print(t)


def write_cv(run_dir, pooled: Mapping[str, np.ndarray], metrics: Mapping, title: str) -> None:
    run_dir = Path(run_dir)
    np.savez(run_dir / CV_PREDICTIONS, **pooled)
    (run_dir / CV_METRICS).write_text(json.dumps(metrics, indent=2, sort_keys=True))
    (run_dir / CV_TABLE).write_text(cv_markdown(metrics, title))


# ------------------------------------------------------------------------------------ CV runs compared
def is_cv_run(path) -> bool:
    return (Path(path) / CV_METRICS).is_file()


def cv_runs_in(path) -> list[Path]:
    """The CV run dirs a report argument names: itself, or those below it (a multirun's jobs)."""
    path = Path(path)
    if is_cv_run(path):
        return [path]
    return sorted(f.parent for f in path.rglob(CV_METRICS)) if path.is_dir() else []


def load_cv(run_dir) -> tuple[dict, dict[str, np.ndarray]]:
    """``(cv_metrics.json, cv_predictions.npz)`` of a CV run dir, read as data and checked (a
    ValueError naming the file and what is wrong)."""
    run_dir = Path(run_dir)
    mfile, pfile = run_dir / CV_METRICS, run_dir / CV_PREDICTIONS
    try:
        metrics = json.loads(mfile.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ValueError(f"{mfile}: unreadable ({e.__class__.__name__})") from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("cv/n"), int):
        raise ValueError(f"{mfile}: not a CV metrics file (a JSON object with an integer cv/n)")
    try:
        with np.load(pfile, allow_pickle=False) as z:
            shapes = {k: z[k].shape for k in z.files} if len(z.files) < 64 else None
            if shapes is None or any(len(s) != 1 or s[0] > _MAX_DRAWINGS for s in shapes.values()):
                raise ValueError("expected at most 63 one-dimensional arrays of at most "
                                 f"{_MAX_DRAWINGS:,} drawings")
            preds = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise ValueError(f"{pfile}: missing (the CV run did not finish?)") from None
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"{pfile}: unreadable ({e})") from None
    missing = [k for k in _REQUIRED if k not in preds]
    if missing:
        raise ValueError(f"{pfile}: lacks {', '.join(missing)}")
    n = len(preds["key_ids"])
    if any(len(v) != n for v in preds.values()) or n != metrics["cv/n"]:
        raise ValueError(f"{pfile}: arrays of different lengths, or not the cv/n = {metrics['cv/n']} of {mfile.name}")
    if len(np.unique(preds["key_ids"])) != n:
        raise ValueError(f"{pfile}: a key_id appears twice")
    return metrics, preds


def compare_cv(ref: tuple[dict, dict], other: tuple[dict, dict], metric: str) -> Difference | None:
    """Does ``metric`` differ between two CV runs beyond noise? McNemar's exact test paired by key_id
    when both tested the same drawings, else Fisher's exact test on the counts; None if either lacks it."""
    (ma, pa), (mb, pb) = ref, other
    correct = metric_keys.key("correct", metric)
    if correct not in pa or correct not in pb:
        return None
    ka, kb = pa["key_ids"], pb["key_ids"]
    if len(ka) == len(kb) and np.array_equal(np.sort(ka), np.sort(kb)):
        ia, ib = np.argsort(ka), np.argsort(kb)
        return mcnemar(pa[correct][ia], pb[correct][ib])
    ia, ib = interval(ma, metric_keys.key("cv", metric)), interval(mb, metric_keys.key("cv", metric))
    return None if ia is None or ib is None else two_proportions(ia, ib)


def cv_comparison_rows(runs: Sequence[tuple[str, tuple[dict, dict]]],
                       ref: int = 0) -> tuple[list[str], list[list[str]]]:
    """Header and rows: each CV run's pooled accuracies [95 % interval], and per metric the p value of
    McNemar's test against run ``ref`` (▲/▼ when p < 0.05)."""
    header = (["CV run", "folds", "n"] + [f"{m} (%)" for m, _, _ in CV_COLUMNS]
              + [f"{m} vs ref" for m, _, _ in CV_COLUMNS])
    rows = []
    for i, (label, run) in enumerate(runs):
        m = run[0]
        cells = [label + (" (ref)" if i == ref and len(runs) > 1 else ""), str(m.get("cv/folds", "?")), str(m["cv/n"])]
        cells += [_cell(m, metric) for metric, _, _ in CV_COLUMNS]
        for metric, _, _ in CV_COLUMNS:
            d = None if i == ref else compare_cv(runs[ref][1], run, metric)
            if d is None:
                cells.append("–")
                continue
            arrow = ""
            if d.beyond_noise:
                key = metric_keys.key("cv", metric)
                arrow = " ▲" if m[key] > runs[ref][1][0][key] else " ▼"
            cells.append(f"p = {d.p_value:.3g}{arrow} ({d.test.split(' (')[0]})")
        rows.append(cells)
    return header, rows
