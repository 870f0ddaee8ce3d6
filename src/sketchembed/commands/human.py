"""`sketchembed human`: a person's accuracy on drawings shown at 50 % / 100 %, in the terminal.

Answers are read line by line from stdin (a script can answer; EOF ends the session with the
results so far); the items, the braille pictures and the scoring are :mod:`sketchembed.eval.human`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from sketchembed import metric_keys
from sketchembed.corpus.embedded import resolve_root
from sketchembed.corpus.store import PreparedDataset
from sketchembed.eval.human import Item, Results, braille, parse_answer, sample_items
from sketchembed.eval.report import load_metrics
from sketchembed.eval.stats import wilson
from sketchembed.study import STUDY


def run_session(items: Sequence[Item], classes: Sequence[str], inp: TextIO, out: TextIO) -> Results:
    """Show each item, read a guess per item; EOF or ``q`` ends early. Unclear answers are asked again."""
    res = Results()
    menu = "  ".join(f"{i + 1} {c}" for i, c in enumerate(classes))
    out.write(f"Guess the class of each drawing (a number or a name; q quits).\nclasses: {menu}\n")
    for k, item in enumerate(items, start=1):
        out.write(f"\n[{k}/{len(items)}] {100 * item.fraction:g} % of the drawing\n")
        out.write("\n".join(braille(item.points)) + "\n")
        while True:
            out.write("your guess> ")
            out.flush()
            line = inp.readline()
            if line == "":
                out.write("\n(end of input)\n")
                return res
            if line.strip().lower() in ("q", "quit", "exit"):
                return res
            guess = parse_answer(line, classes)
            if guess is None:
                out.write(f"not a class: {line.strip()!r}; choose from: {menu}\n")
                continue
            res.add(item, guess)
            verdict = "right" if guess == item.label else f"wrong, it was {classes[item.label]}"
            out.write(f"→ {verdict}\n")
            break
    return res


def check_model_metrics(metrics: dict, where, fractions: Sequence[float]) -> None:
    """The accuracies :func:`model_accuracy` will read for ``fractions`` are numbers on 0–1, or a
    ValueError naming the file ``where`` and the key — before the session, not after it."""
    for f in fractions:
        for split in metric_keys.SPLITS:
            name = metric_keys.key(split, "acc", f)
            v = metrics.get(name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1):
                raise ValueError(f"{where}: {name!r} must be an accuracy on 0–1, got {json.dumps(v)[:40]}")


def check_out(out) -> None:
    """``--out`` can be written: a file (new or not) in an existing folder we may write in."""
    path = Path(out)
    if path.is_dir():
        raise ValueError(f"--out {out}: is a folder; give a file name")
    if not path.absolute().parent.is_dir():
        raise ValueError(f"--out {out}: the folder {path.absolute().parent} does not exist")
    if not os.access(path if path.exists() else path.absolute().parent, os.W_OK):
        raise ValueError(f"--out {out}: no permission to write there")


def save_results(out, results: dict, stdout: TextIO) -> None:
    """Write the results to ``out``; if that fails after all (the disk filled, the folder went away),
    print them as JSON on ``stdout`` first, so a whole session's answers are never lost."""
    text = json.dumps(results, indent=2)
    try:
        Path(out).write_text(text)
    except OSError as e:
        stdout.write(text + "\n")
        stdout.flush()
        raise ValueError(f"--out {out}: cannot write it ({e.strerror or e}); "
                         "your results are printed above as JSON") from None


def model_accuracy(metrics: dict, fraction: float) -> float | None:
    for split in metric_keys.SPLITS:
        v = metrics.get(metric_keys.key(split, "acc", fraction))
        if v is not None:
            return float(v)
    return None


def format_results(res: Results, model_metrics: dict | None = None) -> str:
    lines = ["", "results:"]
    header = f"  {'share of drawing':<18}{'you':>16}{'95 % interval':>16}"
    if model_metrics is not None:
        header += f"{'model':>12}"
    lines.append(header)
    fractions = sorted(set(res.shown))
    if not fractions:
        lines.append("  no answers given")
    for f in fractions:
        acc = res.correct[f] / res.shown[f]
        low, high = wilson(res.correct[f], res.shown[f])
        row = (f"  {f'{100 * f:g} %':<18}{f'{100 * acc:5.1f} % ({res.correct[f]}/{res.shown[f]})':>16}"
               f"{f'{100 * low:.0f}–{100 * high:.0f} %':>16}")
        if model_metrics is not None:
            m = model_accuracy(model_metrics, f)
            row += f"{'–' if m is None else f'{100 * m:.1f} %':>12}"
        lines.append(row)
    lines.append(f"  (the study's humans, %: {STUDY['human']['acc']}; full data)")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="study10", help="prepared dataset dir or embedded name")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--n", type=int, default=20, help="drawings in total, dealt evenly over the fractions")
    parser.add_argument("--fractions", default="0.5,1.0", help="comma-separated shares of the drawing")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--metrics", help="a run's metrics.json: show the model's accuracy beside yours")
    parser.add_argument("--out", help="write your results (human/acc@… and every answer) to this JSON file")


def run(args, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    inp = stdin or sys.stdin
    out = stdout or sys.stdout
    try:
        fractions = [float(x) for x in str(args.fractions).split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--fractions must be numbers like 0.5,1.0, got {args.fractions!r}") from None
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    # everything that could fail at the end is checked before the first question
    model_metrics = None
    if args.metrics:
        model_metrics = load_metrics(Path(args.metrics))
        check_model_metrics(model_metrics, args.metrics, fractions)
    if args.out:
        check_out(args.out)
    ds = PreparedDataset(resolve_root(args.data))
    items = sample_items(ds, args.n, fractions, args.seed, args.split)
    res = run_session(items, ds.classes, inp, out)
    out.write(format_results(res, model_metrics))
    if args.out:
        save_results(args.out, {**res.metrics(), "answers": res.answers, "data": str(ds.root),
                                "seed": args.seed, "classes": ds.classes}, out)
    return 0
