"""A checkpoint is data, never code: a checkpoint whose pickle would run a shell command, whose record
names code (``_target_``) or holds an OmegaConf interpolation (``${oc.create:...}``) anywhere, and a
run folder whose saved overrides would do the same, are refused by every entry point that opens
them — exit code 2, one `error:` line naming the file, and the command never ran (its marker file
does not exist). Index arrays are read without pickle too."""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from helpers import tiny
from sketchembed.data.inputs import InputSettings
from sketchembed.eval.knn import KNNIndex
from sketchembed.models import LSTMModel
from sketchembed.models.checkpoint import UnsafeCheckpointError, open_checkpoint, read_checkpoint
from sketchembed.registry import LOSSES, MINERS, OPTIMIZERS, SCHEDULERS
from sketchembed.safeload import safe_load

REPO = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this calls ``os.system("touch MARKER")``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def evil_checkpoint(path: Path, marker: Path, *, legacy: int | None = None) -> Path:
    """Looks like an lstm checkpoint; its hyper_parameters hide the payload."""
    ckpt = {"epoch": 0, "global_step": 1, "state_dict": {"w": torch.zeros(2)},
            "hyper_parameters": {"model_kind": "lstm", "hidden": _Payload(marker)}}
    if legacy:  # a plain pickle of this protocol, not torch's zip format (no tensors: torch-only pickling)
        ckpt["state_dict"] = {"w": [0.0, 0.0]}
        with open(path, "wb") as f:
            pickle.dump(ckpt, f, protocol=legacy)
    else:
        torch.save(ckpt, path)
    return path


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / "PWNED"
    return evil_checkpoint(tmp_path / "evil.ckpt", marker), marker


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0"}


def _refused(cmd: list[str], ckpt: Path, marker: Path) -> None:
    r = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert not marker.exists(), f"the checkpoint's pickle ran a command:\n{out[-3000:]}"
    assert r.returncode == 2, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and str(ckpt) in errors[0] and "refused" in errors[0], r.stderr[-3000:]


def _train(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), *args]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "sketchembed.cli", *args]


# ------------------------------------------------------------------------------ the loader itself
@pytest.mark.parametrize("legacy", [None, 2], ids=["zip", "plain-pickle"])
def test_loader_refuses_code_and_names_the_file(tmp_path, legacy):
    marker = tmp_path / "PWNED"
    path = evil_checkpoint(tmp_path / "evil.ckpt", marker, legacy=legacy)
    with pytest.raises(UnsafeCheckpointError, match=rf"^{path}: refused .*posix.system") as e:
        read_checkpoint(path)
    assert "\n" not in str(e.value) and isinstance(e.value, ValueError)
    with pytest.raises(UnsafeCheckpointError):
        safe_load(path)
    assert not marker.exists()


def test_loader_refuses_what_it_cannot_read_safely(tmp_path):
    """Protocol 4 pickles use opcodes the safe loader does not read: refused too, never run."""
    marker = tmp_path / "PWNED"
    path = evil_checkpoint(tmp_path / "evil.ckpt", marker, legacy=4)
    with pytest.raises(ValueError, match=rf"^{path}: not a sketchembed checkpoint \(torch's safe loader"):
        read_checkpoint(path)
    assert not marker.exists()


def test_loader_reads_plain_checkpoints_and_rejects_other_files(tmp_path):
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {"w": torch.ones(3)}, "hyper_parameters": {"model_kind": "lstm", "lr": 1e-3}}, plain)
    assert read_checkpoint(plain).record.optimizer.args["lr"] == 1e-3  # an old record, rewritten
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=rf"{junk}: not a sketchembed checkpoint") as e:
        safe_load(junk)
    assert not isinstance(e.value, UnsafeCheckpointError)


def test_only_the_checkpoint_module_opens_checkpoint_files():
    """One home: the file loader (safeload) is used by models/checkpoint.py alone in the package."""
    users = sorted(str(f.relative_to(REPO)) for f in (REPO / "src").rglob("*.py")
                   if re.search(r"^from sketchembed\.safeload import|^import sketchembed\.safeload",
                                f.read_text(), re.M))
    assert users == ["src/sketchembed/models/checkpoint.py"]
    assert not (REPO / "src" / "sketchembed" / "eval" / "checkpoint.py").exists()


