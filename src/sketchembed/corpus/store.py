"""Prepared datasets: every drawing of a corpus in a few flat, memory-mapped arrays.

Layout of a prepared directory (the contract in docs/ARCHITECTURE.md, "Prepared dataset"):

==============  ==================  ===========================================================
file            dtype, shape        meaning
==============  ==================  ===========================================================
points.npy      int16 (P, 3)        (x, y, pen_up) of all drawings, one after the other
offsets.npy     int64 (n + 1,)      drawing i is ``points[offsets[i]:offsets[i + 1]]``
labels.npy      int16 (n,)          class index into ``manifest["classes"]``
key_ids.npy     uint64 (n,)         the dataset's key_id of each drawing
splits.npy      int8 (n,)           0 train, 1 val, 2 test
manifest.json                       classes, counts, sources, skipped inputs, split rule, sha256
==============  ==================  ===========================================================

Why this shape: a training process (and each DataLoader worker) memory-maps the arrays, so opening
a 1.5 M-drawing dataset costs nothing and the OS page cache is shared between workers. The writer
streams to disk, so preparing never holds the corpus as Python objects.
"""

from __future__ import annotations

import array
import hashlib
import json
import math
import os
import re
import stat
import struct
import time
import uuid
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from sketchembed.corpus.formats.ndjson import decode_line
from sketchembed.corpus.sketch import DataFormatError, Drawing, points_to_strokes
from sketchembed.messages import short_list

FORMAT_NAME = "sketchembed-prepared"
FORMAT_VERSION = 1

SPLIT_NAMES = ("train", "val", "test")
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}

# name -> (dtype, trailing shape). Dtypes are explicit little-endian so checksums are portable.
ARRAYS: dict[str, tuple[str, tuple[int, ...]]] = {
    "points": ("<i2", (3,)),
    "offsets": ("<i8", ()),
    "labels": ("<i2", ()),
    "key_ids": ("<u8", ()),
    "splits": ("|i1", ()),
}
#: Arrays whose checksum is checked on every open (small: ~19 bytes per drawing). ``points`` is
#: only checked by :meth:`PreparedDataset.verify` (it is most of the bytes).
CHEAP_TO_VERIFY = ("offsets", "labels", "key_ids", "splits")

#: What a prepared directory holds; a folder holding anything else is never replaced.
STORE_FILES = frozenset({"manifest.json", *(f"{name}.npy" for name in ARRAYS)})

#: The most bytes a manifest (or a KNN index's index.json) may take: a real one is kilobytes
#: (classes, counts, sources, 50 listed skips), so a larger one is not read at all.
MANIFEST_BYTES = 64 * 2**20

_NPY_HEADER_SIZE = 128  # fixed, so the header can be rewritten in place once the length is known
_HASH_BLOCK = 1 << 24


def _npy_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    """A .npy v1.0 header of exactly ``_NPY_HEADER_SIZE`` bytes (numpy accepts space padding)."""
    d = repr({"descr": np.dtype(dtype).str, "fortran_order": False, "shape": tuple(int(s) for s in shape)})
    body = d.encode("latin1")
    room = _NPY_HEADER_SIZE - 10 - 1 - len(body)
    if room < 0:  # pragma: no cover - shapes would need > 40 digits
        raise ValueError(f"shape {shape} too large for the fixed .npy header")
    body = body + b" " * room + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body


