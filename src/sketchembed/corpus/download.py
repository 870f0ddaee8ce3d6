"""`sketchembed data download`: fetch the public Quick, Draw! files over HTTPS.

Downloads are resumable (``<file>.part`` + ``Range``), verified (length from Content-Length /
Content-Range, MD5 from Google Cloud Storage's ``x-goog-hash``) and placed atomically
(``os.replace`` only after verification), so a file under its final name is always complete.
Only the standard library's ``urllib`` is used for HTTP; ``rich`` draws the progress bars.

Where the server gives no MD5 (or serves a transcoded copy, to which the stored object's hash does
not apply) only the size can be checked: each such file gets one warning line, and a ``.part`` left
by an earlier run is not continued — its bytes could not be checked — but fetched again from zero
("restarted"); a HEAD request asks for the hash before an earlier ``.part`` is continued, so its
rest is never fetched only to be thrown away. Files already present are taken on their size;
``verify=True`` (``--verify``) checks them against the server's MD5 and fetches again any that differ.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from sketchembed.corpus.categories import resolve_classes
from sketchembed.corpus.formats import bucket_kinds

BASE_URL = "https://storage.googleapis.com/quickdraw_dataset/"
#: ``--format`` spellings of earlier versions, still accepted by the command (with a note).
OLD_NAMES = {"sketchrnn": "npz"}

CHUNK = 1 << 16
MAX_BACKOFF = 30.0
# HTTP statuses worth another try; every other error status fails at once (404 will stay 404).
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class DownloadError(RuntimeError):
    """A file could not be fetched or verified; the message names the file and the reason."""


class _Transient(Exception):
    """A failure that another attempt may cure (cut connection, short body, 5xx)."""


class _Restart(Exception):
    """The .part file cannot be continued (server sent other bytes than asked); start from zero."""


@dataclass
class _Part:
    """What the ``.part`` file holds, across the attempts of one fetch."""

    path: Path
    earlier: int = 0  # bytes left by an earlier run still at its start (unchecked until the MD5 says so)
    restarted: bool = False  # earlier bytes were thrown away (server ignored Range, or they could not be kept)

    def size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        if self.earlier:
            self.restarted = True
        self.earlier = 0


@dataclass
class _Remote:
    length: int | None
    md5: str | None  # base64, as in x-goog-hash
    transcoded: bool  # GCS served a decompressed copy: the stored object's hash does not apply
    partial: bool = False  # came with a 206/416, which need not carry the object's hash

    @property
    def checksum(self) -> str | None:
        """The MD5 a local copy must have, or None when there is none to check against."""
        return None if self.transcoded else self.md5

    def no_checksum(self, name: str, outcome: str = "checked by its size only") -> str:
        why = "served a transcoded copy" if self.transcoded and self.md5 else "sent no MD5"
        return f"{name}: the server {why}: {outcome}"


# ---------------------------------------------------------------------------------------------
# names and URLs


def file_name(cls: str, fmt: str) -> str:
    """Local file name of a class in a format (the bucket's own name)."""
    return cls + _format(fmt)[1]


def file_url(cls: str, fmt: str, url_base: str = BASE_URL) -> str:
    """URL of a class file; the name is quoted because many classes contain spaces."""
    folder, ext = _format(fmt)
    return url_base.rstrip("/") + "/" + folder + urllib.parse.quote(cls + ext, safe="")


def _format(fmt: str) -> tuple[str, str]:
    """(bucket folder, file suffix) of a format the bucket serves (the format registry's ``bucket``)."""
    served = bucket_kinds()
    try:
        return served[fmt]
    except KeyError:
        raise ValueError(f"unknown format {fmt!r} (choose from {', '.join(served)})") from None


class _PerFile(ProgressColumn):
    """A byte column for file tasks; 'M/N files' (or nothing) for the overall task."""

    def __init__(self, inner, count: bool):
        super().__init__()
        self.inner, self.count = inner, count

    def render(self, task):
        if task.fields.get("files"):
            return Text(f"{int(task.completed)}/{int(task.total)} files" if self.count else "")
        return self.inner.render(task)


# ---------------------------------------------------------------------------------------------
# progress


class _Bars:
    """Per-file byte bars plus one overall files bar; a no-op when disabled."""

    def __init__(self, n_files: int, enabled: bool):
        self.enabled = enabled
        if not enabled:
            return
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), _PerFile(DownloadColumn(), True),
            _PerFile(TransferSpeedColumn(), False),
            TimeRemainingColumn(), console=Console(stderr=True),
        )
        self.progress.start()
        self.overall = self.progress.add_task("[bold]total", total=n_files, files=True)
        self.task = None

    def start(self, name: str) -> None:
        if self.enabled:
            self.task = self.progress.add_task(name, total=None)

    def reset(self, total: int | None, completed: int) -> None:
        if self.enabled and self.task is not None:
            self.progress.update(self.task, total=total, completed=completed)

    def advance(self, n: int) -> None:
        if self.enabled and self.task is not None:
            self.progress.advance(self.task, n)

    def done(self) -> None:
        if self.enabled:
            if self.task is not None:
                self.progress.remove_task(self.task)
                self.task = None
            self.progress.advance(self.overall, 1)

    def close(self) -> None:
        if self.enabled:
            self.progress.stop()


