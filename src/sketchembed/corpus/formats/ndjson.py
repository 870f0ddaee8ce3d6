"""Simplified and raw ``.ndjson`` (one drawing per line), read line by line.

Raw vs simplified is decided per line (raw strokes carry a third row, the time), so a file mixing
both still reads. What counts as bad differs by form, because the real data differ:

* simplified: integers on 0–255, every stroke at least two points (Google's simplification turns a
  dot into two identical points, so a one-point stroke means a damaged record);
* raw: any finite numbers — real raw files hold fractional and **negative** coordinates (strokes
  that left the canvas; ~3 % of the shared raw drawings, which Google simplified like any other)
  and one-point strokes (dots), which are all valid. A time row must match x/y in length.
  Coordinates beyond ±100,000 and drawings with all points in one place are not (``check_strokes``).

Every JSON parse of drawing data goes through :func:`decode_line` (here, in ``suggest`` and for a
prepared dataset's manifest), so hostile input — nesting too deep for the decoder, bytes that are not UTF-8 — is one
counted bad line, never an exception that loses the rest of the file.
"""

from __future__ import annotations

import json
import json.decoder
import json.scanner
import os
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import IO, NamedTuple

import numpy as np

from sketchembed.corpus.categories import CATEGORY_SET
from sketchembed.corpus.formats.registry import FileFormat, display_name, reader, register, word_problem
from sketchembed.corpus.sketch import CANVAS_MAX, MIN_EXTENT, Drawing, SkipReport, check_strokes

# The C scanner json.loads ends up calling, without loads' per-call Python wrappers (~30 % of it).
_SCAN = json.scanner.make_scanner(json.JSONDecoder())
_SPACE = json.decoder.WHITESPACE.match
_U64 = 2**64
_BOM = b"\xef\xbb\xbf"  # a UTF-8 byte order mark, which some editors put at the start of a file


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


def _header(obj, expected_word: str | None, words) -> tuple[int, str, list] | str:
    """``(key_id, word, strokes)`` of a decoded record, or why it is bad: the field checks both the
    record parser and the bulk reader apply (so they cannot disagree on them)."""
    if type(obj) is not dict:
        return f"expected a JSON object, got {type(obj).__name__}"
    try:
        key_id, word, strokes = obj["key_id"], obj["word"], obj["drawing"]
    except KeyError as e:
        return f"missing field {e.args[0]!r}"
    k = key_id_of(key_id)
    if k is None:
        return f"key_id {key_id!r} is not an integer on the u64 range"
    if type(word) is not str:
        return f"word {word!r} is not a string"
    problem = word_problem(word, expected_word, words)
    if problem:
        return problem
    if type(strokes) is not list:
        return "drawing is not a list of strokes"
    recognized = obj.get("recognized", True)
    if type(recognized) is not bool:
        return f"recognized {recognized!r} is not a boolean"
    countrycode = obj.get("countrycode", "")
    if type(countrycode) is not str:
        return f"countrycode {countrycode!r} is not a string"
    return k, word, strokes


def _parse(obj, expected_word: str | None, words) -> tuple[Drawing | None, str | None]:
    head = _header(obj, expected_word, words)
    if type(head) is str:
        return None, head
    key_id, word, raw_strokes = head
    rows = {len(s) if isinstance(s, list) else -1 for s in raw_strokes}
    if -1 in rows or not rows <= {2, 3} or len(rows) > 1:
        return None, "strokes must all be [[x…], [y…]] (simplified) or [[x…], [y…], [t…]] (raw)"
    is_raw = rows == {3}
    strokes = []
    for i, s in enumerate(raw_strokes):
        lengths = [len(r) if isinstance(r, list) else -1 for r in s]
        if -1 in lengths:
            return None, f"stroke {i} rows are not lists"
        if any(bool in map(type, r) for r in s):  # numpy would read true as 1
            return None, f"stroke {i} has true/false among its numbers"
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
            if arr.size and (arr.min() < 0 or arr.max() > CANVAS_MAX):
                return None, f"stroke {i} has coordinates outside 0–{CANVAS_MAX}"
            arr = arr.astype(np.int16)
        else:
            arr = arr.astype(np.float64)
            if not np.all(np.isfinite(arr[:, 2])):
                return None, f"stroke {i} has non-finite times"
        strokes.append(arr)
    reason = check_strokes(strokes, coord_max=None if is_raw else CANVAS_MAX,
                           allow_single_point_strokes=is_raw)
    if reason:
        return None, reason
    return Drawing(key_id=key_id, word=word, strokes=strokes, countrycode=obj.get("countrycode", ""),
                   recognized=obj.get("recognized", True), timestamp=obj.get("timestamp")), None


