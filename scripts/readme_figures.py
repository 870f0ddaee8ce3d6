#!/usr/bin/env python
"""Regenerate the README's figures: run the commands that produce them, then rewrite the README
tables between their marker comments (``<!-- figures:NAME -->`` … ``<!-- /figures:NAME -->``).

    python scripts/readme_figures.py            # everything: the main job, its evaluation, the CPU-default table
    python scripts/readme_figures.py main       # the main job (`python train.py`) and `python eval.py` of its
                                                # best checkpoint
    python scripts/readme_figures.py choose     # "Choosing the CPU default": a 5-fold CV (train.py cv.folds=5)
                                                # per candidate
    python scripts/readme_figures.py choose --folds 2 --extra …   # a quick smoke of the same (tiny runs)
    python scripts/readme_figures.py --from-runs outputs/figures/<commit>   # rewrite from runs made earlier
    OMP_NUM_THREADS=1 python scripts/readme_figures.py choose --root R --rows default channels &
    OMP_NUM_THREADS=1 python scripts/readme_figures.py choose --root R --rows pretrained ema   # two lanes at once;
    python scripts/readme_figures.py choose --from-runs R                         # then the table from both

Runs go to ``outputs/figures/<commit>/{main/train,main/eval,choose/<row>}`` (a row that pre-trains
first also gets ``choose/<row>_pretrain``); each run dir gets
``figures_run.json`` (the command, the commit it ran on, wall clock, CPU cores), which is what the
tables cite. Every table carries its command, seed, n and 95 % Wilson intervals. The run dir is
placed with ``hydra.run.dir=…``, which changes nothing else, so the commands are shown without it.

``--extra``/``--eval-extra`` append overrides to every training/evaluation (tests use them for tiny
runs); they are shown in the commands, so a tiny table never passes for the real one.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from sketchembed import metric_keys  # noqa: E402
from sketchembed.eval.crossval import CV_COLUMNS, compare_cv, load_cv  # noqa: E402
from sketchembed.eval.report import early_curve  # noqa: E402
from sketchembed.eval.stats import ci_text, interval, split_n  # noqa: E402

RUN_FILE = "figures_run.json"
# Rows of "Choosing the CPU default": each candidate is one K-fold cross-validation,
# `python train.py cv.folds=K <overrides>` (all with cv.seed 0: the same folds, so every drawing is
# tested once per candidate and the rows pair drawing by drawing); the first row is the default.
# (run dir name, overrides, description, pre-training overrides or None). A pre-training row first
# runs `python train.py <pre-training overrides>` once (its drawings are not study10's, so no fold's
# test drawing is seen) and passes its best checkpoint as model.cnn_ckpt.
CHOOSE_ROWS = [
    ("default", [], "*(the default: combined e2e, `test_resnet`, 64 px, augmentation, 60 epochs)*", None),
    ("channels", ["data.channels=[ink,order]"],
     "`data.channels=[ink,order]` (a stroke-order channel beside the ink)", None),
    ("ema", ["averaging=ema"], "`averaging=ema` (exponential moving average of the weights)", None),
    ("tta", ["tta=scale_shift", "train=false"],
     "`tta=scale_shift` (test-time augmentation: 7 scaled / shifted views averaged) on the default's fold models",
     None),
    ("pretrained", ["model=combined_transfer"],
     "`model=combined_transfer`, CNN pre-trained 335-way on the embedded others335 "
     "(`model=direct data=others335 trainer.max_epochs=10`)",
     ["model=direct", "data=others335", "trainer.max_epochs=10"]),
]
# Rows that train nothing: each fold tests the named row's fold model (cv.models_from), so the row
# differs from that one in its test alone; it runs after that row.
MODELS_FROM = {"tta": "default"}
IMAGES = [("tsne.png", "docs/img/main_tsne.png"), ("neighbors.png", "docs/img/main_neighbors.png")]


class FiguresError(Exception):
    """Bad input (missing markers, run dirs or metrics): one line, exit 2."""


# ------------------------------------------------------------------------------------------ runs
def git_commit() -> str:
    """Short commit of the checkout, ``+dirty`` when tracked files differ from it."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def run_command(script: str, args: list[str], run_dir: Path, commit: str) -> dict:
    """Run ``python SCRIPT ARGS`` with its run dir at ``run_dir``; record what ran in figures_run.json."""
    shown = ["python", script, *args]
    print("$ " + shlex.join(shown), flush=True)
    env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"), "PROJECT_ROOT": str(REPO)}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(REPO / script), *args, f"hydra.run.dir={run_dir}"], cwd=REPO,
                          env=env)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise FiguresError(f"`{shlex.join(shown)}` failed with exit code {proc.returncode} (run dir {run_dir})")
    record = {"command": shlex.join(shown), "commit": commit, "wall_s": round(wall, 1), "cpu_cores": os.cpu_count(),
              "threads": os.environ.get("OMP_NUM_THREADS") or None}
    (run_dir / RUN_FILE).write_text(json.dumps(record, indent=2))
    return record


