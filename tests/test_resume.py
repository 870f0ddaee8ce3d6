"""Resume is exact and easy: last.ckpt holds the latest epoch (not the best), a run of 2 epochs resumed
to 3 ends where a straight 3-epoch run ends (same weights), `python train.py resume=<run dir>` continues a run from
its own config, run dir and wandb run, and a checkpoint that does not fit the config is one line."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import OmegaConf

from helpers import compose_cfg, run_inproc, tiny
from sketchembed.safeload import safe_load
from sketchembed.train.resume import resume_argv, wandb_run_id
from sketchembed.train.run import _callbacks, train, train_entry
from sketchembed.train.validate import ConfigError

REPO = Path(__file__).resolve().parents[1]
# A model that draws random numbers while training (random miner, augmentation), so an exact resume
# also needs the RNGs in step; `monitor=epoch, mode=min` keeps the *first* epoch as the best, so
# last.ckpt can only be the latest state if it is written every epoch.
PLAN = [*tiny("triplet"), "miner=random", "loss=softmax_triplet", "model.scheduler=null",
        "trainer.max_steps=-1", "trainer.limit_train_batches=2", "test=false", "logger=wandb",
        "callbacks.model_checkpoint.monitor=epoch", "callbacks.model_checkpoint.mode=min",
        "callbacks.embedding_eval.probe_epochs=2"]
HALF, FULL = 2, 3


def _weights(path: Path) -> dict:
    return safe_load(path)["state_dict"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    run = tmp_path_factory.mktemp("straight")
    _, _, metrics = run_inproc([*PLAN, f"trainer.max_epochs={FULL}"], run)
    return run, metrics


@pytest.fixture(scope="module")
def half(tmp_path_factory):
    run = tmp_path_factory.mktemp("half")
    overrides = [*PLAN, f"trainer.max_epochs={HALF}"]
    run_inproc(overrides, run)
    # what Hydra writes in a run started from the command line (the in-process entry does not)
    (run / ".hydra").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    return run


def test_last_ckpt_is_the_latest_epoch_not_the_best(half):
    ckpts = half / "checkpoints"
    assert safe_load(ckpts / "last.ckpt")["epoch"] == HALF - 1
    best = [p for p in ckpts.glob("*.ckpt") if p.name != "last.ckpt"]
    assert [p.name for p in best] == ["epoch000-step2.ckpt"]  # the monitored best stays epoch 0


def _train_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_failed_resume_leaves_the_run_config_as_it_was(half, tmp_path):
    """Hydra rewrites .hydra/ (and the run start config_tree.log) before any check: a refused
    `resume=DIR model.embedding_dim=32` (and the `trainer.max_epochs=9` given with it) must not become
    the run's config for the next resume."""
    run = tmp_path / "run"
    shutil.copytree(half, run)
    shutil.copy(run / ".hydra" / "overrides.yaml", run / ".hydra" / "config.yaml")  # Hydra's other record
    (run / "config_tree.log").write_text("the run's own config tree\n")
    record = _tree(run / ".hydra")
    r = _train_cli(f"resume={run}", "model.embedding_dim=32", "trainer.max_epochs=9")
    assert r.returncode == 2, r.stderr[-3000:]
    assert "model.embedding_dim=16 (config: 32)" in r.stderr.splitlines()[-1]
    assert _tree(run / ".hydra") == record  # the same files, byte for byte, and no before_resume_* left
    assert (run / "config_tree.log").read_text() == "the run's own config tree\n"


def test_resume_at_an_epoch_end_with_max_steps_is_exact(straight, half, tmp_path):
    """Lightning restores an epoch-end checkpoint with trainer.max_steps set as an epoch to finish:
    the next epoch trained nothing (QA: max_epochs=2 max_steps=4 after 1 epoch of 2 steps stayed at
    step 2). Continued from epoch 0 to 3 epochs with max_steps, the weights are the straight run's."""
    _, _, metrics = run_inproc([*PLAN, f"trainer.max_epochs={FULL}", f"trainer.max_steps={2 * FULL}",
                                f"ckpt_path={half / 'checkpoints' / 'epoch000-step2.ckpt'}"], tmp_path)
    got = safe_load(tmp_path / "checkpoints" / "last.ckpt")
    ref = _weights(straight[0] / "checkpoints" / "last.ckpt")
    assert (got["global_step"], got["epoch"]) == (2 * FULL, FULL - 1)
    for k, v in ref.items():
        assert torch.equal(v, got["state_dict"][k]), k
    assert metrics["val/knn@3"] == straight[1]["val/knn@3"]


