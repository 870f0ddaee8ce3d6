"""Format readers on real drawings, on corrupted copies of them, and on files too big to hold."""

from __future__ import annotations

import builtins
import importlib
import io
import json
import os
import pickle
import struct
import sys
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

from sketchembed.cli import main
from sketchembed.commands.suggest import read_sketch
from sketchembed.corpus.formats import (
    FORMATS,
    FileFormat,
    bucket_kinds,
    kinds,
    read_drawings,
    read_ndjson,
    register,
    suffixes,
    write_binary,
)
from sketchembed.corpus.formats.binary import read_binary, timestamp_seconds
from sketchembed.corpus.formats.ndjson import decode_line, read_ndjson_blocks
from sketchembed.corpus.formats.npz import NPZ_BUDGET, NpzBudget, read_npz, synthetic_key_id
from sketchembed.corpus.prepare import prepare
from sketchembed.corpus.simplify import normalize_to_canvas
from sketchembed.corpus.sketch import DataFormatError, Drawing, SkipReport


def _lines(path, n=None):
    with open(path, "rb") as f:
        lines = [ln for ln in f.read().splitlines() if ln.strip()]
    return lines[:n] if n else lines


# --- real ndjson -----------------------------------------------------------------------------------

def test_simplified_ndjson_real_file(shared_quickdraw):
    path = shared_quickdraw / "simplified" / "apple.ndjson"
    rep = SkipReport()
    ds = list(read_drawings(path, report=rep, word="apple"))
    lines = _lines(path)
    assert rep.count == 0 and len(ds) == len(lines)
    first = json.loads(lines[0])
    d = ds[0]
    assert d.key_id == int(first["key_id"]) and isinstance(d.key_id, int)
    assert (d.word, d.countrycode, d.recognized, d.timestamp) == (
        "apple", first["countrycode"], first["recognized"], first["timestamp"])
    assert [s.T.tolist() for s in d.strokes] == first["drawing"]
    for d in ds:
        for s in d.strokes:
            assert s.ndim == 2 and s.shape[1] == 2 and s.dtype.kind == "i" and len(s) >= 2
            assert s.min() >= 0 and s.max() <= 255


def test_raw_ndjson_real_file_keeps_time_and_dots(shared_quickdraw):
    path = shared_quickdraw / "raw" / "apple.ndjson"
    rep = SkipReport()
    ds = list(read_drawings(path, report=rep))
    lines = _lines(path)
    assert rep.count == 0 and len(ds) == len(lines)
    first = json.loads(lines[0])
    assert [s.T.tolist() for s in ds[0].strokes] == first["drawing"]
    assert all(s.shape[1] == 3 for d in ds for s in d.strokes)
    # real raw data hold one-point strokes (dots): valid, returned as they are
    assert ds[0].strokes[0].tolist() == [[675.0, 158.0, 0.0]]
    t = np.concatenate([s[:, 2] for s in ds[0].strokes])
    assert np.all(np.diff(t) >= 0)


@pytest.mark.parametrize("name", ["The Eiffel Tower", "bridge", "zigzag", "hurricane", "octopus"])
def test_real_raw_and_simplified_files_read_without_skips(shared_quickdraw, name):
    # bridge / The Eiffel Tower hold raw drawings with negative and fractional coordinates: valid
    for folder in ("raw", "simplified"):
        rep = SkipReport(on_error="raise")
        n = sum(1 for _ in read_drawings(shared_quickdraw / folder / f"{name}.ndjson", report=rep,
                                         word=name))
        assert n == len(_lines(shared_quickdraw / folder / f"{name}.ndjson"))


@pytest.mark.slow
def test_every_shared_file_reads_without_skips(shared_quickdraw):
    """Also the source of the raw bounds' figures in docs/ARCHITECTURE.md and the README: the real raw
    drawings (9,513) span −1,013…2,755 and each spans at least 6.4, far inside ±100,000 and ≥ 1."""
    lo = hi = 0.0
    extent = np.inf
    n_raw = 0
    for folder in ("raw", "simplified"):
        for path in sorted((shared_quickdraw / folder).glob("*.ndjson")):
            rep = SkipReport()
            n = 0
            for d in read_drawings(path, report=rep, word=path.stem):
                n += 1
                if folder == "raw":
                    n_raw += 1
                    xy = np.concatenate([s[:, :2] for s in d.strokes])
                    lo, hi = min(lo, xy.min()), max(hi, xy.max())
                    extent = min(extent, (xy.max(0) - xy.min(0)).max())
            assert n > 0 and rep.count == 0, rep.summary()
    assert n_raw == 9513 and (lo, hi) == (-1013, 2755) and round(extent, 1) == 6.4


@pytest.mark.parametrize("kind", ["simplified", "raw"])
def test_byte_order_mark_at_the_start_is_accepted(shared_quickdraw, tmp_path, kind):
    """Editors on Windows save UTF-8 with a BOM: the first drawing is read, by both readers."""
    lines = _lines(shared_quickdraw / kind / "apple.ndjson", 5)
    path = tmp_path / "apple.ndjson"
    path.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(lines) + b"\r\n")
    want = [int(json.loads(ln)["key_id"]) for ln in lines]
    rep = SkipReport()
    assert [d.key_id for d in read_ndjson(path, report=rep)] == want and rep.count == 0
    blocks = [k for item in read_ndjson_blocks(path, report=rep)
              for k in ([item.key_id] if isinstance(item, Drawing) else item.key_ids)]
    assert blocks == want and rep.count == 0
    assert FORMATS["ndjson"].kind_of(path) == kind