def _best_checkpoint(run_dir: Path) -> str:
    best = _metrics(run_dir, "train_metrics.json").get("best_checkpoint")
    if not best:
        raise FiguresError(f"{run_dir}/train_metrics.json names no best_checkpoint")
    return str(best)


def make_runs(root: Path, what: str, extra: list[str], eval_extra: list[str], folds: int = 5,
              rows: list[str] | None = None) -> None:
    """Run the commands behind the tables ``what`` (main, choose, all) into ``root``; ``rows`` picks
    choose rows by run dir name (another process may run the others into the same root)."""
    commit = git_commit()
    names = [r[0] for r in CHOOSE_ROWS]
    unknown = sorted(set(rows or ()) - set(names))
    if unknown:
        raise FiguresError(f"--rows {' '.join(unknown)}: unknown (choose from {', '.join(names)})")
    todo = [r for r in CHOOSE_ROWS if rows is None or r[0] in rows] if what in ("choose", "all") else []
    mine = ([root / "main"] if what in ("main", "all") else []) + [
        root / "choose" / d for name, _, _, pre in todo for d in (name, f"{name}_pretrain")[:1 + (pre is not None)]]
    for d in mine:  # old checkpoints would mix with the new runs'
        if d.exists() and any(d.iterdir()):
            raise FiguresError(f"{d} already holds runs: reuse them with --from-runs {root}, or remove it")
    if what in ("main", "all"):
        train_dir = root / "main" / "train"
        run_command("train.py", extra, train_dir, commit)
        run_command("eval.py", [f"ckpt_path={_best_checkpoint(train_dir)}", *eval_extra],
                    root / "main" / "eval", commit)
    if what in ("choose", "all"):
        for name, overrides, _, pretrain in todo:
            if pretrain is not None:
                pre_dir = root / "choose" / f"{name}_pretrain"
                run_command("train.py", [*pretrain, *extra], pre_dir, commit)
                overrides = [*overrides, f"model.cnn_ckpt={_best_checkpoint(pre_dir)}"]
            if name in MODELS_FROM:
                overrides = [*overrides, f"cv.models_from={root / 'choose' / MODELS_FROM[name]}"]
            run_command("train.py", [f"cv.folds={folds}", *overrides, *extra], root / "choose" / name, commit)


# ---------------------------------------------------------------------------------------- tables
def _metrics(run_dir: Path, name: str) -> dict:
    path = run_dir / name
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FiguresError(f"{path}: missing (run the commands first, or point --from-runs at their root)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise FiguresError(f"{path}: unreadable ({e})") from None
    if not isinstance(data, dict):
        raise FiguresError(f"{path}: not a JSON object")
    return data


def _record(run_dir: Path) -> dict:
    rec = _metrics(run_dir, RUN_FILE)
    if not rec.get("command") or not rec.get("commit"):
        raise FiguresError(f"{run_dir / RUN_FILE}: needs 'command' and 'commit'")
    return rec


def _config(run_dir: Path) -> dict:
    """The run's saved Hydra config ({} when absent)."""
    try:
        data = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _seed(run_dir: Path, metrics: dict):
    return metrics["seed"] if metrics.get("seed") is not None else _config(run_dir).get("seed", "?")


def cell(metrics: dict, key: str) -> str:
    """``78.4 % [65.4–87.5]``; "–" when not measured; no interval (said) when n is unknown."""
    ci = interval(metrics, key)
    if ci is None:
        v = metrics.get(key)
        return "–" if v is None else f"{100 * float(v):.1f} % [n unknown]"
    return f"{ci.pct().replace(' [', ' % [')}"


def duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s} s" if m else f"{s} s"


def _provenance(rec: dict, seed, n, what: str = "") -> str:
    return (f"`{rec['command']}` — seed {seed}, n = {n}{what}, commit `{rec['commit']}`, "
            f"{duration(float(rec.get('wall_s', 0)))} on {rec.get('cpu_cores', '?')} CPU cores. "
            "Brackets: 95 % Wilson interval over the n drawings.")