# ---------------------------------------------------------------------------------------------
# HTTP


def _remote(headers) -> _Remote:
    """Length and MD5 of the whole object from a response's headers."""
    length = None
    rng = headers.get("Content-Range")
    if rng:
        m = re.match(r"bytes\s+(?:\d+-\d+|\*)/(\d+)", rng.strip())
        length = int(m.group(1)) if m else None
    elif headers.get("Content-Length") is not None:
        length = int(headers["Content-Length"])
    md5 = None
    for value in headers.get_all("x-goog-hash") or []:
        for item in value.split(","):
            k, _, v = item.strip().partition("=")
            if k.lower() == "md5" and v:
                md5 = v.strip()
    stored = (headers.get("x-goog-stored-content-encoding") or "identity").lower()
    served = (headers.get("Content-Encoding") or "identity").lower()
    return _Remote(length, md5, stored != served)


def _open(url: str, *, method: str = "GET", headers: dict | None = None, timeout: float):
    req = urllib.request.Request(url, method=method, headers={"User-Agent": "sketchembed", **(headers or {})})
    return urllib.request.urlopen(req, timeout=timeout)


def _http_failure(e: urllib.error.HTTPError, name: str, url: str) -> Exception:
    if e.code in RETRY_STATUSES:
        return _Transient(f"HTTP {e.code} {e.reason}")
    return DownloadError(f"{name}: HTTP {e.code} {e.reason} for {url}")


def _head(url: str, name: str, timeout: float) -> _Remote:
    try:
        with _open(url, method="HEAD", timeout=timeout) as r:
            return _remote(r.headers)
    except urllib.error.HTTPError as e:
        raise _http_failure(e, name, url) from None