def test_raw_and_simplified_detected_per_line(shared_quickdraw, tmp_path):
    mixed = tmp_path / "apple.ndjson"
    mixed.write_bytes(b"\n".join([_lines(shared_quickdraw / "raw" / "apple.ndjson", 1)[0],
                                  _lines(shared_quickdraw / "simplified" / "apple.ndjson", 1)[0]]))
    raw, simp = list(read_drawings(mixed, on_error="raise"))
    assert raw.strokes[0].shape[1] == 3 and simp.strokes[0].shape[1] == 2
    assert raw.key_id == simp.key_id


# --- corrupted ndjson ------------------------------------------------------------------------------

NDJSON_CORRUPTIONS = {
    "broken JSON": (lambda line: line[: len(line) // 2], "broken JSON"),
    "deeply nested JSON": (lambda line: b"[" * 100_000, "nested too deeply"),
    "not UTF-8": (lambda line: line.replace(b"apple", b"app\xffle"), "not UTF-8"),
    "x/y length mismatch": (lambda o: _with(o, lambda d: d[0][0].append(3)), "length mismatch"),
    "empty drawing": (lambda o: _with(o, lambda d: d.clear()), "empty drawing"),
    "one-point stroke": (lambda o: _with(o, lambda d: d.append([[5], [6]])), "single point"),
    "coordinate over 255": (lambda o: _with(o, lambda d: d[0][1].__setitem__(0, 300)), "0–255"),
    "negative coordinate": (lambda o: _with(o, lambda d: d[0][0].__setitem__(0, -1)), "0–255"),
    "fractional coordinate": (lambda o: _with(o, lambda d: d[0][0].__setitem__(0, 1.5)),
                              "non-integer"),
    "boolean coordinate": (lambda o: _with(o, lambda d: d[0][0].__setitem__(0, True)), "true/false"),  # not 1
    "unknown class": (lambda o: {**o, "word": "unicorn"}, "unknown class"),
    "bad key_id": (lambda o: {**o, "key_id": "abc"}, "key_id"),
    "infinite key_id": (lambda o: {**o, "key_id": float("inf")}, "key_id"),
    "key_id true": (lambda o: {**o, "key_id": True}, "key_id True"),  # not key 1
    "fractional key_id": (lambda o: {**o, "key_id": 1.5}, "key_id 1.5"),
    "key_id of 5,000 digits": (lambda o: {**o, "key_id": "9" * 5000}, "key_id"),  # int() limit
    "negative key_id": (lambda o: {**o, "key_id": "-5"}, "key_id"),
    "all points in one place": (lambda o: {**o, "drawing": [[[7, 7], [9, 9]]]}, "all points in one place"),
}


def _with(obj, edit):
    obj = json.loads(json.dumps(obj))
    edit(obj["drawing"])
    return obj


def _write_corrupted(src_lines, tmp_path, name):
    lines = list(src_lines)
    fn, _ = NDJSON_CORRUPTIONS[name]
    raw_edit = name in ("broken JSON", "deeply nested JSON", "not UTF-8")
    lines[1] = fn(lines[1]) if raw_edit else json.dumps(fn(json.loads(lines[1]))).encode()
    path = tmp_path / "apple.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.mark.parametrize("name", list(NDJSON_CORRUPTIONS))
def test_corrupted_ndjson_is_counted_or_raised(shared_quickdraw, tmp_path, name):
    src = _lines(shared_quickdraw / "simplified" / "apple.ndjson", 3)
    path = _write_corrupted(src, tmp_path, name)
    words = NDJSON_CORRUPTIONS[name][1]
    rep = SkipReport()
    ds = list(read_drawings(path, report=rep))
    assert [d.key_id for d in ds] == [int(json.loads(src[0])["key_id"]), int(json.loads(src[2])["key_id"])]
    assert rep.count == 1
    file, pos, reason = rep.items[0]
    assert (file, pos) == (str(path), "line 2") and words in reason
    gen = read_drawings(path, on_error="raise")
    assert next(gen).key_id == ds[0].key_id  # the good first line comes out before the error
    with pytest.raises(DataFormatError) as e:
        next(gen)
    assert str(path) in str(e.value) and "line 2" in str(e.value) and words in str(e.value)


@pytest.mark.parametrize("edit, words", [
    (lambda d: d[0][2].pop(), "length mismatch"),
    (lambda d: d[0][0].__setitem__(0, float("nan")), "non-finite"),
    (lambda d: d.clear(), "empty drawing"),
    (lambda d: d[0][0].__setitem__(0, "12"), "non-numeric"),
    (lambda d: d[0][0].__setitem__(0, 1e9), "outside ±100,000"),
    (lambda d: d[0][1].__setitem__(0, -1e9), "outside ±100,000"),
    (lambda d: d[0][0].__setitem__(0, False), "true/false"),
    (lambda d: d[0][2].__setitem__(0, True), "true/false"),
    (lambda d: d.__setitem__(slice(None), [[[3.5, 3.5, 3.5], [2, 2, 2], [0, 10, 20]]]), "all points in one place"),
])
def test_corrupted_raw_ndjson(shared_quickdraw, tmp_path, edit, words):
    src = _lines(shared_quickdraw / "raw" / "apple.ndjson", 2)
    path = tmp_path / "apple.ndjson"
    path.write_bytes(src[0] + b"\n" + json.dumps(_with(json.loads(src[1]), edit)).encode() + b"\n")
    rep = SkipReport()
    assert len(list(read_drawings(path, report=rep))) == 1
    assert rep.items[0][1] == "line 2" and words in rep.items[0][2]
    with pytest.raises(DataFormatError, match="line 2"):
        list(read_drawings(path, on_error="raise"))


def test_expected_word_mismatch_and_warning_without_report(shared_quickdraw, tmp_path):
    path = tmp_path / "pear.ndjson"
    path.write_bytes(b"\n".join(_lines(shared_quickdraw / "simplified" / "apple.ndjson", 2)))
    rep = SkipReport()
    assert list(read_drawings(path, report=rep, word="pear")) == []
    assert rep.count == 2 and "'pear' was expected" in rep.items[0][2]
    with pytest.warns(UserWarning, match="skipped 2 bad input"):  # no report given: never silent
        assert list(read_drawings(path, word="pear")) == []


def test_unknown_suffix_option_or_policy_is_refused(tmp_path):
    with pytest.raises(DataFormatError,
                       match=r"apple.csv: unknown format '\.csv'; expected one of \.ndjson, \.bin, \.npz"):
        read_drawings(tmp_path / "apple.csv")
    with pytest.raises(ValueError, match=r"split= applies to \.npz files only, not .*apple.ndjson"):
        read_drawings(tmp_path / "apple.ndjson", split="train")
    # one policy: the report's; an on_error= that contradicts it is an error, not a silent pick
    with pytest.raises(ValueError, match="on_error='skip' but the report passed has on_error='raise'"):
        list(read_drawings(tmp_path / "apple.ndjson", on_error="skip", report=SkipReport(on_error="raise")))
    with pytest.raises(ValueError, match="on_error must be 'skip' or 'raise'"):
        list(read_drawings(tmp_path / "apple.ndjson", on_error="ignore"))


# --- binary ----------------------------------------------------------------------------------------

def _real_simplified(root, names=("apple", "The Eiffel Tower", "zigzag")):
    return {n: list(read_drawings(root / "simplified" / f"{n}.ndjson", on_error="raise")) for n in names}


def test_binary_round_trip_is_exact(shared_quickdraw, tmp_path):
    for name, ds in _real_simplified(shared_quickdraw).items():
        path = tmp_path / f"{name}.bin"
        assert write_binary(path, ds) == len(ds)
        back = list(read_drawings(path, on_error="raise"))
        assert len(back) == len(ds)
        for a, b in zip(ds, back):
            assert (b.key_id, b.word, b.countrycode, b.recognized) == (a.key_id, name, a.countrycode,
                                                                        a.recognized)
            assert b.timestamp == timestamp_seconds(a.timestamp)
            assert len(a.strokes) == len(b.strokes)
            assert all(np.array_equal(x, y) for x, y in zip(a.strokes, b.strokes))
        again = io.BytesIO()
        write_binary(again, back)
        assert again.getvalue() == path.read_bytes()


def test_timestamp_conversion_matches_the_dataset():
    assert timestamp_seconds("2017-03-10 22:17:57.57466 UTC") == 1489184277
    assert timestamp_seconds(1489184277) == 1489184277


def _record(key_id, strokes, cc=b"US", recognized=1, ts=1489184277):
    out = [struct.pack("<Q2sBIH", key_id, cc, recognized, ts, len(strokes))]
    for s in strokes:
        s = np.asarray(s, dtype=np.uint8)
        out.append(struct.pack("<H", len(s)) + s[:, 0].tobytes() + s[:, 1].tobytes())
    return b"".join(out)


GOOD = [[0, 0], [10, 20], [255, 255]]


@pytest.mark.parametrize("bad, words", [
    (_record(2, []), "empty drawing"),
    (_record(2, [GOOD, [[5, 5]]]), "single point"),
    (_record(2, [GOOD], cc=b"\xff\xfe"), "not ASCII"),
    (_record(2, [GOOD], recognized=7), "recognized"),
])
def test_bad_binary_record_is_counted_and_reading_goes_on(tmp_path, bad, words):
    first = _record(1, [GOOD])
    path = tmp_path / "apple.bin"
    path.write_bytes(first + bad + _record(3, [GOOD, GOOD]))
    rep = SkipReport()
    assert [d.key_id for d in read_binary(path, report=rep)] == [1, 3]
    assert rep.items == [(str(path), f"byte {len(first)}", rep.items[0][2])] and words in rep.items[0][2]
    with pytest.raises(DataFormatError, match=f"apple.bin:byte {len(first)}"):
        list(read_binary(path, on_error="raise"))


def test_truncated_binary_record(shared_quickdraw, tmp_path):
    ds = _real_simplified(shared_quickdraw, ("apple",))["apple"][:5]
    path = tmp_path / "apple.bin"
    write_binary(path, ds)
    data = path.read_bytes()
    buf = io.BytesIO()
    write_binary(buf, ds[:4])
    last_start = len(buf.getvalue())
    for cut in (3, len(data) - last_start - 1, len(data) - last_start - 20):  # in the body / header
        path.write_bytes(data[: len(data) - cut])
        rep = SkipReport()
        assert [d.key_id for d in read_drawings(path, report=rep)] == [d.key_id for d in ds[:4]]
        assert rep.count == 1 and rep.items[0][:2] == (str(path), f"byte {last_start}")
        assert "truncated" in rep.items[0][2]
        with pytest.raises(DataFormatError, match=f"byte {last_start}: truncated"):
            list(read_drawings(path, on_error="raise"))


def test_binary_unknown_class_from_file_name(tmp_path):
    path = tmp_path / "unicorn.bin"
    path.write_bytes(_record(1, [GOOD]))
    rep = SkipReport()
    assert list(read_drawings(path, report=rep)) == []
    assert rep.items[0][:2] == (str(path), "byte 0") and "unknown class" in rep.items[0][2]
    assert [d.word for d in read_drawings(path, word="apple")] == ["apple"]


@pytest.mark.parametrize("strokes, words", [
    ([np.array([[0, 0], [256, 3]])], "outside"),
    ([np.array([[0.5, 0], [3, 3]])], "non-integer"),
    ([np.array([[1, 1]])], "single point"),
])
def test_binary_writer_refuses_what_it_cannot_hold(tmp_path, strokes, words):
    path = tmp_path / "apple.bin"
    with pytest.raises(DataFormatError, match=words) as e:
        write_binary(path, [Drawing(key_id=1, word="apple", strokes=strokes, countrycode="US")])
    assert str(path) in str(e.value)


# --- npz -------------------------------------------------------------------------------------------

def _stroke3(d: Drawing) -> np.ndarray:
    pts = d.points().astype(np.int16)
    out = pts.copy()
    out[1:, :2] = np.diff(pts[:, :2], axis=0)
    return out


def _object_array(items):
    arr = np.empty(len(items), dtype=object)
    for i, x in enumerate(items):
        arr[i] = x
    return arr


def _npz(path, ds, sizes=(6, 3, 3)):
    a, b, _ = np.cumsum(sizes)
    rows = [_stroke3(d) for d in ds[: sum(sizes)]]
    np.savez(path, train=_object_array(rows[:a]), valid=_object_array(rows[a:b]),
             test=_object_array(rows[b:]))


def test_npz_reads_stroke3_splits(shared_quickdraw, tmp_path):
    ds = _real_simplified(shared_quickdraw, ("apple",))["apple"][:12]
    path = tmp_path / "apple.npz"
    _npz(path, ds)
    got = list(read_drawings(path, on_error="raise"))
    assert len(got) == 12 and {d.word for d in got} == {"apple"}
    for src, d in zip(ds, got):
        want = [np.rint(s).astype(np.int16) for s in normalize_to_canvas(src.strokes)]
        assert len(d.strokes) == len(want) and all(np.array_equal(x, y) for x, y in zip(d.strokes, want))
        pts = np.concatenate(d.strokes)
        assert pts.min() == 0 and pts.max() == 255
    valid = list(read_drawings(path, split="valid"))
    assert [d.key_id for d in valid] == [d.key_id for d in got[6:9]]
    assert got[6].key_id == synthetic_key_id("apple.npz", "valid", 0, _stroke3(ds[6]))
    assert len({d.key_id for d in got}) == 12 and all(0 <= d.key_id < 2**63 for d in got)
    assert [d.key_id for d in read_npz(path)] == [d.key_id for d in got]  # deterministic


def test_npz_scaled_coordinates_are_normalised(tmp_path):
    rows = np.array([[1000, 500, 0], [2000, 0, 1], [-3000, 1000, 0], [0, 1000, 1]], dtype=np.int16)
    path = tmp_path / "cat.npz"
    np.savez(path, train=_object_array([rows]))
    (d,) = read_npz(path, on_error="raise")
    # absolute (1000, 500) (3000, 500) | (0, 1500) (0, 2500): x spans 3000 → scale 255 / 3000
    assert [s.tolist() for s in d.strokes] == [[[85, 0], [255, 0]], [[0, 85], [0, 170]]]


@pytest.mark.parametrize("bad, words", [
    (np.array([[1, 2, 0], [3, 4, 2]], dtype=np.int16), "pen_lift"),
    (np.array([[1, 2], [3, 4]], dtype=np.int16), "shape"),
    (np.zeros((0, 3), dtype=np.int16), "empty"),
    (np.array([[1.0, np.nan, 0], [3, 4, 1]]), "non-finite"),
    (np.array([[5, 5, 1]], dtype=np.int16), "single point"),
    (np.array([[1e300, 0, 0], [1, 1, 1]]), "outside ±100,000"),             # huge but finite
    (np.array([[1e308, 0, 0], [1e308, 0, 1]]), "non-finite"),              # the sum overflows to inf
    (np.array([[5, 5, 0], [0, 0, 0], [0, 0, 1]], dtype=np.int16), "all points in one place"),
])
def test_bad_npz_drawing_is_counted(tmp_path, bad, words):
    good = np.array([[10, 10, 0], [5, 5, 1]], dtype=np.int16)
    path = tmp_path / "cat.npz"
    np.savez(path, train=_object_array([good, bad, good.copy()]), valid=_object_array([good]))
    rep = SkipReport()
    assert len(list(read_drawings(path, report=rep))) == 3
    assert rep.count == 1 and rep.items[0][:2] == (str(path), "train/1") and words in rep.items[0][2]
    with pytest.raises(DataFormatError, match="train/1"):
        list(read_drawings(path, on_error="raise"))


class _Evil:
    def __init__(self, call, arg):
        self.call, self.arg = call, arg

    def __reduce__(self):
        return self.call, (self.arg,)


def _evil_npz(path, payload):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|O", "fortran_order": False, "shape": (1,)})
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("train.npy", header.getvalue() + pickle.dumps(payload, protocol=3))  # as np.save


@pytest.mark.parametrize("how", ["os.system", "builtins.eval"])
@pytest.mark.parametrize("on_error", ["skip", "raise"])
def test_malicious_npz_is_refused_and_nothing_runs(tmp_path, how, on_error):
    marker = tmp_path / "pwned"
    if how == "os.system":
        payload = _object_array([_Evil(os.system, f"touch '{marker}'")])
    else:
        payload = _object_array([_Evil(builtins.eval, f"open({str(marker)!r}, 'w').close()")])
    path = tmp_path / "apple.npz"
    _evil_npz(path, payload)
    with pytest.raises(DataFormatError) as e:
        list(read_drawings(path, on_error=on_error))
    assert str(path) in str(e.value) and "refused" in str(e.value)
    assert how.split(".")[1] in str(e.value)  # refused at the hostile global itself
    assert not marker.exists()


def test_npz_key_ids_depend_on_the_drawings(tmp_path):
    """Two different files of one name (two folders) do not share ids; a copy of a file does."""
    a = np.array([[10, 10, 0], [5, 5, 1]], dtype=np.int16)
    b = np.array([[20, 0, 0], [0, 20, 1]], dtype=np.int16)
    for folder, rows in (("a", [a]), ("b", [b]), ("c", [a])):
        (tmp_path / folder).mkdir()
        np.savez(tmp_path / folder / "pear.npz", train=_object_array(rows))
    keys = {f: [d.key_id for d in read_npz(tmp_path / f / "pear.npz")] for f in "abc"}
    assert keys["a"] != keys["b"] and keys["a"] == keys["c"]


def _npz_member(path, body: bytes, descr="|O", shape=(1,)):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": descr, "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("train.npy", header.getvalue() + body)
        z.writestr("valid.npy", _saved(_object_array([np.array([[10, 10, 0], [5, 5, 1]], dtype=np.int16)])))


def _saved(arr) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=True)
    return buf.getvalue()


class _Call:
    """Pickles as ``func(*args)`` (what a crafted file can ask of the globals it may name)."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


_HUGE = 10**13


@pytest.mark.parametrize("case", ["ndarray call", "reconstruct", "setstate", "numeric header", "object header"])
def test_npz_asking_for_a_huge_array_is_a_bad_member(tmp_path, case):
    """A few hundred bytes must not make numpy allocate terabytes: refused before, one counted line."""
    path = tmp_path / "apple.npz"
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]
    if case == "ndarray call":  # the QA file: numpy.ndarray((10**13,))
        _npz_member(path, pickle.dumps(_Call(np.ndarray, (_HUGE,)), protocol=3))
    elif case == "reconstruct":
        _npz_member(path, pickle.dumps(_Call(reconstruct, np.ndarray, (_HUGE,), b"b"), protocol=3))
    elif case == "setstate":  # a well-formed array pickle whose state claims 10**13 elements
        shape = b"\x8a\x06" + _HUGE.to_bytes(6, "little") + b"\x85"  # LONG1 10**13, TUPLE1
        body = pickle.dumps(_object_array([1]), protocol=3).replace(b"K\x01\x85", shape)  # was (1,)
        assert shape in body
        _npz_member(path, body)
    elif case == "numeric header":
        _npz_member(path, b"\0" * 16, descr="<f8", shape=(_HUGE,))
    else:
        _npz_member(path, pickle.dumps(_object_array([1]), protocol=3), shape=(_HUGE,))
    rep = SkipReport()
    assert len(list(read_npz(path, report=rep))) == 1  # the valid split still reads
    want = "numeric array" if case == "numeric header" else "could hold"  # numbers are no drawings: unread
    assert rep.count == 1 and rep.items[0][1] == "train" and want in rep.items[0][2]


# --- npz budgets: what a file costs is bounded by NpzBudget, not by what it claims -----------------

_GOOD = np.array([[10, 10, 0], [5, 5, 1]], dtype=np.int16)


def _claiming(path, claim: int, header_shape=(1 << 29,), descr="<i2"):
    """An npz whose train member says (zip directory and .npy header) it holds ``claim`` bytes, in a few
    hundred bytes of file: a 1 GiB claim, as a zip bomb makes, without the minutes to compress one."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": descr, "fortran_order": False, "shape": header_shape})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("train.npy", header.getvalue() + bytes(4096))
    data = bytearray(path.read_bytes())
    for sig, at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # local header, central directory
        i = data.index(sig)
        data[i + at:i + at + 4] = struct.pack("<I", claim)
    path.write_bytes(bytes(data))


