#!/usr/bin/env python
"""Regenerate the README's figures: run the commands that produce them, then rewrite the README
tables between their marker comments (``<!-- figures:NAME -->`` … ``<!-- /figures:NAME -->``).

    python scripts/readme_figures.py            # everything: the main job, its evaluation, the CPU-default table
    python scripts/readme_figures.py main       # the main job (`python train.py`) and `python eval.py` of its best checkpoint
    python scripts/readme_figures.py choose     # the rows of "Choosing the CPU default" (the default row = the main job)
    python scripts/readme_figures.py --from-runs outputs/figures/<commit>   # rewrite from runs made earlier

Runs go to ``outputs/figures/<commit>/{main/train,main/eval,choose/<row>}``; each run dir gets
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
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from sketchembed.eval.stats import interval, split_n, two_proportions  # noqa: E402

RUN_FILE = "figures_run.json"
# Rows of "Choosing the CPU default": (run dir name, overrides, description); the default row is
# the main job's training run.
CHOOSE_ROWS = [
    ("default", [], "*(the default: combined e2e, `test_resnet`, 64 px, augmentation, 60 epochs)*"),
    ("epochs30", ["trainer.max_epochs=30"], None),
    ("augment_none", ["augment=none"], None),
    ("lstm", ["model=lstm"], "`model=lstm` (the temporal model alone)"),
]
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
    record = {"command": shlex.join(shown), "commit": commit, "wall_s": round(wall, 1), "cpu_cores": os.cpu_count()}
    (run_dir / RUN_FILE).write_text(json.dumps(record, indent=2))
    return record


def make_runs(root: Path, what: str, extra: list[str], eval_extra: list[str]) -> None:
    """Run the commands behind the tables ``what`` (main, choose, all) into ``root``."""
    commit = git_commit()
    if root.exists() and any(root.iterdir()):  # old checkpoints would mix with the new runs'
        raise FiguresError(f"{root} already holds runs: reuse them with --from-runs {root}, or remove it")
    train_dir = root / "main" / "train"
    run_command("train.py", extra, train_dir, commit)
    if what in ("main", "all"):
        best = _metrics(train_dir, "train_metrics.json").get("best_checkpoint")
        if not best:
            raise FiguresError(f"{train_dir}/train_metrics.json names no best_checkpoint")
        run_command("eval.py", [f"ckpt_path={best}", *eval_extra], root / "main" / "eval", commit)
    if what in ("choose", "all"):
        for name, overrides, _ in CHOOSE_ROWS[1:]:
            run_command("train.py", [*overrides, *extra], root / "choose" / name, commit)


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
    curve = sorted(((float(k[len("test/acc@"):]), k) for k in m if re.fullmatch(r"test/acc@\d+(\.\d+)?", k)))
    rows = [f"| `eval.py` of the main job's best checkpoint, test split (n = {n}) | accuracy, % [95 % interval] |",
            "|---|---:|",
            f"| classification @50 % of the drawing | {cell(m, 'test/acc@50')} |",
            f"| classification @100 % | {cell(m, 'test/acc@100')} |",
            f"| KNN K = 3 (strict vote: majority, ties to the nearest) | {cell(m, 'test/knn@3')} |",
            f"| KNN K = 3, the study's tie rule (a tie that includes the true class counts) | "
            f"{cell(m, 'test/knn@3_study_tie')} |",
            f"| linear probe, trained anew ({(_config(d).get('probe') or {}).get('steps', '?')} steps) | {cell(m, 'test/probe_acc')} |"]
    if curve:
        rows += ["", "Early recognition (accuracy by share of the drawing's points):", "",
                 "| % of the drawing | " + " | ".join(f"{p:g}" for p, _ in curve) + " |",
                 "|---|" + "---:|" * len(curve),
                 "| accuracy, % | " + " | ".join(f"{100 * m[k]:.1f}" for _, k in curve) + " |",
                 "| 95 % interval | " + " | ".join(_ci(m, k) for _, k in curve) + " |"]
    rows += ["", _provenance(rec, _seed(d, m), n, " test drawings")]
    return "\n".join(rows)


def versus(ref: dict, m: dict, key: str) -> str:
    """Whether ``m[key]`` differs from ``ref[key]`` beyond noise (Fisher's exact test on the counts)."""
    a, b = interval(ref, key), interval(m, key)
    if a is None or b is None:
        return "n unknown"
    d = two_proportions(a, b)
    return f"{'**beyond noise**' if d.beyond_noise else 'within noise'} (p = {d.p_value:.2g})"


def _ci(m: dict, key: str) -> str:
    ci = interval(m, key)
    return "–" if ci is None else f"{100 * ci.low:.0f}–{100 * ci.high:.0f}"


def choose_table(root: Path) -> str:
    rows = ["| overrides | wall clock | best val @100 | test @50 | test @100 | test KNN K=3 | test @100 vs the default |",
            "|---|---:|---:|---:|---:|---:|---|"]
    default = None
    seeds, commits, n_val, n_test, cores = set(), set(), set(), set(), set()
    for name, overrides, label in CHOOSE_ROWS:
        d = root / "main" / "train" if name == "default" else root / "choose" / name
        m, rec = _metrics(d, "train_metrics.json"), _record(d)
        seeds.add(str(_seed(d, m)))
        commits.add(rec["commit"])
        cores.add(str(rec.get("cpu_cores", "?")))
        n_val.add(str(split_n(m, "val") or "?"))
        n_test.add(str(split_n(m, "test") or "?"))
        extra = rec["command"].split("python train.py", 1)[-1].strip()
        shown = label or " ".join(f"`{o}`" for o in overrides)
        if extra and extra != " ".join(overrides):
            shown += f" (run as `python train.py {extra}`)"
        default = m if default is None else default
        rows.append(f"| {shown} | {duration(float(rec.get('wall_s', 0)))} | {cell(m, 'best/val/acc@100')} | "
                    f"{cell(m, 'test/acc@50')} | {cell(m, 'test/acc@100')} | {cell(m, 'test/knn@3')} | "
                    f"{versus(default, m, 'test/acc@100') if m is not default else '–'} |")
    rows += ["", f"Each row: `python train.py <overrides>` — seed {', '.join(sorted(seeds))}, "
                 f"n = {', '.join(sorted(n_val))} val / {', '.join(sorted(n_test))} test drawings, commit "
                 f"{', '.join(f'`{c}`' for c in sorted(commits))}, wall clock on {', '.join(sorted(cores))} CPU cores. "
                 "Brackets: 95 % Wilson interval over the n drawings; last column: Fisher's exact test on the "
                 "counts (unpaired, conservative for runs on the same drawings). Regenerate: "
                 "`python scripts/readme_figures.py choose`."]
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
            make_runs(root, args.what, list(args.extra), list(args.eval_extra))
        rewrite_readme(readme, root, args.what)
    except FiguresError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
