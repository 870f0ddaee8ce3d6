"""scripts/readme_figures.py: the README's tables are rewritten from run outputs, between their markers,
with command, seed, n, commit and 95 % intervals; end to end (slow) on tiny runs."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

from sketchembed.eval import crossval

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "readme_figures.py"


def _load_figures():
    spec = importlib.util.spec_from_file_location("readme_figures", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def figures():
    return _load_figures()


def _run(d: Path, command: str, metrics_name: str, metrics: dict, commit: str = "abc1234") -> None:
    d.mkdir(parents=True)
    (d / "figures_run.json").write_text(json.dumps({"command": command, "commit": commit, "wall_s": 75.2,
                                                    "cpu_cores": 2}))
    (d / metrics_name).write_text(json.dumps(metrics))


def synthetic_runs(root: Path) -> None:
    """The run dirs the script leaves, with counts out of 40 test / 20 val drawings."""
    def train(acc100):
        return {"seed": 42, "model_kind": "combined", "probe_epochs": 30, "test/n": 40.0, "val/n": 20.0,
                "best/val/acc@100": 0.75, "test/acc@50": 0.5, "test/acc@100": acc100, "test/knn@3": 0.625,
                "test/knn@4": 0.6, "test/probe_acc": 0.55}

    _run(root / "main" / "train", "python train.py", "train_metrics.json", train(0.8))
    _run(root / "main" / "eval", "python eval.py ckpt_path=/x/best.ckpt", "metrics.json",
         {"n_test": 40, "test/acc@10": 0.2, "test/acc@50": 0.5, "test/acc@100": 0.8, "test/knn@3": 0.625,
          "test/probe_acc": 0.575})
    (root / "main" / "eval" / "tsne.png").write_bytes(b"\x89PNG tsne")
    (root / "main" / "eval" / ".hydra").mkdir()
    (root / "main" / "eval" / ".hydra" / "config.yaml").write_text("seed: 42\nprobe:\n  steps: 300\n")
    cv_runs(root, {"default": 32, "channels": 12, "ema": 28, "tta": 33, "pretrained": 31})


def cv_runs(root: Path, right: dict[str, int], n: int = 40) -> None:
    """A 2-fold CV dir per choose row: the first ``right[name]`` of the n drawings classified right."""
    figures = _load_figures()
    for name, overrides, _, _ in figures.CHOOSE_ROWS:
        d = root / "choose" / name
        labels = np.arange(n) % 10
        pred = np.where(np.arange(n) < right[name], labels, (labels + 1) % 10)
        fold = [{"key_ids": np.arange(a, b, dtype=np.uint64), "labels": labels[a:b], "pred@100": pred[a:b],
                 "pred@50": labels[a:b], "knn@3": pred[a:b]} for a, b in ((0, n // 2), (n // 2, n))]
        pooled = crossval.pool_folds(fold)
        d.mkdir(parents=True)
        (d / "figures_run.json").write_text(json.dumps({"command": " ".join(["python train.py cv.folds=2", *overrides]),
                                                        "commit": "abc1234", "wall_s": 75.2, "cpu_cores": 2}))
        crossval.write_cv(d, pooled, crossval.cv_metrics(pooled, {"seed": 42, "cv/seed": 0}), name)
    _run(root / "choose" / "pretrained_pretrain", "python train.py model=direct data=others335", "train_metrics.json",
         {"best_checkpoint": "x.ckpt"})


README = """# x

intro stays

<!-- figures:main-job -->
old main table
<!-- /figures:main-job -->

between stays

<!-- figures:main-eval -->
old eval
<!-- /figures:main-eval -->

## Choosing

<!-- figures:choose -->
| old | table |
<!-- /figures:choose -->