def _traced_peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize("on_error", ["skip", "raise"])
def test_npz_member_claiming_a_gigabyte_is_refused_before_anything_is_allocated(tmp_path, on_error):
    path = tmp_path / "apple.npz"
    _claiming(path, 1 << 30)
    assert path.stat().st_size < 1000

    def read():
        with pytest.raises(DataFormatError) as e:
            list(read_npz(path, on_error=on_error))
        assert str(e.value).startswith(f"{path}:train: member train.npy claims 1,073,741,824 bytes")
        assert "NpzBudget.member_bytes" in str(e.value)
    assert _traced_peak(read) < 2 << 20  # the claim, never numpy, decides


def test_npz_members_inflating_past_the_file_budget_are_refused_while_read(tmp_path):
    """Bytes are counted as they inflate, over the members together: a file of 2 × 32 KB members
    (1 KB compressed) passes a 50 KB member budget, not a 50 KB file budget."""
    rows = [np.tile(_GOOD, (i % 7 + 1, 1)) for i in range(400)]
    path = tmp_path / "apple.npz"
    np.savez_compressed(path, train=_object_array(rows), valid=_object_array(rows))
    sizes = [i.file_size for i in zipfile.ZipFile(path).infolist()]
    assert all(25_000 < n < 50_000 for n in sizes) and path.stat().st_size < 2000, sizes
    roomy = NpzBudget(member_bytes=50_000, file_bytes=sum(sizes))
    assert len(list(read_npz(path, budget=roomy, on_error="raise"))) == 800
    got = []
    with pytest.raises(DataFormatError) as e:
        for d in read_npz(path, budget=NpzBudget(member_bytes=50_000, file_bytes=50_000)):
            got.append(d)
    assert len(got) == 400  # train was within the budget; valid is refused as it passes it
    assert str(e.value).startswith(f"{path}:valid: member valid.npy inflates past the budget")
    assert "\n" not in str(e.value)


