"""Helpers shared by the test files (one home: no test file imports another). Fixtures that several
files use live in conftest.py; plain functions and constants live here.

The model kinds come from ``sketchembed.registry.MODELS`` and the model configs from ``conf/model``,
so a newly registered model (or a new model config) is tested by the parametrized tests without
editing any list; its tiny sizes are found from the keys its config has.
"""

from __future__ import annotations

import csv
import inspect
import json
import math
import os
import subprocess
import sys
import threading
import time
from itertools import islice
from pathlib import Path

import numpy as np
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

import sketchembed.models  # noqa: F401 - registers the models in MODELS
from sketchembed.corpus.formats import read_drawings
from sketchembed.corpus.sketch import points_to_strokes
from sketchembed.models.base import DEFAULT_OPTIMIZER
from sketchembed.registry import LOSSES, MINERS, MODELS
from sketchembed.safeload import safe_load
from sketchembed.train.run import train, train_entry

REPO = REPO_ROOT = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
# the registered names (read at collection: a registration in src/ is tested by being registered)
MODEL_KINDS = MODELS.names()
LOSS_NAMES = LOSSES.names()
MINER_NAMES = MINERS.names()
# the model configs a person picks with model=NAME (a kind, or a kind with settings: combined_transfer)
MODEL_CONFIGS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))

# Settings that make any run tiny (2 train steps of small batches, 1 val/test batch, 32 px).
TINY = [
    "backbone=test_resnet",
    "data.image_size=32",
    "data.batch_size=8",
    "data.eval_batch_size=32",
    "data.pk_p=3",
    "data.pk_k=4",
    "data.max_snapshots=3",
    "trainer.max_epochs=1",
    "trainer.max_steps=2",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_progress_bar=false",
    "logger=csv",
    "callbacks.sample_images=null",
    "callbacks.progress=null",
    "callbacks.embedding_eval.max_train=48",
    "callbacks.embedding_eval.probe_epochs=5",
]
# The size keys a model config may have, and their tiny values.
TINY_SIZES = {"embedding_dim": 16, "hidden": 16, "mlp_hidden": 16}


def _model_keys(name: str) -> set[str]:
    """The ``model.*`` keys config ``conf/model/NAME.yaml`` sets, its own and those of the model configs
    it builds on (its plain ``defaults`` entries), read as plain YAML."""
    doc = yaml.safe_load((CONF / "model" / f"{name}.yaml").read_text()) or {}
    keys = set(doc.get("model") or {})
    for entry in doc.get("defaults") or []:
        if isinstance(entry, str) and (CONF / "model" / f"{entry}.yaml").is_file():
            keys |= _model_keys(entry)
    return keys


MODEL_TINY = {name: [f"model.{k}={v}" for k, v in TINY_SIZES.items() if k in _model_keys(name)]
              for name in MODEL_CONFIGS}


def tiny(model: str, *extra: str) -> list[str]:
    """Overrides for a tiny run of model config ``model``."""
    return [f"model={model}", *TINY, *MODEL_TINY[model], *extra]


def compose_cfg(overrides: list[str], run_dir: Path | None = None):
    """The config `python train.py OVERRIDES` would run with, the HydraConfig singleton set as in
    a real run (so `${hydra:runtime.output_dir}` and the group choices resolve)."""

    GlobalHydra.instance().clear()
    os.environ.setdefault("PROJECT_ROOT", str(REPO))
    run = [f"hydra.run.dir={run_dir}"] if run_dir is not None else []
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, *run], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir) if run_dir is not None else cfg.hydra.run.dir
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):  # the job's config has no hydra node (as in a real run)
        del cfg["hydra"]
    return cfg


def run_inproc(overrides: list[str], run_dir: Path):
    """Train through the real entry (validation, one-line errors, returned optimized metric)."""

    cfg = compose_cfg(overrides, run_dir)
    value = train_entry("train", train)(cfg)
    metrics = json.loads((run_dir / "train_metrics.json").read_text())
    return cfg, value, metrics


