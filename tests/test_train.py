"""The training entry (train.py / sketchembed.train.run) end to end on the embedded real drawings:
every model trains through it, sweeps (basic + Optuna) write one run per job, DDP on 2 CPU processes
reduces metrics correctly, resuming continues step count and optimizer state, misconfigurations stop
before training with a one-line error, every experiment config composes (and runs at reduced size),
wandb works offline, and checkpoints land in the run dir.

Trainings run in-process through Hydra's compose API where possible (fast); multirun, DDP and the
exit-code checks run `python train.py ...` in a subprocess. Tiny sizes everywhere: these prove the
wiring, not accuracy.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class
from omegaconf import OmegaConf
from PIL import Image

import sketchembed.nets.backbone as bb
from helpers import (
    CONF,
    EXPERIMENTS,
    MODEL_KINDS,
    MODEL_TINY,
    REPO,
    assert_one_line_error,
    checkpoint_files,
    compose_cfg,
    last_value,
    load_ckpt,
    read_csv_metrics,
    run_cli,
    run_inproc,
    tiny,
)
from sketchembed.data.datamodule import SketchDataModule
from sketchembed.models import LSTMModel, TripletImageModel
from sketchembed.train.run import ConfigError, train, train_entry, validate


# ------------------------------------------------------------------------------------ 1. models
@pytest.fixture(scope="session")
def triplet_run(tmp_path_factory):
    """A tiny triplet run (its checkpoint feeds the transfer model)."""
    run_dir = tmp_path_factory.mktemp("triplet_run")
    cfg, value, metrics = run_inproc(tiny("triplet"), run_dir)
    return run_dir, cfg, value, metrics


def _check_trained_run(run_dir: Path, cfg, value, metrics, model_choice: str) -> dict:
    model_cls = get_class(cfg.model._target_)
    best, last = checkpoint_files(run_dir)
    assert best.resolve().is_relative_to(run_dir.resolve())
    ck = load_ckpt(last)
    assert ck["global_step"] == 2
    assert ck["hyper_parameters"]["model_kind"] == model_choice.replace("_transfer", "")
    # The entry returns the model's own metric (optimized_metric=auto), the best checkpoint's value.
    monitor = model_cls.MONITOR
    mc_state = next(v for k, v in ck["callbacks"].items() if k.startswith("ModelCheckpoint"))
    assert mc_state["monitor"] == monitor
    assert value == pytest.approx(float(mc_state["best_model_score"]))
    assert metrics[f"best/{monitor}"] == pytest.approx(value)
    assert metrics["best_checkpoint"] == str(best)
    # tested with the best checkpoint; both fractions of the study's table
    tags = ["test/acc@100", "test/acc@50"] if model_cls.LOSS_KINDS != ("triplet",) else ["test/triplet_acc@100"]
    for k in [*tags, "test/knn@3", "test/knn@4", "test/probe_acc"]:
        assert 0.0 <= metrics[k] <= 1.0, (k, metrics)
    return ck


# every registered model kind; triplet through the shared `triplet_run` below
@pytest.mark.parametrize("model", [m for m in MODEL_KINDS if m != "triplet"])
def test_model_trains_through_entry(model, tmp_path):
    cfg, value, metrics = run_inproc(tiny(model), tmp_path)
    _check_trained_run(tmp_path, cfg, value, metrics, model)
    rows = read_csv_metrics(tmp_path)
    assert last_value(rows, "val/acc@100") >= 0


def test_triplet_trains_through_entry(triplet_run):
    run_dir, cfg, value, metrics = triplet_run
    ck = _check_trained_run(run_dir, cfg, value, metrics, "triplet")
    assert ck["hyper_parameters"]["loss"]["name"] == "hinge"  # the model's default
    rows = read_csv_metrics(run_dir)
    assert last_value(rows, "miner/triplets_epoch") > 0  # the semi-hard miner ran and logged
    assert 0 <= last_value(rows, "val/triplet_acc@100") <= 1


def test_combined_transfer_uses_triplet_checkpoint(triplet_run, tmp_path):
    triplet_dir = triplet_run[0]
    src = triplet_dir / "checkpoints" / "last.ckpt"
    cfg, value, metrics = run_inproc(
        tiny("combined_transfer", f"model.cnn_ckpt={src}", "model.freeze_cnn=true"), tmp_path)
    ck = _check_trained_run(tmp_path, cfg, value, metrics, "combined_transfer")
    assert ck["hyper_parameters"]["cnn_ckpt_source"] == str(src)
    # frozen: the CNN in the trained model is exactly the triplet run's encoder
    enc = {k[len("encoder."):]: v for k, v in load_ckpt(src)["state_dict"].items() if k.startswith("encoder.")}
    cnn = {k[len("cnn."):]: v for k, v in ck["state_dict"].items() if k.startswith("cnn.")}
    assert enc and set(enc) == set(cnn)
    for k in enc:
        assert torch.equal(enc[k], cnn[k]), k
    # Continued (resume=DIR passes the run's model.cnn_ckpt again): the checkpoint holds the CNN, so
    # the source file is not read — gone, or relative to another working directory — and what the
    # transfer set besides the weights (the triplet's normalize=true) comes from the checkpoint.
    more = tmp_path / "continued"
    run_inproc(tiny("combined_transfer", "model.cnn_ckpt=gone/last.ckpt", "model.freeze_cnn=true",
                    f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}", "trainer.max_epochs=2",
                    "trainer.max_steps=4", "test=false"), more)
    ck = load_ckpt(more / "checkpoints" / "last.ckpt")
    assert ck["global_step"] == 4
    assert ck["hyper_parameters"]["cnn_ckpt_source"] == str(src) and ck["hyper_parameters"]["normalize"] is True
    for k in enc:
        assert torch.equal(enc[k], ck["state_dict"][f"cnn.{k}"]), k


def test_transfer_refuses_a_cnn_trained_on_other_inputs(triplet_run, tmp_path, capsys, monkeypatch):
    """A triplet CNN of white ink on black, not standardised (data=quickdraw), fed the study's black on
    white, standardised images: one line naming both keys, before training."""
    src = triplet_run[0] / "checkpoints" / "last.ckpt"
    fit_called = []
    monkeypatch.setattr(pl.Trainer, "fit", lambda *a, **k: fit_called.append(1))
    cfg = compose_cfg(tiny("combined_transfer", f"model.cnn_ckpt={src}", "data.background=white",
                           "data.standardize=true"), tmp_path)
    with pytest.raises(SystemExit) as e:
        train_entry("train", train)(cfg)
    assert e.value.code == 2 and not fit_called
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, errors
    for needle in ("model.cnn_ckpt=", "data.background='black' (this run: 'white')",
                   "data.standardize=False (this run: True)"):
        assert needle in errors[0], errors[0]
    assert "data.line_width" not in errors[0] and "data.image_size" not in errors[0]


def test_combined_transfer_requires_cnn_ckpt(tmp_path):
    cfg = compose_cfg(["model=combined_transfer"], tmp_path)
    with pytest.raises(ConfigError, match="model.cnn_ckpt"):
        validate(cfg)


INCEPTION_CMD = ["model=combined", "backbone=inception_v4", "loss=hinge", "trainer.fast_dev_run=true"]


def test_inception_combined_hinge_composes_and_validates(tmp_path):
    cfg = compose_cfg(INCEPTION_CMD, tmp_path)
    checked = validate(cfg)
    assert checked["model_choice"] == "combined" and checked["loss_name"] == "hinge"
    # The preset brings the image size it needs (the CPU data default is 64 px, too small for it).
    assert cfg.model.backbone.name == "inception_v4" and cfg.model.image_size == cfg.data.image_size == 96
    assert cfg.loss._target_.endswith("HingeTripletLoss")
    assert cfg.trainer.fast_dev_run is True
    cfg = compose_cfg([*INCEPTION_CMD[:-1], "data.image_size=74"], tmp_path)
    with pytest.raises(ValueError, match=r"data.image_size=74.*inception_v4.*75"):
        validate(cfg)


@pytest.mark.slow
def test_inception_combined_hinge_runs(tmp_path):
    """The exact command of the brief (fast_dev_run: one step; about a minute on 1 CPU core)."""
    r = run_cli([*INCEPTION_CMD, "logger=csv", f"hydra.run.dir={tmp_path}"])
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((tmp_path / "train_metrics.json").read_text())
    assert 0 <= metrics["test/acc@100"] <= 1


# ------------------------------------------------------------------------------------ 2. sweeps
def test_basic_sweep_one_run_dir_per_job(tmp_path):
    sweep = tmp_path / "sweep"
    r = run_cli(["-m", *tiny("triplet"), "loss=hinge,softmax_triplet", f"hydra.sweep.dir={sweep}"])
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1"]
    losses = {}
    for job in jobs:
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        loss = next(o.split("=", 1)[1] for o in overrides if o.startswith("loss="))
        _, last = checkpoint_files(job)
        ck = load_ckpt(last)
        assert ck["global_step"] == 2
        losses[loss] = ck["hyper_parameters"]["loss"]["name"]
        assert json.loads((job / "train_metrics.json").read_text())["best_checkpoint"].startswith(str(job))
    assert losses == {"hinge": "hinge", "softmax_triplet": "softmax_triplet"}


def test_optuna_config_is_template_style():
    cfg = compose_cfg(["hparams_search=optuna"])

    hc = HydraConfig.get()
    assert hc.sweeper._target_.endswith("OptunaSweeper")
    assert hc.sweeper.direction == "maximize" and hc.sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert {"model.optimizer.lr", "data.batch_size"} <= set(hc.sweeper.params)
    assert cfg.optimized_metric == "auto"  # follows the model (val/triplet_acc@100 for model=triplet)


def test_optuna_sweep_two_trials(tmp_path):
    sweep = tmp_path / "optuna"
    r = run_cli(["-m", "hparams_search=optuna", *tiny("lstm"), "hydra.sweeper.n_trials=2",
                 "hydra.sweeper.sampler.n_startup_trials=2", f"hydra.sweep.dir={sweep}"])
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert len(jobs) == 2
    values, lrs = [], []
    for job in jobs:
        m = json.loads((job / "train_metrics.json").read_text())
        values.append(m["best/val/acc@100"])
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        lrs.append(next(float(o.split("=", 1)[1]) for o in overrides if o.startswith("model.optimizer.lr=")))
    assert lrs[0] != lrs[1] and all(1e-4 <= lr <= 1e-2 for lr in lrs)
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    # the value each job returned reached the sweeper: its best is the best job's metric
    assert results["best_value"] == pytest.approx(max(values))


def test_entry_returns_optimized_metric_and_rejects_unlogged_one(tmp_path, capsys):
    fake = {"val/acc@100": 0.25, "best/val/acc@100": 0.5, "val/knn@4": 0.75}
    cfg = compose_cfg(["model=lstm", "optimized_metric=val/acc@100"], tmp_path)
    assert train_entry("train", lambda c: fake)(cfg) == 0.5  # the best value, not the last
    cfg = compose_cfg(["model=lstm", "optimized_metric=val/knn@4"], tmp_path)
    assert train_entry("train", lambda c: fake)(cfg) == 0.75
    cfg = compose_cfg(["model=lstm"], tmp_path)  # auto = the model's own metric
    assert train_entry("train", lambda c: fake)(cfg) == 0.5
    cfg = compose_cfg(["model=lstm", "optimized_metric=val/acc@10"], tmp_path)
    with pytest.raises(SystemExit) as e:
        train_entry("train", lambda c: fake)(cfg)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "optimized_metric='val/acc@10'" in err[0] and "val/acc@100" in err[0]


def test_unlogged_optimized_metric_stops_a_real_run(tmp_path, capsys):
    cfg = compose_cfg(tiny("lstm", "optimized_metric=val/nope"), tmp_path)
    with pytest.raises(SystemExit) as e:
        train_entry("train", train)(cfg)
    assert e.value.code == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "val/nope" in err[0]
    assert not (tmp_path / "train_metrics.json").exists()


# ------------------------------------------------------------------------------------ 3. DDP
def _single_process_accuracy(ckpt: Path, fraction: float) -> float:
    """Accuracy over the WHOLE val split, one process, the checkpoint's weights."""

    model = LSTMModel.load_from_checkpoint(ckpt, map_location="cpu").eval()
    dm = SketchDataModule(root="study10", views=("sequence",), eval_batch_size=1000, eval_fractions=(1.0, 0.5))
    dm.load_state_dict(load_ckpt(ckpt).get("SketchDataModule", {}))
    correct = total = 0
    with torch.no_grad():
        for batch in dm.loader("val", fraction):
            logits = model.logits(batch)
            correct += int((logits.argmax(-1) == batch["label"]).sum())
            total += len(batch["label"])
    assert total == len(dm.dataset("val"))
    return correct / total