def test_npz_repeating_one_drawing_by_reference_is_refused(tmp_path):
    """A pickle names one drawing 20,000 times in 2-5 bytes each: 20,000 drawings from a 2 KB file.
    Refused, never read as copies: by the header (8 bytes or more per element) or, when the member is
    padded to pass it, because an element is an earlier one again."""
    path = tmp_path / "apple.npz"
    np.savez_compressed(path, train=_object_array([_GOOD] * 20_000), valid=_object_array([_GOOD.copy()]))
    assert path.stat().st_size < 4000
    rep = SkipReport()
    assert len(list(read_npz(path, report=rep))) == 1  # valid's one drawing
    assert rep.count == 1 and rep.items[0][1] == "train" and "not references to one" in rep.items[0][2]

    body = pickle.dumps(_object_array([_GOOD] * 20_000), protocol=3)
    pad = bytes(200_000)  # an unused byte string (BINBYTES, POP) lifts the member above 8 bytes per element
    _npz_member(path, body[:2] + b"B" + struct.pack("<I", len(pad)) + pad + b"0" + body[2:], shape=(20_000,))
    for on_error in ("skip", "raise"):
        with pytest.raises(DataFormatError, match=rf"^{path}:train: element 1 is element 0 again \(a pickle "):
            list(read_npz(path, on_error=on_error))


