"""The one home of checkpoints: open, vet, migrate and load, for every entry point.

A checkpoint is data. The file is read by torch's weights-only loader (:mod:`sketchembed.safeload`,
used nowhere else: a pickle naming code is refused). What it says about its model is a
:class:`ModelRecord`: the model kind, its own plain arguments, the registered names and plain
arguments of its loss, miner, optimizer and scheduler (:mod:`sketchembed.registry`), and the input
settings it was trained with. Names are only looked up in the registries (a library part as
``pml:Class`` / ``torch:Class``), nothing a file names is imported, and no value is resolved: a
string holding ``${`` anywhere in what is read as data is refused in one line naming the file and
the key. Records of earlier versions are rewritten to this format (:func:`migrate`), never passed to
constructors as they were.

Eval, ``index build``, ``suggest``, the studio and ``sketchembed export`` call :func:`open_checkpoint`
(the model in eval mode, built without optimizer, scheduler or training loss); ``train.py``'s
``ckpt_path=`` / ``resume=`` and ``model.cnn_ckpt=`` call :func:`read_checkpoint` (the vetted,
migrated record and the raw dict: no model is built from it).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import inspect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pytorch_metric_learning.distances as pml_distances
import pytorch_metric_learning.reducers as pml_reducers
import torch
from pytorch_metric_learning.distances import BaseDistance
from pytorch_metric_learning.reducers import BaseReducer

from sketchembed.data.inputs import CHECKPOINT_KEY, InputSettings, read_inputs
from sketchembed.metric.distances import EuclideanDistance, SquaredEuclideanDistance
from sketchembed.models.optim import DEFAULT_OPTIMIZER, DEFAULT_SCHEDULER
from sketchembed.registry import LOSSES, MINERS, MODELS, OPTIMIZERS, SCHEDULERS, Library
from sketchembed.safeload import UnsafeCheckpointError, safe_load

__all__ = ["FORMAT", "FORMAT_KEY", "Checkpoint", "Loaded", "ModelRecord", "PartRecord", "UnsafeCheckpointError",
           "build_model", "file_sha256", "migrate", "open_checkpoint", "part_record", "read_checkpoint",
           "trained_root"]

# Marks hyper_parameters written as a ModelRecord; records without it are of format 1 (migrated).
FORMAT_KEY = "model_record_format"
FORMAT = 2
PARTS = ("loss", "miner", "optimizer", "scheduler")
REGISTRIES = {"loss": LOSSES, "miner": MINERS, "optimizer": OPTIMIZERS, "scheduler": SCHEDULERS}
# What a model writes into its record on save (a fact, not an argument: not passed back on load).
FACTS = ("pretrained_init",)
# The parts of a checkpoint that are read as data (and so vetted for interpolations).
DATA_KEYS = ("hyper_parameters", "datamodule_hyper_parameters", CHECKPOINT_KEY)
_SCALARS = (bool, int, float, str, type(None))
_HASH_BLOCK = 1 << 22


def _plain(value: Any, key: str, where: str, *, mappings: bool) -> Any:
    """``value`` as plain data (scalars and lists of them; str-keyed mappings where ``mappings``),
    or one line naming ``where`` and the key."""
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [_plain(v, f"{key}[{i}]", where, mappings=mappings) for i, v in enumerate(value)]
    if mappings and isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {k: _plain(v, f"{key}.{k}", where, mappings=mappings) for k, v in value.items()}
    raise ValueError(f"{where}: {key} is a {type(value).__name__}, not a plain value (a number, string, "
                     "bool or list of them)")


@dataclass(frozen=True)
class PartRecord:
    """A loss, miner, optimizer or scheduler as a checkpoint records it: its registered (or library)
    name and its plain arguments."""

    name: str
    args: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "args": copy.deepcopy(dict(self.args))}

    @classmethod
    def read(cls, node: Any, part: str, where: str) -> PartRecord | None:
        """The record of ``part`` in hyper_parameters (``{name, args}`` or null), schema-checked."""
        key = f"hyper_parameters.{part}"
        if node is None:
            return None
        if not isinstance(node, Mapping) or set(node) != {"name", "args"} or not isinstance(node["args"], Mapping):
            raise ValueError(f"{where}: {key} must be {{name, args}} or null, got {str(node)[:80]!r}")
        name = node["name"]
        if not REGISTRIES[part].known(name):
            raise UnsafeCheckpointError(f"{where}: refused: {key}.name={str(name)[:80]!r} is no registered {part} "
                                        f"(known: {', '.join(REGISTRIES[part].names())})")
        args = {}
        for k, v in node["args"].items():
            if not isinstance(k, str) or not k.isidentifier():
                raise ValueError(f"{where}: {key}.args has a key {str(k)[:40]!r} that is no argument name")
            args[k] = _plain(v, f"{key}.args.{k}", where, mappings=False)
        return cls(name, args)


@dataclass(frozen=True)
class ModelRecord:
    """What a checkpoint says about its model (module docstring). ``args`` are the model class's own
    init arguments (``num_classes`` included); ``facts`` what it noted on save; ``inputs`` the
    :class:`InputSettings` (saved once, as the DataModule's state; None when the file has none)."""

    kind: str
    args: Mapping[str, Any]
    loss: PartRecord | None = None
    miner: PartRecord | None = None
    optimizer: PartRecord | None = None
    scheduler: PartRecord | None = None
    facts: Mapping[str, Any] = field(default_factory=dict)
    inputs: InputSettings | None = None

    def to_hparams(self) -> dict:
        """The record as a checkpoint's ``hyper_parameters`` (the inputs are saved beside it)."""
        parts = {p: (getattr(self, p).to_dict() if getattr(self, p) is not None else None) for p in PARTS}
        return {FORMAT_KEY: FORMAT, "model_kind": self.kind, **copy.deepcopy(dict(self.args)),
                **dict(self.facts), **parts}

    @classmethod
    def read(cls, hp: Mapping, where: str) -> ModelRecord:
        """A record of this format (:func:`migrate` first), checked against the model kind's arguments."""
        kind = hp.get("model_kind")
        if not kind:
            raise ValueError(f"{where}: not a sketchembed checkpoint (no model_kind in its hyper_parameters)")
        if not isinstance(kind, str) or kind not in MODELS:
            raise ValueError(f"{where}: unexpected model kind {str(kind)[:40]!r} (this code knows: "
                             f"{', '.join(MODELS.names()) or 'none'})")
        args = {k: v for k, v in hp.items() if k not in (FORMAT_KEY, "model_kind", *PARTS, *FACTS)}
        unknown = sorted(str(k) for k in set(args) - _init_arguments(MODELS[kind]))
        if unknown:
            raise ValueError(f"{where}: checkpoint does not fit model kind {kind!r} (unknown arguments "
                             f"{unknown[:5]})")
        return cls(kind=kind,
                   args={k: _plain(v, f"hyper_parameters.{k}", where, mappings=True) for k, v in args.items()},
                   facts={k: _plain(hp[k], k, where, mappings=False) for k in FACTS if k in hp},
                   **{p: PartRecord.read(hp.get(p), p, where) for p in PARTS})


def _init_arguments(model_cls: type) -> set[str]:
    """The named init arguments of a model class and the bases its ``**common`` passes them to."""
    names: set[str] = set()
    for c in model_cls.__mro__:
        if "__init__" not in vars(c):
            continue
        params = inspect.signature(c.__init__).parameters.values()
        names |= {p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names - set(PARTS)


def part_record(spec: Any, part: str, key: str) -> PartRecord:
    """The record of an optimizer or scheduler given by the user's config (``{_target_, _partial_,
    **args}``, a class it names must be registered or a library part) or already a record."""
    if isinstance(spec, PartRecord):
        return spec
    if isinstance(spec, str):
        raise ValueError(f"{key}={spec!r}: give a {part} config (conf/model/{part}/) or null"
                         + (" for a constant rate" if part == "scheduler" else ""))
    if not (isinstance(spec, Mapping) or hasattr(spec, "keys")) or "_target_" not in spec:
        raise ValueError(f"{key}: expected a config with _target_ and _partial_: true, got {str(spec)[:80]!r}")
    registry = REGISTRIES[part]
    name = registry.name_for_target(spec["_target_"])
    if name is None:
        raise ValueError(f"{key}._target_={str(spec['_target_'])[:80]!r} is no registered {part} (known: "
                         f"{', '.join(registry.names())} or {registry.library.prefix}:<class of "
                         f"{registry.library.module.__name__}>): register it where it is defined")
    args = {k: _plain(spec[k], f"{key}.{k}", "config", mappings=False)
            for k in spec if k not in ("_target_", "_partial_")}
    return PartRecord(name, args)


# ------------------------------------------------------------------------------ earlier formats
_NESTED = (Library("pml", pml_distances, BaseDistance), Library("pml", pml_reducers, BaseReducer))
_OUR_DISTANCES = {f"{c.__module__}.{c.__qualname__}": c.name for c in (SquaredEuclideanDistance, EuclideanDistance)}
_LEGACY_KEYS = ("lr", "weight_decay", "warmup_steps", "min_lr_ratio", "class_names")


def _legacy_optim(scheduler: str, legacy: Mapping[str, Any], where: str) -> tuple[dict, dict | None]:
    """(optimizer, scheduler) configs equal to the first checkpoints' ``lr / weight_decay / scheduler /
    warmup_steps / min_lr_ratio`` arguments. (``min_lr_ratio`` was per group; ``eta_min`` is one floor:
    equal for the single-group models and the default ratio 0.)"""
    try:
        lr = float(legacy.get("lr", DEFAULT_OPTIMIZER["lr"]))
        wd = float(legacy.get("weight_decay", DEFAULT_OPTIMIZER["weight_decay"]))
        warmup = int(legacy.get("warmup_steps", 0))
        floor = float(legacy.get("min_lr_ratio", 0.0)) * lr
    except (TypeError, ValueError):
        raise ValueError(f"{where}: hyper_parameters lr/weight_decay/warmup_steps/min_lr_ratio "
                         "must be numbers") from None
    opt = dict(DEFAULT_OPTIMIZER, lr=lr, weight_decay=wd)
    if scheduler == "cosine":
        return opt, dict(DEFAULT_SCHEDULER, warmup_steps=warmup, eta_min=floor)
    if scheduler != "none":
        raise ValueError(f"{where}: hyper_parameters.scheduler={scheduler[:40]!r} is no scheduler of this code")
    if warmup <= 1:
        return opt, None
    return opt, {"_target_": "torch.optim.lr_scheduler.LinearLR", "_partial_": True,
                 "start_factor": 1.0 / warmup, "end_factor": 1.0, "total_iters": warmup - 1}


def _nested_name(value: Any, key: str, where: str) -> Any:
    """An argument of a format-1 part record: a nested ``{_target_: <distance or reducer>}`` becomes its
    name (``squared_euclidean``, ``pml:LpDistance``); any other target is refused."""
    if isinstance(value, (list, tuple)):
        return [_nested_name(v, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if not isinstance(value, Mapping):
        return value
    target = value.get("_target_")
    name = _OUR_DISTANCES.get(target) if isinstance(target, str) else None
    for lib in _NESTED if name is None and isinstance(target, str) else ():
        module, _, cls_name = target.rpartition(".")
        cls = lib.get(f"pml:{cls_name}")
        if cls is not None and module in (lib.module.__name__, cls.__module__):
            name = f"pml:{cls_name}"
    if name is None:
        raise UnsafeCheckpointError(f"{where}: refused: hyper_parameters.{key}._target_={str(target)[:80]!r} is no "
                                    "distance or reducer (a checkpoint may only name registered parts)")
    return name


def _part_of_config(node: Any, part: str, where: str) -> dict | None:
    """A format-1 part (``{_target_, **args}``) as a format-2 record (``{name, args}``), the target
    found among the registered and library parts by its path (never imported)."""
    if node is None:
        return None
    if not isinstance(node, Mapping) or "_target_" not in node:
        raise ValueError(f"{where}: hyper_parameters.{part} names no part (no _target_): {str(node)[:80]!r}")
    target = node["_target_"]
    name = REGISTRIES[part].name_for_target(target)
    if name is None:
        raise UnsafeCheckpointError(
            f"{where}: refused: hyper_parameters.{part}._target_={str(target)[:80]!r} is no registered {part} "
            f"(nor a {REGISTRIES[part].library.prefix}: library one): a checkpoint may only name registered parts")
    args = {str(k): _nested_name(v, f"{part}.{k}", where)
            for k, v in node.items() if k not in ("_target_", "_partial_")}
    return {"name": name, "args": args}


def migrate(hp: Mapping, where: str) -> dict:
    """``hyper_parameters`` of an earlier format rewritten as a record of this one. Format 1: parts as
    ``_target_`` configs; before it, ``lr / weight_decay / scheduler="cosine"|"none" / warmup_steps /
    min_lr_ratio / class_names`` init arguments (the classes are the input settings' now)."""
    fmt = hp.get(FORMAT_KEY)
    if fmt == FORMAT:
        return dict(hp)
    if fmt is not None:
        raise ValueError(f"{where}: a model record of format {str(fmt)[:20]!r}; this code reads {FORMAT}")
    hp = dict(hp)
    legacy = {k: hp.pop(k) for k in _LEGACY_KEYS if k in hp}
    legacy.pop("class_names", None)
    optimizer, scheduler = hp.get("optimizer"), hp.get("scheduler", DEFAULT_SCHEDULER)
    if optimizer is None and (isinstance(scheduler, str) or legacy):
        optimizer, scheduler = _legacy_optim(scheduler if isinstance(scheduler, str) else "none", legacy, where)
    elif isinstance(scheduler, str):
        raise ValueError(f"{where}: hyper_parameters.scheduler={scheduler[:40]!r} is no scheduler record")
    hp.update(optimizer=_part_of_config(DEFAULT_OPTIMIZER if optimizer is None else optimizer, "optimizer", where),
              scheduler=_part_of_config(scheduler, "scheduler", where),
              loss=_part_of_config(hp.get("loss"), "loss", where),
              miner=_part_of_config(hp.get("miner"), "miner", where))
    if hp.get("model_kind") == "combined":  # trained before its metric term used L2-normalised embeddings
        hp.setdefault("metric_normalize", False)
    hp[FORMAT_KEY] = FORMAT
    return hp


# ------------------------------------------------------------------------------ reading
def _vet(node: Any, key: str, where: str) -> None:
    """Refuse any string holding ``${`` (an OmegaConf interpolation, e.g. ``${oc.create:...}``):
    values of a checkpoint are data and are never resolved."""
    if isinstance(node, str):
        if "${" in node:
            raise UnsafeCheckpointError(f"{where}: refused: {key}={node[:60]!r} holds an interpolation ('${{'): a "
                                        "checkpoint is data and its values are never resolved")
    elif isinstance(node, Mapping):
        for k, v in node.items():
            _vet(k, f"{key} (a key)", where)
            _vet(v, f"{key}.{k}", where)
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            _vet(v, f"{key}[{i}]", where)


class Checkpoint(NamedTuple):
    """A checkpoint read, vetted and migrated: its :class:`ModelRecord` (with the input settings) and
    the file's dict (``hyper_parameters`` rewritten as the record)."""

    path: Path
    record: ModelRecord
    raw: dict


class Loaded(NamedTuple):
    """What inference needs from a checkpoint: the model (eval mode), its input settings, its record
    and the file's dict."""

    model: Any
    inputs: InputSettings
    record: ModelRecord
    raw: dict


def read_checkpoint(path, *, label: str | None = None, map_location="cpu") -> Checkpoint:
    """Open ``path`` (weights only), vet what is read as data, migrate and check its record.

    ``label`` names the file in messages (``model.cnn_ckpt='x.ckpt'``; default: the path). Every
    problem is one ``ValueError`` line (:class:`UnsafeCheckpointError` for what names or would run code).
    """
    path = Path(path)
    where = label or str(path)
    try:
        raw = safe_load(path, map_location)
    except (ValueError, FileNotFoundError) as e:
        if label is None:
            raise
        raise type(e)(f"{label}: {e}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("state_dict"), Mapping):
        raise ValueError(f"{where}: not a sketchembed checkpoint (no Lightning state_dict)")
    for key in DATA_KEYS:
        _vet(raw.get(key), key, where)
    hp = raw.get("hyper_parameters")
    if not isinstance(hp, Mapping) or not hp.get("model_kind"):
        raise ValueError(f"{where}: not a sketchembed checkpoint (no model_kind in its hyper_parameters)")
    record = ModelRecord.read(migrate(hp, where), where)
    if isinstance(raw.get(CHECKPOINT_KEY), Mapping):
        record = dataclasses.replace(record, inputs=read_inputs(raw, where))
    raw["hyper_parameters"] = record.to_hparams()
    return Checkpoint(path, record, raw)


def build_model(ck: Checkpoint, *, kinds: Iterable[str] | None = None):
    """The model of a read checkpoint, in eval mode, its weights loaded; ``kinds`` restricts the model
    kinds accepted here. Its loss, miner, optimizer and scheduler stay records: nothing to train."""
    kind = ck.record.kind
    if kinds is not None and kind not in set(kinds):
        raise ValueError(f"{ck.path}: model kind {kind!r} cannot be used here (expected one of: {', '.join(kinds)})")
    try:
        model = MODELS[kind].from_record(ck.record)
        model.load_state_dict(ck.raw["state_dict"])
    except (RuntimeError, KeyError, ValueError, TypeError) as e:  # do not fit the kind
        first = (str(e).splitlines() or [e.__class__.__name__])[0]
        raise ValueError(f"{ck.path}: checkpoint does not fit model kind {kind!r} ({first})") from None
    weights = [t for t in ck.raw["state_dict"].values() if isinstance(t, torch.Tensor)]
    if weights:  # where map_location put them
        model.to(weights[0].device)
    return model.eval()


def open_checkpoint(path, *, kinds: Iterable[str] | None = None, map_location="cpu") -> Loaded:
    """The one way inference opens a checkpoint (eval, index build, suggest, studio, export): one read
    of the file, the model in eval mode and the :class:`InputSettings` it was trained with."""
    ck = read_checkpoint(path, map_location=map_location)
    inputs = ck.record.inputs if ck.record.inputs is not None else read_inputs(ck.raw, str(path))  # its message
    return Loaded(build_model(ck, kinds=kinds), inputs, ck.record, ck.raw)


def trained_root(raw: Mapping) -> str | None:
    """The dataset (``data.root``) a checkpoint was trained on, if it says."""
    hp = raw.get("datamodule_hyper_parameters") or {}
    root = hp.get("root") if isinstance(hp, Mapping) else None
    return str(root) if isinstance(root, (str, Path)) and str(root) else None


def file_sha256(path) -> str:
    """sha256 of a file, streamed (checkpoints of VGG-sized models are hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_HASH_BLOCK), b""):
            h.update(block)
    return h.hexdigest()