def test_resuming_a_complete_run_keeps_its_metrics(straight, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(straight[0], run)
    before = json.loads((run / "train_metrics.json").read_text())
    with caplog.at_level(logging.WARNING, logger="sketchembed.train"):
        run_inproc([*PLAN, f"trainer.max_epochs={FULL}", f"resume={run}",
                    f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"], run)
    said = [r.getMessage() for r in caplog.records if "nothing to continue" in r.getMessage()]
    assert len(said) == 1 and f"resume={run}" in said[0] and f"trainer.max_epochs={FULL}" in said[0], said
    after = json.loads((run / "train_metrics.json").read_text())
    for k in ("train/loss", "val/knn@3", "val/triplet_acc@100", "val/n"):
        assert after[k] == before[k], k
    assert after["intervals"]["val/knn@3"] == before["intervals"]["val/knn@3"]
    assert safe_load(run / "checkpoints" / "last.ckpt")["global_step"] == 2 * FULL


def test_resume_run_dir_is_exact_and_keeps_the_run(straight, half, tmp_path):
    """`python train.py resume=<run dir> trainer.max_epochs=3` (the real command line)."""
    first_id = wandb_run_id(half)
    assert first_id
    # a test of the 2-epoch run's best checkpoint is not a result of the 3-epoch run (which tests nothing)
    recorded = json.loads((half / "train_metrics.json").read_text())
    (half / "train_metrics.json").write_text(json.dumps({**recorded, "test/knn@3": 0.5, "old/kept": 1.0}))
    r = _train_cli(f"resume={half}", f"trainer.max_epochs={FULL}")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    straight_dir, straight_metrics = straight
    last = safe_load(half / "checkpoints" / "last.ckpt")
    assert last["epoch"] == FULL - 1
    ref = _weights(straight_dir / "checkpoints" / "last.ckpt")
    assert ref.keys() == last["state_dict"].keys()
    for k, v in ref.items():
        assert torch.equal(v, last["state_dict"][k]), k
    metrics = json.loads((half / "train_metrics.json").read_text())
    for k in ("val/triplet_acc@100", "val/knn@3", "train/loss"):
        assert metrics[k] == straight_metrics[k], k
    assert metrics["old/kept"] == 1.0 and "test/knn@3" not in metrics
    # same run dir, same config (+ the new override), same wandb run
    cfg = yaml.safe_load((half / ".hydra" / "config.yaml").read_text())
    assert cfg["trainer"]["max_epochs"] == FULL and cfg["miner"]["_target_"].endswith("RandomTripletMiner")
    assert cfg["ckpt_path"] == str(half / "checkpoints" / "last.ckpt")
    assert list((half / ".hydra").glob("before_resume_*/overrides.yaml"))
    ids = {p.name.rsplit("-", 1)[1] for p in (half / "wandb").glob("offline-run-*")}
    assert ids == {first_id}, ids


def test_interrupted_run_with_cosine_schedule_resumes_exactly(tmp_path):
    """The default case: a run planned for 2 epochs with the cosine schedule, stopped after epoch 0,
    continued from that epoch's checkpoint with the same config (in-process)."""
    plan = [*(o for o in PLAN if o != "model.scheduler=null"), "trainer.max_epochs=2", "logger=csv",
            "+callbacks.every_epoch={_target_:lightning.pytorch.callbacks.ModelCheckpoint,"
            "dirpath:${paths.output_dir}/epochs,filename:'e{epoch}',every_n_epochs:1,save_top_k:-1,"
            "monitor:null,auto_insert_metric_name:false}"]
    run_inproc(plan, tmp_path / "straight")
    run_inproc([*plan, f"ckpt_path={tmp_path / 'straight' / 'epochs' / 'e0.ckpt'}"], tmp_path / "resumed")
    ref = safe_load(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    got = safe_load(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    assert ref["epoch"] == got["epoch"] == 1
    assert ref["lr_schedulers"] == got["lr_schedulers"]
    for k, v in ref["state_dict"].items():
        assert torch.equal(v, got["state_dict"][k]), k


def test_resume_argv_merges_overrides(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(
        ["model=triplet", "trainer.max_epochs=3", "ckpt_path=/old.ckpt", "+callbacks.x={a:1}"]))
    argv = resume_argv(["train.py", f"resume={run}", "trainer.max_epochs=6"])
    assert argv == ["train.py", "model=triplet", "+callbacks.x={a:1}", "trainer.max_epochs=6",
                    f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", f"hydra.run.dir={run}", f"resume={run}"]
    # a checkpoint inside the run dir: continue from that one
    other = run / "checkpoints" / "epoch000-step2.ckpt"
    other.write_bytes(b"")
    assert f"ckpt_path={other}" in resume_argv(["train.py", f"resume={other}"])
    assert resume_argv(["train.py", "model=lstm"]) == ["train.py", "model=lstm"]


@pytest.mark.parametrize("argv,needle", [
    (["resume=/nonexistent/run"], "resume=/nonexistent/run: not a run dir of train.py"),
    (["-m", "resume=RUN"], "without -m"),
])
def test_resume_argv_errors(argv, needle, tmp_path):
    argv = [a.replace("RUN", str(tmp_path)) for a in argv]
    with pytest.raises(ConfigError, match=needle):
        resume_argv(["train.py", *argv])


def test_resume_without_last_ckpt_is_one_line(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("[]\n")
    with pytest.raises(ConfigError, match=r"last.ckpt is missing"):
        resume_argv(["train.py", f"resume={tmp_path}"])


@pytest.mark.parametrize("overrides,needles", [
    (["model=lstm"], ["model_kind='triplet'", "model=lstm", "model_kind='lstm'"]),
    (["model=triplet", "model.embedding_dim=32"], ["model.embedding_dim=16 (config: 32)", "other shapes"]),
])
def test_checkpoint_that_does_not_fit_is_one_line(half, overrides, needles, tmp_path, capsys):
    ckpt = half / "checkpoints" / "epoch000-step2.ckpt"
    model = overrides[0].split("=")[1]
    cfg = compose_cfg([*tiny(model), *overrides[1:], "logger=csv", f"ckpt_path={ckpt}"], tmp_path)
    with pytest.raises(SystemExit) as e:
        train_entry("train", train)(cfg)
    assert e.value.code == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and str(ckpt) in errors[0] and len(errors[0]) < 600, errors
    for n in needles:
        assert n in errors[0], errors[0]
    assert not (tmp_path / "checkpoints").exists()


def test_last_ckpt_holds_the_final_step_between_save_points(tmp_path):
    # The study trainer validates (and so saves) every 2,500 steps: a run stopped at step 3 without
    # any validation must still leave its final state in last.ckpt.
    run_inproc([*tiny("lstm"), "trainer=study", "trainer.accelerator=cpu", "trainer.precision=32-true",
                "trainer.max_steps=3", "trainer.limit_train_batches=null", "trainer.limit_val_batches=0",
                "test=false", "callbacks.embedding_eval=null"], tmp_path)
    assert safe_load(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 3


class Snapshots(ModelCheckpoint):
    """A user's checkpoint class whose name does not end in "Checkpoint"."""


class PlainCheckpoint(Callback):
    """A callback whose name ends in "Checkpoint" though it is none."""


def test_callbacks_are_picked_by_class_not_by_name(tmp_path):
    """``monitor: auto`` resolves on every ModelCheckpoint, whatever its name; a fast_dev_run drops
    only real checkpoints."""
    cb = {"snap": {"_target_": f"{__name__}.Snapshots", "dirpath": str(tmp_path), "monitor": "auto"},
          "plain": {"_target_": f"{__name__}.PlainCheckpoint"}}
    cfg = OmegaConf.create({"callbacks": cb, "trainer": {"enable_progress_bar": False}})
    snap, plain = _callbacks(cfg, "val/acc@100")
    assert isinstance(snap, Snapshots) and snap.monitor == "val/acc@100" and isinstance(plain, PlainCheckpoint)
    cfg.trainer.fast_dev_run = True
    assert [type(c) for c in _callbacks(cfg, "val/acc@100")] == [PlainCheckpoint]
