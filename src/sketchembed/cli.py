"""`sketchembed …` command line. Each subcommand lives in the module that owns its concept and
exposes ``add_arguments(parser)`` and ``run(args) -> int``; modules are imported only when used so
that `sketchembed --help` stays fast."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import sys

# (command words, module, one-line help)
COMMANDS = [
    (("data", "download"), "sketchembed.corpus.download", "fetch Quick, Draw! files over HTTPS (resumable)"),
    (("data", "prepare"), "sketchembed.corpus.prepare", "turn per-class files into one prepared dataset"),
    (("data", "stats"), "sketchembed.corpus.stats", "print statistics of a prepared dataset"),
    (("index", "build"), "sketchembed.commands.index", "embed a prepared dataset and save a KNN index"),
    (("suggest",), "sketchembed.commands.suggest", "nearest drawings of a sketch, from an index"),
    (("human",), "sketchembed.commands.human", "measure your own accuracy on drawings at 50%%/100%%"),
    (("report",), "sketchembed.commands.report",
     "compare train and eval runs: one table with 95 %% intervals, differences beyond noise"),
    (("serve",), "sketchembed.studio.serve", "sketch studio: draw in the browser, see guesses and suggestions"),
    (("export",), "sketchembed.export", "a checkpoint's inference graph as ONNX, its input settings in the file"),
]
# The optional extras (pyproject.toml) by the top modules they install that a command imports at load:
# without the extra, the command says which extra to install instead of a traceback.
EXTRA_OF_MODULE = {"fastapi": "studio", "uvicorn": "studio"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sketchembed",
        description="sketchembed: data, KNN index, suggestions, human baseline and reports. "
                    "Training: python train.py; evaluation: python eval.py.")
    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for words, module, help_ in COMMANDS:
        if len(words) == 1:
            sub = top.add_parser(words[0], help=help_)
        else:
            if words[0] not in groups:
                g = top.add_parser(words[0], help=f"{words[0]} commands")
                groups[words[0]] = g.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
            sub = groups[words[0]].add_parser(words[1], help=help_)
        sub.set_defaults(_module=module)
        sub.set_defaults(_words=words)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Two passes: the first finds the command, the second parses its own options (and its --help).
    stripped = [a for a in argv if a not in ("-h", "--help")]
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            known, _ = parser.parse_known_args(stripped)
    except SystemExit:
        parser.parse_args(argv)  # no full command: argparse prints the help or usage error
        raise
    try:
        mod = importlib.import_module(known._module)
    except ModuleNotFoundError as e:
        extra = EXTRA_OF_MODULE.get((e.name or "").partition(".")[0])
        if extra is None:
            raise
        print(f"error: `sketchembed {' '.join(known._words)}` needs the {extra} extra: "
              f'pip install "sketchembed[{extra}]" ({e.name} is not installed)', file=sys.stderr)
        return 2
    full = argparse.ArgumentParser(prog="sketchembed " + " ".join(known._words))
    mod.add_arguments(full)
    args = full.parse_args(argv[len(known._words):])
    # lazy: it imports numpy, which would take `sketchembed --help` from 0.02 s to 0.14 s
    from sketchembed.corpus.sketch import DataFormatError

    try:
        return int(mod.run(args) or 0)
    except (DataFormatError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError) as e:
        # a path given on the command line that is of the wrong kind or not ours: bad input too
        where = f"{e.filename}: {e.strerror}" if e.filename and e.strerror else e
        print(f"error: {where}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