def test_ddp_sim_reduces_metrics_across_ranks(tmp_path):
    args = ["model=lstm", "trainer=ddp_sim", "model.hidden=32", "model.optimizer.lr=0.02", "model.scheduler=null",
            "data.batch_size=8", "trainer.max_epochs=2", "trainer.max_steps=-1", "trainer.limit_train_batches=14",
            "trainer.check_val_every_n_epoch=2", "callbacks.embedding_eval.every_n_epochs=2",
            "trainer.limit_test_batches=1",
            "trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false", "logger=csv",
            "callbacks.sample_images=null", "callbacks.progress=null", "callbacks.embedding_eval.max_train=48",
            "callbacks.embedding_eval.probe_epochs=5", f"hydra.run.dir={tmp_path}"]
    r = run_cli(args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "train_ddp_process_1.log").is_file()  # rank 1 ran in the same run dir
    _, last = checkpoint_files(tmp_path)
    ck = load_ckpt(last)
    assert ck["global_step"] == 2 * 14  # each rank: 117 train drawings = 14 batches of 8
    rows = read_csv_metrics(tmp_path)
    val_rows = [r for r in rows if r.get("val/acc@100")]
    assert len(val_rows) == 1  # one validation, at the end of the epoch, with the checkpoint's weights
    for frac, tag in ((1.0, "100"), (0.5, "50")):
        logged = float(val_rows[0][f"val/acc@{tag}"])
        assert logged == pytest.approx(_single_process_accuracy(last, frac), abs=1e-6), tag
        assert logged > 4 / 51  # learned something: not one class for every drawing (3/51)
    hp = yaml.safe_load(open(next(tmp_path.glob("csv/version_*/hparams.yaml"))))
    assert hp["trainer"]["devices"] == 2 and hp["trainer"]["strategy"] == "ddp"


