"""`sketchembed suggest` with a user's plain drawing (raw or simplified, with or without the dataset's
record fields), the note when the query itself is in the index; `index build --max` sampling across
classes; `data stats --verify` saying so, its table not cut at 80 columns."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_eval_lib import CLASSES3, _ndjson, trained  # noqa: F401 - `trained`: the tiny model fixture

from sketchembed.cli import main
from sketchembed.eval import knn


@pytest.fixture(scope="module")
def index_dir(trained, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("index") / "index"
    assert main(["index", "build", "--ckpt", str(trained["ckpt"]), "--data", str(trained["data"]),
                 "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    return out


def strokes_of(points, scale=1.0, offset=0.0, time=False, as_int=True):
    from sketchembed.data.sketch import points_to_strokes

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
    assert lines[-1] == f"note: rank 1 is at distance 0: your sketch itself (key_id {int(index.key_ids[row])}) is in the index"
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
    from sketchembed.eval.checkpoint import open_checkpoint
    from sketchembed.safeload import safe_load

    reads = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: reads.append(a[0]) or real(*a, **kw))
    model, inputs, ckpt = open_checkpoint(trained["ckpt"])
    assert len(reads) == 1 and not model.training
    assert inputs == read_inputs(safe_load(trained["ckpt"])) and inputs.seq_std > 0
    dm = SketchDataModule.from_inputs(inputs, trained["data"], views=tuple(sorted(model.views)))
    assert dm.seq_std == inputs.seq_std and tuple(dm.class_names) == inputs.classes