def test_npz_of_numbers_is_one_bad_member_not_millions_of_skips(tmp_path):
    """20 M one-byte numbers compress to 20 KB: they are no drawings, refused unread as one bad member."""
    path = tmp_path / "apple.npz"
    np.savez_compressed(path, train=np.zeros(20_000_000, np.int8), valid=_object_array([_GOOD]))
    assert path.stat().st_size < 40_000
    rep = SkipReport()
    t0 = time.perf_counter()
    peak = _traced_peak(lambda: list(read_npz(path, report=rep)))
    assert rep.count == 1 and "numeric array of shape (20000000,)" in rep.items[0][2]
    assert peak < 2 << 20 and time.perf_counter() - t0 < 5


def test_npz_with_more_bad_drawings_than_the_budget_stops_there(tmp_path):
    path = tmp_path / "apple.npz"
    np.savez_compressed(path, train=_object_array([np.zeros(2, np.int16) + i for i in range(1000)]))
    rep = SkipReport()
    with pytest.raises(DataFormatError) as e:
        list(read_npz(path, report=rep, budget=NpzBudget(bad_records=100)))
    assert str(e.value).startswith(f"{path}:train/100: more than 100 bad drawings, the budget of one file")
    assert rep.count == 101 and NPZ_BUDGET.bad_records >= 10_000