def test_no_unsafe_load_anywhere_in_the_sources():
    """Every load goes through safe_load or passes weights_only=True (Lightning's own loads)."""
    offenders = []
    files = [*(REPO / "src").rglob("*.py"), *(REPO / "bench").rglob("*.py"), *(REPO / "scripts").rglob("*.py"),
             *REPO.glob("*.py")]
    assert len(files) > 50
    for f in files:
        text = f.read_text()
        if "weights_only=False" in text or ("torch.load(" in text and f.name != "safeload.py"):
            offenders.append(str(f.relative_to(REPO)))
        if "allow_pickle=True" in text:
            offenders.append(str(f.relative_to(REPO)))
    assert not offenders, offenders


# ------------------------------------------------------------------------------ each entry point
def test_eval_refuses(evil, tmp_path):
    ckpt, marker = evil
    _refused([sys.executable, str(REPO / "eval.py"), f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'run'}"],
             ckpt, marker)


def test_index_build_refuses(evil, tmp_path):
    ckpt, marker = evil
    _refused(_cli("index", "build", "--ckpt", str(ckpt), "--data", "study10", "--out", str(tmp_path / "idx"),
                  "--quiet"), ckpt, marker)
    assert not (tmp_path / "idx").exists()


def test_suggest_refuses(evil, tmp_path, shared_quickdraw):
    ckpt, marker = evil
    index = KNNIndex(embeddings=np.eye(3, dtype=np.float32), labels=np.array([0, 1, 2]),
                     key_ids=np.array([1, 2, 3]), classes=["apple", "bus", "car"])
    index.save(tmp_path / "idx")
    _refused(_cli("suggest", "--ckpt", str(ckpt), "--index", str(tmp_path / "idx"), "--sketch",
                  str(shared_quickdraw / "simplified" / "apple.ndjson")), ckpt, marker)


def test_studio_serve_refuses(evil, tmp_path):
    ckpt, marker = evil
    _refused(_cli("serve", "--ckpt", str(ckpt), "--port", "0", "--results", str(tmp_path / "studio")), ckpt, marker)


