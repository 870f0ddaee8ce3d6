"""`sketchembed suggest`: the drawings of an index most similar to a sketch read from a file.

The sketch file is read here (a dataset file or a user's JSON drawing); the suggestion itself is
:func:`sketchembed.eval.suggest.suggest`, the one the studio uses.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from sketchembed.corpus.formats import FORMATS, read_drawings
from sketchembed.corpus.formats.ndjson import decode_line, key_id_of
from sketchembed.corpus.formats.registry import unprintable
from sketchembed.corpus.sketch import (
    DataFormatError,
    Drawing,
    SkipReport,
    points_to_strokes,
)
from sketchembed.corpus.user_drawing import user_drawing_points
from sketchembed.eval.embed import pick_device
from sketchembed.eval.knn import KNNIndex
from sketchembed.eval.plots import plot_neighbors
from sketchembed.eval.suggest import check_index_matches, suggest
from sketchembed.models.checkpoint import file_sha256, open_checkpoint

# a file holding one user's drawing (pretty-printed JSON allowed); ndjson files are read line by line
SINGLE_DRAWING_SUFFIX = ".json"


def parse_user_drawing(text: bytes, where: str, lineno: int = 1) -> tuple[Drawing, np.ndarray]:
    """One JSON drawing (a dataset record, ``{"drawing": …}`` or a bare stroke list; simplified or raw
    coordinates, with or without a time row) → ``(Drawing, simplified (n, 3) points)`` by the one rule
    for users' drawings (:func:`~sketchembed.corpus.user_drawing.user_drawing_points`), or a
    DataFormatError naming ``where`` and the problem. ``key_id``/``word`` are kept when given."""
    position = f"line {lineno}"
    try:
        obj = decode_line(text)
    except ValueError as e:
        raise DataFormatError(where, position, f"broken JSON ({e})") from None
    key_id, word = 0, ""
    if isinstance(obj, dict):
        if "drawing" not in obj:
            raise DataFormatError(where, position, "missing field 'drawing'")
        if "key_id" in obj:
            key_id = key_id_of(obj["key_id"])
            if key_id is None:
                raise DataFormatError(where, position, f"key_id {obj['key_id']!r} is not an integer on the u64 range")
        word = obj.get("word", "")
        if not isinstance(word, str):  # any class name: the word is only shown
            raise DataFormatError(where, position, f"word {str(word)[:40]!r} is not a string")
        if unprintable(word):  # printed: an ANSI escape or a newline would forge the table
            raise DataFormatError(where, position, f"word {word[:40]!r} {unprintable(word)}")
        strokes = obj["drawing"]
    elif isinstance(obj, list):
        strokes = obj
    else:
        raise DataFormatError(where, position, f"expected a JSON object or a list of strokes, got {type(obj).__name__}")
    try:
        points = user_drawing_points(strokes)
    except ValueError as e:
        raise DataFormatError(where, position, str(e)) from None
    return Drawing(key_id, word, points_to_strokes(points)), points


def _read_json_drawing(path: Path, line: int) -> tuple[Drawing, np.ndarray]:
    """``line``-th record of an ndjson file, or the one drawing of a (possibly pretty-printed) .json."""
    data = path.read_bytes()
    if path.suffix.lower() == SINGLE_DRAWING_SUFFIX:
        if line != 1:
            raise ValueError(f"--line {line}: a .json file holds one drawing")
        return parse_user_drawing(data, str(path))
    lines = [(i, ln) for i, ln in enumerate(data.splitlines(), start=1) if ln.strip()]
    if line > len(lines):
        raise DataFormatError(path, None, f"no drawing number {line} in the file ({len(lines)} drawings)")
    lineno, text = lines[line - 1]
    return parse_user_drawing(text, str(path), lineno)


def read_sketch(path, line: int = 1):
    """The ``line``-th drawing (1-based) of a sketch file, as simplified ``(n, 3)`` points.

    ``.ndjson``/``.json`` take dataset records or a user's drawing: ``{"drawing": [[[x…], [y…]], …]}``
    or the bare stroke list, simplified (0–255 integers) or raw (canvas coordinates, with or without
    a time row; simplified here the way the dataset was). ``.bin``/``.npz`` as in the dataset.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sketch file not found: {path}")
    if line < 1:
        raise ValueError(f"--line must be >= 1, got {line}")
    try:
        if path.suffix.lower() in (SINGLE_DRAWING_SUFFIX, *FORMATS["ndjson"].suffixes):
            return _read_json_drawing(path, line)
        drawing = None
        report = SkipReport(on_error="raise")
        # any class name: the sketch's word is only shown, and a model may know classes outside Quick, Draw!
        for i, d in enumerate(read_drawings(path, on_error="raise", report=report, words=None), start=1):
            if i == line:
                drawing = d
                break
    except DataFormatError:
        raise
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataFormatError(path, None, f"cannot read sketch ({e.__class__.__name__}: {e})") from None
    if drawing is None:
        raise DataFormatError(path, None, f"no drawing number {line} in the file")
    points = drawing.points()
    if len(points) < 2:
        raise DataFormatError(path, f"drawing {line}", "fewer than 2 points")
    return drawing, points