def parse_line(line: bytes, lineno: int, word: str | None, words, report: SkipReport,
               name: str) -> Drawing | None:
    """One ndjson line → a Drawing, or None after reporting why it is bad."""
    try:
        obj = decode_line(line)
    except ValueError as e:
        report.bad(name, f"line {lineno}", f"broken JSON ({e})")
        return None
    drawing, reason = _parse(obj, word, words)
    if reason:
        report.bad(name, f"line {lineno}", reason)
        return None
    return drawing


def sniff_kind(path: Path) -> str:
    """``simplified`` or ``raw``, from the first parsable line of the first 100; an unreadable head
    says ``simplified`` (the reader then reports the bad lines)."""
    with open(path, "rb") as f:
        for i, line in enumerate(f):
            if i >= 100:
                break
            try:
                d = decode_line(line[len(_BOM):] if i == 0 and line.startswith(_BOM) else line)["drawing"]
                return "raw" if len(d[0]) == 3 else "simplified"
            except (ValueError, KeyError, TypeError, IndexError):
                continue
    return "simplified"


def _lines(source):
    """``(file name, binary line iterator, closer)`` for a path or an open binary file."""
    if isinstance(source, (str, os.PathLike)):
        f = open(Path(source), "rb")
        return display_name(source), f, f.close
    return display_name(source), source, lambda: None


@reader
def read_ndjson(source: str | os.PathLike | IO[bytes], *, report: SkipReport, word: str | None = None,
                words: Collection[str] | None = CATEGORY_SET) -> Iterator[Drawing]:
    """Stream the drawings of an ndjson file (path or binary file object), one line at a time."""
    name, f, close = _lines(source)
    try:
        for lineno, line in enumerate(f, 1):
            if lineno == 1 and line.startswith(_BOM):
                line = line[len(_BOM):]
            if not line.strip():
                continue
            drawing = parse_line(line, lineno, word, words, report, name)
            if drawing is not None:
                yield drawing
    finally:
        close()


class Block(NamedTuple):
    """Plainly well-formed simplified drawings of consecutive lines, as prepared datasets hold them."""

    points: np.ndarray  # (N, 3) int16 x, y, pen_up (1 on each stroke's last point)
    lengths: np.ndarray  # points per drawing
    key_ids: list[int]
    nbytes: int  # file bytes read since the previous block


def _plain_numbers(xs: list, ys: list) -> bool:
    return (all(type(v) is int and 0 <= v <= CANVAS_MAX for v in xs + ys)
            and max(max(xs) - min(xs), max(ys) - min(ys)) >= MIN_EXTENT)