@pytest.mark.parametrize("extra", [[], ["train=false"]], ids=["resume", "test-only"])
def test_train_ckpt_path_refuses(evil, tmp_path, extra):
    ckpt, marker = evil
    _refused(_train(*tiny("lstm"), *extra, f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'run'}"), ckpt, marker)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_train_cnn_ckpt_refuses(evil, tmp_path):
    ckpt, marker = evil
    _refused(_train(*tiny("combined_transfer"), f"model.cnn_ckpt={ckpt}", f"hydra.run.dir={tmp_path / 'run'}"),
             ckpt, marker)


def test_train_resume_run_dir_refuses(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(tiny("lstm")))
    marker = tmp_path / "PWNED"
    ckpt = evil_checkpoint(run / "checkpoints" / "last.ckpt", marker)
    _refused(_train(f"resume={run}"), ckpt, marker)


# ------------------------------------------------------------------------------ hparams _target_
def _target_checkpoint(path: Path, part: dict) -> Path:
    """A plain-data checkpoint (no pickled code) whose loss config names ``part``: loading it would
    have Hydra import and call what ``part`` names while rebuilding the model."""
    torch.save({"epoch": 0, "global_step": 1, "state_dict": {"w": torch.zeros(2)},
                "hyper_parameters": {"model_kind": "lstm", "loss": part}}, path)
    return path


TARGETS = {
    "write": lambda m: {"_target_": "pathlib.Path.write_text",
                        "_args_": [{"_target_": "pathlib.Path", "_args_": [str(m)]}, "x"]},
    "open": lambda m: {"_target_": "builtins.open", "_args_": [str(m), "w"]},
    "blocklisted": lambda m: {"_target_": "os.system", "_args_": [f"touch {m}"]},
    # an allowed outer part hiding a call in its arguments
    "nested": lambda m: {"_target_": "sketchembed.metric.losses.CrossEntropy",
                         "label_smoothing": {"_target_": "os.makedirs", "_args_": [str(m)]}},
    "private": lambda m: {"_target_": "sketchembed.__main__.main"},
}


@pytest.mark.parametrize("name", TARGETS)
def test_checkpoint_naming_code_in_its_hparams_is_refused(name, tmp_path):
    marker = tmp_path / "PWNED"
    ckpt = _target_checkpoint(tmp_path / "t.ckpt", TARGETS[name](marker))
    with pytest.raises(UnsafeCheckpointError, match=r"refused: hyper_parameters\.loss"):
        read_checkpoint(ckpt)
    assert not marker.exists()


def test_suggest_and_eval_refuse_a_checkpoint_naming_code(tmp_path, shared_quickdraw):
    marker = tmp_path / "PWNED"
    ckpt = _target_checkpoint(tmp_path / "t.ckpt", TARGETS["write"](marker))
    index = KNNIndex(embeddings=np.eye(3, dtype=np.float32), labels=np.array([0, 1, 2]),
                     key_ids=np.array([1, 2, 3]), classes=["apple", "bus", "car"])
    index.save(tmp_path / "idx")
    _refused(_cli("suggest", "--ckpt", str(ckpt), "--index", str(tmp_path / "idx"), "--allow-mismatch",
                  "--sketch", str(shared_quickdraw / "simplified" / "apple.ndjson")), ckpt, marker)
    _refused([sys.executable, str(REPO / "eval.py"), f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'run'}"],
             ckpt, marker)


def test_every_shipped_part_config_has_a_record_name():
    """The loss, miner, optimizer and scheduler configs name registered or library parts, so a model
    trained from any shipped config writes a checkpoint record (and format-1 checkpoints of them migrate)."""
    groups = {"loss": LOSSES, "miner": MINERS, "model/optimizer": OPTIMIZERS, "model/scheduler": SCHEDULERS}
    names = {}
    for group, registry in groups.items():
        for f in (REPO / "conf" / group).glob("*.yaml"):
            target = re.search(r"^_target_:\s*([\w.]+)", f.read_text(), re.M).group(1)
            names[f"{group}/{f.stem}"] = registry.name_for_target(target)
    assert len(names) > 10 and None not in names.values(), names
    assert names["loss/pml_triplet_margin"] == "pml:TripletMarginLoss" and names["model/optimizer/adamw"] == "adamw"


def test_a_registered_loss_of_your_own_module_may_be_named():
    """A part registered from outside sketchembed (docs/ARCHITECTURE.md "How to extend") is named by a
    checkpoint while it is registered; the same class is refused when it is not."""
    from torch import nn

    from sketchembed.models.checkpoint import PartRecord

    class MyLoss(nn.Module):
        kind = "classification"

    name = f"{MyLoss.__module__}.{MyLoss.__qualname__}"
    assert LOSSES.name_for_target(name) is None and LOSSES.record_name(MyLoss) is None
    with pytest.raises(UnsafeCheckpointError, match="refused: hyper_parameters.loss.name='my_test_loss'"):
        PartRecord.read({"name": "my_test_loss", "args": {}}, "loss", "x.ckpt")
    LOSSES.register("my_test_loss")(MyLoss)
    try:
        assert LOSSES.name_for_target(name) == "my_test_loss" == LOSSES.record_name(MyLoss())
        assert PartRecord.read({"name": "my_test_loss", "args": {"w": 1.0}}, "loss", "x.ckpt").args == {"w": 1.0}
    finally:
        LOSSES.pop("my_test_loss")


def test_library_names_are_looked_up_never_imported():
    """``pml:X`` / ``torch:X`` are public classes of the library's part modules: nothing else."""
    assert LOSSES["pml:TripletMarginLoss"].__name__ == "TripletMarginLoss"
    for bad in ("pml:os.system", "pml:BaseMetricLossFunction", "pml:_private", "pml:TripletMarginMiner",
                "torch:os", "os:system", "pml:__builtins__"):
        assert not LOSSES.known(bad) and not OPTIMIZERS.known(bad), bad
    assert OPTIMIZERS.known("torch:SGD") and not OPTIMIZERS.known("torch:Optimizer")
    assert MINERS.known("pml:BatchHardMiner") and SCHEDULERS.known("warmup_cosine")


# ------------------------------------------------------------------------------ interpolations
def _payload(marker: Path) -> str:
    """What OmegaConf would turn into a node that Hydra then calls: it writes ``marker``."""
    return ("${oc.create:{_target_: pathlib.Path.write_text, _args_: [{_target_: pathlib.Path, _args_: ['"
            + str(marker) + "']}, x]}}")


def _plain_checkpoint(path: Path, *, fmt: int = 2, edit=None) -> Path:
    """A plain-data lstm checkpoint that loads (weights, record, input settings); ``edit(ckpt)`` changes it."""
    torch.manual_seed(0)
    model = LSTMModel(3, hidden=4, layers=1)
    hp = json.loads(json.dumps(dict(model.hparams)))
    if fmt == 1:  # the record as it was written before names: parts as _target_ configs
        hp = {k: v for k, v in hp.items() if k not in ("model_record_format", "optimizer", "scheduler", "loss")}
        hp.update(loss={"_target_": "sketchembed.metric.losses.CrossEntropy", "label_smoothing": 0.0},
                  optimizer={"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3},
                  scheduler={"_target_": "sketchembed.models.optim.warmup_cosine", "_partial_": True,
                             "warmup_steps": 0})
    ckpt = {"epoch": 0, "global_step": 1, "state_dict": model.state_dict(), "hyper_parameters": hp,
            "SketchDataModule": InputSettings(seq_std=1.0, classes=("apple", "bus", "car")).to_dict(),
            "datamodule_hyper_parameters": {"root": "study10", "seed": 0}}
    if edit is not None:
        edit(ckpt)
    torch.save(ckpt, path)
    return path


def _set(node, path: tuple, value):
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value


def _key(path: tuple) -> str:
    return "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in path).lstrip(".")


# every node a checkpoint is read from, in both record formats (key path, format, value to set there)
NODES = {
    "loss-arg": (("hyper_parameters", "loss", "args", "label_smoothing"), 2),
    "loss-name": (("hyper_parameters", "loss", "name"), 2),
    "miner-arg": (("hyper_parameters", "miner"), 2, lambda p: {"name": "semihard", "args": {"margin": p}}),
    "optimizer-arg": (("hyper_parameters", "optimizer", "args", "lr"), 2),
    "scheduler-arg": (("hyper_parameters", "scheduler", "args", "warmup_steps"), 2),
    "model-arg": (("hyper_parameters", "hidden"), 2),
    "model-kind": (("hyper_parameters", "model_kind"), 2),
    "input-setting": (("SketchDataModule", "background"), 2),
    "input-list": (("SketchDataModule", "classes", 1), 2),
    "data-root": (("datamodule_hyper_parameters", "root"), 2),
    "v1-loss-arg": (("hyper_parameters", "loss", "label_smoothing"), 1),
    "v1-optimizer": (("hyper_parameters", "optimizer", "lr"), 1),
    "v1-scheduler": (("hyper_parameters", "scheduler", "warmup_steps"), 1),
    "v1-nested": (("hyper_parameters", "loss", "weight"), 1, lambda p: {"a": [1.0, {"b": p}]}),
    "v1-legacy-lr": (("hyper_parameters", "lr"), 1),
}


def _interpolated(path: Path, marker: Path, node: str) -> tuple[Path, str]:
    """The checkpoint with the payload at ``node``, and the key the refusal must name."""
    where, fmt, *wrap = NODES[node]
    value = wrap[0](_payload(marker)) if wrap else _payload(marker)
    key = _key(where) + {"miner-arg": ".args.margin", "v1-nested": ".a[1].b"}.get(node, "")
    return _plain_checkpoint(path, fmt=fmt, edit=lambda ck: _set(ck, where, value)), key


@pytest.mark.parametrize("fmt", [1, 2])
def test_the_plain_checkpoint_loads(tmp_path, fmt):
    """The payload checkpoints below are this one with one value changed: without it, it loads."""
    loaded = open_checkpoint(_plain_checkpoint(tmp_path / "ok.ckpt", fmt=fmt))
    assert isinstance(loaded.model, LSTMModel) and loaded.inputs.classes == ("apple", "bus", "car")
    assert loaded.record.loss.name == "cross_entropy" and loaded.model.loss is None


@pytest.mark.parametrize("node", NODES)
def test_an_interpolation_anywhere_is_refused_naming_the_key(node, tmp_path):
    marker = tmp_path / "PWNED"
    ckpt, key = _interpolated(tmp_path / "i.ckpt", marker, node)
    for read in (read_checkpoint, open_checkpoint):
        with pytest.raises(UnsafeCheckpointError) as e:
            read(ckpt)
        msg = str(e.value)
        assert msg.startswith(f"{ckpt}: refused: {key}=") and "interpolation" in msg and "\n" not in msg, msg
    assert not marker.exists()


def test_reading_a_checkpoint_never_instantiates(tmp_path, monkeypatch):
    """Loading maps names to registered classes: Hydra's instantiate is never called (the models
    package does not even import it; train.py builds the user's loss and miner)."""
    import hydra._internal.instantiate._instantiate2 as hydra_instantiate
    import hydra.utils

    import sketchembed.models as models_pkg

    def refuse(*a, **kw):
        raise AssertionError("instantiate called while loading a checkpoint")

    monkeypatch.setattr(hydra.utils, "instantiate", refuse)
    monkeypatch.setattr(hydra_instantiate, "instantiate", refuse)
    for module in [m for name, m in sys.modules.items() if name.startswith(models_pkg.__name__ + ".")]:
        assert getattr(module, "instantiate", None) is None, module.__name__
    for fmt in (1, 2):
        loaded = open_checkpoint(_plain_checkpoint(tmp_path / f"ok{fmt}.ckpt", fmt=fmt))
        assert loaded.model.loss is None and loaded.model.miner is None  # inference: no training part


# a plain checkpoint with a payload at one node, through each entry point (the nodes are spread over
# them; every node is refused by the same reader: test_an_interpolation_anywhere_is_refused_naming_the_key)
def test_eval_refuses_an_interpolation(tmp_path):
    marker = tmp_path / "PWNED"
    ckpt, _ = _interpolated(tmp_path / "i.ckpt", marker, "loss-arg")
    _refused([sys.executable, str(REPO / "eval.py"), f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'run'}"],
             ckpt, marker)


def _refused_in_process(argv: list[str], ckpt: Path, marker: Path, capsys) -> None:
    """``sketchembed ARGV`` run in this process (the CLI's own error handling): exit 2, one line."""
    from sketchembed.cli import main

    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert not marker.exists() and "Traceback" not in err, err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and str(ckpt) in errors[0] and "refused" in errors[0], err


def test_index_build_refuses_an_interpolation(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    ckpt, _ = _interpolated(tmp_path / "i.ckpt", marker, "optimizer-arg")
    _refused_in_process(["index", "build", "--ckpt", str(ckpt), "--data", "study10", "--out", str(tmp_path / "idx"),
                         "--quiet"], ckpt, marker, capsys)
    assert not (tmp_path / "idx").exists()


def test_suggest_refuses_an_interpolation(tmp_path, shared_quickdraw, capsys):
    marker = tmp_path / "PWNED"
    ckpt, _ = _interpolated(tmp_path / "i.ckpt", marker, "v1-scheduler")
    index = KNNIndex(embeddings=np.eye(3, dtype=np.float32), labels=np.array([0, 1, 2]),
                     key_ids=np.array([1, 2, 3]), classes=["apple", "bus", "car"])
    index.save(tmp_path / "idx")
    _refused_in_process(["suggest", "--ckpt", str(ckpt), "--index", str(tmp_path / "idx"), "--allow-mismatch",
                         "--sketch", str(shared_quickdraw / "simplified" / "apple.ndjson")], ckpt, marker, capsys)


def test_studio_refuses_an_interpolation(tmp_path, capsys):
    from sketchembed.studio.service import Studio

    marker = tmp_path / "PWNED"
    ckpt, _ = _interpolated(tmp_path / "i.ckpt", marker, "input-setting")
    with pytest.raises(UnsafeCheckpointError, match=rf"^{ckpt}: refused: SketchDataModule\.background="):
        Studio.open(ckpt, results_dir=tmp_path / "studio", progress=False)
    _refused_in_process(["serve", "--ckpt", str(ckpt), "--port", "0", "--results", str(tmp_path / "studio")],
                        ckpt, marker, capsys)


@pytest.mark.parametrize("extra,node", [([], "model-arg"), (["train=false"], "data-root")], ids=["resume", "test-only"])
def test_train_ckpt_path_refuses_an_interpolation(tmp_path, extra, node):
    marker = tmp_path / "PWNED"
    ckpt, _ = _interpolated(tmp_path / "i.ckpt", marker, node)
    _refused(_train(*tiny("lstm"), *extra, f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'run'}"), ckpt, marker)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_train_cnn_ckpt_refuses_an_interpolation(tmp_path):
    marker = tmp_path / "PWNED"
    ckpt, _ = _interpolated(tmp_path / "i.ckpt", marker, "miner-arg")
    _refused(_train(*tiny("combined_transfer"), f"model.cnn_ckpt={ckpt}", f"hydra.run.dir={tmp_path / 'run'}"),
             ckpt, marker)


def _run_folder(tmp_path: Path, overrides: list[str], marker: Path, node: str | None = None) -> tuple[Path, Path]:
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    last = run / "checkpoints" / "last.ckpt"
    if node is None:
        _plain_checkpoint(last)
    else:
        _interpolated(last, marker, node)
    return run, last


def test_train_resume_refuses_a_checkpoint_interpolation(tmp_path):
    marker = tmp_path / "PWNED"
    run, last = _run_folder(tmp_path, tiny("lstm"), marker, "v1-nested")
    _refused(_train(f"resume={run}"), last, marker)


@pytest.mark.parametrize("saved", [
    "+callbacks.x._target_=os.makedirs",
    "+callbacks.x={_target_: os.makedirs, name: MARKER}",
    "model.hidden=${oc.create:{_target_: os.makedirs, name: MARKER}}",
    "hydra.searchpath=[file:///tmp]",
], ids=["target-key", "target-in-dict", "interpolation", "searchpath"])
def test_resume_refuses_saved_overrides_that_name_code(saved, tmp_path):
    """resume= re-applies a run folder's overrides only after the checkpoint's checks: a `_target_`
    that is no registered or shipped part, an interpolation, or another config dir is one line."""
    from sketchembed.train.resume import resume_argv
    from sketchembed.train.validate import ConfigError

    marker = tmp_path / "PWNED"
    run, _ = _run_folder(tmp_path, [*tiny("lstm"), saved.replace("MARKER", str(marker))], marker)
    with pytest.raises(ConfigError, match=rf"^resume={run}: {run / '.hydra' / 'overrides.yaml'}: refused: ") as e:
        resume_argv(["train.py", f"resume={run}"])
    assert "\n" not in str(e.value)
    # the same override given on the command line is the user's own: taken
    assert saved in resume_argv(["train.py", f"resume={run}", saved]) or saved.startswith("model.hidden")


def test_resume_takes_the_saved_overrides_of_shipped_and_registered_parts(tmp_path):
    from sketchembed.train.resume import resume_argv

    saved = [*tiny("triplet"), "loss._target_=pytorch_metric_learning.losses.TripletMarginLoss",
             "model.optimizer._target_=torch.optim.SGD",
             "+callbacks.lr={_target_: lightning.pytorch.callbacks.LearningRateMonitor}"]
    run, _ = _run_folder(tmp_path, saved, tmp_path / "PWNED")
    assert resume_argv(["train.py", f"resume={run}"])[1:len(saved) + 1] == saved


def test_train_resume_with_a_saved_target_exits_2(tmp_path):
    marker = tmp_path / "PWNED"
    run, _ = _run_folder(tmp_path, [*tiny("lstm"), f"+callbacks.x={{_target_: os.makedirs, name: {marker}}}"], marker)
    _refused(_train(f"resume={run}"), run / ".hydra" / "overrides.yaml", marker)
    assert not (run / "config_tree.log").exists()


# ------------------------------------------------------------------------------ index arrays
def test_index_with_a_pickled_array_is_refused(tmp_path):
    index = KNNIndex(embeddings=np.eye(2, dtype=np.float32), labels=np.array([0, 1]), key_ids=np.array([1, 2]),
                     classes=["a", "b"])
    out = index.save(tmp_path / "idx")
    marker = tmp_path / "PWNED"
    arr = np.empty(2, dtype=object)
    arr[0], arr[1] = _Payload(marker), 1
    np.save(out / "labels.npy", arr, allow_pickle=True)
    with pytest.raises(ValueError, match=r"labels.npy: not a plain numeric array"):
        KNNIndex.load(out)
    assert not marker.exists()
    assert json.loads((out / "index.json").read_text())["n"] == 2