def main_job_table(root: Path) -> str:
    d = root / "main" / "train"
    m, rec = _metrics(d, "train_metrics.json"), _record(d)
    n = split_n(m, "test") or "?"
    kind = m.get("model_kind") or "?"
    probe_ep = m.get("probe_epochs")
    rows = [f"| {kind} model, test split (n = {n} drawings) | @50 % of the drawing | @100 % |", "|---|---:|---:|",
            f"| classification (its own head) | {cell(m, 'test/acc@50')} | {cell(m, 'test/acc@100')} |",
            f"| KNN on the embeddings (index = train split), K = 3 | – | {cell(m, 'test/knn@3')} |",
            f"| KNN, K = 4 | – | {cell(m, 'test/knn@4')} |",
            f"| linear probe on the frozen embeddings{f', {probe_ep} epochs' if probe_ep else ''} | – | "
            f"{cell(m, 'test/probe_acc')} |",
            "", _provenance(rec, _seed(d, m), n, " test drawings")]
    return "\n".join(rows)


def main_eval_table(root: Path) -> str:
    d = root / "main" / "eval"
    m, rec = _metrics(d, "metrics.json"), _record(d)
    n = split_n(m, "test") or "?"
    curve = [(100 * f, metric_keys.key("test", "acc", f)) for f in early_curve(m, "test")]
    rows = [f"| `eval.py` of the main job's best checkpoint, test split (n = {n}) | accuracy, % [95 % interval] |",
            "|---|---:|",
            f"| classification @50 % of the drawing | {cell(m, 'test/acc@50')} |",
            f"| classification @100 % | {cell(m, 'test/acc@100')} |",
            f"| KNN K = 3 (strict vote: majority, ties to the nearest) | {cell(m, 'test/knn@3')} |",
            f"| KNN K = 3, the study's tie rule (a tie that includes the true class counts) | "
            f"{cell(m, 'test/knn@3_study_tie')} |",
            f"| linear probe, trained anew ({(_config(d).get('probe') or {}).get('steps', '?')} steps) | "
            f"{cell(m, 'test/probe_acc')} |"]
    if curve:
        rows += ["", "Early recognition (accuracy by share of the drawing's points):", "",
                 "| % of the drawing | " + " | ".join(f"{p:g}" for p, _ in curve) + " |",
                 "|---|" + "---:|" * len(curve),
                 "| accuracy, % | " + " | ".join(f"{100 * m[k]:.1f}" for _, k in curve) + " |",
                 "| 95 % interval | " + " | ".join(_ci(m, k) for _, k in curve) + " |"]
    rows += ["", _provenance(rec, _seed(d, m), n, " test drawings")]
    return "\n".join(rows)


def _ci(m: dict, key: str) -> str:
    ci = interval(m, key)
    return "–" if ci is None else f"{100 * ci.low:.0f}–{100 * ci.high:.0f}"


def _cv_cell(m: dict, metric: str) -> str:
    v, ci = m.get(metric_keys.key("cv", metric)), interval(m, metric_keys.key("cv", metric))
    return "–" if v is None else f"{100 * v:.1f} %" + (f" [{ci_text(ci)}]" if ci else "")


def choose_table(root: Path) -> str:
    """One row per candidate's K-fold CV: pooled accuracies over every drawing [95 % Wilson] and
    McNemar's exact test against the default's CV on the same drawings."""
    names = [label for _, _, label in CV_COLUMNS]
    rows = ["| overrides | wall clock | " + " | ".join(f"CV {n}" for n in names)
            + " | McNemar p vs the default (@50 / @100 / KNN) |", "|---|---:|" + "---:|" * len(names) + "---|"]
    default = None
    seeds, cv_seeds, commits, ns, folds, cores = set(), set(), set(), set(), set(), set()
    for name, overrides, label, pretrain in CHOOSE_ROWS:
        d = root / "choose" / name
        rec = _record(d)
        wall = duration(float(rec.get("wall_s", 0)))
        if pretrain is not None:
            wall += f" + {duration(float(_record(root / 'choose' / f'{name}_pretrain').get('wall_s', 0)))} pre-training"
        if name in MODELS_FROM:
            wall += f" (testing only; the models are {MODELS_FROM[name]}'s)"
        try:
            run = load_cv(d)
        except ValueError as e:
            raise FiguresError(str(e)) from None
        m = run[0]
        seeds.add(str(_seed(d, m)))
        commits.add(rec["commit"])
        cores.add(f"{rec.get('cpu_cores', '?')} CPU cores"
                  + (f" at OMP_NUM_THREADS={rec['threads']} (rows run side by side)" if rec.get("threads") else ""))
        ns.add(str(m.get("cv/n", "?")))
        folds.add(str(m.get("cv/folds", "?")))
        cv_seeds.add(str(m.get("cv/seed", "?")))
        shown = label or " ".join(f"`{o}`" for o in overrides)
        placed = ("cv.folds=", "model.cnn_ckpt=", "cv.models_from=")  # the script places these itself
        extra = [a for a in shlex.split(rec["command"])[2:] if not a.startswith(placed) and a not in overrides]
        if extra:
            shown += f" (run with `{' '.join(extra)}`)"
        default = run if default is None else default
        tests = []
        for metric, _, _ in CV_COLUMNS:
            diff = None if run is default else compare_cv(default, run, metric)
            tests.append("–" if diff is None
                         else (f"**{diff.p_value:.2g}**" if diff.beyond_noise else f"{diff.p_value:.2g}"))
        rows.append(f"| {shown} | {wall} | "
                    + " | ".join(_cv_cell(m, metric) for metric, _, _ in CV_COLUMNS) + f" | {' / '.join(tests)} |")
    rows += ["", f"Each row: `python train.py cv.folds={', '.join(sorted(folds))} <overrides>` — seed "
                 f"{', '.join(sorted(seeds))}, cv.seed {', '.join(sorted(cv_seeds))} (the same folds for every row), "
                 f"n = {', '.join(sorted(ns))} "
                 f"drawings (each tested once, by the fold that held it out), commit "
                 f"{', '.join(f'`{c}`' for c in sorted(commits))}, wall clock of the whole CV on "
                 f"{', '.join(sorted(cores))}. Brackets: 95 % Wilson interval over the n pooled drawings; "
                 "last column: McNemar's exact test on the same drawings paired by key_id (bold: p < 0.05, each "
                 "cell on its own). Regenerate: `python scripts/readme_figures.py choose`."]
    return "\n".join(rows)