end stays
"""


def section(text: str, name: str) -> str:
    return text.split(f"<!-- figures:{name} -->")[1].split(f"<!-- /figures:{name} -->")[0]


def test_rewrite_from_runs(figures, tmp_path, capsys):
    root = tmp_path / "runs"
    synthetic_runs(root)
    readme = tmp_path / "README.md"
    readme.write_text(README)
    assert figures.main(["--from-runs", str(root), "--readme", str(readme)]) == 0
    text = readme.read_text()
    outside = re.sub(r"<!-- figures:([\w-]+) -->.*?<!-- /figures:\1 -->", "", text, flags=re.S)
    assert outside == re.sub(r"<!-- figures:([\w-]+) -->.*?<!-- /figures:\1 -->", "", README, flags=re.S)
    main = section(text, "main-job")
    assert "old main table" not in main
    assert "| combined model, test split (n = 40 drawings) |" in main
    assert "| classification (its own head) | 50.0 % [35.2–64.8] | 80.0 % [65.2–89.5] |" in main
    assert "| linear probe on the frozen embeddings, 30 epochs | – | 55.0 % [39.8–69.3] |" in main
    assert "`python train.py` — seed 42, n = 40 test drawings, commit `abc1234`, 1 min 15 s on 2 CPU cores" in main
    ev = section(text, "main-eval")
    assert "| linear probe, trained anew (300 steps) | 57.5 % [42.2–71.5] |" in ev
    assert "| % of the drawing | 10 | 50 | 100 |" in ev and "| accuracy, % | 20.0 | 50.0 | 80.0 |" in ev
    assert "`python eval.py ckpt_path=/x/best.ckpt`" in ev
    ch = section(text, "choose")
    rows = [ln for ln in ch.splitlines() if ln.startswith("| ") and "---" not in ln][1:]
    assert len(rows) == 5 and rows[0].startswith("| *(the default")
    # pooled over the CV's 40 drawings: 28 of 40 right at @100; @50 all right
    assert rows[2].startswith("| `averaging=ema` (exponential moving average of the weights) | 1 min 15 s | "
                              "100.0 % [91.2–100.0] | 70.0 % [54.6–81.9] |")
    assert rows[0].endswith("| – / – / – |")
    assert rows[2].endswith("| 1 / 0.12 / 0.12 |")                    # McNemar: 4 discordant drawings
    assert rows[1].endswith("| 1 / **1.9e-06** / **1.9e-06** |")      # channels: 20 discordant, all one way
    assert "| 1 min 15 s + 1 min 15 s pre-training |" in rows[4]
    assert "seed 42, cv.seed 0 (the same folds for every row), n = 40 drawings" in ch and "`abc1234`" in ch
    assert (tmp_path / "docs" / "img" / "main_tsne.png").read_bytes() == b"\x89PNG tsne"
    # idempotent: a second rewrite from the same runs changes nothing
    assert figures.main(["--from-runs", str(root), "--readme", str(readme)]) == 0
    assert readme.read_text() == text


def test_rewrite_only_the_choose_table(figures, tmp_path):
    root = tmp_path / "runs"
    synthetic_runs(root)
    readme = tmp_path / "README.md"
    readme.write_text(README)
    assert figures.main(["choose", "--from-runs", str(root), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old main table" in text and "old eval" in text and "| old | table |" not in text


def test_bad_input_one_line(figures, tmp_path, capsys):
    root = tmp_path / "runs"
    synthetic_runs(root)
    readme = tmp_path / "README.md"
    readme.write_text(README.replace("<!-- /figures:main-eval -->\n", ""))
    assert figures.main(["--from-runs", str(root), "--readme", str(readme)]) == 2
    assert "exactly one `<!-- figures:main-eval -->`" in capsys.readouterr().err
    readme.write_text(README)
    (root / "choose" / "channels" / "cv_predictions.npz").unlink()
    assert figures.main(["--from-runs", str(root), "--readme", str(readme)]) == 2
    err = capsys.readouterr().err
    assert "choose/channels/cv_predictions.npz: missing" in err and len(err.strip().splitlines()) == 1
    assert readme.read_text() == README                                   # nothing half-written
    (root / "main" / "train" / "figures_run.json").write_text("{}")
    assert figures.main(["main", "--from-runs", str(root), "--readme", str(readme)]) == 2
    assert "needs 'command' and 'commit'" in capsys.readouterr().err
    assert figures.main(["--from-runs", str(tmp_path / "nope"), "--readme", str(readme)]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert figures.main(["--root", str(root), "--readme", str(readme)]) == 2   # never trains into old runs
    assert "already holds runs: reuse them with --from-runs" in capsys.readouterr().err


def test_rows_run_side_by_side_into_one_root(figures, tmp_path, monkeypatch, capsys):
    """--rows runs only the named choose rows (another process runs the others into the same root),
    refuses a row whose dir holds runs, and a testing-only row tests its source row's fold models."""
    ran = []

    def fake_run(script, args, run_dir, commit):
        ran.append((script, args, run_dir))
        run_dir.mkdir(parents=True)
        (run_dir / "train_metrics.json").write_text(json.dumps({"best_checkpoint": str(run_dir / "best.ckpt")}))
        return {}

    monkeypatch.setattr(figures, "run_command", fake_run)
    root, readme = tmp_path / "runs", tmp_path / "README.md"
    readme.write_text(README)
    args = ["choose", "--root", str(root), "--readme", str(readme), "--folds", "2"]
    assert figures.main([*args, "--rows", "default"]) == 0
    assert figures.main([*args, "--rows", "pretrained", "tta"]) == 0
    assert readme.read_text() == README                                   # rows alone leave README alone
    assert [r[2].name for r in ran] == ["default", "tta", "pretrained_pretrain", "pretrained"]
    tta = ran[1][1]
    assert "train=false" in tta and f"cv.models_from={root / 'choose' / 'default'}" in tta
    assert f"model.cnn_ckpt={root / 'choose' / 'pretrained_pretrain' / 'best.ckpt'}" in ran[3][1]
    capsys.readouterr()
    assert figures.main([*args, "--rows", "default"]) == 2                 # never trains into old runs
    assert "choose/default already holds runs" in capsys.readouterr().err
    assert figures.main([*args, "--rows", "nope"]) == 2
    assert "--rows nope: unknown" in capsys.readouterr().err