def test_ddp_sim_mining_gathers_across_ranks(tmp_path):
    # miner=all with 3 x 4 local batches: 12 anchors x 3 positives x 8 negatives = 288 triplets on
    # one rank; gathering the other rank's 12 rows gives every anchor more (n_pos + n_neg = 23).
    args = [*tiny("triplet"), "trainer=ddp_sim", "miner=all", "miner.gather_across_ranks=true",
            "trainer.log_every_n_steps=1", "callbacks.embedding_eval=null", "test=false", f"hydra.run.dir={tmp_path}"]
    r = run_cli(args)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = read_csv_metrics(tmp_path)
    counts = [float(r["miner/triplets_step"]) for r in rows if r.get("miner/triplets_step")]
    assert len(counts) == 2 and all(c > 288 for c in counts), counts


def test_ddp_sim_is_refused_inside_a_local_multirun(tmp_path):
    r = run_cli(["-m", *tiny("lstm"), "trainer=ddp_sim", "model.optimizer.lr=0.001,0.002",
                 f"hydra.sweep.dir={tmp_path}"], timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert "trainer.strategy=ddp" in r.stderr and "multirun" in r.stderr


def test_gpu_ddp_config_stays_ddp():
    cfg = compose_cfg(["trainer=ddp"])
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.accelerator == "gpu"
    assert cfg.trainer.use_distributed_sampler is False


# ------------------------------------------------------------------------------------ 4. resume
def _adam_steps(ck: dict) -> set[int]:
    return {int(s["step"]) for s in ck["optimizer_states"][0]["state"].values()}


def test_resume_continues_step_and_optimizer_state(tmp_path):
    # 6 steps planned (2 epochs of 3); a step checkpoint every step; then resume from step 3.
    step_ckpt = ("+callbacks.every_step={_target_:lightning.pytorch.callbacks.ModelCheckpoint,"
                 "dirpath:${paths.output_dir}/steps,filename:'step{step}',every_n_train_steps:1,"
                 "save_top_k:-1,monitor:null,auto_insert_metric_name:false}")
    plan = tiny("lstm", "trainer.max_epochs=2", "trainer.max_steps=6", "trainer.limit_train_batches=3",
                "model.optimizer.lr=0.01")
    first = tmp_path / "first"
    run_inproc([*plan, step_ckpt], first)
    mid = first / "steps" / "step3.ckpt"
    mid_ck = load_ckpt(mid)
    assert mid_ck["global_step"] == 3 and _adam_steps(mid_ck) == {3}

    resumed = tmp_path / "resumed"
    _, _, metrics = run_inproc([*plan, f"ckpt_path={mid}"], resumed)
    _, last = checkpoint_files(resumed)
    ck = load_ckpt(last)
    assert ck["global_step"] == 6  # ended at the requested max_steps, counting from 3
    assert ck["epoch"] == mid_ck["epoch"] + 1
    assert _adam_steps(ck) == {6}  # AdamW moments continued (a fresh optimizer would say 3)
    sched = ck["lr_schedulers"][0]
    assert sched["last_epoch"] == 6
    # only 3 steps were trained in the resumed run: the uninterrupted run's step 6 is the reference
    ref = load_ckpt(first / "steps" / "step6.ckpt")
    assert ref["global_step"] == 6 and _adam_steps(ref) == {6}
    # the resumed run's checkpoints are its own
    assert metrics["best_checkpoint"].startswith(str(resumed))


# ------------------------------------------------------------------------------------ 5. errors
MISCONFIGS = {
    "loss-model": (["loss=hinge", "model=lstm"], ["loss=hinge", "model=lstm"]),
    "image-size": (["backbone=inception_v4", "data.image_size=64"], ["data.image_size=64", "inception_v4", "75"]),
    "backbone-name": (["backbone.name=resnet_nope"], ["backbone.name='resnet_nope'"]),
    "data-root": (["data.root=/nonexistent"], ["/nonexistent"]),
    "transfer-ckpt": (["model=combined_transfer"], ["model.cnn_ckpt"]),
    "transfer-ckpt-file": (["model=combined_transfer", "model.cnn_ckpt=/nope.ckpt"], ["model.cnn_ckpt='/nope.ckpt'"]),
    # P x K batches of one class, or of one drawing per class, hold no triplet: nothing would train
    "pk-p": (["model=triplet", "data.pk_p=1"], ["data.pk_p=1", "loss=hinge", ">= 2"]),
    "pk-k": (["model=combined", "loss=softmax_triplet", "data.sampler=pk", "data.pk_k=1"],
             ["data.pk_k=1", "loss=softmax_triplet"]),
}


def test_pk_sizes_of_one_are_fine_where_no_pk_batch_or_triplet_is_made():
    validate(compose_cfg(["model=triplet", "data.sampler=random", "data.pk_p=1", "data.pk_k=1"]))
    validate(compose_cfg(["model=combined", "data.sampler=pk", "data.pk_p=1", "data.pk_k=1"]))  # cross-entropy


@pytest.mark.parametrize("name", list(MISCONFIGS))
def test_misconfiguration_stops_before_training(name, tmp_path, capsys, monkeypatch):
    """In-process through the entry: exit code 2, one `error:` line naming the keys, nothing trained."""

    overrides, needles = MISCONFIGS[name]
    cfg = compose_cfg([*overrides, "logger=csv"], tmp_path)
    fit_called = []
    monkeypatch.setattr(pl.Trainer, "fit", lambda *a, **k: fit_called.append(1))
    with pytest.raises(SystemExit) as e:
        train_entry("train", train)(cfg)
    assert e.value.code == 2 and not fit_called
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, errors
    for n in needles:
        assert n in errors[0], errors[0]
    # the stack is not lost: the message points at the run dir's error.log
    trace = errors[0].rsplit("(traceback: ", 1)
    assert len(trace) == 2, errors[0]
    assert "Traceback" in Path(trace[1].rstrip(")")).read_text()
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("name", ["loss-model", "data-root"])
def test_misconfiguration_cli_exit_code(name, tmp_path):
    overrides, needles = MISCONFIGS[name]
    r = run_cli([*overrides, "logger=csv", f"hydra.run.dir={tmp_path}"], timeout=300)
    assert_one_line_error(r, *needles)
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "csv").exists()


