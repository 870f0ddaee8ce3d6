"""`sketchembed suggest` with a user's plain drawing (raw or simplified, with or without the dataset's
record fields), the note when the query itself is in the index; a crafted index refused in one line
naming its file and field; `index build`'s options checked before anything is embedded, `--max`
sampling across classes; `data stats --verify` saying so, its table not cut at 80 columns."""

from __future__ import annotations

import io
import json
import re
import shutil
import time

import numpy as np
import pytest

from helpers import CLASSES3, fifo
from helpers import ndjson_file as _ndjson
from sketchembed.cli import main
from sketchembed.commands import index as index_cmd
from sketchembed.corpus.formats import read_drawings
from sketchembed.corpus.user_drawing import check_raw
from sketchembed.eval import knn


@pytest.fixture(scope="module")
def index_dir(trained, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("index") / "index"
    assert main(["index", "build", "--ckpt", str(trained["ckpt"]), "--data", str(trained["data"]),
                 "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    return out


def strokes_of(points, scale=1.0, offset=0.0, time=False, as_int=True):
    from sketchembed.corpus.sketch import points_to_strokes

    out = []
    t0 = 0
    for s in points_to_strokes(points):
        xy = s[:, :2].astype(float) * scale + offset
        rows = [xy[:, 0].round().astype(int).tolist(), xy[:, 1].round().astype(int).tolist()] if as_int else \
            [xy[:, 0].tolist(), xy[:, 1].tolist()]
        if time:
            rows.append(list(range(t0, t0 + 10 * len(s), 10)))
            t0 += 10 * len(s) + 100
        out.append(rows)
    return out


def suggest(trained, index_dir, sketch, capsys, *extra):  # noqa: F811
    capsys.readouterr()
    rc = main(["suggest", "--ckpt", str(trained["ckpt"]), "--index", str(index_dir), "--sketch", str(sketch),
               "--k", "3", "--device", "cpu", *extra])
    out = capsys.readouterr()
    return rc, out.out.splitlines(), out.err


def top_key(lines) -> int:
    return int(lines[2].split()[1])


@pytest.mark.parametrize("form", ["object", "bare_list"])
def test_suggest_takes_a_plain_drawing(form, trained, index_dir, tmp_path, capsys):  # noqa: F811
    index = knn.KNNIndex.load(index_dir)
    row = 11
    strokes = strokes_of(index.drawing(row))
    text = json.dumps({"drawing": strokes} if form == "object" else strokes)
    path = tmp_path / ("d.json" if form == "object" else "d.ndjson")
    path.write_text(text + "\n")
    rc, lines, err = suggest(trained, index_dir, path, capsys)
    assert rc == 0, err
    assert "(no label)" in lines[0] and len(lines) == 2 + 3 + 1
    assert top_key(lines) == int(index.key_ids[row])  # the same drawing: itself first, and said so
    assert lines[-1].startswith("note: rank 1 is at distance 0")


@pytest.mark.parametrize("time", [False, True])
def test_suggest_simplifies_raw_coordinates_on_the_way_in(time, trained, index_dir, tmp_path, capsys):  # noqa: F811
    """A drawing app's raw coordinates (floats on a larger canvas, with or without a time row) give
    what the same drawing in the dataset's simplified form (bounding box on 0-255) gives."""
    index = knn.KNNIndex.load(index_dir)
    pts = index.drawing(11).astype(float)
    span = np.ptp(pts[:, :2], 0).max()
    simple = pts.copy()
    simple[:, :2] = np.round((pts[:, :2] - pts[:, :2].min(0)) * 255 / span)
    ref = tmp_path / "simplified.json"
    ref.write_text(json.dumps({"drawing": strokes_of(simple)}))
    raw = tmp_path / "raw.json"
    raw.write_text(json.dumps({"drawing": strokes_of(simple, 3.1, 40.5, time=time, as_int=False)}))
    rc, want, _ = suggest(trained, index_dir, ref, capsys)
    rc2, got, err = suggest(trained, index_dir, raw, capsys)
    assert rc == rc2 == 0, err
    assert [ln.split()[1] for ln in got[2:5]] == [ln.split()[1] for ln in want[2:5]]


def test_suggest_says_when_the_query_is_in_the_index(trained, index_dir, tmp_path, capsys):  # noqa: F811
    index = knn.KNNIndex.load(index_dir)
    row = 7
    own = _ndjson(tmp_path / "own.ndjson", index.drawing(row), word=CLASSES3[int(index.labels[row])],
                  key_id=int(index.key_ids[row]))
    rc, lines, _ = suggest(trained, index_dir, own, capsys)
    assert rc == 0
    assert lines[-1] == (f"note: rank 1 is at distance 0: your sketch itself (key_id {int(index.key_ids[row])}) "
                         "is in the index")
    copy = tmp_path / "copy.json"
    copy.write_text(json.dumps({"drawing": strokes_of(index.drawing(row))}))
    rc, lines, _ = suggest(trained, index_dir, copy, capsys)
    assert lines[-1].startswith("note: rank 1 is at distance 0: a drawing identical to your sketch")
    far = tmp_path / "far.json"
    rng = np.random.default_rng(3)
    far.write_text(json.dumps({"drawing": [[rng.integers(0, 255, 9).tolist(), rng.integers(0, 255, 9).tolist()]]}))
    rc, lines, _ = suggest(trained, index_dir, far, capsys)
    assert rc == 0 and not lines[-1].startswith("note:")


@pytest.mark.parametrize("text, reason", [
    ('{"drawing": [[[1, 2, 3], [4, 5]]]}', "x/y length mismatch"),
    ('{"drawing": "nope"}', "not a list of strokes"),
    ('[[[1, 2], [3, 4]]', "broken JSON"),
    ('{"key_id": "x", "drawing": [[[1, 2], [3, 4]]]}', "key_id 'x' is not an integer"),
])
def test_suggest_refuses_bad_drawings_in_one_line(text, reason, trained, index_dir, tmp_path, capsys):  # noqa: F811
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    rc, _, err = suggest(trained, index_dir, bad, capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "bad.json" in err and reason in err, err


@pytest.mark.parametrize("drawing, reason", [
    ([[[0, 1e308], [0, 5]]], r"stroke 0 has coordinates outside ±100,000"),
    ([[[-1e308, 1e308], [0, 5]]], r"stroke 0 has coordinates outside ±100,000"),
    ([[[0, 10], [0, 5]], [[0, 200001], [0, 5], [0, 9]]], r"stroke 1 has coordinates outside ±100,000"),
    ([[np.linspace(0, 255, 20000).tolist(), [0.0, 255.0] * 10000]], r"too intricate to simplify: 20,000 points"),
], ids=["huge", "huge both ways", "beyond the limit", "zig-zag"])
def test_suggest_refuses_raw_drawings_beyond_the_readers_limits_at_once(drawing, reason, trained, index_dir,  # noqa: F811
                                                                       tmp_path, capsys):
    """Raw coordinates beyond the raw readers' ±100,000 and drawings too intricate to simplify in
    reasonable time are refused before the simplification (the zig-zag took a minute and 1 GB)."""
    sketch = tmp_path / "raw.json"
    sketch.write_text(json.dumps({"drawing": drawing}))
    t0 = time.perf_counter()
    rc, _, err = suggest(trained, index_dir, sketch, capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "raw.json" in err, err
    assert re.search(rf"raw drawing: {reason}", err), err
    assert time.perf_counter() - t0 < 10


def test_the_real_raw_drawings_pass_the_raw_checks(shared_quickdraw):
    """The bound on the simplification's work leaves every real raw drawing alone (9,513 of them)."""
    n = 0
    for f in sorted((shared_quickdraw / "raw").glob("*.ndjson")):
        for d in read_drawings(f, on_error="skip"):
            assert check_raw([np.asarray(s, float) for s in d.strokes]) is None, (f.name, d.key_id)
            n += 1
    assert n > 9000


# ------------------------------------------------------------------------------------ crafted indexes
def _meta(change):
    def edit(d):
        meta = json.loads((d / "index.json").read_text())
        (d / "index.json").write_text(change(meta) if callable(change) else change)
    return edit


def _set(key, value):
    return _meta(lambda m: json.dumps({**m, key: value}))


def _array(name, change):
    def edit(d):
        np.save(d / f"{name}.npy", change(np.load(d / f"{name}.npy")))
    return edit


def _fifo(name):
    def edit(d):
        fifo(d / name, (d / name).read_bytes())  # fed to a reader that opens it (the bug), for 30 s
    return edit


def _folder(name):
    def edit(d):
        (d / name).unlink()
        (d / name).mkdir()
        (d / name / "notes.txt").write_text("someone's")
    return edit


def _link_out(name):
    def edit(d):
        outside = d.parent / f"outside-{name}"
        outside.write_bytes((d / name).read_bytes())
        (d / name).unlink()
        (d / name).symlink_to(outside)
    return edit


def _longer_header(name, extra=1000):
    def edit(d):
        a = np.load(d / name)
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": a.dtype.str, "fortran_order": False,
                                                      "shape": (len(a) + extra, *a.shape[1:])})
        (d / name).write_bytes(header.getvalue() + a.tobytes())
    return edit


def _reversed_inner(o):
    o = o.copy()
    o[1:-1] = o[1:-1][::-1]
    return o


CRAFTED = [
    # (name, edit of a good index folder, the file named, what the message says)
    ("no classes", _meta(lambda m: json.dumps({k: v for k, v in m.items() if k != "classes"})), "index.json",
     r"'classes' is missing"),
    ("metadata a list", _meta("[1, 2]"), "index.json", r"must be a JSON object, got list"),
    ("nested too deeply", _meta('{"a": ' + "[" * 100000 + "]" * 100000 + "}"), "index.json", r"nested too deeply"),
    ("classes a string", _set("classes", "abc"), "index.json", r"'classes' must be a non-empty list"),
    ("classes numbers", _set("classes", [0, 1, 2]), "index.json", r"'classes' must be a non-empty list"),
    ("classes twice", _set("classes", ["apple", "apple", "bus"]), "index.json", r"'classes' must be .*distinct"),
    ("n a string", _set("n", "48"), "index.json", r"'n' must be a whole number"),
    ("n wrong", _set("n", 47), "index.json", r"'n' says 47, but embeddings.npy has 48 rows"),
    ("dim wrong", _set("dim", 3), "index.json", r"'dim' says 3, but embeddings.npy has \d+ columns"),
    ("version true", _set("version", True), "index.json", r"index version true, but this code reads version 1"),
    ("version 2", _set("version", 2), "index.json", r"index version 2, but this code reads version 1; rebuild"),
    ("no version", _meta(lambda m: json.dumps({k: v for k, v in m.items() if k != "version"})), "index.json",
     r"index version \(none given\)"),
    ("index.json a FIFO", _fifo("index.json"), "index.json", r"a FIFO, not a regular file"),
    ("labels a FIFO", _fifo("labels.npy"), "labels.npy", r"a FIFO, not a regular file"),
    ("points a FIFO", _fifo("points.npy"), "points.npy", r"a FIFO, not a regular file"),
    ("embeddings a folder", _folder("embeddings.npy"), "embeddings.npy", r"a folder, not a regular file"),
    ("key_ids a link out", _link_out("key_ids.npy"), "key_ids.npy", r"a symbolic link out of .*crafted"),
    ("labels claim more rows", _longer_header("labels.npy"), "labels.npy", r"header declares .* but the file has"),
    ("labels objects", lambda d: np.save(d / "labels.npy", np.array([1, None] * 24, dtype=object)), "labels.npy",
     r"holds Python objects \(a pickle\), which are never loaded"),
    ("a class with an ANSI escape", _set("classes", ["apple", "\x1b[2K\x1b[31mbanana", "bus"]), "index.json",
     r"'classes' must be .*no control characters.*\\u001b\[2K"),
    ("a class with a newline", _set("classes", ["apple", "banana\n   1  5017  bus  0.0000", "bus"]), "index.json",
     r"'classes' must be .*no control characters"),
    ("sha256 a number", _set("ckpt_sha256", 12), "index.json", r"'ckpt_sha256' must be a string"),
    ("labels floats", _array("labels", lambda a: a + 0.5), "labels.npy",
     r"must be a 1-d array of integers, got float64"),
    ("labels beyond the classes", _set("classes", ["apple", "banana"]), "labels.npy",
     r"label 2 is outside the 2 classes"),
    ("negative key_ids", _array("key_ids", lambda a: -np.ones(len(a), np.int64)), "key_ids.npy",
     r"must not be negative"),
    ("key_ids short", _array("key_ids", lambda a: a[:-1]), "key_ids.npy", r"47 rows, but embeddings.npy has 48"),
    ("embeddings 1-d", _array("embeddings", lambda a: a[:, 0]), "embeddings.npy", r"must be a 2-d array of floats"),
    ("embeddings strings", _array("embeddings", lambda a: a.astype(str)), "embeddings.npy",
     r"must be a 2-d array of floats"),
    ("offsets reversed", _array("offsets", _reversed_inner), "offsets.npy", r"offsets must increase"),
    ("offsets oversized", _array("offsets", lambda a: np.where(a > 0, 10**12, 0)), "offsets.npy",
     r"must run from 0 to \d+"),
    ("points 1-d", _array("points", lambda a: a.ravel()), "points.npy", r"must be a 2-d array of integers"),
    ("points floats", _array("points", lambda a: a * 1e10), "points.npy",
     r"must be a 2-d array of integers, got float64"),
    ("points off the canvas", _array("points", lambda a: a.astype(np.int32) * 300), "points.npy",
     r"row \d+ is .*x, y on 0–255"),
    ("points missing", lambda d: (d / "points.npy").unlink(), "points.npy", r"missing from the index .*go together"),
]


@pytest.mark.parametrize("name, edit, file, pattern", CRAFTED, ids=[c[0] for c in CRAFTED])
def test_a_crafted_index_is_refused_in_one_line_naming_file_and_field(name, edit, file, pattern, trained,  # noqa: F811
                                                                      index_dir, tmp_path, capsys):
    bad = tmp_path / "crafted"
    shutil.copytree(index_dir, bad)
    edit(bad)
    with pytest.raises((ValueError, FileNotFoundError), match=pattern) as e:
        knn.KNNIndex.load(bad)
    assert str(e.value).startswith(str(bad / file)) and "\n" not in str(e.value)
    sketch = _ndjson(tmp_path / "s.ndjson", knn.KNNIndex.load(index_dir).drawing(3))
    rc, out, err = suggest(trained, bad, sketch, capsys, "--png", str(tmp_path / "s.png"))
    assert rc == 2 and err.count("\n") == 1 and str(bad / file) in err and "Traceback" not in err, err
    assert not out and "allow_pickle" not in err and "\x1b" not in err


def test_non_finite_embeddings_name_the_index(index_dir, tmp_path):
    bad = tmp_path / "nan"
    shutil.copytree(index_dir, bad)
    _array("embeddings", lambda a: np.full_like(a, np.nan))(bad)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(bad))}: index embeddings contain NaN/inf$"):
        knn.KNNIndex.load(bad)


# ------------------------------------------------------------------------------------ index build options
@pytest.mark.parametrize("option, value, pattern", [
    ("--max", "-3", r"--max must be >= 1, got -3"),
    ("--max", "0", r"--max must be >= 1, got 0"),
    ("--batch-size", "0", r"--batch-size must be >= 1, got 0"),
    ("--seed", "-1", r"--seed must be >= 0, got -1"),
    ("--out", "FILE", r"--out .*afile: it is a file, not a folder"),
    ("--out", "FILE/sub", r"--out .*afile/sub: .*afile is a file, not a folder"),
    ("--out", "OTHER", r"--out .*other: it is a folder that is not an index \(no index.json\)"),
])
def test_index_build_checks_its_options_before_embedding(option, value, pattern, trained, tmp_path, capsys,  # noqa: F811
                                                         monkeypatch):
    (tmp_path / "afile").write_text("keep me")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "labels.npy").write_text("someone's file")

    def never(*a, **k):
        raise AssertionError("embedded before the options were checked")

    monkeypatch.setattr(index_cmd, "build_index", never)
    value = value.replace("FILE", str(tmp_path / "afile")).replace("OTHER", str(tmp_path / "other"))
    args = {"--out": str(tmp_path / "new"), option: value}
    capsys.readouterr()
    assert main(["index", "build", "--ckpt", str(trained["ckpt"]), "--data", str(trained["data"]), "--quiet",
                 "--device", "cpu", *[x for kv in args.items() for x in kv]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(pattern, err), err
    assert (tmp_path / "afile").read_text() == "keep me"
    assert (tmp_path / "other" / "labels.npy").read_text() == "someone's file"


@pytest.mark.parametrize("case", ["labels.npy a link out", "points.npy a folder"])
def test_index_build_overwrites_an_earlier_index_only_of_its_own_regular_files(case, trained, index_dir, tmp_path,  # noqa: F811
                                                                               capsys, monkeypatch):
    """Writing an index follows links and descends nowhere: a link would have the arrays written over
    someone's file elsewhere, so such a folder is refused before anything is embedded."""
    again = tmp_path / "again"
    shutil.copytree(index_dir, again)
    if case == "labels.npy a link out":
        _link_out("labels.npy")(again)
        keep = tmp_path / "outside-labels.npy"
    else:
        _folder("points.npy")(again)
        keep = again / "points.npy" / "notes.txt"
    before = keep.read_bytes()

    def never(*a, **k):
        raise AssertionError("embedded before the output was checked")

    monkeypatch.setattr(index_cmd, "build_index", never)
    capsys.readouterr()
    assert main(["index", "build", "--ckpt", str(trained["ckpt"]), "--data", str(trained["data"]),
                 "--out", str(again), "--quiet", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    what = "a symbolic link" if "link" in case else "a folder"
    assert err.count("\n") == 1, err
    assert f"{case.split()[0]} is {what}, where a KNN index holds only regular files" in err, err
    assert keep.read_bytes() == before


def test_index_build_rebuilds_an_earlier_index_in_place(trained, index_dir, tmp_path):  # noqa: F811
    again = tmp_path / "again"
    shutil.copytree(index_dir, again)
    assert main(["index", "build", "--ckpt", str(trained["ckpt"]), "--data", str(trained["data"]),
                 "--out", str(again), "--quiet", "--device", "cpu", "--max", "6", "--no-drawings"]) == 0
    index = knn.KNNIndex.load(again)
    assert len(index) == 6 and index.points is None and not (again / "points.npy").exists()


# ------------------------------------------------------------------------------------ index --max
def test_stratified_positions_take_every_class_in_turn():
    from sketchembed.eval.index import stratified_positions

    labels = np.array([0] * 20 + [1] * 2 + [2] * 8)
    pos = stratified_positions(labels, 10, seed=1)
    assert len(pos) == 10 and len(set(pos)) == 10 and np.all(np.diff(pos) > 0)
    assert np.bincount(labels[pos], minlength=3).tolist() == [4, 2, 4]
    assert np.array_equal(pos, stratified_positions(labels, 10, seed=1))
    assert not np.array_equal(pos, stratified_positions(labels, 10, seed=2))
    assert np.array_equal(stratified_positions(labels, 99), np.arange(30))


def test_index_build_max_samples_across_classes(trained, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "small"
    assert main(["index", "build", "--ckpt", str(trained["ckpt"]), "--data", str(trained["data"]),
                 "--out", str(out), "--quiet", "--max", "9", "--device", "cpu"]) == 0
    index = knn.KNNIndex.load(out)
    # the train split is sorted by class: the first 9 rows would all be one class
    assert np.bincount(index.labels, minlength=3).tolist() == [3, 3, 3]
    assert "3 classes" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ data stats
def test_data_stats_verify_says_so_and_keeps_its_columns(capsys):
    assert main(["data", "stats", "study10", "--verify"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("verified: the sha256 of points, offsets, labels, key_ids, splits match")
    header = next(ln for ln in lines if "class" in ln and "split rule" in ln)
    assert len(header) > 80 and "strokes/drawing" in header  # not cut at 80 columns off a terminal
    row = next(ln for ln in lines if " apple " in ln)
    assert row.rstrip().endswith("│") and len(row.split("│")) == 10


def test_open_checkpoint_reads_the_file_once_and_gives_the_models_inputs(trained, monkeypatch):  # noqa: F811
    """index build, suggest and the studio open a checkpoint with one read: model, input settings."""
    import torch

    from sketchembed.data.datamodule import SketchDataModule
    from sketchembed.data.inputs import read_inputs
    from sketchembed.models.checkpoint import open_checkpoint
    from sketchembed.safeload import safe_load

    reads = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: reads.append(a[0]) or real(*a, **kw))
    model, inputs, record, ckpt = open_checkpoint(trained["ckpt"])
    assert len(reads) == 1 and not model.training
    assert inputs == read_inputs(safe_load(trained["ckpt"])) and inputs.seq_std > 0
    dm = SketchDataModule.from_inputs(inputs, trained["data"], views=tuple(sorted(model.views)))
    assert dm.seq_std == inputs.seq_std and tuple(dm.class_names) == inputs.classes


def test_a_sketch_files_word_with_a_control_character_is_refused(tmp_path):
    """The word is printed in suggest's header: an ANSI escape in it would reach the terminal."""
    from sketchembed.commands.suggest import parse_user_drawing, read_sketch
    from sketchembed.corpus.sketch import DataFormatError

    strokes = [[[10, 200], [10, 200]]]
    assert parse_user_drawing(json.dumps({"word": "cat", "drawing": strokes}).encode(), "s.json")[0].word == "cat"
    for word in ("cat\x1b[31m", "cat\nrank 1"):
        with pytest.raises(DataFormatError, match=r"s.json.*line 1.*control character"):
            parse_user_drawing(json.dumps({"word": word, "drawing": strokes}).encode(), "s.json")
    sketch = tmp_path / "bad.ndjson"
    sketch.write_text(json.dumps({"word": "cat\x1b[2J", "drawing": strokes}) + "\n")
    with pytest.raises(DataFormatError, match="U\\+001B"):
        read_sketch(sketch)