def self_match_note(drawing, index, idx, dist, fraction: float = 1.0) -> str | None:
    """A line saying that the query itself (same key_id) or an identical drawing is among the results
    at distance 0 — so a user does not take it for a suggestion."""
    zero = [r for r, d in enumerate(dist) if float(d) <= 1e-6]
    if not zero:
        return None
    r = zero[0]
    same = drawing.key_id and int(index.key_ids[idx[r]]) == int(drawing.key_id)
    what = (f"your sketch itself (key_id {drawing.key_id}) is in the index" if same
            else "a drawing identical to your sketch (in this model's embedding) is in the index")
    cut = f" (at {100 * fraction:g} % of the points)" if fraction < 1 else ""
    return f"note: rank {r + 1} is at distance 0{cut}: {what}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="checkpoint the index was built with")
    parser.add_argument("--index", required=True, help="index dir from `sketchembed index build`")
    parser.add_argument("--sketch", required=True,
                        help=".ndjson / .json (dataset records, {\"drawing\": [[[x…], [y…]], …]} or the bare "
                             "stroke list; simplified or raw coordinates), .bin or .npz file")
    parser.add_argument("--line", type=int, default=1, help="which drawing of the file (1-based)")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--fraction", type=float, default=1.0, help="use only this share of the points")
    parser.add_argument("--png", help="also draw the sketch and its neighbours into this PNG")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--allow-mismatch", action="store_true",
                        help="only warn when the index was built with another checkpoint")


def run(args) -> int:
    if args.k < 1:
        raise ValueError(f"--k must be >= 1, got {args.k}")
    index = KNNIndex.load(args.index)
    warning = check_index_matches(index, args.ckpt, file_sha256(args.ckpt), args.allow_mismatch)
    if warning:
        print(warning, file=sys.stderr)
    drawing, points = read_sketch(args.sketch, args.line)
    device = pick_device(args.device)
    model, inputs, _, _ = open_checkpoint(args.ckpt, map_location=device)
    idx, dist, shown = suggest(model, index, points, inputs, k=args.k, fraction=args.fraction, device=device)
    n_strokes = int((shown[:, 2] > 0.5).sum())
    print(f"# {args.sketch} drawing {args.line} ({drawing.word or 'no label'}), {len(shown)}/{len(points)} "
          f"points, {n_strokes} strokes; {len(idx)} nearest of {len(index)}")
    print(f"{'rank':>4}  {'key_id':>20}  {'class':<24} {'distance':>9}")
    for r, (i, d) in enumerate(zip(idx, dist), start=1):
        print(f"{r:>4}  {int(index.key_ids[i]):>20}  {index.classes[int(index.labels[i])]:<24} {float(d):>9.4f}")
    note = self_match_note(drawing, index, idx, dist, args.fraction)
    if note:
        print(note)
    if args.png:
        if index.points is None:
            raise ValueError(f"{args.index}: built with --no-drawings, cannot draw --png")
        ref = index.classes.index(drawing.word) if drawing.word in index.classes else None
        title = f"your sketch ({100 * args.fraction:g} %)" if args.fraction < 1 else "your sketch"
        plot_neighbors(args.png, [shown], [ref], [[index.drawing(int(i)) for i in idx]],
                       [[int(index.labels[i]) for i in idx]], index.classes, distances=[dist], ref_titles=[title])
        print(f"wrote {args.png}", file=sys.stderr)
    return 0
