"""`sketchembed human` without a person: scripted answers on stdin, known right/wrong counts."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from sketchembed.eval import human

CLASSES = ["apple", "banana", "bus"]


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    from sketchembed.data.store import PreparedWriter

    root = tmp_path_factory.mktemp("human") / "tiny"
    w = PreparedWriter(root, CLASSES)
    r = np.random.default_rng(0)
    splits = []
    for i in range(30):
        n = int(r.integers(4, 20))
        pts = np.zeros((n, 3), np.int16)
        pts[:, :2] = r.integers(0, 256, size=(n, 2))
        pts[n // 2 - 1, 2] = 1
        pts[-1, 2] = 1
        w.add(pts, i % 3, 1000 + i)
        splits.append(2 if i < 18 else 0)
    w.close(splits=np.array(splits))
    return root


def args(root, **kw):
    base = dict(data=str(root), split="test", n=8, fractions="0.5,1.0", seed=3, metrics=None, out=None)
    base.update(kw)
    return SimpleNamespace(**base)


def test_scripted_answers_give_the_counted_accuracy(tiny_store, tmp_path):
    from sketchembed.data.store import PreparedDataset

    items = human.sample_items(PreparedDataset(tiny_store), 8, [0.5, 1.0], seed=3)
    assert len({it.row for it in items}) == 8                       # distinct drawings
    assert sorted(it.fraction for it in items) == [0.5] * 4 + [1.0] * 4
    # right on items 0, 2, 3, 6 (by number or by name), wrong on the others; plus junk lines re-asked
    right = {0, 2, 3, 6}
    lines = []
    for k, it in enumerate(items):
        if k == 1:
            lines.append("not-a-class")
        if k in right:
            lines.append(str(it.label + 1) if k % 2 else CLASSES[it.label].upper())
        else:
            lines.append(CLASSES[(it.label + 1) % 3])
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"test/acc@50": 0.25, "test/acc@100": 0.875}))
    out, res_file = io.StringIO(), tmp_path / "me.json"
    assert human.run(args(tiny_store, metrics=str(metrics), out=str(res_file)),
                     stdin=io.StringIO("\n".join(lines) + "\n"), stdout=out) == 0
    text = out.getvalue()
    exp = {f: (sum(1 for k, it in enumerate(items) if it.fraction == f and k in right), 4) for f in (0.5, 1.0)}
    for f, model in ((0.5, "25.0 %"), (1.0, "87.5 %")):
        c, n = exp[f]
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(f"{100 * f:g} %"))
        assert f"({c}/{n})" in line and f"{100 * c / n:5.1f} %" in line and model in line
    assert "not a class: 'not-a-class'" in text
    assert chr(0x2800) in text or any(0x2800 < ord(ch) <= 0x28FF for ch in text)  # braille art shown
    saved = json.loads(res_file.read_text())
    assert saved["human/acc@50"] == exp[0.5][0] / 4 and saved["human/acc@100"] == exp[1.0][0] / 4
    assert sum(a["correct"] for a in saved["answers"]) == len(right)


def test_eof_ends_cleanly_with_results_so_far(tiny_store):
    from sketchembed.data.store import PreparedDataset

    items = human.sample_items(PreparedDataset(tiny_store), 8, [0.5, 1.0], seed=3)
    first = items[0]
    out = io.StringIO()
    assert human.run(args(tiny_store), stdin=io.StringIO(f"{first.label + 1}\n"), stdout=out) == 0
    text = out.getvalue()
    assert "(end of input)" in text
    assert f"{100 * first.fraction:g} %" in text and "(1/1)" in text and "100.0 %" in text


def test_truncation_matches_eval_rule(tiny_store):
    from sketchembed.data.inputs import keep_count
    from sketchembed.data.store import PreparedDataset

    ds = PreparedDataset(tiny_store)
    for it in human.sample_items(ds, 12, [0.5, 1.0], seed=0):
        n = len(ds.points(it.row))
        assert len(it.points) == keep_count(n, it.fraction) == human.keep_count(n, it.fraction)
        assert it.points[-1, 2] == 1


def test_parse_answer():
    assert human.parse_answer("2", CLASSES) == 1
    assert human.parse_answer(" Bus ", CLASSES) == 2
    assert human.parse_answer("ban", CLASSES) == 1
    assert human.parse_answer("b", CLASSES) is None      # banana or bus
    assert human.parse_answer("4", CLASSES) is None
    assert human.parse_answer("", CLASSES) is None


def test_braille_draws_strokes_without_joining_them():
    pts = np.array([[0, 0, 0], [255, 0, 1], [0, 255, 0], [255, 255, 1]])
    dots = human.rasterize_dots(pts, 64)
    assert dots[0].all() and dots[63].all() and not dots[1:63].any()
    lines = human.braille(pts)
    assert len(lines) == 16 and all(len(ln) == 32 for ln in lines)


def test_cli_subprocess_with_stdin(tiny_store):
    proc = subprocess.run([sys.executable, "-m", "sketchembed.cli", "human", "--data", str(tiny_store), "--n", "2",
                           "--fractions", "1.0"], input="q\n", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "no answers given" in proc.stdout