def run_cli(args: list[str], *, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python train.py ARGS` in a subprocess (exit codes, multirun, DDP)."""
    e = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
         "HYDRA_FULL_ERROR": "0", **(env or {})}
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, env=e,
                          capture_output=True, text=True, timeout=timeout)


def load_ckpt(path: Path) -> dict:
    return safe_load(path)


def read_csv_metrics(run_dir: Path) -> list[dict[str, str]]:
    files = sorted(run_dir.glob("csv/version_*/metrics.csv"))
    assert files, f"no csv metrics under {run_dir}"
    with open(files[-1], newline="") as f:
        return list(csv.DictReader(f))


def last_value(rows: list[dict[str, str]], key: str) -> float:
    vals = [float(r[key]) for r in rows if r.get(key) not in (None, "")]
    assert vals, f"{key} never logged; columns: {sorted(rows[0]) if rows else []}"
    return vals[-1]


def checkpoint_files(run_dir: Path) -> tuple[Path, Path]:
    """(best, last) of a run: both in the run dir's checkpoints/."""
    ckpts = run_dir / "checkpoints"
    last = ckpts / "last.ckpt"
    best = [p for p in ckpts.glob("*.ckpt") if p.name != "last.ckpt"]
    assert last.is_file(), f"no last.ckpt in {ckpts}: {sorted(os.listdir(ckpts)) if ckpts.is_dir() else 'missing'}"
    assert len(best) == 1, f"expected one best checkpoint in {ckpts}, got {best}"
    return best[0], last


def assert_one_line_error(r: subprocess.CompletedProcess, *needles: str, code: int = 2) -> None:
    """A command that failed with exit ``code`` and one ``error:`` line holding every needle, the
    traceback kept in the run dir's error.log the line points at."""
    out = r.stdout + r.stderr
    assert r.returncode == code, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, r.stderr[-3000:]
    for n in needles:
        assert n in errors[0], errors[0]
    # the stack is not lost: the message points at the run dir's error.log
    trace = errors[0].rsplit("(traceback: ", 1)
    assert len(trace) == 2, errors[0]
    assert "Traceback" in Path(trace[1].rstrip(")")).read_text()


def real_points(shared: Path, names, per_class: int) -> list:
    """The first ``per_class`` simplified drawings of each class as ``(N, 3)`` float32 points."""
    out = []
    for name in names:
        for d in islice(read_drawings(shared / "simplified" / f"{name}.ndjson", on_error="raise"), per_class):
            out.append(d.points().astype(np.float32))
    return out


# ------------------------------------------------- the tiny trained LSTM (conftest's `trained`)
CLASSES3 = ["apple", "banana", "bus"]


def class_drawing(c: int, r) -> np.ndarray:
    """Class c: strokes heading in direction c (so the classes are learnable and distinct)."""
    n = int(r.integers(6, 16))
    angle = 2 * np.pi * c / 3
    step = np.stack([np.cos(angle), np.sin(angle)]) * 9 + r.normal(size=(n, 2))
    xy = np.clip(128 + np.cumsum(step, 0) - step.sum(0) / 2, 0, 255)
    pts = np.zeros((n, 3), np.int16)
    pts[:, :2] = np.rint(xy)
    pts[n // 2, 2] = 1
    pts[-1, 2] = 1
    return pts


def ndjson_file(path, pts, word="banana", key_id=42):
    """One Quick, Draw! ndjson record of ``pts`` written to ``path``."""
    strokes = [[s[:, 0].astype(int).tolist(), s[:, 1].astype(int).tolist()] for s in points_to_strokes(pts)]
    path.write_text(json.dumps({"word": word, "countrycode": "DE", "timestamp": "2017-03-01 00:00:00.0",
                                "recognized": True, "key_id": str(key_id), "drawing": strokes}) + "\n")
    return path


def fifo(path, data: bytes = b"{}", seconds: float = 30.0) -> None:
    """Make ``path`` a FIFO. Code that opens it blocks until a writer comes (the bug: ``suggest`` hung
    for ever): a helper thread feeds ``data`` to any reader for ``seconds``, so a test without the fix
    fails instead of hanging. With the fix nobody opens it and the thread only waits."""
    if path.exists() or path.is_symlink():
        path.unlink()
    os.mkfifo(path)

    def feed():
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # succeeds only while a reader waits
            except OSError:
                time.sleep(0.02)
                continue
            try:
                os.write(fd, data)
            finally:
                os.close(fd)

    threading.Thread(target=feed, daemon=True).start()


TINY_BACKBONE = "test_byobnet"
TINY_IMAGE = 32
TINY_CLASSES = 4


def make_batch(B: int = 8, num_classes: int = TINY_CLASSES, image_size: int = TINY_IMAGE, max_points: int = 16,
               max_snapshots: int = 3, fraction: float = 1.0, seed: int = 0) -> dict:
    """A batch following ARCHITECTURE.md "Batches" exactly, with class-dependent strokes and images
    (so there is something to learn): drawing b of class c moves in direction c and its images carry a
    bar at a class-specific column; each snapshot shows the strokes drawn so far (the last = image)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(B) % num_classes
    lengths = torch.randint(4, max_points + 1, (B,), generator=g)
    T = int(lengths.max())
    points = torch.zeros(B, T, 3)
    seq = torch.zeros(B, T, 3)
    ends: list[list[int]] = []
    for b in range(B):
        n = int(lengths[b])
        angle = 2 * math.pi * int(labels[b]) / num_classes
        step = torch.tensor([math.cos(angle), math.sin(angle)]) * 8 + torch.randn(n, 2, generator=g)
        xy = 128 + torch.cumsum(step, 0) - step.sum(0) / 2
        pen = (torch.rand(n, generator=g) < 0.3).float()
        pen[-1] = 1
        points[b, :n, :2], points[b, :n, 2] = xy, pen
        seq[b, 0, :2] = xy[0] / 20
        seq[b, 1:n, :2] = (xy[1:] - xy[:-1]) / 20
        seq[b, :n, 2] = pen
        ends.append(torch.nonzero(pen, as_tuple=True)[0].tolist())
    S = max(len(e) for e in ends)
    stroke_ends = torch.full((B, S), -1, dtype=torch.long)
    snap_batch, snap_pos, snap_share = [], [], []
    for b, e in enumerate(ends):
        stroke_ends[b, :len(e)] = torch.tensor(e)
        m = min(len(e), max_snapshots)
        for j in range(1, m + 1):  # evenly chosen, the last stroke end always in
            k = math.ceil(j * len(e) / m) - 1
            snap_batch.append(b)
            snap_pos.append(e[k])
            snap_share.append((e[k] + 1) / len(points[b, :int(lengths[b])]))
    image = torch.zeros(B, 1, image_size, image_size)
    for b in range(B):
        col = int(labels[b]) * image_size // num_classes
        image[b, 0, :, col:col + 2] = 1.0
    image += 0.1 * torch.rand(image.shape, generator=g)
    sb = torch.tensor(snap_batch)
    share = torch.tensor(snap_share).view(-1, 1, 1, 1)
    snapshots = image[sb] * share  # the last snapshot of each drawing equals its image
    return {
        "points": points, "lengths": lengths, "seq": seq, "stroke_ends": stroke_ends,
        "n_strokes": torch.tensor([len(e) for e in ends]), "snap_batch": sb,
        "snap_pos": torch.tensor(snap_pos), "label": labels, "index": torch.arange(B),
        "key_id": torch.arange(B) + 1000, "fraction": fraction, "image": image, "snapshots": snapshots,
    }


# tiny sizes, each given to the models whose constructor names it (any registered kind)
TINY_MODEL_SIZES = dict(num_classes=TINY_CLASSES, backbone=TINY_BACKBONE, embedding_dim=16, hidden=16, layers=2,
                        mlp_hidden=16, image_size=TINY_IMAGE)


def tiny_model(kind: str, **kw):
    """A tiny model of any registered kind (its constructor's arguments from TINY_MODEL_SIZES)."""
    common = dict(optimizer=dict(DEFAULT_OPTIMIZER, lr=kw.pop("lr", 3e-3), weight_decay=0.0),
                  scheduler=kw.pop("scheduler", None))
    cls = MODELS[kind]
    params = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in TINY_MODEL_SIZES.items() if k in params}, **common, **kw)
