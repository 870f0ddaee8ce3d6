"""sketch-rnn's stroke-3 ``.npz`` files (splits ``train``/``valid``/``test``), read safely.

Each split is an object array of ``(n, 3)`` int16 rows ``(dx, dy, pen_lift)``, where pen_lift = 1
means the pen lifts after that point. Object arrays are stored as pickles, and unpickling runs
whatever the file names, so a downloaded file goes only through :class:`NumpyOnlyUnpickler`, which
admits numpy array reconstruction and nothing else. A file asking for anything more is refused with
a ``DataFormatError`` **whatever** ``on_error`` says: it is hostile, not merely damaged.

Deltas are summed into absolute points (the first row is taken as the offset from the origin) and,
since stroke-3 coordinates are on no fixed canvas, normalised like the dataset's simplification
(top-left aligned, scaled into 0–255) and rounded. One-point strokes are kept: sketch-rnn's own
conversion drops each drawing's first point, which leaves one-point first strokes in real files.
The files carry no ids: ``key_id`` is a deterministic 63-bit hash of (file name, split, index, the
drawing's stroke-3 values), so two copies of one file dedupe but two different files of one name
do not collide.

A pickle can ask numpy for an array of any size: array construction is admitted only for sizes the
member's bytes could hold (a 300-byte file asking for 80 TB is a bad member, not a MemoryError).

Memory: one split at a time (a pickle cannot be read in parts); drawings are then yielded one by one.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import zipfile
from pathlib import Path
from typing import Collection, Iterator

import numpy as np

from sketchembed.data.categories import CATEGORY_SET
from sketchembed.data.formats.registry import FileFormat, display_name, reader, register, word_problem
from sketchembed.data.simplify import normalize_to_canvas
from sketchembed.data.sketch import DataFormatError, Drawing, SkipReport, check_strokes

SPLITS = ("train", "valid", "test")

_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]  # the function numpy's array pickles call
_RECONSTRUCT_NAMES = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}


class ForbiddenPickle(pickle.UnpicklingError):
    pass


def _array_bytes(shape, dtype) -> int:
    """Bytes an array of ``shape`` and ``dtype`` would take (object elements: 8), before making it."""
    dims = shape if isinstance(shape, (tuple, list)) else (shape,)
    return math.prod(int(d) for d in dims) * max(np.dtype(dtype).itemsize, 1)


class _Unpickled(np.ndarray):
    """An array while it is unpickled: numpy allocates in ``__setstate__`` (the state names the
    shape), so the size is checked there first. ``limit`` is set per member by the unpickler."""

    limit = 0

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) in (4, 5):  # ([version,] shape, dtype, fortran, data)
            _check_size(state[-4], state[-3], self.limit)
        super().__setstate__(state)


def _check_size(shape, dtype, limit: int) -> None:
    size = _array_bytes(shape, dtype)
    if size > limit:
        raise pickle.UnpicklingError(f"pickle asks for an array of {size:,} bytes, more than the member "
                                     f"could hold ({limit:,})")


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays (numeric or object) and refuses every other global, and any array
    larger than ``limit`` bytes before numpy allocates it. Arrays come back as plain ndarrays."""

    def __init__(self, file, *, limit: int, **kw):
        super().__init__(file, **kw)
        self.limit = limit
        # one class per unpickler carries its limit into __setstate__; bound once, so identity holds
        self._array_type = type("_Unpickled", (_Unpickled,), {"limit": limit})
        self._ndarray = self._new_array
        self._reconstruct = self._reconstruct_array

    def _new_array(self, shape, dtype=float, *args, **kw):
        _check_size(shape, dtype, self.limit)
        return self._array_type(shape, dtype, *args, **kw)

    def _reconstruct_array(self, subtype, shape, dtype):
        if subtype is not self._ndarray:
            raise pickle.UnpicklingError(f"array reconstruction of {type(subtype).__name__}, not numpy.ndarray")
        _check_size(shape, dtype, self.limit)
        return _RECONSTRUCT(self._array_type, shape, dtype)

    def find_class(self, module, name):
        if (module, name) in _RECONSTRUCT_NAMES:
            return self._reconstruct
        if (module, name) == ("numpy", "ndarray"):
            return self._ndarray  # also the class argument of _reconstruct, which checks for it
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        raise ForbiddenPickle(f"refused to unpickle {module}.{name}: only numpy arrays are "
                              f"allowed in an .npz file")

    def persistent_load(self, pid):
        raise ForbiddenPickle("refused to unpickle a persistent id")

    def load(self):
        obj = super().load()
        if isinstance(obj, np.ndarray):
            obj = obj.view(np.ndarray)
            if obj.dtype.hasobject:
                for i, x in enumerate(obj.flat):
                    if isinstance(x, np.ndarray):
                        obj.flat[i] = x.view(np.ndarray)
        return obj


