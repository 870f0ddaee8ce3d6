"""Simplified and raw ``.ndjson`` (one drawing per line), read line by line.

Raw vs simplified is decided per line (raw strokes carry a third row, the time), so a file mixing
both still reads. What counts as bad differs by form, because the real data differ:

* simplified: integers on 0–255, every stroke at least two points (Google's simplification turns a
  dot into two identical points, so a one-point stroke means a damaged record);
* raw: any finite numbers — real raw files hold fractional and **negative** coordinates (strokes
  that left the canvas; ~3 % of the shared raw drawings, which Google simplified like any other)
  and one-point strokes (dots), which are all valid. A time row must match x/y in length.
  Coordinates beyond ±100,000 and drawings with all points in one place are not (``check_strokes``).

Every JSON parse of drawing data goes through :func:`decode_line` (here, in ``prepare`` and in
``suggest``), so hostile input — nesting too deep for the decoder, bytes that are not UTF-8 — is one
counted bad line, never an exception that loses the rest of the file.
"""

from __future__ import annotations

import json
import json.decoder
import json.scanner
import os
from pathlib import Path
from typing import IO, Collection, Iterator

import numpy as np

from sketchembed.data.categories import CATEGORY_SET
from sketchembed.data.formats import ErrorSink, display_name
from sketchembed.data.sketch import Drawing, SkipReport, check_strokes

# The C scanner json.loads ends up calling, without loads' per-call Python wrappers (~30 % of it).
_SCAN = json.scanner.make_scanner(json.JSONDecoder())
_SPACE = json.decoder.WHITESPACE.match
_U64 = 2**64


def decode_line(line: bytes | str):
    """One line's JSON value, as ``json.loads`` would give it; ``ValueError`` for anything else.

    Unlike ``json.loads``, nesting too deep for the decoder (``[[[[…``) is a ``ValueError`` too, not
    a ``RecursionError`` that would end the whole file.
    """
    try:
        text = line.decode()
    except AttributeError:  # already a str
        text = line
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 ({e})") from None
    try:  # the common case first: no leading space, one newline after the value
        obj, end = _SCAN(text, 0)
    except StopIteration:
        obj, end = _scan(text, _SPACE(text, 0).end())
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if end != len(text) and text[end:] != "\n":
        end = _SPACE(text, end).end()
        if end != len(text):
            raise json.JSONDecodeError("Extra data", text, end)
    return obj


def _scan(text: str, start: int):
    try:
        return _SCAN(text, start)
    except StopIteration as e:
        raise json.JSONDecodeError("Expecting value", text, e.value) from None
    except RecursionError:
        raise ValueError("nested too deeply") from None


def key_id_of(value) -> int | None:
    """A record's ``key_id`` (a decimal string in the real files, or a JSON integer) if it is one
    on the u64 range, else None — ``true`` is not 1 and ``1.5`` is not 1 here."""
    if type(value) is str:
        if not (value.isascii() and value.isdigit() and len(value) <= 20):
            return None
        k = int(value)
    elif type(value) is int:
        k = value
    else:
        return None
    return k if 0 <= k < _U64 else None


def _parse(obj, expected_word: str | None, sink: ErrorSink) -> tuple[Drawing | None, str | None]:
    if not isinstance(obj, dict):
        return None, f"expected a JSON object, got {type(obj).__name__}"
    for key in ("key_id", "word", "drawing"):
        if key not in obj:
            return None, f"missing field {key!r}"
    key_id = key_id_of(obj["key_id"])
    if key_id is None:
        return None, f"key_id {obj['key_id']!r} is not an integer on the u64 range"
    word = obj["word"]
    if not isinstance(word, str):
        return None, f"word {word!r} is not a string"
    problem = sink.word_problem(word, expected_word)
    if problem:
        return None, problem
    raw_strokes = obj["drawing"]
    if not isinstance(raw_strokes, list):
        return None, "drawing is not a list of strokes"
    rows = {len(s) if isinstance(s, list) else -1 for s in raw_strokes}
    if -1 in rows or not rows <= {2, 3} or len(rows) > 1:
        return None, "strokes must all be [[x…], [y…]] (simplified) or [[x…], [y…], [t…]] (raw)"
    is_raw = rows == {3}
    strokes = []
    for i, s in enumerate(raw_strokes):
        lengths = [len(r) if isinstance(r, list) else -1 for r in s]
        if -1 in lengths:
            return None, f"stroke {i} rows are not lists"
        if len(set(lengths)) > 1:
            names = "x/y/t" if is_raw else "x/y"
            return None, f"stroke {i} {names} length mismatch {'/'.join(map(str, lengths))}"
        try:
            arr = np.asarray(s).T
        except (TypeError, ValueError):
            return None, f"stroke {i} has non-numeric values"
        if arr.ndim != 2 or (arr.size and arr.dtype.kind not in "iuf"):
            return None, f"stroke {i} has non-numeric values"
        if not is_raw:
            if arr.size and arr.dtype.kind not in "iu":
                return None, f"stroke {i} has non-integer coordinates (simplified data are integers)"
            if arr.size and (arr.min() < 0 or arr.max() > 255):
                return None, f"stroke {i} has coordinates outside 0–255"
            arr = arr.astype(np.int16)
        else:
            arr = arr.astype(np.float64)
            if not np.all(np.isfinite(arr[:, 2])):
                return None, f"stroke {i} has non-finite times"
        strokes.append(arr)
    reason = check_strokes(strokes, coord_max=None if is_raw else 255.0,
                           allow_single_point_strokes=is_raw)
    if reason:
        return None, reason
    recognized = obj.get("recognized", True)
    if not isinstance(recognized, bool):
        return None, f"recognized {recognized!r} is not a boolean"
    countrycode = obj.get("countrycode", "")
    if not isinstance(countrycode, str):
        return None, f"countrycode {countrycode!r} is not a string"
    return Drawing(key_id=key_id, word=word, strokes=strokes, countrycode=countrycode,
                   recognized=recognized, timestamp=obj.get("timestamp")), None


def parse_line(line: bytes, lineno: int, word: str | None, sink: ErrorSink) -> Drawing | None:
    """One ndjson line → a Drawing, or None after reporting why it is bad (shared with ``prepare``)."""
    try:
        obj = decode_line(line)
    except ValueError as e:
        sink.bad(f"line {lineno}", f"broken JSON ({e})")
        return None
    drawing, reason = _parse(obj, word, sink)
    if reason:
        sink.bad(f"line {lineno}", reason)
        return None
    return drawing


def read_ndjson(source: str | os.PathLike | IO[bytes], *, on_error: str = "skip",
                report: SkipReport | None = None, word: str | None = None,
                words: Collection[str] | None = CATEGORY_SET) -> Iterator[Drawing]:
    """Stream the drawings of an ndjson file (path or binary file object), one line at a time."""
    name = display_name(source)
    sink = ErrorSink(name, on_error, report, words)
    own = isinstance(source, (str, os.PathLike))
    f = open(Path(source), "rb") if own else source
    try:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            drawing = parse_line(line, lineno, word, sink)
            if drawing is not None:
                yield drawing
    finally:
        if own:
            f.close()
    sink.finish()