@pytest.mark.parametrize("args,needles", [
    (["model=nope"], ["model=nope: no such option", "combined_transfer, direct"]),  # lists the options
    (["model=triplet", "miner=bogus"], ["miner=bogus: no such option", "semihard"]),
    (["model=triplet", "model.drop_rate=0.2"], ["model.drop_rate", "+model.drop_rate=0.2"]),  # not in its config
    (["model=["], ["cannot be parsed"]),
])
def test_command_line_hydra_cannot_compose_is_one_line(args, needles, tmp_path):
    """Hydra's own report (a list of options, a search path, a hint to set HYDRA_FULL_ERROR) is one
    line naming the key and exit code 2, as every other misconfiguration."""
    r = run_cli([*args, f"hydra.run.dir={tmp_path}"], timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "HYDRA_FULL_ERROR" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: "), r.stderr[-3000:]
    for n in needles:
        assert n in errors[0], errors[0]
    assert not (tmp_path / "checkpoints").exists()


# ------------------------------------------------------------------------------------ 6. experiments
def _experiment_overrides(name: str, extra_ckpt: str = "/tmp/cnn.ckpt") -> list[str]:
    text = (CONF / "experiment" / f"{name}.yaml").read_text()
    return [f"experiment={name}"] + ([f"model.cnn_ckpt={extra_ckpt}"] if "cnn_ckpt: ???" in text else [])


def test_experiments_exist():
    assert EXPERIMENTS, "no conf/experiment/*.yaml"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_with_its_gpu_settings(name, tmp_path):
    cfg = compose_cfg(_experiment_overrides(name), tmp_path)
    checked = validate(cfg)  # model/loss pairing, backbone name and image size at the real settings
    assert checked["model_choice"] in MODEL_TINY
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # nothing left ??? or unresolvable
    assert cfg.trainer.accelerator == "gpu"


# Heavy backbones (VGG-16, Inception-v4, ResNet-v2-50) take 10-60 s each even at reduced size on CPU.
_LIGHT = {"study_lstm"}


def _reduced(name: str, tmp_path: Path) -> list[str]:
    cfg = compose_cfg(_experiment_overrides(name), tmp_path)
    size = max(32, bb.min_image_size(cfg.model.backbone.name) or 32) if "backbone" in cfg.model else 32
    return ["trainer=cpu", "trainer.precision=32-true", "trainer.fast_dev_run=true", "data.root=study10",
            f"data.image_size={size}", "data.batch_size=4", "data.eval_batch_size=8", "data.pk_k=2",
            "data.max_snapshots=2", "data.num_workers=0", "data.pin_memory=false", "logger=csv",
            "callbacks.model_checkpoint=null", "callbacks.progress=null", "callbacks.sample_images=null",
            "callbacks.embedding_eval.max_train=16", "callbacks.embedding_eval.probe_epochs=2"]


def _encoder_checkpoint(cfg, path: Path) -> Path:
    """A triplet-model checkpoint with the experiment's backbone/embedding size (for *transfer)."""

    m = TripletImageModel(cfg.model.backbone.name, embedding_dim=int(cfg.model.embedding_dim),
                          image_size=int(cfg.model.image_size))
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams)}, path)
    return path


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=() if n in _LIGHT else pytest.mark.slow) for n in EXPERIMENTS])
def test_experiment_runs_fast_dev_run_at_reduced_size(name, tmp_path):
    overrides = [*_experiment_overrides(name), *_reduced(name, tmp_path)]
    if any(o.startswith("model.cnn_ckpt=") for o in overrides):
        cfg = compose_cfg(overrides, tmp_path)
        ckpt = _encoder_checkpoint(cfg, tmp_path / "cnn.ckpt")
        overrides = [o if not o.startswith("model.cnn_ckpt=") else f"model.cnn_ckpt={ckpt}" for o in overrides]
    run_dir = tmp_path / "run"
    cfg, _, metrics = run_inproc(overrides, run_dir)
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.fast_dev_run is True
    assert any(k.startswith("test/") for k in metrics), metrics
    assert metrics.get("test/acc@100", metrics.get("test/triplet_acc@100")) is not None