def load_npy_member(zf: zipfile.ZipFile, member: str):
    """One ``.npy`` member: numeric arrays without pickle, object arrays through the safe unpickler.

    A declared shape larger than the member's bytes could hold (numbers: their bytes; objects: at
    least one pickle byte each) is refused before anything is allocated.
    """
    size = zf.getinfo(member).file_size
    with zf.open(member) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        need = math.prod(shape) * (1 if dtype.hasobject else dtype.itemsize)
        if need > size:
            raise ValueError(f"header declares shape {tuple(shape)} of {dtype}, more than the member's "
                             f"{size:,} bytes could hold")
        if not dtype.hasobject:
            f.seek(0)
            return np.lib.format.read_array(f, allow_pickle=False)
        # object arrays: 8 bytes per element pointer, for elements of at least one pickle byte each
        arr = NumpyOnlyUnpickler(f, limit=8 * size, encoding="latin1").load()
    if not isinstance(arr, np.ndarray) or arr.shape != tuple(shape):
        raise pickle.UnpicklingError(f"pickle holds {type(arr).__name__}, not the declared array "
                                     f"of shape {tuple(shape)}")
    return arr


def synthetic_key_id(file_name: str, split: str, index: int, rows: np.ndarray) -> int:
    """Deterministic id for drawings that come without one (fits int64 and uint64). The drawing's
    own values are in it, so only a copy of the same drawing at the same place gets the same id."""
    h = hashlib.blake2b(f"{Path(file_name).name}/{split}/{index}/".encode(), digest_size=8)
    h.update(np.ascontiguousarray(rows, dtype="<f8").tobytes())
    return int.from_bytes(h.digest(), "little") & (2**63 - 1)


def stroke3_to_strokes(rows) -> tuple[list[np.ndarray] | None, str | None]:
    """``(n, 3)`` (dx, dy, pen_lift) → absolute strokes (float), or a reason it is unusable."""
    if not isinstance(rows, np.ndarray):
        return None, f"element is {type(rows).__name__}, not an array"
    if rows.ndim != 2 or rows.shape[1] != 3:
        return None, f"array of shape {rows.shape}, expected (n, 3) stroke-3"
    if rows.dtype.kind not in "iuf":
        return None, f"array of dtype {rows.dtype}, expected numbers"
    if len(rows) == 0:
        return None, "empty drawing (no points)"
    rows = rows.astype(np.float64)
    if not np.all(np.isfinite(rows)):
        return None, "non-finite values"
    pen = rows[:, 2]
    if not np.all((pen == 0) | (pen == 1)):
        return None, "pen_lift values other than 0 and 1"
    with np.errstate(over="ignore"):  # huge deltas sum to inf: check_strokes names it
        xy = np.cumsum(rows[:, :2], axis=0)
    ends = np.flatnonzero(pen == 1) + 1
    if len(ends) == 0 or ends[-1] != len(rows):
        ends = np.append(ends, len(rows))
    return np.split(xy, ends[:-1]), None


@reader
def read_npz(path: str | os.PathLike, *, report: SkipReport, word: str | None = None,
             words: Collection[str] | None = CATEGORY_SET, split: str | None = None) -> Iterator[Drawing]:
    """Stream the drawings of a sketch-rnn ``.npz``: ``split`` or all of train, valid, test."""
    name = display_name(path)
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    cls = word if word is not None else Path(name).name.rsplit(".", 1)[0]
    problem = word_problem(cls, None, words)
    if problem:
        report.bad(name, None, problem + " (class taken from the file name); file skipped")
        return
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        report.bad(name, None, f"not a readable .npz (zip) file: {e}")
        return
    with zf:
        members = {m.rsplit(".npy", 1)[0]: m for m in zf.namelist()}
        wanted = [split] if split is not None else [s for s in SPLITS if s in members]
        if not wanted:
            report.bad(name, None, f"no train/valid/test arrays (found {sorted(members)})")
        for sp in wanted:
            if sp not in members:
                report.bad(name, sp, f"no {sp!r} array (found {sorted(members)})")
                continue
            try:
                arr = load_npy_member(zf, members[sp])
            except ForbiddenPickle as e:
                raise DataFormatError(name, sp, str(e)) from None
            except (pickle.UnpicklingError, ValueError, EOFError, TypeError, AttributeError, OverflowError,
                    MemoryError, zipfile.BadZipFile, OSError) as e:
                report.bad(name, sp, f"unreadable array: {type(e).__name__}: {e}")
                continue
            if arr.ndim != 1:
                report.bad(name, sp, f"expected a 1-d array of drawings, got shape {arr.shape}")
                continue
            for i, rows in enumerate(arr):
                strokes, reason = stroke3_to_strokes(rows)
                if strokes is not None:
                    reason = check_strokes(strokes, coord_max=None, allow_single_point_strokes=True)
                if reason:
                    report.bad(name, f"{sp}/{i}", reason)
                    continue
                canvas = [np.rint(s).astype(np.int16) for s in normalize_to_canvas(strokes)]
                yield Drawing(key_id=synthetic_key_id(name, sp, i, rows), word=cls, strokes=canvas,
                              countrycode="", recognized=True, timestamp=None)


register(FileFormat("npz", (".npz",), read_npz, options=("split",), bucket={"npz": "sketchrnn/"}))
