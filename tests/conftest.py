"""Shared fixtures. Tests use only local data: ../shared/quickdraw beside the checkout, and the
prepared copy embedded in the package."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from helpers import CLASSES3, REPO_ROOT, class_drawing
from sketchembed.corpus.store import PreparedWriter
from sketchembed.data.datamodule import SketchDataModule
from sketchembed.models import LSTMModel
from sketchembed.models.base import DEFAULT_OPTIMIZER
from sketchembed.train.callbacks import EmbeddingEvalCallback, SampleImagesCallback

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

SHARED_QUICKDRAW = Path(os.environ.get("SKETCHEMBED_SHARED", REPO_ROOT.parent / "shared")) / "quickdraw"


def pytest_configure(config):
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_quickdraw() -> Path:
    """The real drawings from ../shared/quickdraw (CI has them beside the clone)."""
    if not (SHARED_QUICKDRAW / "simplified").is_dir():
        pytest.fail(f"real data not found at {SHARED_QUICKDRAW} (set SKETCHEMBED_SHARED)")
    return SHARED_QUICKDRAW


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 1-epoch tiny LSTM trained with both callbacks; its checkpoint, data dir and logs."""
    tmp = tmp_path_factory.mktemp("trained")
    r = np.random.default_rng(0)
    w = PreparedWriter(tmp / "data", CLASSES3)
    splits = []
    for i in range(72):
        w.add(class_drawing(i % 3, r), i % 3, 5000 + i)
        splits.append(0 if i < 48 else 1 if i < 60 else 2)
    w.close(splits=np.array(splits))
    L.seed_everything(0)
    dm = SketchDataModule(root=str(tmp / "data"), views=("sequence",), batch_size=16, num_workers=0)
    model = LSTMModel(num_classes=3, hidden=16, layers=1, optimizer=dict(DEFAULT_OPTIMIZER, lr=3e-3), scheduler=None)
    emb_cb = EmbeddingEvalCallback(ks=(1, 3), max_train=40, probe_epochs=5)
    logger = TensorBoardLogger(tmp, name="tb")
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=logger, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=1,
                        callbacks=[emb_cb, SampleImagesCallback(n=6)])
    trainer.fit(model, datamodule=dm)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    trainer.save_checkpoint(tmp / "model.ckpt")
    trainer.test(model, datamodule=dm, verbose=False)
    test_metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    return {"tmp": tmp, "ckpt": tmp / "model.ckpt", "data": tmp / "data", "metrics": metrics,
            "test_metrics": test_metrics, "logdir": Path(logger.log_dir), "dm": dm, "model": model, "cb": emb_cb}
