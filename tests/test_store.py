"""The prepared-dataset store: exact round trip, streaming writer, atomic replace, corruption errors."""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest

from helpers import fifo
from sketchembed.cli import main
from sketchembed.corpus import store
from sketchembed.corpus.sketch import DataFormatError, strokes_to_points
from sketchembed.corpus.store import PreparedDataset, PreparedWriter, _sha256_of


def random_points(rng, n_strokes=None):
    n_strokes = n_strokes or int(rng.integers(1, 6))
    strokes = [rng.integers(0, 256, (int(rng.integers(2, 20)), 2)) for _ in range(n_strokes)]
    return strokes_to_points(strokes)


def build(root, n=60, classes=("apple", "pear", "bus"), chunk_points=64, seed=0):
    rng = np.random.default_rng(seed)
    drawings = [(random_points(rng), i % len(classes), 5_000_000_000_000_000 + 7 * i) for i in range(n)]
    splits = (np.arange(n) // len(classes)) % 3
    with PreparedWriter(root, classes, chunk_points=chunk_points) as w:
        for pts, label, key in drawings:
            w.add(pts, label, key)
        ds = w.close({"note": "test"}, splits=splits)
    return ds, drawings, splits


def test_round_trip_and_accessors(tmp_path):
    ds, drawings, splits = build(tmp_path / "ds")  # chunk of 64 points: many flushes
    assert len(ds) == len(drawings) and ds.classes == ["apple", "pear", "bus"]
    for i, (pts, label, key) in enumerate(drawings):
        got = ds.points(i)
        assert got.dtype == np.int16 and np.array_equal(got, pts)
        assert ds.labels[i] == label and int(ds.key_ids[i]) == key
        d = ds.drawing(i)
        assert d.word == ds.classes[label] and np.array_equal(strokes_to_points(d.strokes), pts)
    assert np.array_equal(ds.indices("val"), np.flatnonzero(splits == 1))
    assert ds.indices("train").dtype == np.int64
    assert ds.class_counts().tolist() == [20, 20, 20]
    assert ds.class_counts("test").sum() == (splits == 2).sum()
    assert ds.manifest["note"] == "test" and ds.manifest["n_points"] == sum(len(p) for p, _, _ in drawings)
    assert ds.manifest["counts"]["apple"] == {"train": 7, "val": 7, "test": 6}
    ds.verify()
    again = pickle.loads(pickle.dumps(ds))  # workers re-open by path instead of copying arrays
    assert len(pickle.dumps(ds)) < 500 and np.array_equal(again.points(5), ds.points(5))
    with pytest.raises(ValueError, match="split"):
        ds.indices("eval")


def test_add_many_matches_add(tmp_path):
    ds, drawings, splits = build(tmp_path / "one")
    with PreparedWriter(tmp_path / "many", ds.classes) as w:
        for a in range(0, len(drawings), 7):
            assert len(w.key_ids) == len(w.labels) == a  # reading the columns does not block adding
            part = drawings[a:a + 7]
            w.add_many(np.concatenate([p for p, _, _ in part]), [len(p) for p, _, _ in part],
                       [lab for _, lab, _ in part], [k for _, _, k in part])
        many = w.close(splits=splits)
    for name in ("offsets", "labels", "key_ids", "splits"):
        assert np.array_equal(getattr(many, name), getattr(ds, name))
    assert np.array_equal(many.all_points, ds.all_points)
    assert many.manifest["arrays"]["points"]["sha256"] == ds.manifest["arrays"]["points"]["sha256"]


def test_writer_refuses_bad_input(tmp_path):
    w = PreparedWriter(tmp_path / "x", ["apple"])
    with pytest.raises(ValueError, match="label"):
        w.add(np.array([[0, 0, 0], [1, 1, 1]]), 3, 1)
    with pytest.raises(ValueError, match=r"\(n, 3\)"):
        w.add(np.zeros((4, 2)), 0, 1)
    w.add(np.array([[0, 0, 0], [1, 1, 0]]), 0, 1)  # last point without pen_up
    with pytest.raises(ValueError, match="splits"):
        w.close()
    w = PreparedWriter(tmp_path / "x", ["apple"])
    w.add(np.array([[0, 0, 0], [1, 1, 0]]), 0, 42)
    with pytest.raises(ValueError, match="key_id 42: last point must have pen_up"):
        w.close(splits=[0])
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.tmp*"))
    with pytest.raises(ValueError, match="no drawings"):
        PreparedWriter(tmp_path / "y", ["apple"]).close(splits=[])


def test_replace_is_atomic(tmp_path):
    ds, _, _ = build(tmp_path / "ds", n=30)
    before = ds.manifest["arrays"]["points"]["sha256"]
    # a failure while writing the replacement leaves the old dataset intact
    with pytest.raises(RuntimeError):
        with PreparedWriter(tmp_path / "ds", ["apple"]) as w:
            w.add(np.array([[0, 0, 1], [3, 3, 1]]), 0, 1)
            raise RuntimeError("boom")
    assert PreparedDataset(tmp_path / "ds").manifest["arrays"]["points"]["sha256"] == before
    assert not list(tmp_path.glob(".ds.*"))
    with pytest.raises(FileExistsError):
        PreparedWriter(tmp_path / "ds", ["apple"], overwrite=False)
    new, _, _ = build(tmp_path / "ds", n=9, seed=1)
    assert len(PreparedDataset(tmp_path / "ds")) == 9 == len(new)


def _corrupt_bytes(path, at=-5):
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("case, file, message", [
    ("truncate", "points.npy", "truncated"),
    ("missing", "labels.npy", "missing file"),
    ("flip", "labels.npy", "sha256 mismatch"),
    ("flip", "key_ids.npy", "sha256 mismatch"),
    ("garbage", "manifest.json", "unreadable manifest"),
    ("nested", "manifest.json", "unreadable manifest.*nested too deeply"),
    ("not_utf8", "manifest.json", "unreadable manifest.*not UTF-8"),
    ("missing", "manifest.json", "missing manifest"),
    ("other_shape", "offsets.npy", "manifest says"),
])
def test_corrupt_store_names_the_file(tmp_path, case, file, message):
    build(tmp_path / "ds", n=30)
    path = tmp_path / "ds" / file
    if case == "truncate":
        path.write_bytes(path.read_bytes()[:-20])
    elif case == "missing":
        path.unlink()
    elif case == "flip":
        _corrupt_bytes(path)
    elif case == "garbage":
        path.write_text("{ not json")
    elif case == "nested":  # a crafted manifest: json.loads would raise RecursionError
        path.write_text('{"format": ' + "[" * 100_000 + "]" * 100_000 + "}")
    elif case == "not_utf8":
        path.write_bytes(b'{"format": "\xff"}')
    elif case == "other_shape":
        np.save(path, np.arange(12, dtype=np.int64))
    with pytest.raises(DataFormatError, match=message) as e:
        PreparedDataset(tmp_path / "ds")
    assert e.value.path.endswith(file)


def test_corrupt_points_found_by_verify(tmp_path):
    build(tmp_path / "ds", n=30)
    _corrupt_bytes(tmp_path / "ds" / "points.npy", at=-3)  # an x/y byte; sizes unchanged
    ds = PreparedDataset(tmp_path / "ds")  # cheap open does not hash the points
    with pytest.raises(DataFormatError, match="points.npy.*sha256 mismatch"):
        ds.verify()
    with pytest.raises(DataFormatError, match="points.npy"):
        PreparedDataset(tmp_path / "ds", verify=True)


def test_inconsistent_offsets_are_refused(tmp_path):
    build(tmp_path / "ds", n=30)
    root = tmp_path / "ds"
    off = np.load(root / "offsets.npy")
    off[-1] += 1  # claims a point that does not exist; keep the checksum consistent
    np.save(root / "offsets.npy", off)
    m = json.loads((root / "manifest.json").read_text())
    m["arrays"]["offsets"]["sha256"] = _sha256_of(off)
    (root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataFormatError, match="offsets.npy.*points.npy has"):
        PreparedDataset(root)


def test_crafted_manifest_is_one_line_and_exit_2(tmp_path, capsys):
    build(tmp_path / "ds", n=30)
    manifest = tmp_path / "ds" / "manifest.json"
    manifest.write_text("[" * 100_000)
    assert main(["data", "stats", str(tmp_path / "ds")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {manifest}: unreadable manifest")


def test_not_a_dataset(tmp_path):
    with pytest.raises(FileNotFoundError):
        PreparedDataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match="manifest.json"):
        PreparedDataset(tmp_path / "empty")


@pytest.mark.parametrize("case", ["file", "folder with a file", "dataset with a file", "other manifest",
                                  "symlink", "current directory", "holds the current directory", "holds an input"])
def test_output_that_may_hold_data_is_refused_and_untouched(tmp_path, monkeypatch, case):
    """A prepared dataset replaces only a missing path, an empty folder or an earlier dataset."""
    out = tmp_path / "out"
    keep = out / "notes.txt"
    inputs = ()
    if case == "file":
        out.write_text("mine")
        keep = out
    elif case == "folder with a file":
        out.mkdir()
        keep.write_text("mine")
    elif case == "dataset with a file":
        build(out, n=9)
        keep.write_text("mine")
    elif case == "other manifest":
        out.mkdir()
        keep = out / "manifest.json"
        keep.write_text(json.dumps({"format": "something-else"}))
    elif case == "symlink":
        build(tmp_path / "real", n=9)
        out.symlink_to(tmp_path / "real")
        keep = tmp_path / "real" / "manifest.json"
    elif case == "current directory":
        build(out, n=9)
        keep = out / "manifest.json"
        monkeypatch.chdir(out)
    elif case == "holds the current directory":
        (out / "sub").mkdir(parents=True)
        keep = out / "sub"
        monkeypatch.chdir(out / "sub")
    else:
        out.mkdir()
        keep.write_text("{}")
        inputs = (keep,)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ValueError, match=f"will not write a prepared dataset to {out}"):
        PreparedWriter(out, ["apple"], inputs=inputs)
    assert keep.exists() and sorted(p.name for p in tmp_path.iterdir()) == before


def test_output_changed_while_writing_is_not_replaced(tmp_path):
    w = PreparedWriter(tmp_path / "out", ["apple"])
    w.add(np.array([[0, 0, 0], [3, 3, 1]]), 0, 1)
    (tmp_path / "out").write_text("someone else's")
    with pytest.raises(ValueError, match="it is a file"):
        w.close(splits=[0])
    assert (tmp_path / "out").read_text() == "someone else's" and not list(tmp_path.glob(".out.*"))


def test_empty_folder_and_earlier_dataset_are_replaced(tmp_path):
    (tmp_path / "empty").mkdir()
    assert len(build(tmp_path / "empty", n=9)[0]) == 9
    assert len(build(tmp_path / "empty", n=12)[0]) == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_what_killed_writers_left_is_removed(tmp_path):
    """SIGTERM leaves the temporary folder: the next writer removes those of processes gone."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    build(tmp_path / "ds", n=9)
    left = tmp_path / f".ds.tmp-{dead.pid}-0123abcd"
    build(left, n=9)
    live = tmp_path / f".ds.tmp-{os.getpid()}-0123abcd"  # a writer still at work
    live.mkdir()
    old = tmp_path / ".ds.old-0123abcd"
    build(old, n=9)
    not_ours = tmp_path / ".ds.old-4567abcd"  # a file an earlier version moved aside: someone's data
    not_ours.write_text("mine")
    build(tmp_path / "ds", n=12)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ds", live.name, not_ours.name])


def test_what_dead_writers_left_holding_files_not_theirs_is_left_with_one_warning(tmp_path, capsys):
    """A ``.ds.tmp-PID-*`` or ``.ds.old-*`` folder is removed only when it holds nothing but a writer's
    own regular files; one with anything else is someone's: kept, with one warning line each."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    build(tmp_path / "ds", n=9)
    notes = tmp_path / f".ds.tmp-{dead.pid}-0123abcd"
    build(notes, n=9)
    (notes / "notes.txt").write_text("mine")
    nested = tmp_path / f".ds.tmp-{dead.pid}-4567abcd"
    (nested / "points.npy").mkdir(parents=True)  # a writer's name, but a folder of someone's files
    (nested / "points.npy" / "photo.jpg").write_text("mine")
    linked = tmp_path / ".ds.old-89abcdef"
    build(linked, n=9)
    (linked / "labels.npy").unlink()
    (linked / "labels.npy").symlink_to(tmp_path / "ds" / "labels.npy")
    own = tmp_path / f".ds.tmp-{dead.pid}-cdef0123"
    build(own, n=9)
    src = tmp_path / "in" / "apple.ndjson"
    src.parent.mkdir()
    src.write_text(json.dumps({"word": "apple", "key_id": "1", "drawing": [[[0, 9, 30], [0, 20, 5]]]}) + "\n")
    capsys.readouterr()
    assert main(["data", "prepare", "--input", str(src.parent), "--out", str(tmp_path / "ds"), "--no-progress"]) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning: left")]
    assert len(err) == 3 and all(any(str(p) in ln for ln in err) for p in (notes, nested, linked)), err
    assert (notes / "notes.txt").read_text() == "mine" and (nested / "points.npy" / "photo.jpg").read_text() == "mine"
    assert (linked / "labels.npy").is_symlink() and (tmp_path / "ds" / "labels.npy").is_file()
    assert not own.exists() and len(PreparedDataset(tmp_path / "ds")) == 1


def test_abort_removes_only_what_the_writer_wrote(tmp_path):
    lines = []
    w = PreparedWriter(tmp_path / "out", ["apple"], warn=lines.append)
    w.add(np.array([[0, 0, 0], [3, 3, 1]]), 0, 1)
    (w.tmp / "notes.txt").write_text("someone saved this here")
    w.abort()
    assert (w.tmp / "notes.txt").read_text() == "someone saved this here"
    assert len(lines) == 1 and str(w.tmp) in lines[0] and "notes.txt" in lines[0]
    w2 = PreparedWriter(tmp_path / "out2", ["apple"], warn=lines.append)
    w2.abort()
    assert not w2.tmp.exists() and len(lines) == 1


@pytest.mark.parametrize("case", ["points.npy a folder", "labels.npy a link", "manifest.json a FIFO"])
def test_an_earlier_dataset_is_replaced_only_when_it_holds_only_its_own_regular_files(tmp_path, capsys, case):
    """Names alone do not make a dataset: a ``points.npy`` that is a folder of someone's files was
    replaced (the files lost), a FIFO manifest hung the check."""
    out = tmp_path / "out"
    build(out, n=9)
    if case == "points.npy a folder":
        (out / "points.npy").unlink()
        (out / "points.npy").mkdir()
        keep = out / "points.npy" / "thesis.tex"
        keep.write_text("mine")
        why = "points.npy is a folder"
    elif case == "labels.npy a link":
        keep = tmp_path / "elsewhere.npy"
        keep.write_bytes((out / "labels.npy").read_bytes())
        (out / "labels.npy").unlink()
        (out / "labels.npy").symlink_to(keep)
        why = "labels.npy is a symbolic link"
    else:
        keep = out / "manifest.json"
        manifest = keep.read_bytes()
        fifo(keep, manifest)
        why = "manifest.json is a FIFO"
    with pytest.raises(ValueError, match=f"will not write a prepared dataset to {out}: {why}, where a prepared "
                                         f"dataset holds only regular files"):
        PreparedWriter(out, ["apple"])
    src = tmp_path / "in" / "apple.ndjson"
    src.parent.mkdir()
    src.write_text(json.dumps({"word": "apple", "key_id": "1", "drawing": [[[0, 9, 30], [0, 20, 5]]]}) + "\n")
    capsys.readouterr()
    assert main(["data", "prepare", "--input", str(src.parent), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and why in err
    assert os.path.lexists(keep) and sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["out", "in", *(["elsewhere.npy"] if keep.parent == tmp_path else [])])


@pytest.mark.parametrize("case", ["points.npy a FIFO", "labels.npy a link out", "offsets.npy claims more rows",
                                  "manifest.json too large"])
def test_opening_a_dataset_reads_regular_files_of_the_sizes_they_say(tmp_path, monkeypatch, case):
    root = tmp_path / "ds"
    build(root, n=9)
    if case == "points.npy a FIFO":
        fifo(root / "points.npy", (root / "points.npy").read_bytes())
        file, why = "points.npy", "a FIFO, not a regular file"
    elif case == "labels.npy a link out":
        (tmp_path / "labels.npy").write_bytes((root / "labels.npy").read_bytes())
        (root / "labels.npy").unlink()
        (root / "labels.npy").symlink_to(tmp_path / "labels.npy")
        file, why = "labels.npy", f"a symbolic link out of {root}"
    elif case == "offsets.npy claims more rows":
        data = (root / "offsets.npy").read_bytes()
        (root / "offsets.npy").write_bytes(data.replace(b"(10,)", b"(99,)", 1))
        file = "offsets.npy"
        why = "header declares int64 of shape (99,), 920 bytes with the header, but the file has 208"
    else:
        monkeypatch.setattr(store, "MANIFEST_BYTES", 100)
        file, why = "manifest.json", "more than the 100 a manifest may take"
    with pytest.raises(DataFormatError, match=re.escape(why)) as e:
        PreparedDataset(root)
    assert e.value.path == str(root / file) and "allow_pickle" not in str(e.value)


def test_plain_npy_is_mapped_or_read_as_numpy_saves_it(tmp_path):
    for arr in (np.arange(12, dtype="<i8").reshape(3, 4), np.asfortranarray(np.eye(3, dtype=np.float32)),
                np.zeros((0, 3), np.int16)):
        np.save(tmp_path / "a.npy", arr)
        mapped, read = (store.load_plain_npy(tmp_path / "a.npy", tmp_path, mmap=m) for m in (True, False))
        for got in (mapped, read):
            assert got.dtype == arr.dtype and got.shape == arr.shape and np.array_equal(got, arr)
        assert isinstance(mapped, np.memmap) == (arr.size > 0) and not isinstance(read, np.memmap)


@pytest.mark.parametrize("field, value", [
    ("arrays.points", None),
    ("arrays.offsets", {"shape": "x", "sha256": "0"}),
    ("arrays", []),
    ("n_drawings", "x"),
    ("n_drawings", True),
    ("classes", "apple"),
    ("classes", [1, 2, 3]),
    ("split_rule", "x"),
    ("split_rule", {"per_class": ["apple"]}),
    ("skipped", {"count": 1, "items": [None]}),
    ("duplicates", "x"),
])
def test_hand_edited_manifest_field_is_one_line_naming_it(tmp_path, capsys, field, value):
    build(tmp_path / "ds", n=30)
    manifest = tmp_path / "ds" / "manifest.json"
    m = json.loads(manifest.read_text())
    parent, _, key = field.rpartition(".")
    (m[parent] if parent else m)[key] = value
    manifest.write_text(json.dumps(m))
    assert main(["data", "stats", str(tmp_path / "ds")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {manifest}: field '{field}' must be")
