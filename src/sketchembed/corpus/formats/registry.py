"""The one list of file formats: each format module registers itself here, and everything that
names, finds or reads drawing files — ``read_drawings``, ``prepare`` (file search, ``--format``,
the order in which copies win), ``download`` (``--format``, bucket folders), ``eval``'s ``test_dir``
check and the error messages — reads from it.

A format is one module that defines a reader and calls :func:`register` once (``docs/ARCHITECTURE.md``,
"How to extend: a file format"). Its *kinds* are the names ``--format`` takes and the manifest
records: one per format (its name), except where one file type holds two kinds of content told
apart per file (``.ndjson``: ``simplified`` and ``raw``).

The error policy is one :class:`~sketchembed.corpus.sketch.SkipReport`: :func:`reader` gives a
format's reader the public ``on_error=``/``report=`` arguments, so a new reader only calls
``report.bad(file, position, reason)``.
"""

from __future__ import annotations

import functools
import os
import unicodedata
import warnings
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sketchembed.corpus.categories import CATEGORY_SET
from sketchembed.corpus.sketch import DataFormatError, Drawing, SkipReport


@dataclass(frozen=True)
class FileFormat:
    """One registered file format.

    ``read(source, *, report, word, words, **options)`` yields Drawings (wrapped by :func:`reader`);
    ``options``: the extra keyword arguments it takes (``.npz``: ``split``); ``write(dest, drawings)``
    if the format can be written; ``read_blocks`` a bulk reader ``prepare`` may use instead (same
    arguments; yields :class:`~sketchembed.corpus.formats.ndjson.Block` s of ready point arrays or
    Drawings). ``kinds`` (default: the name) and ``sniff(path) -> kind`` where a
    file type holds several; ``raw_kinds``: the kinds whose drawings are raw (``prepare`` simplifies
    them and reads them last, so a simplified copy of a drawing wins). ``bucket``: kind → folder of
    the public Quick, Draw! bucket, for ``download``.
    """

    name: str
    suffixes: tuple[str, ...]
    read: Callable[..., Iterator[Drawing]]
    write: Callable | None = None
    read_blocks: Callable | None = None
    kinds: tuple[str, ...] = ()
    sniff: Callable[[Path], str] | None = None
    raw_kinds: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    bucket: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if not self.kinds:
            object.__setattr__(self, "kinds", (self.name,))
        object.__setattr__(self, "suffixes", tuple(s.lower() for s in self.suffixes))

    def kind_of(self, path: Path) -> str:
        """What the file holds (``simplified`` or ``raw`` for ndjson; the format's name otherwise)."""
        return self.sniff(Path(path)) if self.sniff is not None else self.kinds[0]

    def kind_of_drawing(self, is_raw: bool) -> str:
        """The kind a drawing read from this format counts as, for ``prepare --format``."""
        if len(self.kinds) == 1:
            return self.kinds[0]
        pool = self.raw_kinds if is_raw else [k for k in self.kinds if k not in self.raw_kinds]
        return pool[0]


#: name → format, in registration order (the built-in ones: ndjson, binary, npz).
FORMATS: dict[str, FileFormat] = {}


def register(fmt: FileFormat) -> FileFormat:
    """Add a format; a name, kind or suffix another format already has is refused."""
    for other in FORMATS.values():
        if other.name == fmt.name and other is not fmt:
            raise ValueError(f"file format {fmt.name!r} is registered twice")
        clash = (set(other.suffixes) & set(fmt.suffixes)) or (set(other.kinds) & set(fmt.kinds))
        if clash and other.name != fmt.name:
            raise ValueError(f"file format {fmt.name!r}: {', '.join(sorted(clash))} already belong(s) "
                             f"to format {other.name!r}")
    FORMATS[fmt.name] = fmt
    return fmt


def suffixes() -> tuple[str, ...]:
    """Every registered suffix (``.ndjson``, ``.bin``, ``.npz``, …), lower case."""
    return tuple(s for f in FORMATS.values() for s in f.suffixes)


def kinds() -> tuple[str, ...]:
    """Every kind ``prepare --format`` takes (``simplified``, ``raw``, ``binary``, ``npz``, …)."""
    return tuple(k for f in FORMATS.values() for k in f.kinds)


def reading_order(kind: str) -> tuple[bool, int]:
    """Sort key of a kind in ``prepare``: raw kinds last, else registration order, so the first
    copy of a drawing kept is a simplified one and raw copies are not even simplified."""
    return any(kind in f.raw_kinds for f in FORMATS.values()), kinds().index(kind)


def bucket_kinds() -> dict[str, tuple[str, str]]:
    """kind → (bucket folder, file suffix) for the kinds the public bucket serves (``download``)."""
    return {k: (folder, f.suffixes[0]) for f in FORMATS.values() for k, folder in f.bucket.items()}


def has_suffix(path) -> bool:
    return Path(path).suffix.lower() in suffixes()


def suffix_list(sep: str = ", ") -> str:
    """The registered suffixes for messages (``.ndjson, .bin, .npz``)."""
    return sep.join(suffixes())


