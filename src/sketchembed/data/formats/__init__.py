"""Readers for every public Quick, Draw! format, behind one entry point.

``read_drawings(path)`` picks the reader from the suffix. All readers stream (one line or record in
memory at a time; ``.npz`` one split, as pickled arrays allow no less) and share one error policy:
a bad record is skipped and counted in a :class:`~sketchembed.data.sketch.SkipReport` with the file
and position (``line N``, ``byte N`` or ``split/index``), or raised as a ``DataFormatError`` with
``on_error="raise"``. When no ``report`` is passed, skips are announced by a warning at the end of
the file so they never vanish.

Class names must be Quick, Draw!'s 345 unless ``words`` says otherwise (``words=None``: any
non-empty name, for other sketch datasets).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Collection, Iterator

from sketchembed.data.categories import CATEGORY_SET
from sketchembed.data.sketch import DataFormatError, Drawing, SkipReport


class ErrorSink:
    """One reader's view of the error policy (defined before the submodules, which import it)."""

    def __init__(self, path, on_error: str = "skip", report: SkipReport | None = None,
                 words: Collection[str] | None = CATEGORY_SET):
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        self.path = str(path)
        self.raise_ = on_error == "raise"
        self.own = report is None
        self.report = SkipReport() if report is None else report
        self.words = words

    def bad(self, position: str | None, reason: str) -> None:
        if self.raise_:
            raise DataFormatError(self.path, position, reason)
        self.report.bad(self.path, position, reason)

    def word_problem(self, word: str, expected: str | None) -> str | None:
        """Why ``word`` is not an acceptable class name here, or None."""
        if expected is not None and word != expected:
            return f"class {word!r} where {expected!r} was expected"
        if not word:
            return "empty class name"
        if self.words is CATEGORY_SET and word not in CATEGORY_SET:
            return (f"unknown class {word!r} (not one of the 345 Quick, Draw! categories; "
                    f"prepare --classes from-files reads any name)")
        if self.words is not None and word not in self.words:
            return f"unknown class {word!r} (not among the {len(self.words)} classes asked for)"
        return None

    def finish(self) -> None:
        if self.own and self.report.count:
            warnings.warn(self.report.summary(), stacklevel=3)


def display_name(source) -> str:
    """A file's path for messages, whether given a path or an open file."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return str(getattr(source, "name", "<stream>"))


from sketchembed.data.formats.binary import read_binary, write_binary  # noqa: E402
from sketchembed.data.formats.ndjson import read_ndjson  # noqa: E402
from sketchembed.data.formats.npz import read_npz  # noqa: E402

SUFFIXES = (".ndjson", ".bin", ".npz")


def read_drawings(path, *, on_error: str = "skip", report: SkipReport | None = None,
                  word: str | None = None, split: str | None = None,
                  words: Collection[str] | None = CATEGORY_SET) -> Iterator[Drawing]:
    """Stream the drawings of any supported file, chosen by suffix.

    ``word`` is the class the file must hold (ndjson: each line's ``word`` must equal it; ``.bin``
    and ``.npz``, which carry no word, take it instead of the file name). ``split`` selects an
    ``.npz`` split (``train``/``valid``/``test``; default all three in that order). ``words``: the
    class names accepted (default Quick, Draw!'s 345; ``None``: any).
    """
    suffix = Path(path).suffix.lower()
    if split is not None and suffix != ".npz":
        raise ValueError(f"split= applies to .npz files only, not {path}")
    if suffix == ".ndjson":
        return read_ndjson(path, on_error=on_error, report=report, word=word, words=words)
    if suffix == ".bin":
        return read_binary(path, on_error=on_error, report=report, word=word, words=words)
    if suffix == ".npz":
        return read_npz(path, on_error=on_error, report=report, word=word, split=split, words=words)
    raise DataFormatError(path, None, f"unknown format {suffix or '(no suffix)'!r}; "
                                      f"expected one of {', '.join(SUFFIXES)}")


__all__ = ["read_drawings", "read_ndjson", "read_binary", "write_binary", "read_npz", "SUFFIXES",
           "ErrorSink"]
