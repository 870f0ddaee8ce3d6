"""The dataset's compact ``.bin`` format (simplified drawings), read record by record, and a writer.

Per drawing, little-endian: key_id u64, countrycode 2 ASCII bytes, recognized u8, timestamp u32
(Unix seconds), n_strokes u16, then per stroke n_points u16, x[n] u8, y[n] u8. The file holds no
class name: it comes from the file name (``cat.bin``) or ``word=``.

A record whose header and lengths are intact but whose content is bad (no strokes, a one-point
stroke, a bad country code) is skipped and reading goes on; a truncated record ends the file, since
nothing after it can be located.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Collection, Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

import numpy as np

from sketchembed.corpus.categories import CATEGORY_SET
from sketchembed.corpus.formats.registry import FileFormat, display_name, reader, register, word_problem
from sketchembed.corpus.sketch import CANVAS_MAX, DataFormatError, Drawing, SkipReport, check_strokes

_HEAD = struct.Struct("<Q2sBIH")
_U16 = struct.Struct("<H")


class _Truncated(Exception):
    pass


def _read_exact(f, n: int) -> bytes:
    b = f.read(n)
    if len(b) != n:
        raise _Truncated(f"truncated record: needed {n} more bytes, file ends after {len(b)}")
    return b


def _word_from_name(name: str) -> str:
    return Path(name).name.rsplit(".", 1)[0]


@reader
def read_binary(source: str | os.PathLike | IO[bytes], *, report: SkipReport, word: str | None = None,
                words: Collection[str] | None = CATEGORY_SET) -> Iterator[Drawing]:
    """Stream the drawings of a ``.bin`` file (path or binary file object)."""
    name = display_name(source)
    cls = word if word is not None else _word_from_name(name)
    problem = word_problem(cls, None, words)
    if problem:
        report.bad(name, "byte 0", problem + " (class taken from the file name); file skipped")
        return
    own = isinstance(source, (str, os.PathLike))
    f = open(Path(source), "rb") if own else source
    try:
        try:
            pos = f.tell()
        except (OSError, AttributeError):
            pos = 0
        while True:
            start = pos
            head = f.read(_HEAD.size)
            if not head:
                break
            try:
                if len(head) != _HEAD.size:
                    raise _Truncated(f"truncated record: header of {len(head)} of {_HEAD.size} bytes")
                key_id, cc, recognized, timestamp, n_strokes = _HEAD.unpack(head)
                strokes = []
                for _ in range(n_strokes):
                    (n,) = _U16.unpack(_read_exact(f, 2))
                    xy = np.frombuffer(_read_exact(f, 2 * n), dtype=np.uint8)
                    strokes.append(xy.reshape(2, n).T.astype(np.int16))
            except _Truncated as e:
                report.bad(name, f"byte {start}", str(e))
                break
            pos = start + _HEAD.size + sum(2 + 2 * len(s) for s in strokes)
            reason = check_strokes(strokes, coord_max=CANVAS_MAX, allow_single_point_strokes=False)
            if reason is None and recognized > 1:
                reason = f"recognized byte is {recognized}, not 0 or 1"
            try:
                countrycode = cc.rstrip(b"\0").decode("ascii")
            except UnicodeDecodeError:
                reason = reason or f"country code {cc!r} is not ASCII"
            if reason:
                report.bad(name, f"byte {start}", reason)
                continue
            yield Drawing(key_id=key_id, word=cls, strokes=strokes, countrycode=countrycode,
                          recognized=bool(recognized), timestamp=timestamp)
    finally:
        if own:
            f.close()


def timestamp_seconds(timestamp) -> int:
    """The dataset's timestamp (Unix seconds, or ndjson's ``'2017-03-10 22:17:57.57466 UTC'``) as u32."""
    if timestamp is None:
        return 0
    if isinstance(timestamp, (int, np.integer)):
        return int(timestamp)
    text = str(timestamp).strip()
    if text.endswith(" UTC"):
        text = text[:-4]
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp())


def encode_drawing(d: Drawing, where: str = "") -> bytes:
    """One record; refuses anything the format cannot hold exactly (no silent clipping)."""
    where = where or f"key_id {d.key_id}"

    def fail(reason):
        raise DataFormatError("<binary writer>", where, reason)

    reason = check_strokes(d.strokes, coord_max=CANVAS_MAX, allow_single_point_strokes=False)
    if reason:
        fail(reason)
    if not 0 <= int(d.key_id) < 2**64:
        fail(f"key_id {d.key_id} does not fit u64")
    try:
        cc = (d.countrycode or "").encode("ascii")
    except UnicodeEncodeError:
        fail(f"country code {d.countrycode!r} is not ASCII")
    if len(cc) > 2:
        fail(f"country code {d.countrycode!r} longer than 2 characters")
    try:
        ts = timestamp_seconds(d.timestamp)
    except ValueError:
        fail(f"timestamp {d.timestamp!r} is not understood")
    if not 0 <= ts < 2**32:
        fail(f"timestamp {ts} does not fit u32")
    if len(d.strokes) >= 2**16:
        fail(f"{len(d.strokes)} strokes do not fit u16")
    parts = [_HEAD.pack(int(d.key_id), cc.ljust(2, b"\0"), int(bool(d.recognized)), ts, len(d.strokes))]
    for s in d.strokes:
        s = np.asarray(s)
        xy = s[:, :2]
        if not np.array_equal(xy, np.rint(xy)):
            fail("non-integer coordinates (simplify raw drawings first)")
        if len(s) >= 2**16:
            fail(f"a stroke of {len(s)} points does not fit u16")
        parts.append(_U16.pack(len(s)))
        parts.append(np.ascontiguousarray(xy.T, dtype=np.uint8).tobytes())
    return b"".join(parts)


def write_binary(dest: str | os.PathLike | IO[bytes], drawings: Iterable[Drawing]) -> int:
    """Write drawings as ``.bin`` records, streaming; returns how many were written."""
    own = isinstance(dest, (str, os.PathLike))
    f = open(Path(dest), "wb") if own else dest
    n = 0
    try:
        for d in drawings:
            try:
                f.write(encode_drawing(d))
            except DataFormatError as e:
                raise DataFormatError(display_name(dest), e.position, e.reason) from None
            n += 1
    finally:
        if own:
            f.close()
    return n


register(FileFormat("binary", (".bin",), read_binary, write=write_binary, bucket={"binary": "full/binary/"}))