@reader
def read_ndjson_blocks(source: str | os.PathLike | IO[bytes], *, report: SkipReport,
                       word: str | None = None, words: Collection[str] | None = CATEGORY_SET,
                       size: int = 4096) -> Iterator[Block | Drawing]:
    """The drawings of an ndjson file as :func:`read_ndjson` reads them — same drawings, same
    skips and reasons — but plainly well-formed simplified lines come in :class:`Block` s of up to
    ``size`` drawings, converted by one numpy pass per block instead of several per stroke
    (``prepare``'s path for simplified files, several times faster). Every other line (raw, odd
    but valid, or bad) goes through the record parser as it comes, after the pending block, so
    the order of the file is kept; the last item is always a block (it carries the last bytes).

    Plainly well-formed: :func:`_header` accepts it and every stroke is two equal-length lists of
    at least two values; then, per block, integer coordinates on 0–255 and an extent of at least
    ``MIN_EXTENT``. A line that fails the block check goes to the record parser, whose verdict
    stands (tests/test_prepare.py compares this with the record parser on every kind of odd line).
    """
    name, f, close = _lines(source)
    X: list[int] = []
    Y: list[int] = []
    slens: list[int] = []
    nstrokes: list[int] = []
    keys: list[int] = []
    held: list[tuple[int, bytes]] = []  # (line number, line) of each pending drawing
    nbytes = 0

    def flush() -> Iterator[Block | Drawing]:
        nonlocal X, Y, slens, nstrokes, keys, held, nbytes
        if not keys:
            yield Block(np.zeros((0, 3), np.int16), np.zeros(0, np.int64), [], nbytes)
            nbytes = 0
            return
        sl = np.array(slens, dtype=np.int64)
        ns = np.array(nstrokes, dtype=np.int64)
        dl = np.add.reduceat(sl, np.cumsum(ns) - ns)  # points per drawing (every drawing has strokes)
        ends = np.cumsum(dl)
        starts = ends - dl
        try:
            xa, ya = np.array(X), np.array(Y)
            typed = xa.dtype.kind in "iu" and ya.dtype.kind in "iu" and xa.ndim == ya.ndim == 1
        except (ValueError, TypeError, OverflowError):
            typed = False
        if typed:
            bad = np.logical_or.reduceat((xa < 0) | (xa > CANVAS_MAX) | (ya < 0) | (ya > CANVAS_MAX), starts)
            span = np.maximum(np.maximum.reduceat(xa, starts) - np.minimum.reduceat(xa, starts),
                              np.maximum.reduceat(ya, starts) - np.minimum.reduceat(ya, starts))
            bad |= span < MIN_EXTENT
            if bad.any():
                keep_pt = np.repeat(~bad, dl)
                xa, ya = xa[keep_pt], ya[keep_pt]
        else:  # rare: something that is not a plain int somewhere in the block
            bad = np.array([not _plain_numbers(X[a:b], Y[a:b]) for a, b in zip(starts, ends)])
            good_segments = [(a, b) for (a, b), g in zip(zip(starts, ends), ~bad) if g]
            xa = np.array([v for a, b in good_segments for v in X[a:b]], dtype=np.int64)
            ya = np.array([v for a, b in good_segments for v in Y[a:b]], dtype=np.int64)
        good = ~bad
        pts = np.zeros((len(xa), 3), dtype=np.int16)
        pts[:, 0] = xa
        pts[:, 1] = ya
        if good.any():
            pts[np.cumsum(sl[np.repeat(good, ns)]) - 1, 2] = 1
        out = Block(pts, dl[good], [k for k, g in zip(keys, good) if g], nbytes)
        late = [held[j] for j in np.flatnonzero(bad)]
        X, Y, slens, nstrokes, keys, held, nbytes = [], [], [], [], [], [], 0
        yield out
        for lineno, line in late:  # the record parser gives the verdict and the reason
            d = parse_line(line, lineno, word, words, report, name)
            if d is not None:
                yield d

    try:
        for lineno, line in enumerate(f, 1):
            nbytes += len(line)
            if lineno == 1 and line.startswith(_BOM):
                line = line[len(_BOM):]
            n0 = len(slens)
            x0 = len(X)
            try:
                obj = decode_line(line)
                head = _header(obj, word, words)
                if type(head) is str:
                    raise ValueError(head)
                k, _, strokes = head
                if not strokes:
                    raise ValueError("no strokes")
                # numpy would read a true among the coordinates as 1: a line with more true/false
                # than its "recognized" may hold one, and goes to the record parser
                if line.count(b"true") + line.count(b"false") > ("recognized" in obj):
                    raise ValueError("maybe a boolean among the numbers")
                for xs, ys in strokes:
                    m = len(xs)
                    if m < 2 or m != len(ys) or type(xs) is not list or type(ys) is not list:
                        raise ValueError("not plainly well-formed")
                    slens.append(m)
                    X += xs
                    Y += ys
            except (ValueError, TypeError):
                del slens[n0:], X[x0:], Y[x0:]
                if line.strip():
                    if keys:
                        yield from flush()
                    d = parse_line(line, lineno, word, words, report, name)
                    if d is not None:
                        yield d
                continue
            nstrokes.append(len(strokes))
            keys.append(k)
            held.append((lineno, line))
            if len(keys) >= size:
                yield from flush()
        yield from flush()
    finally:
        close()


register(FileFormat("ndjson", (".ndjson",), read_ndjson, read_blocks=read_ndjson_blocks,
                    kinds=("simplified", "raw"), sniff=sniff_kind, raw_kinds=("raw",),
                    bucket={"simplified": "full/simplified/", "raw": "full/raw/"}))
