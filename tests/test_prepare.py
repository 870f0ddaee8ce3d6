"""`sketchembed data prepare`/`stats` and the embedded datasets: exact content, deterministic and
key-based splits, dedupe of raw + simplified copies, skip accounting, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sketchembed import STUDY_CLASSES
from sketchembed.cli import main
from sketchembed.corpus.embedded import embedded_dataset_path, open_embedded
from sketchembed.corpus.formats import read_drawings, read_ndjson
from sketchembed.corpus.formats.ndjson import read_ndjson_blocks
from sketchembed.corpus.prepare import assign_splits, prepare, split_sizes
from sketchembed.corpus.simplify import simplify_drawing
from sketchembed.corpus.sketch import DataFormatError, Drawing, SkipReport, strokes_to_points
from sketchembed.corpus.store import PreparedDataset
from sketchembed.data.datamodule import SketchDataModule

KEY0 = 5_100_000_000_000_000


def record(word, key, strokes, **extra):
    return json.dumps({"word": word, "countrycode": "US", "timestamp": "2017-03-01 00:00:00 UTC",
                       "recognized": True, "key_id": str(key), "drawing": strokes, **extra})


def walk(rng, n_strokes=3, raw=False):
    strokes = []
    for _ in range(n_strokes):
        n = int(rng.integers(2, 12))
        xy = rng.integers(0, 256, (2, n)) if not raw else rng.integers(-30, 900, (2, n))
        s = [xy[0].tolist(), xy[1].tolist()]
        if raw:
            s.append(sorted(rng.integers(0, 5000, n).tolist()))
        strokes.append(s)
    return strokes


def write_class(path, word, keys, seed=0, raw=False):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [record(word, k, walk(rng, int(rng.integers(1, 5)), raw=raw)) for k in keys]
    path.write_text("\n".join(lines) + "\n")
    return lines


def by_key(ds):
    return {int(k): i for i, k in enumerate(ds.key_ids)}


def split_of(ds):
    return {int(k): (ds.classes[int(lab)], int(s)) for k, lab, s in zip(ds.key_ids, ds.labels, ds.splits)}


@pytest.fixture
def small_set(tmp_path):
    src = tmp_path / "src"
    write_class(src / "apple.ndjson", "apple", range(KEY0, KEY0 + 40), seed=1)
    write_class(src / "pear.ndjson", "pear", range(KEY0 + 100, KEY0 + 125), seed=2)
    write_class(src / "bus.ndjson", "bus", range(KEY0 + 200, KEY0 + 220), seed=3)
    return src


def test_round_trip_exact(small_set, tmp_path):
    ds = prepare([small_set], tmp_path / "out", "apple,pear,bus", split="fractions")
    assert ds.classes == ["apple", "pear", "bus"] and len(ds) == 85
    rows = by_key(ds)
    for cls in ds.classes:
        for d in read_drawings(small_set / f"{cls}.ndjson", on_error="raise"):
            i = rows.pop(d.key_id)
            assert ds.classes[ds.labels[i]] == cls
            assert np.array_equal(ds.points(i), strokes_to_points(d.strokes))
    assert not rows
    assert ds.class_counts().tolist() == [40, 25, 20]
    # 70/15/15 with at least one drawing per split
    assert ds.manifest["counts"]["apple"] == {"train": 28, "val": 6, "test": 6}
    assert ds.manifest["counts"]["bus"] == {"train": 14, "val": 3, "test": 3}
    assert ds.manifest["split_rule"]["per_class"] == {"apple": "fractions", "pear": "fractions", "bus": "fractions"}
    assert ds.manifest["skipped"]["count"] == 0 and len(ds.manifest["sources"]) == 3


def test_splits_depend_on_key_ids_not_file_order(small_set, tmp_path):
    a = prepare([small_set], tmp_path / "a", "apple,pear,bus")
    b = prepare([small_set], tmp_path / "b", "apple,pear,bus")
    assert np.array_equal(a.splits, b.splits) and np.array_equal(a.key_ids, b.key_ids)
    # the same drawings, lines shuffled, files given one by one in another order
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    rng = np.random.default_rng(7)
    for f in small_set.iterdir():
        lines = f.read_text().splitlines()
        (shuffled / f.name).write_text("\n".join(lines[j] for j in rng.permutation(len(lines))) + "\n")
    c = prepare([shuffled / "bus.ndjson", shuffled / "pear.ndjson", shuffled / "apple.ndjson"],
                tmp_path / "c", "apple,pear,bus")
    assert split_of(c) == split_of(a)
    assert not np.array_equal(c.key_ids, a.key_ids)  # the rows really were in another order
    other_seed = prepare([small_set], tmp_path / "d", "apple,pear,bus", seed=1)
    assert split_of(other_seed) != split_of(a)


def test_adding_drawings_moves_few_and_only_towards_train(tmp_path):
    src = tmp_path / "src"
    base = write_class(src / "apple.ndjson", "apple", range(KEY0, KEY0 + 300), seed=1)
    before = split_of(prepare([src], tmp_path / "a", "apple", split="study", val_per_class=30,
                              test_per_class=20))
    extra = write_class(tmp_path / "more" / "x.ndjson", "apple", range(KEY0 + 1000, KEY0 + 1010), seed=5)
    (src / "apple.ndjson").write_text("\n".join(base + extra) + "\n")
    after_ds = prepare([src], tmp_path / "b", "apple", split="study", val_per_class=30, test_per_class=20)
    after = split_of(after_ds)
    assert after_ds.manifest["split_rule"]["per_class"] == {"apple": "study"}
    assert after_ds.manifest["counts"]["apple"] == {"train": 260, "val": 30, "test": 20}
    moved = [(before[k][1], after[k][1]) for k in before if before[k] != after[k]]
    assert len(moved) <= 2 * 10
    # codes: 0 train, 1 val, 2 test; test -> val -> train only
    assert all((old, new) in {(2, 1), (1, 0), (2, 0)} for old, new in moved)


def test_study_rule_and_fraction_fallback():
    assert split_sizes(200_000, "study", val_per_class=5000, test_per_class=5000,
                       fractions=(0.7, 0.15, 0.15)) == ("study", 5000, 5000)
    # too small for 5,000 + 5,000 with train keeping >= 2/3: fractions
    assert split_sizes(29_999, "study", val_per_class=5000, test_per_class=5000,
                       fractions=(0.7, 0.15, 0.15)) == ("fractions", 4500, 4500)
    assert split_sizes(20, "fractions", val_per_class=5, test_per_class=5,
                       fractions=(0.7, 0.15, 0.15)) == ("fractions", 3, 3)
    assert split_sizes(3, "fractions", val_per_class=5, test_per_class=5,
                       fractions=(0.8, 0.1, 0.1)) == ("fractions", 1, 1)
    assert split_sizes(2, "fractions", val_per_class=5, test_per_class=5,
                       fractions=(0.7, 0.15, 0.15)) == ("fractions", 0, 0)
    labels = np.repeat([0, 1], [40, 10])
    keys = np.arange(50, dtype=np.uint64) * 977 + KEY0
    splits, rules = assign_splits(labels, keys, ["apple", "pear"], rule="study", val_per_class=4,
                                  test_per_class=6, fractions=(0.6, 0.2, 0.2))
    assert rules == {"apple": "study", "pear": "fractions"}
    assert np.bincount(splits[labels == 0], minlength=3).tolist() == [30, 4, 6]
    assert np.bincount(splits[labels == 1], minlength=3).tolist() == [6, 2, 2]


def test_dedupe_prefers_simplified_and_simplifies_raw_only(tmp_path):
    rng = np.random.default_rng(3)
    simp_dir, raw_dir = tmp_path / "simplified", tmp_path / "raw"
    simp_dir.mkdir()
    raw_dir.mkdir()
    keys = list(range(KEY0, KEY0 + 6))
    simp = [record("pear", k, walk(rng)) for k in keys[:4]]
    raw = [record("pear", k, walk(rng, raw=True)) for k in keys[2:]]  # 2 shared keys, 2 raw-only
    (simp_dir / "pear.ndjson").write_text("\n".join(simp) + "\n")
    (raw_dir / "pear.ndjson").write_text("\n".join(raw) + "\n")
    # raw folder given first: the simplified copy must still win
    ds = prepare([raw_dir, simp_dir], tmp_path / "out", "pear")
    assert sorted(int(k) for k in ds.key_ids) == keys
    assert ds.manifest["duplicates"] == 2 and ds.manifest["simplified_from_raw"] == 2
    rows = by_key(ds)
    for d in read_drawings(simp_dir / "pear.ndjson"):
        assert np.array_equal(ds.points(rows[d.key_id]), strokes_to_points(d.strokes))
    for d in read_drawings(raw_dir / "pear.ndjson"):
        if d.key_id in keys[4:]:
            want = strokes_to_points(simplify_drawing(d).strokes)
            assert np.array_equal(ds.points(rows[d.key_id]), want)
    pts = ds.all_points
    assert pts[:, :2].min() >= 0 and pts[:, :2].max() <= 255


def test_bad_lines_fast_path_matches_reader(tmp_path):
    """Every kind of odd line: the simplified fast path keeps and skips exactly what the reader does."""
    rng = np.random.default_rng(4)
    good = [record("apple", KEY0 + i, walk(rng)) for i in range(6)]
    odd = [
        "{broken json",
        record("pear", KEY0 + 50, walk(rng)),                       # wrong class
        record("apple", KEY0 + 51, [[[1, 2], [3, 300]]]),           # off the canvas
        record("apple", KEY0 + 52, [[[1], [3]]]),                   # one-point stroke
        record("apple", KEY0 + 53, [[[1.5, 2], [3, 4]]]),           # non-integer
        record("apple", KEY0 + 54, [[[True, 2], [3, 4]]]),          # bool (numpy would read it as 1)
        record("apple", KEY0 + 55, []),                             # no strokes
        record("apple", "not-a-number", walk(rng)),                 # bad key_id
        record("apple", KEY0 + 56, walk(rng, raw=True)),            # raw line in a simplified file
        record("apple", KEY0 + 57, walk(rng), recognized="yes"),    # bad field type
        "",                                                          # blank line
        good[0],                                                     # exact duplicate
        json.dumps([1, 2]),                                          # not an object
        "[" * 100_000,                                               # RecursionError in json.loads
        record("apple", KEY0 + 58, walk(rng)).replace(f'"{KEY0 + 58}"', "true"),  # key_id true ≠ 1
        record("apple", KEY0 + 59, [[[7, 7], [9, 9]], [[7, 7], [9, 9]]]),  # all points in one place
        record("apple", KEY0 + 60, walk(rng)).replace(f'"{KEY0 + 60}"', "1.5"),   # not an integer
    ]
    lines = good[:3] + odd + good[3:]
    src = tmp_path / "src"
    src.mkdir()
    (src / "apple.ndjson").write_text("\n".join(lines) + "\n")
    # the block reader (prepare's fast path) against the record reader: same drawings, same order, same skips
    rep_blocks, rep_records = SkipReport(), SkipReport()
    flat = []
    for item in read_ndjson_blocks(src / "apple.ndjson", report=rep_blocks, word="apple", size=4):
        if isinstance(item, Drawing):
            flat.append((item.key_id, item.points().tolist()))
        else:
            flat += [(k, p.tolist()) for k, p in zip(item.key_ids, np.split(item.points, np.cumsum(item.lengths)[:-1]))]
    ref = [(d.key_id, d.points().tolist()) for d in read_ndjson(src / "apple.ndjson", report=rep_records, word="apple")]
    assert flat == ref and len(ref) == 8  # six good lines (one twice), the raw line
    assert rep_blocks.count == rep_records.count == 14 and sorted(rep_blocks.items) == sorted(rep_records.items)
    fast = prepare([src], tmp_path / "fast", "apple")
    slow = prepare([src], tmp_path / "slow", "apple", fast=False)
    # rows may come in another order (odd lines are handled as they come); the content is the same
    assert split_of(fast) == split_of(slow)
    rows_f, rows_s = by_key(fast), by_key(slow)
    for k in rows_f:
        assert np.array_equal(fast.points(rows_f[k]), slow.points(rows_s[k]))
    kept = {int(k) for k in fast.key_ids}
    assert kept == {KEY0 + i for i in range(6)} | {KEY0 + 56}
    sk_f, sk_s = fast.manifest["skipped"], slow.manifest["skipped"]
    assert sk_f["count"] == sk_s["count"] == 14
    assert sorted(map(json.dumps, sk_f["items"])) == sorted(map(json.dumps, sk_s["items"]))
    assert {i["position"] for i in sk_f["items"]} == {f"line {n}" for n in (4, 5, 6, 7, 8, 9, 10, 11, 13, 16,
                                                                             17, 18, 19, 20)}
    reasons = {i["position"]: i["reason"] for i in sk_f["items"]}
    assert "nested too deeply" in reasons["line 17"] and "key_id True" in reasons["line 18"]
    assert "all points in one place" in reasons["line 19"] and "key_id 1.5" in reasons["line 20"]
    assert "true/false" in reasons["line 9"]  # README: true is not 1, among coordinates either
    assert fast.manifest["duplicates"] == slow.manifest["duplicates"] == 1
    assert fast.manifest["simplified_from_raw"] == 1
    with pytest.raises(DataFormatError, match=r"apple.ndjson:line 4: broken JSON"):
        prepare([src], tmp_path / "raise", "apple", on_error="raise")
    assert not (tmp_path / "raise").exists()


def test_hostile_first_line_loses_nothing_else(small_set, tmp_path):
    """A nested-JSON bomb as the first line (where the format is sniffed) is one counted skip."""
    path = small_set / "apple.ndjson"
    path.write_text("[" * 100_000 + "\n" + path.read_text())
    for fast in (True, False):
        ds = prepare([small_set], tmp_path / f"out{fast}", "apple", fast=fast)
        assert len(ds) == 40 and ds.manifest["skipped"]["count"] == 1
        item = ds.manifest["skipped"]["items"][0]
        assert item["file"] == str(path) and item["position"] == "line 1" and "nested too deeply" in item["reason"]


def test_files_not_used_are_reported_and_other_datasets_read_with_from_files(small_set, tmp_path, capsys):
    write_class(small_set / "wyvern.ndjson", "wyvern", range(KEY0 + 300, KEY0 + 306), seed=5)
    ds = prepare([small_set], tmp_path / "qd", "all")
    assert ds.classes == ["apple", "bus", "pear"]
    assert ds.manifest["ignored_files"] == [{"file": str(small_set / "wyvern.ndjson"),
                                             "reason": "not a Quick, Draw! category (--classes from-files "
                                                       "takes every file name as a class)"}]
    ds = prepare([small_set], tmp_path / "two", "apple,bus")
    assert [(i["file"].rsplit("/", 1)[1], i["reason"][:24]) for i in ds.manifest["ignored_files"]] == [
        ("pear.ndjson", "class not asked for (--c"), ("wyvern.ndjson", "not a Quick, Draw! categ")]
    out = tmp_path / "any"
    assert main(["data", "prepare", "--input", str(small_set), "--out", str(out), "--classes", "from-files",
                 "--split", "fractions", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "4 classes" in text and "no ignored files" in text
    with pytest.raises(ValueError, match="unknown Quick, Draw! class 'wyvern'.*--classes from-files"):
        prepare([small_set], tmp_path / "named", "wyvern")
    ds = prepare([small_set], out, "from-files")
    assert ds.classes == ["apple", "bus", "pear", "wyvern"] and ds.class_counts().tolist() == [40, 20, 25, 6]
    # the word of each line must still be its file's name
    (small_set / "griffin.ndjson").write_text(record("wyvern", KEY0 + 400, [[[1, 9], [1, 9]]]) + "\n")
    with pytest.raises(DataFormatError, match="class 'griffin' has no valid drawings"):
        prepare([small_set], tmp_path / "bad", "from-files")
    (small_set / "griffin.ndjson").unlink()
    assert main(["data", "prepare", "--input", str(small_set), "--out", str(tmp_path / "p"), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "ignored 1 file(s):" in text and "wyvern.ndjson: not a Quick, Draw! category" in text
    only_other = tmp_path / "other"
    write_class(only_other / "wyvern.ndjson", "wyvern", range(KEY0, KEY0 + 3))
    with pytest.raises(FileNotFoundError, match="'wyvern'.*--classes from-files"):
        prepare([only_other], tmp_path / "none", "all")


def test_empty_class_is_an_error_naming_class_and_file(small_set, tmp_path):
    (small_set / "apple.ndjson").write_text("{oops\n" * 60 + (small_set / "apple.ndjson").read_text())
    (small_set / "bus.ndjson").write_text(record("bus", KEY0, [[[1], [2]]]) + "\n{oops\n" * 4)
    # its first bad records are in the one line (no manifest is written to list them), after an
    # earlier class filled the skip list
    with pytest.raises(DataFormatError, match=r"bus.ndjson.*class 'bus' has no valid drawings .*; 5 bad "
                                              r"record\(s\), first: bus.ndjson:line 1: stroke 0 has a single "
                                              r"point; bus.ndjson:line 2: broken JSON.*; …\)$") as e:
        prepare([small_set], tmp_path / "out", "apple,bus")
    assert "\n" not in str(e.value)
    (small_set / "bus.ndjson").write_text("")
    with pytest.raises(DataFormatError, match=r"class 'bus' has no valid drawings .*; no drawings in them"):
        prepare([small_set], tmp_path / "out", "apple,bus")
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError, match="'van'"):
        prepare([small_set], tmp_path / "out", "apple,van")
    with pytest.raises(ValueError, match="unknown Quick, Draw! class"):
        prepare([small_set], tmp_path / "out", "apple,applez")


def test_key_in_two_classes_is_a_counted_skip(small_set, tmp_path):
    write_class(small_set / "bus.ndjson", "bus", [KEY0 + 3] + list(range(KEY0 + 200, KEY0 + 205)))
    ds = prepare([small_set], tmp_path / "out", "apple,bus")
    assert ds.class_counts().tolist() == [40, 5]
    items = ds.manifest["skipped"]["items"]
    assert len(items) == 1 and "already kept in class 'apple'" in items[0]["reason"]
    assert items[0]["file"].endswith("bus.ndjson") and items[0]["position"] == f"key_id {KEY0 + 3}"


def test_cli_prepare_and_stats(small_set, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["data", "prepare", "--input", str(small_set), "--out", str(out), "--classes", "all",
               "--split", "fractions", "--fractions", "0.5,0.25,0.25", "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "85 drawings" in text and "no bad inputs" in text
    assert main(["data", "stats", str(out), "--json", "--verify"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["per_class"]["pear"]["total"] == 25 and st["splits"]["val"] + st["splits"]["test"] == 42
    assert st["strokes_per_drawing"]["min"] >= 1
    assert main(["data", "stats", str(out)]) == 0
    assert "apple" in capsys.readouterr().out
    # the val count is --val-per-class; its old name --eval-per-class still works, with a note
    for flag in ("--val-per-class", "--eval-per-class"):
        assert main(["data", "prepare", "--input", str(small_set), "--out", str(out), "--no-progress",
                     "--classes", "apple", flag, "3", "--test-per-class", "4", "--split", "study"]) == 0
        cap = capsys.readouterr()
        assert ("note: --eval-per-class is now called --val-per-class" in cap.err) == (flag == "--eval-per-class")
        rule = json.loads((out / "manifest.json").read_text())["split_rule"]
        assert (rule["val_per_class"], rule["test_per_class"], rule["per_class"]) == (3, 4, {"apple": "study"})
        assert "(train 33 / val 3 / test 4)" in cap.out
    (small_set / "pear.ndjson").write_text("{}\n")
    assert main(["data", "prepare", "--input", str(small_set), "--out", str(out), "--no-progress"]) == 2
    assert "class 'pear' has no valid drawings" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["file", "current directory", "input inside", "folder with a file"])
def test_cli_refuses_an_output_that_may_hold_data(small_set, tmp_path, capsys, monkeypatch, case):
    """Before reading any input, one line, exit 2, nothing touched (it used to be deleted)."""
    out = tmp_path / "out"
    inputs = [str(small_set)]
    if case == "file":
        out.write_text("mine")
    elif case == "current directory":
        out.mkdir()
        monkeypatch.chdir(out)
        out = "."
    elif case == "input inside":
        out = small_set.parent
    else:
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    before = sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))

    def no_reading(*a, **k):
        raise AssertionError("inputs read before the output was checked")

    monkeypatch.setattr("sketchembed.corpus.prepare.discover", no_reading)
    assert main(["data", "prepare", "--input", *inputs, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: will not write a prepared dataset to {out}: ")
    assert sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before


def test_nan_fractions_are_refused_naming_the_option(small_set, tmp_path, capsys):
    for text in ("nan,0.5,0.5", "0.5,nan,0.5", "inf,0,0"):
        with pytest.raises(SystemExit) as e:
            main(["data", "prepare", "--input", str(small_set), "--out", str(tmp_path / "out"),
                  "--split", "fractions", "--fractions", text])
        assert e.value.code == 2 and "argument --fractions: three finite numbers" in capsys.readouterr().err
    with pytest.raises(ValueError, match="fractions"):
        prepare([small_set], tmp_path / "out", "apple", split="fractions", fractions=(float("nan"), 0.5, 0.5))
    assert not (tmp_path / "out").exists()


def _npz_of(path, drawings):
    """sketch-rnn's layout: one object array of (dx, dy, pen_lift) rows per split."""
    rows = np.empty(len(drawings), dtype=object)
    for i, d in enumerate(drawings):
        pts = d.points().astype(np.int16)
        pts[1:, :2] = np.diff(pts[:, :2], axis=0)
        rows[i] = pts
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, train=rows)