def format_of(path) -> FileFormat:
    """The format of a file, from its suffix; a ``DataFormatError`` naming the file otherwise."""
    suffix = Path(path).suffix.lower()
    for f in FORMATS.values():
        if suffix in f.suffixes:
            return f
    raise DataFormatError(path, None, f"unknown format {suffix or '(no suffix)'!r}; "
                                      f"expected one of {suffix_list()}")


def discover(inputs: Iterable) -> dict[str, list[Path]]:
    """File name (class) → its files of a registered format, from files and (recursively searched)
    directories. A file given by name must be of a registered format."""
    found: dict[str, list[Path]] = {}
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and has_suffix(f))
        elif p.is_file():
            if not has_suffix(p):
                raise DataFormatError(p, None, f"unsupported file type (expected {suffix_list()})")
            files = [p]
        else:
            raise FileNotFoundError(f"input not found: {p}")
        for f in files:
            lst = found.setdefault(f.stem, [])
            if f.resolve() not in {g.resolve() for g in lst}:
                lst.append(f)
    return found


def display_name(source) -> str:
    """A file's path for messages, whether given a path or an open file."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return str(getattr(source, "name", "<stream>"))


#: Unicode categories a class name may not hold: control (ANSI escapes, newlines), format (a
#: right-to-left override), surrogates, and line/paragraph separators. Class names are printed in
#: tables and messages, where such a character would forge or hide text.
_UNPRINTABLE = ("Cc", "Cf", "Cs", "Zl", "Zp")


def unprintable(name: str) -> str | None:
    """Why ``name`` cannot be printed as plain text (it holds a control character), or None."""
    bad = next((c for c in name if unicodedata.category(c) in _UNPRINTABLE), None)
    if bad is None:
        return None
    name = unicodedata.name(bad, "")
    return f"holds the control character U+{ord(bad):04X}{f' ({name})' if name else ''}"


def word_problem(word: str, expected: str | None, words: Collection[str] | None) -> str | None:
    """Why ``word`` is not an acceptable class name for a reader asked for ``expected`` among
    ``words`` (Quick, Draw!'s 345 by default; ``None``: any non-empty name of plain text), or None."""
    if expected is not None and word != expected:
        return f"class {word!r} where {expected!r} was expected"
    if not word:
        return "empty class name"
    if unprintable(word):
        return f"class name {word[:60]!r} {unprintable(word)}"
    if words is CATEGORY_SET and word not in CATEGORY_SET:
        return (f"unknown class {word!r} (not one of the 345 Quick, Draw! categories; "
                f"prepare --classes from-files reads any name)")
    if words is not None and word not in words:
        return f"unknown class {word!r} (not among the {len(words)} classes asked for)"
    return None


def skip_report(report: SkipReport | None, on_error: str | None) -> SkipReport:
    """The one report a read uses: the caller's (its ``on_error`` rules) or a new one."""
    if report is None:
        return SkipReport(on_error=on_error or "skip")
    if on_error is not None and on_error != report.on_error:
        raise ValueError(f"on_error={on_error!r} but the report passed has on_error={report.on_error!r}")
    return report


def reader(read: Callable[..., Iterator[Drawing]]) -> Callable[..., Iterator[Drawing]]:
    """A format's reader with the public error arguments: ``on_error`` (``skip``/``raise``) or a
    ``report`` to count skips in. Without a report, skips are announced by one warning at the end
    of the file, so they never vanish."""

    @functools.wraps(read)
    def wrapped(source, *, on_error: str | None = None, report: SkipReport | None = None,
                word: str | None = None, words: Collection[str] | None = CATEGORY_SET, **options):
        own = report is None
        report = skip_report(report, on_error)
        yield from read(source, report=report, word=word, words=words, **options)
        if own and report.count:
            warnings.warn(report.summary(), stacklevel=2)

    return wrapped


def read_drawings(path, *, on_error: str | None = None, report: SkipReport | None = None,
                  word: str | None = None, words: Collection[str] | None = CATEGORY_SET,
                  **options) -> Iterator[Drawing]:
    """Stream the drawings of any registered format, chosen by suffix.

    ``word`` is the class the file must hold (ndjson: each line's ``word`` must equal it; ``.bin``
    and ``.npz``, which carry no word, take it instead of the file name). ``words``: the class
    names accepted (default Quick, Draw!'s 345; ``None``: any). ``options`` go to the format's
    reader (``.npz``: ``split=`` ``train``/``valid``/``test``, default all three; ``budget=`` an
    :class:`~sketchembed.corpus.formats.npz.NpzBudget`).
    """
    fmt = format_of(path)
    given = {k for k, v in options.items() if v is not None}
    if given - set(fmt.options):
        takers = [s for f in FORMATS.values() if set(given) <= set(f.options) for s in f.suffixes]
        where = f"{'/'.join(takers)} files only" if takers else "no format"
        raise ValueError(f"{'='.join(sorted(given))}= applies to {where}, not {path}")
    return fmt.read(path, on_error=on_error, report=report, word=word, words=words,
                    **{k: options[k] for k in given})


__all__ = ["FORMATS", "FileFormat", "register", "suffixes", "kinds", "format_of",
           "reading_order", "bucket_kinds", "has_suffix", "suffix_list", "discover", "display_name", "word_problem",
           "unprintable", "skip_report",
           "reader", "read_drawings"]
