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

A pickle can ask numpy for an array of any size: array construction is admitted only while all
arrays made so far fit in the member's bytes (a 300-byte file asking for 80 TB is a bad member, not a
MemoryError).

Every cost is bounded by an :class:`NpzBudget`, never by what the file claims: members are read as
zip streams through a meter that refuses the file once a member, or the members together, have
decompressed more bytes than the budget (a 1 MB file that inflates to 1 GiB is refused, naming the
file and member, before numpy allocates anything of that size); a member that claims more is refused
before it is opened. An object array that holds one drawing object many times (a pickle can repeat
a reference in 2 bytes: a 2 KB file would be 20,000 drawings) is refused, not read as copies; and a
file that yields more bad drawings than ``bad_records`` stops there with one error, instead of
counting millions of skips. These refusals are ``DataFormatError``s whatever ``on_error`` says.

Memory: one split at a time (a pickle cannot be read in parts); drawings are then yielded one by one.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import zipfile
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sketchembed.corpus.categories import CATEGORY_SET
from sketchembed.corpus.formats.registry import FileFormat, display_name, reader, register, word_problem
from sketchembed.corpus.simplify import normalize_to_canvas
from sketchembed.corpus.sketch import DataFormatError, Drawing, SkipReport, check_strokes
from sketchembed.messages import short_list

SPLITS = ("train", "valid", "test")
#: Bytes one element of an object array takes in its pickle at the least (a distinct array needs
#: far more): a header declaring more elements than this allows is a bad member before unpickling,
#: and the array's pointers (8 bytes each) never outgrow the member.
_MIN_ELEMENT_BYTES = 8
#: Compression numpy writes (``np.savez``: stored, ``savez_compressed``: deflate). Others are refused
#: unread: zipfile inflates a bzip2/lzma chunk whole, before any byte count could stop it.
_COMPRESSIONS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}


@dataclass(frozen=True)
class NpzBudget:
    """What reading one ``.npz`` file may cost. The defaults hold the real files with room to spare
    (sketch-rnn's are tens of MB per class: 70,000 + 2,500 + 2,500 drawings of a few hundred bytes):
    ``member_bytes`` decompressed per member, ``file_bytes`` for the members read together,
    ``bad_records`` bad drawings before the file is given up."""

    member_bytes: int = 512 * 2**20
    file_bytes: int = 2**30
    bad_records: int = 10_000


#: The budget ``read_npz`` applies unless given another (``budget=``).
NPZ_BUDGET = NpzBudget()

_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]  # the function numpy's array pickles call
_RECONSTRUCT_NAMES = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}


class ForbiddenPickle(pickle.UnpicklingError):
    pass


def _array_bytes(shape, dtype) -> int:
    """Bytes an array of ``shape`` and ``dtype`` would take (object elements: 8), before making it."""
    dims = shape if isinstance(shape, (tuple, list)) else (shape,)
    return math.prod(int(d) for d in dims) * max(np.dtype(dtype).itemsize, 1)


class _Allowance:
    """The bytes the arrays of one member may take together: every array the pickle asks for is
    counted before numpy allocates it, so arrays that share one byte string still add up."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0

    def take(self, shape, dtype) -> None:
        size = _array_bytes(shape, dtype)
        if self.used + size > self.limit:
            raise pickle.UnpicklingError(f"pickle asks for an array of {size:,} bytes, more than the member "
                                         f"could hold ({self.limit:,} bytes in all, {self.used:,} taken)")
        self.used += size


class _Unpickled(np.ndarray):
    """An array while it is unpickled: numpy allocates in ``__setstate__`` (the state names the
    shape), so the size is taken from the allowance there first (set per unpickler)."""

    allowance: _Allowance

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) in (4, 5):  # ([version,] shape, dtype, fortran, data)
            self.allowance.take(state[-4], state[-3])
        super().__setstate__(state)


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays (numeric or object) and refuses every other global, and any array
    that would take the arrays made so far beyond ``limit`` bytes before numpy allocates it.
    Arrays come back as plain ndarrays."""

    def __init__(self, file, *, limit: int, **kw):
        super().__init__(file, **kw)
        self.allowance = _Allowance(limit)
        # one class per unpickler carries its allowance into __setstate__; bound once, so identity holds
        self._array_type = type("_Unpickled", (_Unpickled,), {"allowance": self.allowance})
        self._ndarray = self._new_array
        self._reconstruct = self._reconstruct_array

    def _new_array(self, shape, dtype=float, *args, **kw):
        self.allowance.take(shape, dtype)
        return self._array_type(shape, dtype, *args, **kw)

    def _reconstruct_array(self, subtype, shape, dtype):
        if subtype is not self._ndarray:
            raise pickle.UnpicklingError(f"array reconstruction of {type(subtype).__name__}, not numpy.ndarray")
        self.allowance.take(shape, dtype)
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
                first: dict[int, int] = {}
                for i, x in enumerate(obj.flat):
                    if isinstance(x, np.ndarray) and first.setdefault(id(x), i) != i:
                        raise ForbiddenPickle(f"element {i} is element {first[id(x)]} again (a pickle that "
                                              f"repeats one drawing by reference); refused")
                for i, x in enumerate(obj.flat):
                    if isinstance(x, np.ndarray):
                        obj.flat[i] = x.view(np.ndarray)
        return obj


