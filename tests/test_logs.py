"""Logs that read well in a batch job: one plain line per epoch when stdout is not a terminal (to
stdout and run.log), and none of the noise every run used to print (doubled INFO lines, Lightning's
tip, the LeafSpec warning, wandb's anonymous-setting warning, optuna's chatter, 20 KB class lists)."""

from __future__ import annotations

import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
from test_train import REPO, compose_cfg

EPOCH_LINE = re.compile(r"^epoch (\d+)/2  step (\d+)  train/loss \d[\d.e+-]*  .*val/acc@100 \d[\d.e+-]*  .*"
                        r"elapsed \d+:\d\d  eta \d+:\d\d$")


@pytest.fixture(scope="module")
def batch_job(tmp_path_factory):
    """`python train.py …` with stdout and stderr going to pipes (as under SLURM or nohup), wandb on."""
    import os

    run_dir = tmp_path_factory.mktemp("batch") / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    env.pop("WANDB_SILENT", None)  # wandb's own warnings must not be hidden here
    r = subprocess.run([sys.executable, str(REPO / "train.py"), "model=lstm", "model.hidden=16", "trainer.max_epochs=2",
                        "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
                        "trainer.log_every_n_steps=1", "callbacks.embedding_eval.max_train=48",
                        "callbacks.embedding_eval.probe_epochs=5", "callbacks.space_images.every_n_val_epochs=2",
                        f"hydra.run.dir={run_dir}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r, run_dir


def test_one_plain_line_per_epoch_to_stdout_and_run_log(batch_job):
    r, run_dir = batch_job
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("epoch ")]
    assert len(lines) == 2, r.stdout[-3000:]
    for n, ln in enumerate(lines, start=1):
        m = EPOCH_LINE.match(ln)
        assert m and int(m.group(1)) == n and int(m.group(2)) == 2 * n, ln
    log = (run_dir / "run.log").read_text()
    for ln in lines:
        assert ln in log
    assert "it/s" not in r.stdout and "Epoch 1/1" not in r.stdout  # no Rich bar in a file


def test_no_noise(batch_job):
    r, _ = batch_job
    out = r.stdout + r.stderr
    assert out.count("Seed set to 42") == 1  # not once by Lightning and once by Hydra
    assert out.count("GPU available") == 1
    for noise in ("litlogger", "LeafSpec", "anonymous setting", "smaller than the logging interval",
                  "openTSNE"):  # the space pictures' t-SNE ran at epoch 2
        assert noise not in out, noise


def test_our_default_logs_train_loss_every_epoch(tmp_path):
    """The main job's log_every_n_steps is below its steps per epoch (no Lightning warning)."""
    from hydra.utils import instantiate

    cfg = compose_cfg([], tmp_path)
    dm = instantiate(cfg.data, views=["sequence"], _convert_="all")
    steps = len(dm.dataset("train")) // int(cfg.data.batch_size)
    assert 1 <= cfg.trainer.log_every_n_steps <= steps


def test_epoch_line_format():
    from sketchembed.train.console import EpochLineProgress

    bar = EpochLineProgress()
    bar._start, bar._first_epoch = 0.0, 0
    trainer = SimpleNamespace(current_epoch=2, max_epochs=60, global_step=21,
                              callback_metrics={"train/loss": 1.23456, "val/acc@100": 0.5, "val/knn@4": 0.25,
                                                "test/x": 1.0})
    import sketchembed.train.console as console

    real = console.time.monotonic
    console.time.monotonic = lambda: 30.0
    try:
        line = bar.format_line(trainer)
    finally:
        console.time.monotonic = real
    # 3 epochs in 30 s: 57 to go, 570 s
    assert line == "epoch 3/60  step 21  train/loss 1.235  val/acc@100 0.5  val/knn@4 0.25  elapsed 0:30  eta 9:30"


def test_optuna_sweep_with_the_triplet_model_and_no_plugin_chatter(tmp_path):
    """The search that died after an epoch (it optimized val/acc@100, which triplet never logs) runs,
    and prints the sweeper's lines without alembic's and optuna's own."""
    import json

    from test_train import run_cli, tiny

    sweep = tmp_path / "sweep"
    r = run_cli(["-m", "hparams_search=optuna", *tiny("triplet"), "hydra.sweeper.n_trials=1",
                 f"hydra.sweep.dir={sweep}", "extras.print_config=false"])
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((sweep / "0" / "train_metrics.json").read_text())
    assert f"best_value: {metrics['best/val/triplet_acc@100']}" in (sweep / "optimization_results.yaml").read_text()
    out = r.stdout + r.stderr
    assert "setup plugin" not in out and "A new study created" not in out
    assert "Best value:" in out


def test_lists_in_messages_are_capped():
    from sketchembed.corpus.categories import STUDY_CLASSES
    from sketchembed.data.datamodule import SketchDataModule
    from sketchembed.messages import short_list

    assert short_list(["a", "b"]) == "a, b"
    assert short_list(map(str, range(335))) == "0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, … (335 in all)"
    dm = SketchDataModule(root="others335", views=("sequence",))
    with pytest.raises(ValueError) as e:
        dm.load_state_dict({"classes": list(STUDY_CLASSES), "seq_std": 1.0})
    msg = str(e.value)
    assert "335 [" in msg and "(335 in all)" in msg and len(msg) < 600 and "\n" not in msg


def test_transfer_confirms_the_loaded_cnn_weights(tmp_path, caplog):
    import logging

    from test_train import run_inproc, tiny

    run_inproc(tiny("triplet", "extras.print_config=false"), tmp_path / "triplet")
    ckpt = tmp_path / "triplet" / "checkpoints" / "last.ckpt"
    with caplog.at_level(logging.INFO, logger="sketchembed.models.combined"):
        run_inproc(tiny("combined_transfer", f"model.cnn_ckpt={ckpt}", "extras.print_config=false"),
                   tmp_path / "transfer")
    lines = [r.getMessage() for r in caplog.records if "model.cnn_ckpt: loaded" in r.getMessage()]
    assert lines and re.fullmatch(rf"model\.cnn_ckpt: loaded \d+ CNN weight tensors from {re.escape(str(ckpt))}",
                                  lines[0]), lines
