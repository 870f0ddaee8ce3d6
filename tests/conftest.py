"""Shared fixtures. Tests use only local data: ../shared/quickdraw beside the checkout, and the
prepared copy embedded in the package."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_QUICKDRAW = Path(os.environ.get("SKETCHEMBED_SHARED", REPO_ROOT.parent / "shared")) / "quickdraw"


def pytest_configure(config):
    import torch

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


def real_points(shared: Path, names, per_class: int) -> list:
    """The first ``per_class`` simplified drawings of each class as ``(N, 3)`` float32 points."""
    from itertools import islice

    import numpy as np

    from sketchembed.corpus.formats import read_drawings

    out = []
    for name in names:
        for d in islice(read_drawings(shared / "simplified" / f"{name}.ndjson", on_error="raise"), per_class):
            out.append(d.points().astype(np.float32))
    return out