def test_repo_readme_choose_table_is_the_stored_runs(figures):
    """README's CV table is what the runs kept in docs/figures give (a stale table fails here)."""
    stored = sorted((REPO / "docs" / "figures").glob("choose-*"))
    assert stored, "docs/figures/choose-<commit>/ holds the runs behind README's CV table"
    text = (REPO / "README.md").read_text()
    start, end = "<!-- figures:choose -->", "<!-- /figures:choose -->"
    shown = text[text.index(start) + len(start):text.index(end)].strip()
    assert shown == figures.choose_table(stored[-1]).strip()


def test_repo_readme_has_each_marker_once(figures):
    text = (REPO / "README.md").read_text()
    for what in figures.SECTIONS["all"]:
        name = what[0]
        assert text.count(f"<!-- figures:{name} -->") == 1 and text.count(f"<!-- /figures:{name} -->") == 1, name


# A tiny training and evaluation: proves the commands run and their outputs reach the README.
TINY = ["model.embedding_dim=16", "model.hidden=16", "model.mlp_hidden=16", "data.image_size=32",
        "data.batch_size=8", "data.max_snapshots=3", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0", "logger=csv",
        "callbacks.sample_images=null", "callbacks.progress=null", "trainer.enable_progress_bar=false",
        "callbacks.embedding_eval.max_train=48", "callbacks.embedding_eval.probe_epochs=5"]


@pytest.mark.slow
def test_end_to_end_tiny(figures, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text((REPO / "README.md").read_text())
    root = tmp_path / "runs"
    # model=lstm has no image size or snapshots: its row gets the model-neutral overrides only
    assert figures.main(["main", "--root", str(root), "--readme", str(readme), "--extra", *TINY,
                         "--eval-extra", "probe.steps=5", "tsne.enabled=false", "neighbors.n_refs=0",
                         "logger=none"]) == 0
    m = json.loads((root / "main" / "train" / "train_metrics.json").read_text())
    rec = json.loads((root / "main" / "train" / "figures_run.json").read_text())
    assert rec["commit"] == figures.git_commit() and rec["command"].startswith("python train.py model.embedding_dim=16")
    text = readme.read_text()
    main = section(text, "main-job")
    n = int(m["test/n"])
    assert f"(n = {n} drawings)" in main and f"seed {m['seed']}" in main and rec["commit"] in main
    row = f"| classification (its own head) | {figures.cell(m, 'test/acc@50')} | {figures.cell(m, 'test/acc@100')} |"
    assert row in main
    ev = json.loads((root / "main" / "eval" / "metrics.json").read_text())
    assert ev["intervals"]["test/acc@100"]["n"] == ev["n_test"]
    assert figures.cell(ev, "test/acc@100") in section(text, "main-eval")
    assert "@50 % of the drawing" in section(text, "main-job")