@pytest.mark.parametrize("case", ["bzip2", "trailing bytes"])
def test_npz_member_numpy_would_not_write_is_a_bad_member_unread(tmp_path, case):
    path = tmp_path / "apple.npz"
    body = _saved(_object_array([_GOOD, _GOOD.copy()]))
    with zipfile.ZipFile(path, "w") as z:
        if case == "bzip2":  # zipfile inflates a bzip2 chunk whole: no byte count could stop a bomb
            z.writestr("train.npy", body, compress_type=zipfile.ZIP_BZIP2)
        else:
            z.writestr("train.npy", body + b"\0" * 64)
    rep = SkipReport()
    assert list(read_npz(path, report=rep)) == []
    assert rep.count == 1
    assert ("compression method 12" if case == "bzip2" else "bytes after the array") in rep.items[0][2]


def test_npz_over_the_budget_is_one_line_and_exit_2_in_prepare(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    _claiming(tmp_path / "in" / "apple.npz", 1 << 30)
    capsys.readouterr()
    assert main(["data", "prepare", "--input", str(tmp_path / "in"), "--out", str(tmp_path / "ds"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {tmp_path / 'in' / 'apple.npz'}:train: member train.npy")
    assert not (tmp_path / "ds").exists()


# --- streaming -------------------------------------------------------------------------------------

class _Endless(io.RawIOBase):
    """A file that never ends (``body`` repeated forever); counts the bytes handed out."""

    name = "endless"

    def __init__(self, body: bytes):
        self.body, self.served = body, 0

    def readable(self):
        return True

    def readinto(self, b):
        k = self.served % len(self.body)
        data = (self.body[k:] + self.body * (len(b) // len(self.body) + 1))[: len(b)]
        b[: len(data)] = data
        self.served += len(data)
        return len(data)


def test_ndjson_reader_streams(shared_quickdraw):
    path = shared_quickdraw / "raw" / "apple.ndjson"
    with open(path, "rb") as f:
        gen = read_ndjson(f)
        first = next(gen)
        assert f.tell() <= len(_lines(path, 1)[0]) + 2 * io.DEFAULT_BUFFER_SIZE < path.stat().st_size / 4
    assert first.key_id == int(json.loads(_lines(path, 1)[0])["key_id"])
    line = _lines(shared_quickdraw / "simplified" / "apple.ndjson", 1)[0] + b"\n"
    endless = _Endless(line)
    gen = read_ndjson(io.BufferedReader(endless))
    n = sum(1 for _, _ in zip(range(3000), gen))  # a file with no end is read lazily, line by line
    assert n == 3000 and endless.served < 3000 * len(line) + 4 * io.DEFAULT_BUFFER_SIZE


def test_binary_reader_streams(shared_quickdraw):
    ds = _real_simplified(shared_quickdraw, ("apple",))["apple"][:1]
    rec = io.BytesIO()
    write_binary(rec, ds)
    endless = _Endless(rec.getvalue())
    gen = read_binary(io.BufferedReader(endless), word="apple")
    n = sum(1 for _, _ in zip(range(3000), gen))
    assert n == 3000 and endless.served < 3000 * len(rec.getvalue()) + 4 * io.DEFAULT_BUFFER_SIZE


def test_reading_stops_at_the_bad_record_not_before(tmp_path, shared_quickdraw):
    # with on_error="raise", a good first line is served before the bad second line is even parsed
    path = tmp_path / "apple.ndjson"
    path.write_bytes(_lines(shared_quickdraw / "simplified" / "apple.ndjson", 1)[0] + b"\n{broken\n")
    gen = read_drawings(path, on_error="raise")
    assert isinstance(next(gen), Drawing)
    with pytest.raises(DataFormatError, match="line 2"):
        next(gen)


# --- hostile JSON everywhere it is parsed; class names outside Quick, Draw! ---------------------------

def test_decode_line_is_json_loads_but_never_raises_recursion():
    for text in (b'{"a": [1, 2.5, "x", null, true]}\n', b'  [1]  \r\n', "[]"):
        assert decode_line(text) == json.loads(text)
    for text in (b"", b"\n", b"{oops", b"[1] x", b"[" * 100_000, b"{\"a\":" * 100_000, b"\xff"):
        with pytest.raises(ValueError):
            decode_line(text)


def test_deeply_nested_line_in_suggest_sketch_file(shared_quickdraw, tmp_path):
    """`sketchembed suggest` reads its sketch through the same decoder: one named error, no RecursionError."""
    path = tmp_path / "apple.ndjson"
    path.write_bytes(b"[" * 100_000 + b"\n" + _lines(shared_quickdraw / "simplified" / "apple.ndjson", 1)[0])
    with pytest.raises(DataFormatError, match=r"apple.ndjson:line 1: broken JSON \(nested too deeply\)"):
        read_sketch(path, 1)


def test_any_class_name_when_asked(shared_quickdraw, tmp_path):
    line = json.loads(_lines(shared_quickdraw / "simplified" / "apple.ndjson", 1)[0])
    path = tmp_path / "wyvern.ndjson"
    path.write_text(json.dumps({**line, "word": "wyvern"}) + "\n" + json.dumps({**line, "word": ""}) + "\n")
    rep = SkipReport()
    assert list(read_drawings(path, report=rep)) == []
    assert rep.count == 2 and "unknown class 'wyvern'" in rep.items[0][2] and "from-files" in rep.items[0][2]
    rep = SkipReport()
    (d,) = read_drawings(path, report=rep, words=None)
    assert d.word == "wyvern" and rep.count == 1 and "empty class name" in rep.items[0][2]
    rep = SkipReport()
    assert list(read_drawings(path, report=rep, words={"griffin"})) == []
    assert "not among the 1 classes asked for" in rep.items[0][2]
    binpath = tmp_path / "wyvern.bin"
    write_binary(binpath, [d])
    assert [x.word for x in read_drawings(binpath, words=None)] == ["wyvern"]
    with pytest.warns(UserWarning, match="unknown class 'wyvern'"):
        assert list(read_drawings(binpath)) == []


@pytest.mark.parametrize("word, char", [("wyvern\x1b[31m", "U+001B"), ("wy\nvern", "U+000A"),
                                        ("wyv\u202eern", "U+202E (RIGHT-TO-LEFT OVERRIDE)")])
def test_class_names_must_be_plain_text(shared_quickdraw, tmp_path, word, char):
    """Class names are printed (tables, messages): an ANSI escape or a newline would forge the output."""
    line = json.loads(_lines(shared_quickdraw / "simplified" / "apple.ndjson", 1)[0])
    path = tmp_path / "wyvern.ndjson"
    path.write_text(json.dumps({**line, "word": word}) + "\n" + json.dumps({**line, "word": "wyvern"}) + "\n")
    rep = SkipReport()
    assert [d.word for d in read_drawings(path, report=rep, words=None)] == ["wyvern"]
    assert rep.count == 1 and f"holds the control character {char}" in rep.items[0][2]
    assert not any(c in rep.items[0][2] for c in "\x1b\n\u202e")


def test_suggest_reads_a_sketch_of_any_class(shared_quickdraw, tmp_path):
    line = json.loads(_lines(shared_quickdraw / "simplified" / "apple.ndjson", 1)[0])
    path = tmp_path / "mine.ndjson"
    path.write_text(json.dumps({**line, "word": "wyvern"}) + "\n")
    drawing, points = read_sketch(path, 1)
    assert drawing.word == "wyvern" and len(points) == drawing.n_points


# --- a new format is one module plus one registration ----------------------------------------------

TINY_FORMAT = '''
"""A tiny text format: one drawing per line, ``key_id x,y x,y;x,y x,y`` (';' between strokes)."""
from pathlib import Path

import numpy as np

from sketchembed.corpus.formats.registry import FileFormat, display_name, reader, register, word_problem
from sketchembed.corpus.sketch import Drawing, check_strokes


@reader
def read_tiny(source, *, report, word=None, words=None):
    name = display_name(source)
    cls = word if word is not None else Path(name).stem
    problem = word_problem(cls, None, words)
    if problem:
        report.bad(name, None, problem)
        return
    with open(source) as f:
        for lineno, line in enumerate(f, 1):
            key, _, body = line.strip().partition(" ")
            try:
                strokes = [np.array([[int(v) for v in p.split(",")] for p in s.split()], dtype=np.int16)
                           for s in body.split(";")]
                key_id = int(key)
            except ValueError:
                report.bad(name, f"line {lineno}", "not integers")
                continue
            why = check_strokes(strokes)
            if why:
                report.bad(name, f"line {lineno}", why)
                continue
            yield Drawing(key_id=key_id, word=cls, strokes=strokes)


register(FileFormat("tiny", (".tiny",), read_tiny))
'''


@pytest.fixture
def tiny_format(tmp_path, monkeypatch):
    """The module on sys.path, imported (so registered) as a user's project would."""
    (tmp_path / "ext_tiny_format.py").write_text(TINY_FORMAT)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module("ext_tiny_format")
    sys.modules.pop("ext_tiny_format", None)
    FORMATS.pop("tiny", None)


def test_a_new_format_is_one_module_and_one_registration(tiny_format, shared_quickdraw, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "apple.ndjson").write_bytes(b"\n".join(_lines(shared_quickdraw / "simplified" / "apple.ndjson", 3)))
    (src / "apple.tiny").write_text("11 0,0 10,10;20,5 30,40\n12 nope\n13 1,1 5,9 7,7\n")
    (src / "pear.tiny").write_text("21 3,3 50,60\n")
    assert "tiny" in FORMATS and ".tiny" in suffixes() and "tiny" in kinds()
    rep = SkipReport()
    got = list(read_drawings(src / "apple.tiny", report=rep))
    assert [d.key_id for d in got] == [11, 13] and rep.items == [(str(src / "apple.tiny"), "line 2", "not integers")]
    with pytest.warns(UserWarning, match="skipped 1 bad input"):  # the public error policy came with @reader
        list(read_drawings(src / "apple.tiny"))
    with pytest.raises(DataFormatError, match="apple.tiny:line 2: not integers"):
        list(read_drawings(src / "apple.tiny", on_error="raise"))
    # prepare finds, reads and selects the new format; the ndjson files beside it are ignored with a reason
    ds = prepare([src], tmp_path / "out", "apple,pear", fmt="tiny", split="fractions")
    assert sorted(int(k) for k in ds.key_ids) == [11, 13, 21]
    assert {s["kind"] for s in ds.manifest["sources"]} == {"tiny"}
    assert any(i["reason"] == "simplified file, --format tiny asked" for i in ds.manifest["ignored_files"])
    assert np.array_equal(ds.points(int(np.flatnonzero(ds.key_ids == 11)[0])),
                          [[0, 0, 0], [10, 10, 1], [20, 5, 0], [30, 40, 1]])
    # and so does the command line: --format choices and the --input help come from the registry
    assert main(["data", "prepare", "--input", str(src), "--out", str(tmp_path / "cli"), "--classes", "apple",
                 "--format", "tiny", "--split", "fractions", "--no-progress"]) == 0
    assert "2 drawings" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["data", "prepare", "--help"])
    assert "tiny" in capsys.readouterr().out
    # the public bucket has no such files: download does not offer it
    assert "tiny" not in bucket_kinds()
    # one name, one suffix, one kind per format
    with pytest.raises(ValueError, match=r"\.tiny already belong\(s\) to format 'tiny'"):
        register(FileFormat("tiny2", (".TINY",), tiny_format.read_tiny))
    with pytest.raises(ValueError, match="simplified already belong"):
        register(FileFormat("simplified", (".simp",), tiny_format.read_tiny))