# ------------------------------------------------------------------------------------ 7. wandb
def test_default_logger_is_wandb_offline_with_metrics_config_and_images(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline by the config, not by the environment
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))
    overrides = [o for o in tiny("combined") if o not in ("logger=csv", "callbacks.sample_images=null")]
    cfg, _, _ = run_inproc([*overrides, "trainer.log_every_n_steps=1"], tmp_path)
    assert cfg.logger.wandb.offline is True
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list(tmp_path.rglob("*"))[:20]
    keys = (b"val/acc@100", b"test/acc@100", b"train/loss", b"samples/train",  # metrics, image
            b"sketchembed.models.CombinedModel", b"test_resnet")  # config
    # wandb-core writes the run file from its own process: under load the last records (the test
    # metrics) reached the disk a moment after wandb.finish() returned, so read until they are there
    deadline = time.monotonic() + 60
    while True:
        data = next(runs[0].glob("run-*.wandb")).read_bytes()
        missing = [k for k in keys if k not in data]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not missing, missing
    pngs = list(runs[0].glob("files/media/images/samples/train_*.png"))
    assert len(pngs) == 1
    with Image.open(pngs[0]) as im:
        assert im.size[0] > 64 and im.size[1] > 64


# ------------------------------------------------------------------------------------ 8. run dirs
def test_default_run_dir_is_under_outputs(tmp_path):
    cfg = compose_cfg(["model=lstm"])

    run_dir = Path(HydraConfig.get().run.dir)
    assert run_dir.parent == REPO / "outputs" / "train" / "runs"
    assert cfg.callbacks.model_checkpoint.dirpath == f"{HydraConfig.get().runtime.output_dir}/checkpoints"
    assert cfg.callbacks.model_checkpoint.save_top_k == 1
    # last.ckpt (the latest state, every epoch) comes from its own callback (tests/test_resume.py)
    assert cfg.callbacks.last_checkpoint.dirpath == cfg.callbacks.model_checkpoint.dirpath


