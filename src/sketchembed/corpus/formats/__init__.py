"""Readers for every public Quick, Draw! format, behind one entry point.

``read_drawings(path)`` picks the reader from the suffix, through the one list of formats in
:mod:`~sketchembed.corpus.formats.registry` (each format module below registers itself on import).
All readers stream (one line or record in memory at a time; ``.npz`` one split, as pickled arrays
allow no less) and share one error policy, a :class:`~sketchembed.corpus.sketch.SkipReport`: a bad
record is skipped and counted with the file and position (``line N``, ``byte N`` or
``split/index``), or raised as a ``DataFormatError`` with ``on_error="raise"``. When no ``report``
is passed, skips are announced by a warning at the end of the file so they never vanish.

Class names must be Quick, Draw!'s 345 unless ``words`` says otherwise (``words=None``: any
non-empty name, for other sketch datasets).
"""

from __future__ import annotations

# Registration order is reading order in prepare (a simplified copy of a drawing wins): keep it.
# isort: off
from sketchembed.corpus.formats.ndjson import read_ndjson
from sketchembed.corpus.formats.binary import read_binary, write_binary
from sketchembed.corpus.formats.npz import read_npz
from sketchembed.corpus.formats.registry import (FORMATS, FileFormat, bucket_kinds, discover, format_of,
                                               kinds, read_drawings, reader, reading_order, register, suffix_list,
                                               suffixes)
# isort: on

__all__ = ["read_drawings", "read_ndjson", "read_binary", "write_binary", "read_npz", "FORMATS", "FileFormat",
           "register", "reader", "format_of", "kinds", "reading_order", "bucket_kinds", "suffixes", "suffix_list",
           "discover"]