class _Meter:
    """Reads one member as a zip stream, counting the bytes it inflates against the budget of the
    member and of the whole file (``file_used``: what the members before it inflated to). Never
    asks the stream for more than one byte beyond what is left, so passing the budget costs at
    most that byte."""

    def __init__(self, name: str, split: str, member: str, budget: NpzBudget, file_used: int):
        self.stream = None  # the open member, set by load_npy_member
        self.name, self.split, self.member = name, split, member
        self.budget, self.used = budget, 0
        self.left = min(budget.member_bytes, budget.file_bytes - file_used)

    def _count(self, n: int) -> None:
        self.used += n
        if self.used > self.left:
            raise DataFormatError(self.name, self.split, f"member {self.member} inflates past the budget "
                                  f"({self.budget.member_bytes:,} bytes per member, {self.budget.file_bytes:,} "
                                  f"per file: NpzBudget); refused")

    def read(self, n: int = -1) -> bytes:
        n = self.left - self.used + 1 if n is None or n < 0 else min(n, self.left - self.used + 1)
        data = self.stream.read(n)
        self._count(len(data))
        return data

    def readline(self, size: int = -1) -> bytes:
        room = self.left - self.used + 1
        data = self.stream.readline(room if size is None or size < 0 else min(size, room))
        self._count(len(data))
        return data

    def readinto(self, b) -> int:
        view = memoryview(b).cast("B")
        n = self.stream.readinto(view[:self.left - self.used + 1])
        self._count(n)
        return n


def load_npy_member(zf: zipfile.ZipFile, member: str, meter: _Meter) -> np.ndarray:
    """One split's ``.npy`` member, read through ``meter``: a 1-d object array of drawings, unpickled
    by the safe unpickler. Anything else is a bad member, refused before its data is read: a numeric
    array (no drawings), a declared shape larger than the member's bytes could hold, a compression
    numpy does not write, bytes after the array. A member over the budget is a ``DataFormatError``
    (:class:`NpzBudget`); a pickle naming anything but arrays, or one drawing object many times, a
    :class:`ForbiddenPickle`."""
    info = zf.getinfo(member)
    size = info.file_size
    if info.compress_type not in _COMPRESSIONS:
        raise ValueError(f"compression method {info.compress_type} (numpy writes stored or deflate members)")
    if size > meter.budget.member_bytes:
        raise DataFormatError(meter.name, meter.split, f"member {member} claims {size:,} bytes, more than the "
                                                       f"{meter.budget.member_bytes:,} of the budget of one "
                                                       f"member (NpzBudget.member_bytes); refused")
    with zf.open(member) as meter.stream:
        version = np.lib.format.read_magic(meter)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(meter)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(meter)
        if not dtype.hasobject or len(shape) != 1:
            raise ValueError(f"a{' numeric' if not dtype.hasobject else 'n object'} array of shape {tuple(shape)} "
                             f"({dtype}), expected a 1-d object array of (n, 3) stroke-3 drawings")
        if shape[0] * _MIN_ELEMENT_BYTES > size:
            raise ValueError(f"header declares shape {tuple(shape)} of {dtype}, more than the member's "
                             f"{size:,} bytes could hold ({_MIN_ELEMENT_BYTES} or more each: distinct "
                             f"drawings, not references to one)")
        arr = NumpyOnlyUnpickler(meter, limit=size, encoding="latin1").load()
        if meter.read(1):
            raise ValueError("bytes after the array (not what np.save writes)")
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
             words: Collection[str] | None = CATEGORY_SET, split: str | None = None,
             budget: NpzBudget = NPZ_BUDGET) -> Iterator[Drawing]:
    """Stream the drawings of a sketch-rnn ``.npz``: ``split`` or all of train, valid, test, within
    ``budget`` (:class:`NpzBudget`)."""
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
        found = short_list(sorted(members), 6)
        wanted = [split] if split is not None else [s for s in SPLITS if s in members]
        if not wanted:
            report.bad(name, None, f"no train/valid/test arrays (found {found})")
        inflated = bad = 0
        for sp in wanted:
            if sp not in members:
                report.bad(name, sp, f"no {sp!r} array (found {found})")
                continue
            meter = _Meter(name, sp, members[sp], budget, inflated)
            try:
                arr = load_npy_member(zf, members[sp], meter)
            except ForbiddenPickle as e:
                raise DataFormatError(name, sp, str(e)) from None
            except (pickle.UnpicklingError, ValueError, EOFError, TypeError, AttributeError, OverflowError,
                    MemoryError, zipfile.BadZipFile, OSError) as e:
                if isinstance(e, DataFormatError):
                    raise
                report.bad(name, sp, f"unreadable array: {type(e).__name__}: {e}")
                continue
            finally:
                inflated += meter.used
            for i, rows in enumerate(arr):
                strokes, reason = stroke3_to_strokes(rows)
                if strokes is not None:
                    reason = check_strokes(strokes, coord_max=None, allow_single_point_strokes=True)
                if reason:
                    report.bad(name, f"{sp}/{i}", reason)
                    bad += 1
                    if bad > budget.bad_records:
                        raise DataFormatError(name, f"{sp}/{i}", f"more than {budget.bad_records:,} bad drawings, "
                                              f"the budget of one file (NpzBudget.bad_records): not a sketch-rnn "
                                              f"file; stopped reading it")
                    continue
                canvas = [np.rint(s).astype(np.int16) for s in normalize_to_canvas(strokes)]
                yield Drawing(key_id=synthetic_key_id(name, sp, i, rows), word=cls, strokes=canvas,
                              countrycode="", recognized=True, timestamp=None)


register(FileFormat("npz", (".npz",), read_npz, options=("split", "budget"), bucket={"npz": "sketchrnn/"}))
