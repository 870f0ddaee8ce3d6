"""Logs that read well in a batch job: one plain line per epoch when stdout is not a terminal (to
stdout and run.log), and none of the noise every run used to print (doubled INFO lines, Lightning's
tip, the LeafSpec warning, wandb's anonymous-setting warning, optuna's chatter, 20 KB class lists)."""

from __future__ import annotations

import re
import subprocess
import sys
from types import SimpleNamespace

import pytest

from helpers import REPO, compose_cfg, run_cli, run_inproc, tiny

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


def _trainer(**kw):
    base = dict(current_epoch=0, max_epochs=60, max_steps=-1, global_step=0, num_training_batches=7,
                accumulate_grad_batches=1, callback_metrics={})
    return SimpleNamespace(**{**base, **kw})


def test_epoch_line_format():
    from sketchembed.train.console import EpochLineProgress

    bar = EpochLineProgress()
    bar.clock.start(0, now=0.0)
    for step in range(1, 22):  # 21 steps, one per second
        bar.clock.tick(step, now=float(step))
    trainer = _trainer(current_epoch=2, global_step=21,
                       callback_metrics={"train/loss": 1.23456, "val/acc@100": 0.5, "val/knn@4": 0.25, "test/x": 1.0})
    import sketchembed.train.console as console

    real = console.time.monotonic
    console.time.monotonic = lambda: 30.0
    try:
        line = bar.format_line(trainer)
    finally:
        console.time.monotonic = real
    # 60 epochs x 7 steps = 420 steps, 399 to go at 1 s each
    assert line == "epoch 3/60  step 21  train/loss 1.235  val/acc@100 0.5  val/knn@4 0.25  elapsed 0:30  eta 6:39"


def test_the_run_ends_at_max_steps_or_max_epochs_whichever_comes_first():
    from sketchembed.train.console import planned

    assert planned(_trainer(max_steps=20)) == (20, 3)            # 20 steps of 7 a epoch: ends in epoch 3
    assert planned(_trainer(max_steps=1000)) == (420, 60)        # 60 epochs end it first
    assert planned(_trainer(max_steps=20, max_epochs=-1)) == (20, 3)
    assert planned(_trainer(max_epochs=-1)) == (None, None)      # nothing bounds it
    assert planned(_trainer(max_steps=20, accumulate_grad_batches=2)) == (20, 5)  # 4 steps an epoch
    assert planned(_trainer(max_steps=20, max_epochs=-1, num_training_batches=float("inf"))) == (20, None)


def test_last_line_of_a_max_steps_run_says_its_last_epoch_and_no_time_left():
    """Was `epoch 3/60 … eta 2:55:45` at the last step of a `trainer.max_steps=20` run."""
    from sketchembed.train.console import EpochLineProgress

    bar = EpochLineProgress()
    bar.clock.start(0, now=0.0)
    for step in range(1, 21):
        bar.clock.tick(step, now=float(step))
    line = bar.format_line(_trainer(current_epoch=2, max_steps=20, global_step=20))
    assert line.startswith("epoch 3/3  step 20") and line.endswith("eta 0:00"), line


def test_eta_follows_the_recent_pace_not_the_slow_start():
    from sketchembed.train.console import PACE_STEPS, RunClock

    clock, t = RunClock(), 0.0
    clock.start(0, now=t)
    for step in range(1, 8):  # a slow first epoch: 10 s a step
        t += 10.0
        clock.tick(step, now=t)
    for step in range(8, 8 + PACE_STEPS):  # then 1 s a step
        t += 1.0
        clock.tick(step, now=t)
    assert clock.seconds_per_step() == 1.0
    trainer = _trainer(global_step=7 + PACE_STEPS)
    assert clock.eta(trainer) == 420 - 7 - PACE_STEPS
    clock.tick(7 + PACE_STEPS, now=t + 100)  # a batch that did not step the optimizer does not count
    assert clock.seconds_per_step() == 1.0
    fresh = RunClock()
    fresh.start(0, now=0.0)
    fresh.tick(1, now=30.0)  # one step: all there is (start-up included)
    assert fresh.seconds_per_step() == 30.0
    fresh.tick(2, now=31.0)  # from the second on, the start-up is left out
    assert fresh.seconds_per_step() == 1.0


def test_rich_bar_counts_epochs_to_the_real_end_and_shows_the_eta():
    from sketchembed.train.console import RunProgressBar

    bar = RunProgressBar()
    trainer = _trainer(current_epoch=2, max_steps=20, global_step=14, progress_bar_metrics={"train/loss": 1.5},
                       loggers=[])
    bar._trainer = trainer
    assert bar._get_train_description(2).strip() == "Epoch 3/3"
    bar.clock.start(0, now=0.0)
    for step in range(1, 15):
        bar.clock.tick(step, now=2.0 * step)
    items = bar.get_metrics(trainer, None)
    assert items["eta"] == "0:12" and items["train/loss"] == 1.5  # 6 steps left at 2 s


def test_optuna_sweep_with_the_triplet_model_and_no_plugin_chatter(tmp_path):
    """The search that died after an epoch (it optimized val/acc@100, which triplet never logs) runs,
    and prints the sweeper's lines without alembic's and optuna's own."""
    import json

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

    run_inproc(tiny("triplet", "extras.print_config=false"), tmp_path / "triplet")
    ckpt = tmp_path / "triplet" / "checkpoints" / "last.ckpt"
    with caplog.at_level(logging.INFO, logger="sketchembed.models.combined"):
        run_inproc(tiny("combined_transfer", f"model.cnn_ckpt={ckpt}", "extras.print_config=false"),
                   tmp_path / "transfer")
    lines = [r.getMessage() for r in caplog.records if "model.cnn_ckpt: loaded" in r.getMessage()]
    assert lines and re.fullmatch(rf"model\.cnn_ckpt: loaded \d+ CNN weight tensors from {re.escape(str(ckpt))}",
                                  lines[0]), lines


def test_train_ends_with_its_run_folder_checkpoints_and_metrics(batch_job):
    r, run_dir = batch_job
    last = r.stdout.strip().splitlines()[-1]
    best = next((run_dir / "checkpoints").glob("epoch*.ckpt"))
    assert last == (f"run folder: {run_dir}  best checkpoint: {best}  last: {run_dir / 'checkpoints' / 'last.ckpt'}"
                    f"  metrics: {run_dir / 'train_metrics.json'}"), last


@pytest.mark.slow
def test_eval_ends_with_its_run_folder_and_report(batch_job, tmp_path):
    import os

    _, run_dir = batch_job
    out = tmp_path / "eval"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(REPO / "eval.py"), f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
                        "logger=none", "probe.steps=20", "tsne.max_points=60", f"hydra.run.dir={out}"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    last = r.stdout.strip().splitlines()[-1]
    html = f", {out / 'report.html'}" if (out / "report.html").is_file() else ""
    assert last == f"run folder: {out}  report: {out / 'report.md'}{html}  metrics: {out / 'metrics.json'}", last


def test_end_line_shows_paths_from_the_working_directory_and_only_files_written(tmp_path, monkeypatch):
    from sketchembed.entry import end_line

    run = tmp_path / "outputs" / "eval" / "runs" / "x"
    run.mkdir(parents=True)
    (run / "report.md").write_text("#")
    monkeypatch.chdir(tmp_path)
    assert end_line(run, [("report", [run / "report.md", run / "report.html"]), ("metrics", [run / "m.json"])]) == \
        "run folder: outputs/eval/runs/x  report: outputs/eval/runs/x/report.md"