def test_npz_files_of_one_name_and_npz_beside_ndjson(small_set, tmp_path, capsys):
    pears = list(read_drawings(small_set / "pear.ndjson"))
    _npz_of(tmp_path / "a" / "pear.npz", pears[:10])
    _npz_of(tmp_path / "b" / "pear.npz", pears[10:])
    _npz_of(tmp_path / "c" / "pear.npz", pears[:10])  # a copy of a/: its drawings are duplicates
    ds = prepare([tmp_path / "a", tmp_path / "b", tmp_path / "c"], tmp_path / "out", "pear")
    assert len(ds) == 25 and ds.manifest["duplicates"] == 10 and ds.manifest["warnings"] == []
    # beside ndjson, duplicates cannot be found (no key_ids in .npz): one warning line per class
    argv = ["data", "prepare", "--input", str(small_set), str(tmp_path / "a"), "--out", str(tmp_path / "out"),
            "--classes", "apple,pear", "--no-progress"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: class 'pear': its npz file(s) carry no key_ids")
    assert len(PreparedDataset(tmp_path / "out")) == 40 + 25 + 10
    assert PreparedDataset(tmp_path / "out").manifest["warnings"] == [err[len("warning: "):-1]]


def test_real_files_raw_and_simplified(shared_quickdraw, tmp_path):
    ds = prepare([shared_quickdraw / "simplified", shared_quickdraw / "raw"], tmp_path / "out",
                 "apple,pear,bus", split="fractions")
    # distinct drawings per class, both folders together (../shared/quickdraw/README.md)
    assert ds.class_counts().tolist() == [80, 32, 20]
    assert ds.manifest["skipped"]["count"] == 0 and ds.manifest["duplicates"] > 0
    rows = by_key(ds)
    for d in read_drawings(shared_quickdraw / "simplified" / "pear.ndjson"):
        assert np.array_equal(ds.points(rows[d.key_id]), strokes_to_points(d.strokes))
    assert ds.all_points[:, :2].min() >= 0 and ds.all_points[:, :2].max() <= 255
    assert np.all(ds.all_points[np.asarray(ds.offsets[1:]) - 1, 2] == 1)
    simp_only = prepare([shared_quickdraw], tmp_path / "s", "pear", fmt="simplified")
    assert len(simp_only) == sum(1 for _ in read_drawings(shared_quickdraw / "simplified" / "pear.ndjson"))
    assert simp_only.manifest["ignored_files"] and simp_only.manifest["simplified_from_raw"] == 0


README_COUNTS = {"apple": 80, "banana": 80, "pear": 32, "grapes": 25, "blackberry": 20, "bus": 20, "van": 20,
                 "truck": 20, "airplane": 20, "helicopter": 20}


def test_embedded_datasets(repo_root):
    s = open_embedded("study10")
    s.verify()
    assert s.classes == list(STUDY_CLASSES) and len(s) == 337
    assert dict(zip(s.classes, s.class_counts().tolist())) == README_COUNTS
    assert s.manifest["split_rule"]["rule"] == "fractions"
    assert s.manifest["counts"]["apple"] == {"train": 56, "val": 12, "test": 12}
    assert s.manifest["counts"]["van"] == {"train": 14, "val": 3, "test": 3}
    o = open_embedded("others335")
    o.verify()
    assert len(o.classes) == 335 and not set(o.classes) & set(STUDY_CLASSES)
    assert o.class_counts().min() >= 1 and not set(s.key_ids.tolist()) & set(o.key_ids.tolist())
    readme = (embedded_dataset_path("study10").parent / "README.md").read_text()
    assert f"{len(o):,} drawings" in readme and "CC BY 4.0" in readme and "| apple | 56 | 12 | 12 | 80 |" in readme
    with pytest.raises(ValueError, match="unknown embedded dataset"):
        embedded_dataset_path("study11")


def test_embedded_missing_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr("sketchembed.corpus.embedded.EMBEDDED_ROOT", tmp_path)
    with pytest.raises(FileNotFoundError, match="build_embedded_data.py"):
        embedded_dataset_path("study10")


def test_other_dataset_through_the_datamodule_with_a_hostile_test_dir(tmp_path):
    """Class names outside Quick, Draw! from prepare to batches; an eval test_dir (prepared on the
    fly) with a nested-JSON bomb loses that line only."""
    src = tmp_path / "beasts"
    write_class(src / "wyvern.ndjson", "wyvern", range(KEY0, KEY0 + 30), seed=1)
    write_class(src / "griffin.ndjson", "griffin", range(KEY0 + 100, KEY0 + 130), seed=2)
    prepare([src], tmp_path / "train", "from-files", split="fractions")
    test = tmp_path / "test"
    write_class(test / "wyvern.ndjson", "wyvern", range(KEY0 + 500, KEY0 + 505), seed=3)
    (test / "wyvern.ndjson").write_text("[" * 100_000 + "\n" + (test / "wyvern.ndjson").read_text())
    dm = SketchDataModule(root=str(tmp_path / "train"), test_dir=str(test), batch_size=16)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()[0]))
    assert dm.class_names == ["griffin", "wyvern"] and batch["label"].tolist() == [1] * 5
    skipped = dm._open_test_dir().manifest["skipped"]
    assert skipped["count"] == 1 and "nested too deeply" in skipped["items"][0]["reason"]
    dm.teardown("test")