class _ArrayFile:
    """One .npy file written by appending blocks; the header is fixed up on close."""

    def __init__(self, path: Path, dtype: str, trailing: tuple[int, ...]):
        self.path = path
        self.dtype = np.dtype(dtype)
        self.trailing = trailing
        self.rows = 0
        self.sha = hashlib.sha256()
        self.fp = open(path, "wb")
        self.fp.write(_npy_header(dtype, (0, *trailing)))

    def append(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != self.trailing:
            raise ValueError(f"{self.path.name}: block of shape {block.shape}, expected (*, {self.trailing})")
        data = block.data.cast("B")
        self.sha.update(data)
        self.fp.write(data)
        self.rows += len(block)

    def close(self) -> dict:
        self.fp.seek(0)
        self.fp.write(_npy_header(self.dtype.str, (self.rows, *self.trailing)))
        self.fp.flush()
        os.fsync(self.fp.fileno())
        self.fp.close()
        return {"file": self.path.name, "dtype": self.dtype.str, "shape": [self.rows, *self.trailing],
                "sha256": self.sha.hexdigest()}

    def abort(self) -> None:
        if not self.fp.closed:
            self.fp.close()


# --------------------------------------------------------------------------------------------
# the files of a data folder (a prepared dataset, a KNN index): regular files only


def _kind(mode: int) -> str:
    return next((what for test, what in ((stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symbolic link"),
                                         (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                                         (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"))
                 if test(mode)), "a special file")


def file_problem(path, within=None) -> str | None:
    """Why ``path`` may not be read as a file of the folder ``within``, or None (also when it is
    missing: the caller names that). It must be a regular file: reading a FIFO blocks forever, a
    device never ends, a folder is not data. A symbolic link is followed only to a regular file
    inside ``within`` (the folder the user named), never out of it."""
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode):
            target = path.resolve()
            if within is not None and not target.is_relative_to(Path(within).resolve()):
                return f"a symbolic link out of {within} (to {target}); give the file itself"
            mode = os.stat(path).st_mode
    except FileNotFoundError:
        return None
    except (OSError, RuntimeError) as e:  # a loop of links, no permission
        return f"cannot be looked at ({getattr(e, 'strerror', None) or e})"
    return None if stat.S_ISREG(mode) else f"{_kind(mode)}, not a regular file"


def own_files_problem(folder, names: Iterable[str], what: str = "a prepared dataset") -> str | None:
    """Why ``folder`` holds something other than regular files named in ``names`` (what the writer
    of ``what`` makes), or None. Such a folder may be replaced or removed; anything else may be
    someone's: a ``points.npy`` that is a folder of their files, a link to elsewhere."""
    names = set(names)
    try:
        entries = list(os.scandir(folder))
    except OSError as e:
        return f"it cannot be listed ({e.strerror})"
    others = sorted(e.name for e in entries if e.name not in names)
    if others:
        return f"it holds files that are not part of {what}: {short_list(others, 5)}"
    odd = sorted(f"{e.name} is {_kind(e.stat(follow_symlinks=False).st_mode)}" for e in entries
                 if not e.is_file(follow_symlinks=False))
    if odd:
        return f"{short_list(odd, 5)}, where {what} holds only regular files"
    return None


def remove_own_folder(folder, names: Iterable[str]) -> str | None:
    """Remove ``folder`` if it holds only regular files named in ``names``, one file at a time (never
    a tree: what is not ours is never deleted). None when removed, else why it was left."""
    names = set(names)
    why = own_files_problem(folder, names)
    if why:
        return why
    try:
        for e in os.scandir(folder):
            if e.name in names and e.is_file(follow_symlinks=False):
                os.unlink(e.path)
        os.rmdir(folder)
    except OSError as e:  # something appeared meanwhile: left as it is
        return f"it changed while being removed ({e.strerror})"
    return None


def load_plain_npy(path, within=None, mmap: bool = True) -> np.ndarray:
    """A ``.npy`` file of a data folder, memory-mapped (or read), as plain numbers only.

    The path must pass :func:`file_problem`; the header must declare a numeric (never object:
    that is a pickle) array whose bytes are exactly the file's, checked before anything is mapped,
    so no size a file claims is trusted. Any problem is a ``DataFormatError`` naming the file.
    """
    path = Path(path)
    why = file_problem(path, within) or (None if path.exists() else "missing file")
    if why:
        raise DataFormatError(path, None, why)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f".npy version {version[0]}.{version[1]}, not 1.0 or 2.0")
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            if dtype.hasobject:
                raise ValueError("it holds Python objects (a pickle), which are never loaded")
            offset = f.tell()
            need = offset + math.prod(shape) * dtype.itemsize
            if need != size:
                raise ValueError(f"its header declares {dtype} of shape {tuple(shape)}, {need:,} bytes with the "
                                 f"header, but the file has {size:,}: truncated, or not what it says")
            order = "F" if fortran else "C"
            if math.prod(shape) == 0:
                return np.zeros(shape, dtype, order=order)
            if mmap:
                return np.memmap(f, dtype=dtype, mode="r", offset=offset, shape=tuple(shape), order=order)
            return np.fromfile(f, dtype=dtype, count=math.prod(shape)).reshape(shape, order=order)
    except (ValueError, OSError, EOFError) as e:
        raise DataFormatError(path, None, f"not a plain numeric array ({' '.join(str(e).split())})") from None


def read_manifest(path: Path, within=None, what: str = "manifest") -> object:
    """``manifest.json`` (or a KNN index's ``index.json``: ``what``) as JSON, within
    ``MANIFEST_BYTES``: a regular file (:func:`file_problem`), read by the readers' decoder (a
    crafted, deeply nested one is a ValueError, not a RecursionError). Any problem is a
    ``DataFormatError`` naming the file."""
    why = file_problem(path, within)
    if why:
        raise DataFormatError(path, None, why)
    try:
        size = path.stat().st_size
        if size > MANIFEST_BYTES:
            raise ValueError(f"{size:,} bytes, more than the {MANIFEST_BYTES:,} a {what} may take")
        return decode_line(path.read_bytes())
    except (ValueError, OSError) as e:
        raise DataFormatError(path, None, f"unreadable {what}: {' '.join(str(e).split())}") from None


def target_problem(root, inputs: Iterable = ()) -> str | None:
    """Why a prepared dataset may not be written to ``root``, or None.

    Writing replaces what is there, so only a missing path, an empty folder or an earlier prepared
    dataset (its own regular files and nothing else: :func:`own_files_problem`) qualify: anything
    else could be someone's data. Nor may ``root`` be or hold the current directory, or hold one of
    ``inputs`` (read while writing).
    """
    root = Path(root)
    where = root.resolve()
    cwd = Path.cwd().resolve()
    if where == cwd or where in cwd.parents:
        return "it is (or holds) the current directory"
    for inp in inputs:
        p = Path(inp).resolve()
        if p == where or where in p.parents:
            return f"the input {inp} lies inside it"
    if root.is_symlink():
        return "it is a symbolic link (give the folder it points to)"
    if not root.exists():
        return None
    if not root.is_dir():
        return "it is a file, not a folder"
    try:
        names = {p.name for p in root.iterdir()}
    except OSError as e:
        return f"it cannot be listed ({e.strerror})"
    if not names:
        return None
    if "manifest.json" not in names:
        return "it is a folder that is not a prepared dataset (no manifest.json)"
    why = own_files_problem(root, STORE_FILES)  # before reading the manifest: it may be a FIFO
    if why:
        return why
    try:
        manifest = read_manifest(root / "manifest.json")
    except DataFormatError:
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        return f"its manifest.json is not a {FORMAT_NAME} manifest"
    return None


def check_target(root, inputs: Iterable = ()) -> None:
    """:func:`target_problem` as a ``ValueError`` naming ``root`` (one line)."""
    why = target_problem(root, inputs)
    if why:
        raise ValueError(f"will not write a prepared dataset to {root}: {why}; the output must be a "
                         f"new path, an empty folder or an earlier prepared dataset")


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: running
        return True
    return True


def remove_stale_siblings(root, warn: Callable[[str], None]) -> None:
    """Remove what writers that died (SIGTERM, a crash) left next to ``root``: ``.NAME.tmp-PID-*``
    folders whose process is gone, and ``.NAME.old-*`` folders that were an earlier dataset — each
    only when it holds nothing but a writer's own files (:func:`remove_own_folder`); one ``warn``
    line for each left in place."""
    root = Path(root)
    pattern = re.compile(rf"\.{re.escape(root.name)}\.(?:tmp-(\d+)|old)-[0-9a-f]{{8}}")
    try:
        siblings = list(root.parent.iterdir())
    except OSError:
        return
    for p in siblings:
        m = pattern.fullmatch(p.name)
        if not m or p.is_symlink() or not p.is_dir():
            continue
        if m.group(1) is not None and _pid_running(int(m.group(1))):
            continue
        why = remove_own_folder(p, STORE_FILES)
        if why:
            warn(f"left {p} (an unfinished or replaced prepared dataset, by its name) in place: {why}")


def _warn(line: str) -> None:
    warnings.warn(line, stacklevel=3)


class PreparedWriter:
    """Streams drawings into a prepared dataset directory.

    Points are buffered up to ``chunk_points`` rows, then appended to ``points.npy`` on disk; the
    per-drawing columns (lengths, labels, key_ids) grow in compact ``array.array`` buffers
    (~18 bytes per drawing), never as Python objects per drawing. Everything is written into a
    temporary sibling directory that replaces ``root`` only on :meth:`close`, so a crash or an
    error never leaves a half-written dataset where a good one is expected. ``root`` must pass
    :func:`check_target` (with ``inputs``, the files read into it) at the start and again right
    before the replace. It removes only folders that hold nothing but its own files (the earlier
    dataset it replaces, what dead writers left): anything else is left, with one ``warn`` line
    (default: a warning).
    """

    def __init__(self, root, classes: Iterable[str], *, overwrite: bool = True, chunk_points: int = 1 << 20,
                 inputs: Iterable = (), warn: Callable[[str], None] | None = None):
        self.root = Path(root)
        self.classes = list(classes)
        if not self.classes:
            raise ValueError("a prepared dataset needs at least one class")
        if len(set(self.classes)) != len(self.classes):
            dup = sorted({c for c in self.classes if self.classes.count(c) > 1})
            raise ValueError(f"duplicate class names: {short_list(dup)}")
        if len(self.classes) > np.iinfo(np.int16).max:
            raise ValueError("too many classes for int16 labels")
        if self.root.exists() and not overwrite:
            raise FileExistsError(f"{self.root} exists (pass overwrite=True to replace it)")
        self.inputs = list(inputs)
        self.warn = warn or _warn
        check_target(self.root, self.inputs)
        self.root.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_siblings(self.root, self.warn)
        self.tmp = self.root.parent / f".{self.root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.tmp.mkdir()
        self.overwrite = overwrite
        self.chunk_points = int(chunk_points)
        self._points = _ArrayFile(self.tmp / "points.npy", *ARRAYS["points"])
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        self._pending_drawings = 0
        self._lengths = array.array("q")
        self._labels = array.array("h")
        self._key_ids = array.array("Q")
        self._closed = False

    # -- adding ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._labels)

    def add(self, points: np.ndarray, label: int, key_id: int) -> None:
        """Append one drawing: ``points`` is ``(n, 3)`` (x, y, pen_up), already on the 0-255 canvas."""
        points = np.asarray(points)
        if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
            raise ValueError(f"key_id {key_id}: points must be a non-empty (n, 3) array, got {points.shape}")
        if not 0 <= int(label) < len(self.classes):
            raise ValueError(f"key_id {key_id}: label {label} outside 0..{len(self.classes) - 1}")
        self._pending.append(points)
        self._pending_rows += len(points)
        self._pending_drawings += 1
        self._lengths.append(len(points))
        self._labels.append(int(label))
        self._key_ids.append(int(key_id))
        if self._pending_rows >= self.chunk_points:
            self._flush()

    def add_many(self, points: np.ndarray, lengths: np.ndarray, labels, key_ids) -> None:
        """Append several drawings at once: ``points`` is their concatenation, ``lengths`` their sizes.

        The fast path of bulk converters (one numpy call per chunk instead of per drawing).
        """
        points = np.asarray(points)
        lengths = np.asarray(lengths, dtype=np.int64)
        labels = np.broadcast_to(np.asarray(labels, dtype=np.int64), lengths.shape)
        key_ids = np.asarray(key_ids, dtype=np.uint64)
        if points.ndim != 2 or points.shape[1] != 3:
            raise ValueError(f"points must be (P, 3), got {points.shape}")
        if key_ids.shape != lengths.shape or int(lengths.sum()) != len(points):
            raise ValueError("lengths/key_ids do not match points")
        if len(lengths) and (lengths.min() < 1 or labels.min() < 0 or labels.max() >= len(self.classes)):
            raise ValueError("empty drawing or label out of range in add_many")
        self._pending.append(points)
        self._pending_rows += len(points)
        self._pending_drawings += len(lengths)
        self._lengths.extend(lengths.tolist())
        self._labels.extend(labels.tolist())
        self._key_ids.frombytes(key_ids.astype("<u8").tobytes())
        if self._pending_rows >= self.chunk_points:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        block = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        if len(block):
            lo, hi = block.min(), block.max()
            if lo < -32768 or hi > 32767:
                raise ValueError(f"point values {lo}..{hi} do not fit int16")
            pen = block[:, 2]
            if np.any((pen != 0) & (pen != 1)):
                raise ValueError("pen_up values must be 0 or 1")
            # pen_up on every drawing's last point is part of the contract (checked here, while the
            # block is in memory, rather than by reading the whole points file back)
            first = len(self._lengths) - self._pending_drawings
            ends = np.cumsum(np.frombuffer(self._lengths[first:].tobytes(), dtype=np.int64)) - 1
            if not np.all(pen[ends] == 1):
                j = int(np.flatnonzero(pen[ends] != 1)[0])
                key = int(self._key_ids[first + j])
                raise ValueError(f"key_id {key}: last point must have pen_up = 1")
        self._points.append(block)
        self._pending = []
        self._pending_rows = 0
        self._pending_drawings = 0

    # -- what prepare needs to compute splits -----------------------------------------------------
    # Copies, not views: a numpy view would pin the array.array's buffer and make the next add fail.
    @property
    def labels(self) -> np.ndarray:
        return np.array(self._labels, dtype=np.int16)

    @property
    def key_ids(self) -> np.ndarray:
        return np.frombuffer(self._key_ids.tobytes(), dtype=np.uint64)

    @property
    def lengths(self) -> np.ndarray:
        return np.frombuffer(self._lengths.tobytes(), dtype=np.int64)

    # -- finishing --------------------------------------------------------------------------------
    def close(self, manifest_extra: dict | None = None, *, splits: np.ndarray | None = None) -> PreparedDataset:
        """Write the small arrays and the manifest, then move the directory into place atomically.

        ``splits`` (int8 0/1/2 per drawing, in add order) is required: a dataset without a stated
        split would silently train on its test set.
        """
        if self._closed:
            raise RuntimeError("writer already closed")
        try:
            n = len(self._labels)
            if n == 0:
                raise ValueError(f"{self.root}: no drawings were added")
            if splits is None:
                raise ValueError("close() needs the split of every drawing (splits=...)")
            splits = np.asarray(splits)
            if splits.shape != (n,) or not np.isin(splits, (0, 1, 2)).all():
                raise ValueError(f"splits must be {n} values in {{0, 1, 2}}, got shape {splits.shape}")
            self._flush()
            lengths = self.lengths
            offsets = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            info = {"points": self._points.close()}
            if info["points"]["shape"][0] != offsets[-1]:  # pragma: no cover - internal invariant
                raise RuntimeError("points written do not match the lengths recorded")
            for name, arr in (("offsets", offsets), ("labels", self.labels), ("key_ids", self.key_ids),
                              ("splits", splits.astype(np.int8))):
                f = _ArrayFile(self.tmp / f"{name}.npy", *ARRAYS[name])
                f.append(arr)
                info[name] = f.close()
            manifest = self._manifest(info, splits, manifest_extra or {})
            tmp_manifest = self.tmp / "manifest.json"
            tmp_manifest.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
            self._move_into_place()
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return PreparedDataset(self.root)

    def _manifest(self, info: dict, splits: np.ndarray, extra: dict) -> dict:
        labels = self.labels.astype(np.int64)
        counts = np.zeros((len(self.classes), 3), dtype=np.int64)
        np.add.at(counts, (labels, splits.astype(np.int64)), 1)
        lengths = self.lengths
        manifest = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "classes": self.classes,
            "n_drawings": int(len(labels)),
            "n_points": int(lengths.sum()),
            "counts": {c: dict(zip(SPLIT_NAMES, map(int, counts[i]))) for i, c in enumerate(self.classes)},
            "split_totals": dict(zip(SPLIT_NAMES, map(int, counts.sum(0)))),
            "arrays": info,
        }
        for k, v in extra.items():
            if k in manifest:
                raise ValueError(f"manifest_extra may not override {k!r}")
            manifest[k] = v
        return manifest

    def _move_into_place(self) -> None:
        check_target(self.root, self.inputs)  # what is there may have changed while writing
        old = None
        if self.root.exists():
            if not self.overwrite:
                raise FileExistsError(f"{self.root} appeared while writing")
            old = self.root.parent / f".{self.root.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(self.root, old)
        try:
            os.replace(self.tmp, self.root)
        except OSError:
            if old is not None:
                os.replace(old, self.root)  # the earlier dataset back where it was
            raise
        if old is not None:
            why = remove_own_folder(old, STORE_FILES)
            if why:
                self.warn(f"left the earlier dataset of {self.root}, moved to {old}, in place: {why}")

    def abort(self) -> None:
        """Drop everything written so far (the target directory is left untouched)."""
        self._points.abort()
        if self.tmp.exists():
            why = remove_own_folder(self.tmp, STORE_FILES)
            if why:
                self.warn(f"left the unfinished dataset {self.tmp} in place: {why}")
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and not self._closed:
            self.abort()
        return False


def is_count(v) -> bool:
    return type(v) is int and v >= 0


def _manifest_field(manifest: dict, mpath: Path, key: str):
    """``manifest[key]`` for the fields opening needs, checked: a hand-edited value is one error
    naming the field, not a traceback where it is first used."""
    value = manifest.get(key)
    if key == "classes":
        ok = type(value) is list and all(type(c) is str for c in value)
        want = "a list of class names (strings only)"
    elif key == "n_drawings":
        ok, want = is_count(value), "a non-negative integer"
    else:  # arrays
        ok = type(value) is dict
        want = "an object with an entry per array"
        for name in ARRAYS if ok else ():
            entry = value.get(name)
            if not (type(entry) is dict and type(entry.get("shape")) is list
                    and all(is_count(d) for d in entry["shape"]) and type(entry.get("sha256")) is str):
                key, value = f"arrays.{name}", entry
                want = "an object with its shape (a list of sizes) and sha256 (a string)"
                ok = False
                break
    if not ok:
        shown = {list: "a list", dict: "an object"}.get(type(value)) or json.dumps(value)[:60]
        raise DataFormatError(mpath, None, f"field {key!r} must be {want}, got {shown}")
    return value


def _sha256_of(arr: np.ndarray) -> str:
    h = hashlib.sha256()
    flat = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
    for a in range(0, len(flat), _HASH_BLOCK):
        h.update(flat[a:a + _HASH_BLOCK])
    return h.hexdigest()


class PreparedDataset:
    """Read-only, memory-mapped view of a prepared directory.

    Opening checks that every file is there, that shapes and dtypes agree with each other and with
    the manifest, and the sha256 of the small arrays; any problem is a :class:`DataFormatError`
    naming the file. ``verify=True`` (or :meth:`verify`) also checks the points' checksum.
    Pickles by path (re-opened in DataLoader workers, not copied).
    """

    def __init__(self, root, *, verify: bool = False, _check_small: bool = True):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"prepared dataset not found: {self.root}")
        mpath = self.root / "manifest.json"
        if not mpath.exists():
            raise DataFormatError(mpath, None, "missing manifest.json (not a prepared dataset, or unfinished)")
        self.manifest = read_manifest(mpath, self.root)
        if not isinstance(self.manifest, dict) or self.manifest.get("format") != FORMAT_NAME:
            raise DataFormatError(mpath, None, f"not a {FORMAT_NAME} manifest")
        if self.manifest.get("version") != FORMAT_VERSION:
            raise DataFormatError(mpath, None, f"format version {self.manifest.get('version')}, "
                                               f"this code reads {FORMAT_VERSION}")
        self.classes: list[str] = list(_manifest_field(self.manifest, mpath, "classes"))
        n = _manifest_field(self.manifest, mpath, "n_drawings")
        info = _manifest_field(self.manifest, mpath, "arrays")

        arrays = {}
        for name, (dtype, trailing) in ARRAYS.items():
            path = self.root / f"{name}.npy"
            a = load_plain_npy(path, self.root)
            if a.dtype != np.dtype(dtype) or a.shape[1:] != trailing:
                raise DataFormatError(path, None, f"dtype/shape {a.dtype}{a.shape}, expected {dtype} (*, {trailing})")
            want = info[name]["shape"]
            if list(a.shape) != want:
                raise DataFormatError(path, None, f"shape {a.shape} but the manifest says {tuple(want)}")
            arrays[name] = a
        self._points = arrays["points"]
        self.offsets: np.ndarray = arrays["offsets"]
        self.labels: np.ndarray = arrays["labels"]
        self.key_ids: np.ndarray = arrays["key_ids"]
        self.splits: np.ndarray = arrays["splits"]

        def bad(name, reason):
            return DataFormatError(self.root / f"{name}.npy", None, reason)

        for name in ("labels", "key_ids", "splits"):
            if len(arrays[name]) != n:
                raise bad(name, f"{len(arrays[name])} rows, expected n_drawings = {n}")
        if len(self.offsets) != n + 1:
            raise bad("offsets", f"{len(self.offsets)} entries, expected n_drawings + 1 = {n + 1}")
        if self.offsets[0] != 0 or self.offsets[-1] != len(self._points):
            raise bad("offsets", f"offsets span {self.offsets[0]}..{self.offsets[-1]}, "
                                 f"points.npy has {len(self._points)} rows")
        if _check_small:
            for name in CHEAP_TO_VERIFY:
                self._check_sha(name)
            if n and np.any(np.diff(self.offsets) < 1):
                raise bad("offsets", "not strictly increasing (an empty drawing)")
            if n and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
                raise bad("labels", f"labels outside 0..{len(self.classes) - 1}")
            if n and (self.splits.min() < 0 or self.splits.max() > 2):
                raise bad("splits", "split codes outside 0..2")
        if verify:
            self.verify()

    def _check_sha(self, name: str) -> None:
        want = self.manifest["arrays"][name]["sha256"]
        got = _sha256_of(getattr(self, "_points" if name == "points" else name))
        if got != want:
            raise DataFormatError(self.root / f"{name}.npy", None,
                                  f"sha256 mismatch (file changed or corrupt): {got[:12]}… != {want[:12]}…")

    def verify(self) -> None:
        """Check every array's sha256 against the manifest (reads the whole points file)."""
        for name in ARRAYS:
            self._check_sha(name)

    def __reduce__(self):
        return (_reopen, (str(self.root),))

    # -- access -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"PreparedDataset({str(self.root)!r}, n={len(self)}, classes={len(self.classes)})"

    @property
    def all_points(self) -> np.ndarray:
        """The whole ``(P, 3)`` int16 points array (memory-mapped)."""
        return self._points

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def points(self, i: int) -> np.ndarray:
        """``(n, 3)`` int16 (x, y, pen_up) of drawing ``i`` (a read-only view of the map)."""
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"drawing {i} out of range (n = {len(self)})")
        i %= len(self)
        return self._points[self.offsets[i]:self.offsets[i + 1]]

    def drawing(self, i: int) -> Drawing:
        pts = np.asarray(self.points(i))
        return Drawing(key_id=int(self.key_ids[i]), word=self.classes[int(self.labels[i])],
                       strokes=points_to_strokes(pts))

    def split_mask(self, split: str | None) -> np.ndarray:
        if split in (None, "all"):
            return np.ones(len(self), dtype=bool)
        if split not in SPLIT_CODES:
            raise ValueError(f"split must be one of {SPLIT_NAMES} or 'all', got {split!r}")
        return np.asarray(self.splits) == SPLIT_CODES[split]

    def indices(self, split: str | None = None) -> np.ndarray:
        """Rows of a split (``train``/``val``/``test``; ``all``/None for every row), int64, sorted."""
        return np.flatnonzero(self.split_mask(split)).astype(np.int64)

    def class_counts(self, split: str | None = None) -> np.ndarray:
        """Drawings per class (int64, length ``len(classes)``) in a split or overall."""
        labels = np.asarray(self.labels)[self.split_mask(split)]
        return np.bincount(labels, minlength=len(self.classes)).astype(np.int64)


def _reopen(root: str) -> PreparedDataset:
    return PreparedDataset(root, _check_small=False)