SECTIONS = {"main": [("main-job", main_job_table), ("main-eval", main_eval_table)],
            "choose": [("choose", choose_table)]}
SECTIONS["all"] = SECTIONS["main"] + SECTIONS["choose"]


def replace_section(text: str, name: str, body: str) -> str:
    """Put ``body`` between ``<!-- figures:NAME -->`` and ``<!-- /figures:NAME -->`` (each once)."""
    start, end = f"<!-- figures:{name} -->", f"<!-- /figures:{name} -->"
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise FiguresError(f"README needs exactly one `{start}` … `{end}` pair")
    a, b = text.index(start) + len(start), text.index(end)
    return text[:a] + "\n" + body.strip() + "\n" + text[b:]


def rewrite_readme(readme: Path, root: Path, what: str) -> None:
    text = readme.read_text()
    for name, render in SECTIONS[what]:
        text = replace_section(text, name, render(root))
    readme.write_text(text)
    if what in ("main", "all"):  # the README's maps are copies of the main job's evaluation
        for src, dst in IMAGES:
            if (root / "main" / "eval" / src).is_file():
                (readme.parent / dst).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(root / "main" / "eval" / src, readme.parent / dst)
    print(f"rewrote {', '.join(n for n, _ in SECTIONS[what])} in {readme}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", nargs="?", default="all", choices=["all", "main", "choose"])
    p.add_argument("--from-runs", metavar="ROOT", help="rewrite from runs already under ROOT (no training)")
    p.add_argument("--root", metavar="DIR", help="where the runs go (default: outputs/figures/<commit>)")
    p.add_argument("--readme", default=str(REPO / "README.md"))
    p.add_argument("--extra", nargs="*", default=[], metavar="OVERRIDE", help="appended to every train.py")
    p.add_argument("--eval-extra", nargs="*", default=[], metavar="OVERRIDE", help="appended to eval.py")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds of each choose row (default 5)")
    p.add_argument("--rows", nargs="+", metavar="ROW", help="run only these choose rows (by run dir name) and "
                   "leave README alone; rewrite it with --from-runs once every row is there")
    args = p.parse_args(argv)
    try:
        readme = Path(args.readme)
        if not readme.is_file():
            raise FiguresError(f"--readme {readme}: no such file")
        if args.from_runs:
            root = Path(args.from_runs)
            if not root.is_dir():
                raise FiguresError(f"--from-runs {root}: no such folder")
        else:
            root = Path(args.root) if args.root else REPO / "outputs" / "figures" / git_commit()
            if args.folds < 2:
                raise FiguresError(f"--folds {args.folds}: cross-validation needs at least 2 folds")
            if args.rows and args.what != "choose":
                raise FiguresError("--rows picks choose rows: use it with `choose`")
            make_runs(root, args.what, list(args.extra), list(args.eval_extra), args.folds, args.rows)
            if args.rows:
                print(f"ran {' '.join(args.rows)} into {root}; when every row is there: "
                      f"python scripts/readme_figures.py choose --from-runs {root}")
                return 0
        rewrite_readme(readme, root, args.what)
    except FiguresError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
