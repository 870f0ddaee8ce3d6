"""`sketchembed human` without a person: scripted answers on stdin, known right/wrong counts."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from sketchembed.commands import human as human_cmd
from sketchembed.eval import human

CLASSES = ["apple", "banana", "bus"]


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    from sketchembed.corpus.store import PreparedWriter

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
    from sketchembed.corpus.store import PreparedDataset

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
    assert human_cmd.run(args(tiny_store, metrics=str(metrics), out=str(res_file)),
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
    from sketchembed.corpus.store import PreparedDataset

    items = human.sample_items(PreparedDataset(tiny_store), 8, [0.5, 1.0], seed=3)
    first = items[0]
    out = io.StringIO()
    assert human_cmd.run(args(tiny_store), stdin=io.StringIO(f"{first.label + 1}\n"), stdout=out) == 0
    text = out.getvalue()
    assert "(end of input)" in text
    assert f"{100 * first.fraction:g} %" in text and "(1/1)" in text and "100.0 %" in text


def test_truncation_matches_eval_rule(tiny_store):
    from sketchembed.corpus.store import PreparedDataset
    from sketchembed.data.inputs import keep_count

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


# ------------------------------------------------------------------------------------ checked up front
class _Answers(io.StringIO):
    """stdin that records whether anything was asked, and may run ``on_first`` at the first read."""

    def __init__(self, text, on_first=None):
        super().__init__(text)
        self.asked, self.on_first = 0, on_first

    def readline(self, *a):
        self.asked += 1
        if self.on_first and self.asked == 1:
            self.on_first()
        return super().readline(*a)


@pytest.mark.parametrize("make, pattern", [
    (lambda d: dict(metrics=_write(d / "m.json", {"test/acc@50": 0.7, "test/acc@100": "n/a"})),
     r"m.json: 'test/acc@100' must be an accuracy on 0–1, got \"n/a\""),
    (lambda d: dict(metrics=_write(d / "m.json", {"val/acc@50": True})), r"m.json: 'val/acc@50' must be an accuracy"),
    (lambda d: dict(metrics=_write(d / "m.json", {"test/acc@50": 87.5})),
     r"'test/acc@50' must be an accuracy on 0–1, got 87.5"),
    (lambda d: dict(out=str(d / "missing" / "me.json")), r"--out .*me.json: the folder .*missing does not exist"),
    (lambda d: dict(out=str(d)), r"--out .*: is a folder"),
    (lambda d: dict(seed=-1), r"--seed must be >= 0, got -1"),
])
def test_what_would_fail_at_the_end_is_refused_before_the_first_drawing(make, pattern, tiny_store, tmp_path):
    stdin, out = _Answers("1\n" * 8), io.StringIO()
    with pytest.raises(ValueError, match=pattern):
        human_cmd.run(args(tiny_store, **make(tmp_path)), stdin=stdin, stdout=out)
    assert stdin.asked == 0 and out.getvalue() == ""


def test_answers_are_printed_when_saving_fails_at_the_end(tiny_store, tmp_path):
    folder = tmp_path / "gone"
    folder.mkdir()
    stdin, out = _Answers("1\n2\nq\n", on_first=folder.rmdir), io.StringIO()  # the folder goes away meanwhile
    with pytest.raises(ValueError, match=r"--out .*me.json: cannot write it .*printed above as JSON"):
        human_cmd.run(args(tiny_store, out=str(folder / "me.json")), stdin=stdin, stdout=out)
    text = out.getvalue()
    saved = json.loads(text[text.index("\n{") + 1:])
    assert len(saved["answers"]) == 2 and saved["seed"] == 3


def test_cli_names_the_seed_option(tiny_store):
    proc = subprocess.run([sys.executable, "-m", "sketchembed.cli", "human", "--data", str(tiny_store), "--seed", "-1"],
                          input="", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr == "error: --seed must be >= 0, got -1\n" and proc.stdout == ""


def _write(path, data) -> str:
    path.write_text(json.dumps(data))
    return str(path)
