"""A checkpoint is data, never code: a checkpoint whose pickle would run a shell command is refused by
every entry point that opens one — exit code 2, one `error:` line naming the file, and the command
never ran (its marker file does not exist). Index arrays are read without pickle too."""

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
from test_train import tiny

from sketchembed.eval.checkpoint import UnsafeCheckpointError, read_checkpoint
from sketchembed.eval.knn import KNNIndex
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
    assert read_checkpoint(plain)["hyper_parameters"]["lr"] == 1e-3
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=rf"{junk}: not a sketchembed checkpoint") as e:
        safe_load(junk)
    assert not isinstance(e.value, UnsafeCheckpointError)


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


def test_every_shipped_part_config_may_be_named_by_a_checkpoint():
    """The loss, miner, optimizer and scheduler configs (and what they nest) pass the check, so a
    checkpoint of any shipped config loads."""
    from sketchembed.models.base import target_problem

    targets = set()
    for group in ("loss", "miner", "optim", "model/optimizer", "model/scheduler"):
        for f in (REPO / "conf" / group).glob("*.yaml"):
            targets |= set(re.findall(r"_target_:\s*([\w.]+)", f.read_text()))
    assert len(targets) > 10
    assert {t: target_problem(t) for t in sorted(targets) if target_problem(t)} == {}


def test_a_registered_loss_of_your_own_module_may_be_named():
    """A part registered from outside sketchembed (docs/ARCHITECTURE.md "How to extend") loads from a
    checkpoint while it is registered; the same name is refused when it is not."""
    from torch import nn

    from sketchembed.models.base import target_problem
    from sketchembed.registry import LOSSES

    class MyLoss(nn.Module):
        kind = "classification"

    name = f"{MyLoss.__module__}.{MyLoss.__qualname__}"
    assert target_problem(name) is not None
    LOSSES.register("my_test_loss")(MyLoss)
    try:
        assert target_problem(name) is None
    finally:
        LOSSES.pop("my_test_loss")


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
