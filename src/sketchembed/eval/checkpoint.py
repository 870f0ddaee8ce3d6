"""Open a sketchembed checkpoint without knowing its model class in advance.

The checkpoint's own hparams name the model (``model_kind``), so `index build`, `suggest` and eval
take one ``--ckpt`` and pick the class themselves; anything else (a random file, another project's
checkpoint, a kind this code does not know) ends in one line naming the file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Iterable

import torch
from hydra.errors import InstantiationException
from lightning.pytorch.core.saving import _load_state
from omegaconf import DictConfig, ListConfig, OmegaConf

# re-exported: callers open checkpoints through this module
import sketchembed.models  # noqa: F401 - registers every model kind in MODELS
from sketchembed.data.inputs import read_inputs
from sketchembed.models.base import check_targets
from sketchembed.registry import MODELS
from sketchembed.safeload import UnsafeCheckpointError, safe_load  # noqa: F401

_HASH_BLOCK = 1 << 22


def file_sha256(path) -> str:
    """sha256 of a file, streamed (checkpoints of VGG-sized models are hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_HASH_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def _plain(obj: Any) -> Any:
    if isinstance(obj, (DictConfig, ListConfig)):
        return OmegaConf.to_container(obj, resolve=True)
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


def read_checkpoint(path, map_location="cpu") -> dict:
    """The checkpoint dict, validated as a Lightning checkpoint carrying a ``model_kind``."""
    path = Path(path)
    ckpt = safe_load(path, map_location)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{path}: not a sketchembed checkpoint (no Lightning state_dict)")
    hp = _plain(ckpt.get("hyper_parameters") or {})
    if not isinstance(hp, dict) or not hp.get("model_kind"):
        raise ValueError(f"{path}: not a sketchembed checkpoint (no model_kind in its hyper_parameters)")
    check_targets(hp, str(path))  # before anything named in them is imported or called
    ckpt["hyper_parameters"] = hp
    return ckpt


def load_model(ckpt_path, *, kinds: Iterable[str] | None = None, map_location="cpu", ckpt: dict | None = None):
    """Load the LightningModule of a sketchembed checkpoint, in eval mode.

    ``kinds`` restricts the accepted ``model_kind`` values (e.g. classifiers only). ``ckpt``: the
    file as :func:`read_checkpoint` returned it, so the file is read once.
    """
    path = Path(ckpt_path)
    ckpt = ckpt if ckpt is not None else read_checkpoint(path, map_location)
    kind = str(ckpt["hyper_parameters"]["model_kind"])
    classes = MODELS
    if kind not in classes:
        raise ValueError(f"{path}: unexpected model kind {kind!r} (this code knows: {', '.join(sorted(classes)) or 'none'})")
    if kinds is not None and kind not in set(kinds):
        raise ValueError(f"{path}: model kind {kind!r} cannot be used here (expected one of: {', '.join(kinds)})")
    try:  # Lightning's load_from_checkpoint minus its file read: read_checkpoint has read and vetted it
        model = _load_state(classes[kind], ckpt)
    except (RuntimeError, KeyError, ValueError, TypeError, InstantiationException) as e:  # do not fit the kind
        first = (str(e).splitlines() or [e.__class__.__name__])[0]
        raise ValueError(f"{path}: checkpoint does not fit model kind {kind!r} ({first})") from None
    weights = [t for t in ckpt["state_dict"].values() if isinstance(t, torch.Tensor)]
    if weights:  # where map_location put them, as Lightning does
        model.to(weights[0].device)
    model.eval()
    return model


def open_checkpoint(ckpt_path, *, map_location="cpu", kinds: Iterable[str] | None = None):
    """``(model, inputs, ckpt)`` of a checkpoint, from one read of the file: the model in eval mode
    and the :class:`~sketchembed.data.inputs.InputSettings` it was trained with (:func:`read_inputs`),
    from which callers build their collate, rasterizer or DataModule."""
    ckpt = read_checkpoint(ckpt_path, map_location)
    inputs = read_inputs(ckpt, str(ckpt_path))
    model = load_model(ckpt_path, kinds=kinds, map_location=map_location, ckpt=ckpt)
    return model, inputs, ckpt


def trained_root(ckpt: dict) -> str | None:
    """The dataset (``data.root``) a checkpoint was trained on, if it says."""
    hp = ckpt.get("datamodule_hyper_parameters") or {}
    root = hp.get("root") if isinstance(hp, Mapping) else None
    return str(root) if root else None
