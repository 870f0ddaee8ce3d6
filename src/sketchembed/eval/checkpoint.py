"""Open a sketchembed checkpoint without knowing its model class in advance.

The checkpoint's own hparams name the model (``model_kind``), so `index build`, `suggest` and eval
take one ``--ckpt`` and pick the class themselves; anything else (a random file, another project's
checkpoint, a kind this code does not know) ends in one line naming the file.
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path
from typing import Any, Iterable

# re-exported: callers open checkpoints through this module
import sketchembed.models  # noqa: F401 - registers every model kind in MODELS
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
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, (DictConfig, ListConfig)):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
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
    ckpt["hyper_parameters"] = hp
    return ckpt


def load_model(ckpt_path, *, kinds: Iterable[str] | None = None, map_location="cpu"):
    """Load the LightningModule of a sketchembed checkpoint, in eval mode.

    ``kinds`` restricts the accepted ``model_kind`` values (e.g. classifiers only).
    """
    path = Path(ckpt_path)
    ckpt = read_checkpoint(path, map_location)
    kind = str(ckpt["hyper_parameters"]["model_kind"])
    classes = MODELS
    if kind not in classes:
        raise ValueError(f"{path}: unexpected model kind {kind!r} (this code knows: {', '.join(sorted(classes)) or 'none'})")
    if kinds is not None and kind not in set(kinds):
        raise ValueError(f"{path}: model kind {kind!r} cannot be used here (expected one of: {', '.join(kinds)})")
    cls = classes[kind]
    try:  # read_checkpoint has vetted the file; Lightning reads it again, as safely
        model = cls.load_from_checkpoint(str(path), map_location=map_location, weights_only=True)
    except (RuntimeError, KeyError, ValueError) as e:  # weights or hparams that do not fit the kind
        first = (str(e).splitlines() or [e.__class__.__name__])[0]
        raise ValueError(f"{path}: checkpoint does not fit model kind {kind!r} ({first})") from None
    model.eval()
    return model


def datamodule_hparams(ckpt_path) -> dict:
    """Data settings saved with the checkpoint (image size, line width, sequence std, …), if any."""
    ckpt = read_checkpoint(ckpt_path)
    return _plain(ckpt.get("datamodule_hyper_parameters") or {})


# The DataModule settings a model's inputs depend on (rasterization and sequence), read back from a
# checkpoint by every consumer of it (eval, index, suggest, studio).
INPUT_KEYS = ("image_size", "line_width", "padding", "max_snapshots", "canvas", "background", "standardize",
              "fraction_rule", "seq_norm", "seq_origin")
DATA_KEYS = INPUT_KEYS + ("eval_batch_size", "seed")


def datamodule_for(ckpt_path, root, *, views=None, batch_size: int | None = None, num_workers: int = 0,
                   ckpt: dict | None = None):
    """A :class:`SketchDataModule` over ``root`` that serves a checkpoint's model what it was trained on.

    Raster settings come from the checkpoint's datamodule hparams and ``seq_std`` from its datamodule
    state, so a model sees the same inputs on any dataset (the index may cover other classes: the
    labels then are that dataset's own).
    """
    from sketchembed.data.datamodule import SketchDataModule

    ckpt = ckpt if ckpt is not None else read_checkpoint(ckpt_path)
    dm_hp = _plain(ckpt.get("datamodule_hyper_parameters") or {})
    kwargs = {k: dm_hp[k] for k in DATA_KEYS if dm_hp.get(k) is not None}
    if batch_size is not None:
        kwargs["eval_batch_size"] = int(batch_size)
    if views is None:
        views = dm_hp.get("views") or ("sequence",)
    dm = SketchDataModule(root=str(root), views=tuple(sorted(views)), eval_fractions=(1.0,),
                          num_workers=num_workers, **kwargs)
    state = ckpt.get(SketchDataModule.__qualname__) or ckpt.get(SketchDataModule.__name__)
    if isinstance(state, dict) and state.get("seq_std"):
        dm.load_state_dict({"seq_std": float(state["seq_std"])})
    return dm


def data_settings(ckpt: dict, path="checkpoint") -> dict:
    """What turning raw points into this model's inputs needs: ``seq_std`` and raster settings.

    ``suggest`` uses it to embed a single sketch without opening any dataset.
    """
    from sketchembed.data.datamodule import SketchDataModule

    state = ckpt.get(SketchDataModule.__qualname__) or ckpt.get(SketchDataModule.__name__) or {}
    hp = _plain(ckpt.get("datamodule_hyper_parameters") or {})
    if not isinstance(state, dict) or not state.get("seq_std"):
        raise ValueError(f"{path}: checkpoint carries no data state (seq_std); was it trained with SketchDataModule?")
    return {"seq_std": float(state["seq_std"]), "classes": state.get("classes"),
            "image_size": int(hp.get("image_size", 64)), "line_width": float(hp.get("line_width", 8.0)),
            "padding": float(hp.get("padding", 4.5)), "max_snapshots": hp.get("max_snapshots", 8),
            "canvas": float(hp.get("canvas", 256.0)), "background": hp.get("background", "black"),
            "standardize": bool(hp.get("standardize", False)), "fraction_rule": hp.get("fraction_rule", "ceil"),
            "seq_origin": tuple(hp.get("seq_origin", (0.0, 0.0)))}