def test_a_refused_run_is_set_aside_from_the_real_runs(tmp_path, capsys):
    """A run refused by the config checks leaves outputs/<task>/runs/ as it was: its record (Hydra's
    .hydra/, run.log, the config tree, error.log) goes to outputs/<task>/refused/<name>; a run dir that holds more
    (a resumed run's checkpoints) keeps its place."""
    runs = tmp_path / "train" / "runs"
    fresh, resumed = runs / "2026-01-01_00-00-00", runs / "2026-01-02_00-00-00"
    for d in (fresh / ".hydra", resumed / "checkpoints"):
        d.mkdir(parents=True)
    (fresh / "run.log").write_text("")
    for run in (fresh, resumed):
        with pytest.raises(SystemExit) as e:
            train_entry("train", train)(compose_cfg(["loss=hinge", "model=lstm", "logger=csv"], run))
        assert e.value.code == 2
    refused = tmp_path / "train" / "refused" / fresh.name
    assert sorted(p.name for p in runs.iterdir()) == [resumed.name]
    assert sorted(p.name for p in refused.iterdir()) == [".hydra", "config_tree.log", "error.log", "run.log"]
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert errors[0].endswith(f"(traceback: {refused / 'error.log'})")
    assert errors[1].endswith(f"(traceback: {resumed / 'error.log'})")
    assert "Traceback" in (refused / "error.log").read_text()
