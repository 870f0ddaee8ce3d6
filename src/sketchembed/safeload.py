"""The one way sketchembed opens a checkpoint file: as data, never as code.

A checkpoint is a pickle, and a pickle may name any importable callable (``os.system``) to be called
while it is read. Every load (eval, index, suggest, train resume and test, ``model.cnn_ckpt``) goes
through :func:`safe_load`, and Lightning's own loads get ``weights_only=True`` after it.
Lowest layer (torch only), so models and the train/eval entries can all use it.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch


class UnsafeCheckpointError(ValueError):
    """A checkpoint whose pickle would import or call code (not only tensors and plain data)."""


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def safe_load(path, map_location="cpu") -> Any:
    """``torch.load`` that never runs code: the one loader for every checkpoint we open.

    A pickle may name any importable callable (``os.system``); ``weights_only=True`` refuses all but
    tensors and plain containers, and our checkpoints hold nothing else. There is no fallback: a
    pickle naming code is an :class:`UnsafeCheckpointError` naming the file, any other file the safe
    loader cannot read a ``ValueError`` naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4": noise, the load is checked anyway
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = _GLOBAL.search(str(e))
        if found:  # the pickle names an importable object: code, refused before it is looked up
            raise UnsafeCheckpointError(f"{path}: refused to load this checkpoint: it would import "
                                        f"{found.group(1)} (a pickle that runs code; sketchembed checkpoints "
                                        "hold only tensors and plain data)") from None
        reason = next((ln.strip() for ln in str(e).splitlines() if ln.strip().startswith("Unsupported")),
                      e.__class__.__name__)
        raise ValueError(f"{path}: not a sketchembed checkpoint (torch's safe loader cannot read it: "
                         f"{reason})") from None
    except Exception as e:  # not a torch file at all (zip/pickle errors of many types)
        raise ValueError(f"{path}: not a sketchembed checkpoint (cannot be read by torch.load: "
                         f"{e.__class__.__name__})") from None