def _attempt(url: str, name: str, part: _Part, timeout: float, bars: _Bars) -> _Remote:
    """One GET, continuing ``part`` if it has bytes; returns what the server said about the
    whole object once the body has been read to its end."""
    offset = part.size()
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        resp = _open(url, headers=headers, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            # Nothing after `offset`: the .part may already hold the whole file. Ask for the
            # length/hash and let the caller verify it.
            e.close()
            info = _head(url, name, timeout)
            if info.length != offset:
                raise _Restart(f"server refused bytes={offset}- but the file has {info.length} bytes") from None
            bars.reset(info.length, offset)
            return info
        raise _http_failure(e, name, url) from None
    with resp:
        info = _remote(resp.headers)
        if resp.status == 206:
            m = re.match(r"bytes\s+(\d+)-", resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != offset:
                raise _Restart(f"asked for bytes={offset}-, got {resp.headers.get('Content-Range')!r}")
            mode, info.partial = "ab", True
        elif resp.status == 200:
            if offset:
                part.discard()  # the server ignored Range: start over
            offset, mode = 0, "wb"
        else:
            raise DownloadError(f"{name}: unexpected HTTP {resp.status} for {url}")
        bars.reset(info.length, offset)
        with open(part.path, mode) as f:
            while True:
                chunk = resp.read1(CHUNK)  # read1: bytes already received survive a timeout
                if not chunk:
                    break
                f.write(chunk)
                bars.advance(len(chunk))
            f.flush()
            os.fsync(f.fileno())
    size = part.size()
    if info.length is not None and size < info.length:
        raise _Transient(f"connection ended at {size} of {info.length} bytes")
    return info


def _md5_b64(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return base64.b64encode(h.digest()).decode("ascii")


_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError,
                   socket.timeout, _Transient)


def _with_retries(fn: Callable, *, what: str, retries: int, backoff: float,
                  progress_of: Callable[[], int] | None = None):
    """Call ``fn`` until it succeeds; ``retries`` consecutive failures without progress are
    tolerated, each followed by an exponential backoff pause."""
    failures = 0
    while True:
        before = progress_of() if progress_of else 0
        try:
            return fn()
        except _NETWORK_ERRORS as e:
            if isinstance(e, urllib.error.HTTPError):  # callers convert these; never retry one blindly
                raise DownloadError(f"{what}: HTTP {e.code} {e.reason}") from None
            if progress_of and progress_of() > before:
                failures = 0  # the connection broke after moving data forward: not stuck
            failures += 1
            if failures > retries:
                reason = getattr(e, "reason", None) or e
                kept = "; the .part file is kept: run again to resume" if progress_of and progress_of() else ""
                raise DownloadError(f"{what}: {reason} (gave up after {retries} retries){kept}") from e
            time.sleep(min(MAX_BACKOFF, backoff * 2 ** (failures - 1)))


def fetch_file(url: str, final: Path, *, name: str | None = None, retries: int = 5, backoff: float = 1.0,
               timeout: float = 60.0, force: bool = False, verify: bool = False, bars: _Bars | None = None,
               warn: Callable[[str], None] | None = None) -> str:
    """Fetch one URL to ``final`` (resuming ``final.part``). Returns ``"present"`` (there, with the
    server's size), ``"verified"`` (there, and ``verify`` found the server's MD5), ``"replaced"``
    (there, but ``verify`` found another MD5: fetched again), ``"resumed"`` (an earlier ``.part``
    continued), ``"restarted"`` (an earlier ``.part`` thrown away: the server ignored Range, or
    there is no MD5 to check its bytes against) or ``"downloaded"``. ``warn`` gets one line per
    file that could be checked by size only."""
    final = Path(final)
    name = name or final.name
    bars = bars or _Bars(1, False)
    warn = warn or (lambda msg: warnings.warn(msg, stacklevel=3))
    kw = dict(retries=retries, backoff=backoff)
    part = _Part(final.with_name(final.name + ".part"))

    replacing = False
    if final.exists() and not force:
        info = _with_retries(lambda: _head(url, name, timeout), what=name, **kw)
        if info.length is not None and info.length == final.stat().st_size:
            status = "present"
            if verify and info.checksum is None:
                warn(info.no_checksum(name, "cannot verify it (its size matches)"))
            elif verify:
                got = _md5_b64(final)
                status = "verified" if got == info.checksum else "replaced"
                if status == "replaced":
                    warn(f"{name}: MD5 {got} on disk, the server's is {info.checksum}: fetching it again")
            if status != "replaced":
                bars.start(name)
                bars.done()
                return status
            replacing = True
    if force or replacing:
        part.path.unlink(missing_ok=True)

    part.earlier = part.size()
    head_md5 = None
    if part.earlier:  # continue it only if a hash can check its bytes; else fetch from zero now
        head = _with_retries(lambda: _head(url, name, timeout), what=name, **kw)
        head_md5 = head.md5
        if head.checksum is None:
            part.discard()
    bars.start(name)
    while True:
        info = _transfer(url, name, part, timeout, bars, **kw)
        if info.partial and info.md5 is None:  # resumed: the whole object's hash, from a HEAD
            info.md5 = head_md5 or _with_retries(lambda: _head(url, name, timeout), what=name, **kw).md5
        if info.checksum is None and part.earlier:  # the HEAD had a hash, the GET none
            part.discard()  # bytes of an earlier run that nothing can check: fetch them again
            continue
        break
    if info.checksum is None:
        warn(info.no_checksum(name))
    else:
        got = _md5_b64(part.path)
        if got != info.checksum:
            part.path.unlink(missing_ok=True)
            raise DownloadError(f"{name}: MD5 mismatch (server {info.checksum}, file {got}); deleted {part.path}")
    os.replace(part.path, final)
    bars.done()
    if replacing:
        return "replaced"
    return "restarted" if part.restarted else "resumed" if part.earlier else "downloaded"


def _transfer(url: str, name: str, part: _Part, timeout: float, bars: _Bars, *, retries: int,
              backoff: float) -> _Remote:
    """GETs until ``part`` holds as many bytes as the server says the object has."""
    restarts = 0
    while True:
        try:
            info = _with_retries(lambda: _attempt(url, name, part, timeout, bars), what=f"{name} ({url})",
                                 progress_of=part.size, retries=retries, backoff=backoff)
        except _Restart as e:
            part.discard()
            restarts += 1
            if restarts > max(1, retries):
                raise DownloadError(f"{name}: cannot resume ({e})") from None
            continue
        size = part.size()
        if info.length is not None and size != info.length:
            part.discard()
            restarts += 1
            if restarts > max(1, retries):
                raise DownloadError(f"{name}: {size} bytes on disk, server says {info.length}; deleted {part.path}")
            continue
        return info


# ---------------------------------------------------------------------------------------------
# API and CLI


def download(classes: str | Iterable[str], fmt: str = "simplified", dest: str | os.PathLike = ".", *,
             url_base: str = BASE_URL, retries: int = 5, backoff: float = 1.0, timeout: float = 60.0,
             force: bool = False, verify: bool = False, progress: bool | None = None,
             on_file: Callable[[Path, str], None] | None = None,
             on_warning: Callable[[str], None] | None = None) -> list[Path]:
    """Download the files of ``classes`` (names, ``"study"`` or ``"all"``) in ``fmt`` into ``dest``.

    ``progress=None`` shows bars only when stderr is a terminal. ``on_file(path, status)`` is
    called after each file with a status of :func:`fetch_file`; ``on_warning(line)`` for each file
    checked by size only (default: ``warnings.warn``). ``verify`` checks files already present
    against the server's MD5 and fetches again those that differ. Returns the
    final paths in class order; raises ``ValueError`` for bad names before any request and
    ``DownloadError`` when a file cannot be fetched or verified (its .part is kept for resuming,
    except after an MD5 mismatch)."""
    names = resolve_classes(classes)
    _format(fmt)
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise NotADirectoryError(f"download destination {dest} is a file, not a folder")
    dest.mkdir(parents=True, exist_ok=True)
    if progress is None:
        progress = sys.stderr.isatty()
    bars = _Bars(len(names), bool(progress))
    paths = []
    try:
        for cls in names:
            final = dest / file_name(cls, fmt)
            status = fetch_file(file_url(cls, fmt, url_base), final, name=final.name, retries=retries,
                                backoff=backoff, timeout=timeout, force=force, verify=verify, bars=bars,
                                warn=on_warning)
            paths.append(final)
            if on_file:
                on_file(final, status)
    finally:
        bars.close()
    return paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Fetch Quick, Draw! files from the public bucket (resumable, verified)."
    parser.add_argument("--classes", required=True,
                        help="comma-separated class names, 'study' (the ten study classes) or 'all' (345)")
    served = list(bucket_kinds())
    parser.add_argument("--format", dest="fmt", choices=served + list(OLD_NAMES), default="simplified",
                        metavar="{" + ",".join(served) + "}",
                        help="which files of the bucket (default: simplified; npz: sketch-rnn's)")
    parser.add_argument("--dest", type=Path, default=None,
                        help="target directory (default: data/quickdraw/<format>)")
    parser.add_argument("--url-base", default=BASE_URL, help=f"bucket base URL (default: {BASE_URL})")
    parser.add_argument("--retries", type=int, default=5,
                        help="consecutive failed attempts tolerated per file (default: 5)")
    parser.add_argument("--backoff", type=float, default=1.0,
                        help="first pause between retries in seconds, doubled each time (default: 1)")
    parser.add_argument("--timeout", type=float, default=60.0, help="socket timeout in seconds (default: 60)")
    parser.add_argument("--force", action="store_true", help="download even files already present")
    parser.add_argument("--verify", action="store_true",
                        help="check files already present against the server's MD5 (not only their size) "
                             "and fetch again any that differ")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars, no per-file lines (warnings are still printed)")


def run(args: argparse.Namespace) -> int:
    if args.fmt in OLD_NAMES:
        print(f"note: --format {args.fmt} is now called {OLD_NAMES[args.fmt]}", file=sys.stderr)
        args.fmt = OLD_NAMES[args.fmt]
    dest = args.dest if args.dest is not None else Path("data/quickdraw") / args.fmt

    counts: dict[str, int] = {}

    def echo(path: Path, status: str) -> None:
        counts[status] = counts.get(status, 0) + 1
        if not args.quiet:
            print(f"{status:>10}  {path} ({path.stat().st_size:,} bytes)")

    def warn(line: str) -> None:  # printed even with --quiet: the file is not what it should be, or unchecked
        print(f"warning: {line}", file=sys.stderr)

    try:
        paths = download(args.classes, args.fmt, dest, url_base=args.url_base, retries=args.retries,
                         backoff=args.backoff, timeout=args.timeout, force=args.force, verify=args.verify,
                         progress=False if args.quiet else None, on_file=echo, on_warning=warn)
    except DownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"{len(paths)} file(s) in {dest}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return 0
