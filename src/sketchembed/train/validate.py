"""Config checks that need nothing built: every ``_target_`` node's keys against its class's signature.

A value of the wrong type (``trainer.max_epochs=abc``), a key the class does not take
(``+model.foo=1``) or a count below its minimum (``data.batch_size=0``) otherwise fails late — inside
Hydra's instantiate, the Trainer or a sampler — with a traceback or a message that does not name
the key. The annotations of the classes are the schema, so there is no second copy of it here.
Rules annotations cannot state live with what they are about, one function per key: the ``data``
keys' in :func:`sketchembed.data.datamodule.check_data_key` (the input settings' and the batch
settings' tables, e.g. ``data.image_size`` on 1…1024 before the rasterizer would try to allocate it),
the models' in their ``check_args`` (``train.run.validate`` runs them); only the Trainer's lower
bounds, whose class is Lightning's, are listed here (:data:`MINIMUM`). Every ``callbacks.*`` node
must name a Lightning callback (anything else failed deep inside the Trainer).
"""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from typing import Any, Literal, Union

import torch
from hydra.utils import get_object
from lightning.pytorch import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

from sketchembed.data.datamodule import check_data_key
from sketchembed.messages import ConfigError, short_list

# Lower bounds of the Trainer's numbers whose bad values surface only once training runs (or without
# the key, or never: a negative gradient_clip_val silently clipped nothing).
MINIMUM = {
    "trainer.max_epochs": -1,
    "trainer.max_steps": -1,
    "trainer.accumulate_grad_batches": 1,
    "trainer.log_every_n_steps": 1,
    "trainer.gradient_clip_val": 0,  # 0 or null: no clipping
}
_LIST = 15  # names shown in a message (Trainer takes 40)
_HYDRA_KEYS = {"_target_", "_partial_", "_convert_", "_recursive_", "_args_"}


def check_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` naming the first key whose value its class cannot take."""
    for path, node in _target_nodes(cfg, ""):
        _check_node(path, node)
    _check_callbacks(cfg)
    _check_data(cfg)
    for key, low in MINIMUM.items():
        value = _value(cfg, key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < low:
            raise ConfigError(f"{key}={value}: must be >= {low}")


def _check_data(cfg: DictConfig) -> None:
    """Every ``data.<key>`` but ``root`` (typed by the DataModule's signature) by its one check; the
    DataModule's other arguments (``views``, ``augment``) are train.py's, not the config's."""
    data = cfg.get("data")
    if not isinstance(data, DictConfig):
        return
    for key in data.keys():
        key = str(key)
        if key in _HYDRA_KEYS or key == "root" or OmegaConf.is_missing(data, key):
            continue
        try:
            check_data_key(key, _value(data, key))
        except ValueError as e:
            raise ConfigError(str(e)) from None


def _check_callbacks(cfg: DictConfig) -> None:
    """Every ``callbacks.<name>`` with a ``_target_`` names a class the Trainer takes as a callback."""
    for name, node in (cfg.get("callbacks") or {}).items():
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        target = str(node._target_)
        obj = get_object(target)  # importable: _check_node said so
        if not (inspect.isclass(obj) and issubclass(obj, Callback)):
            raise ConfigError(f"callbacks.{name}._target_={target!r}: not a Lightning callback "
                              f"(a subclass of lightning.pytorch.Callback)")


def _target_nodes(node: Any, path: str):
    """``(dotted path, node)`` of every mapping with a ``_target_``, outer before inner."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield path, node
        for key in node.keys():
            child = node._get_node(key)
            if isinstance(child, (DictConfig, ListConfig)):
                yield from _target_nodes(child, f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig):
        for i, child in enumerate(node._iter_ex(resolve=False)):
            yield from _target_nodes(child, f"{path}[{i}]")


def _value(cfg: Any, key: str) -> Any:
    try:
        value = OmegaConf.select(cfg, key, throw_on_missing=False)
    except Exception:  # an interpolation that cannot resolve here: left to the code that uses it
        return None
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


def _check_node(path: str, node: DictConfig) -> None:
    target = str(node._target_)
    try:
        obj = get_object(target)
    except Exception as e:
        raise ConfigError(f"{path}._target_={target!r} cannot be imported ({e.__class__.__name__})") from None
    params, takes_any, hints = _signature(obj)
    if params is None:  # builtins without a signature: nothing to check against
        return
    name = getattr(obj, "__name__", target)
    for key in node.keys():
        key = str(key)
        if key in _HYDRA_KEYS:
            continue
        full = f"{path}.{key}" if path else key
        if key not in params or params[key].kind in (inspect.Parameter.VAR_POSITIONAL,
                                                     inspect.Parameter.VAR_KEYWORD):
            if takes_any:
                continue
            known = [k for k, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
            shown = short_list(known, _LIST)
            raise ConfigError(f"{full}: {name} has no parameter {key!r} (it takes: {shown})")
        if OmegaConf.is_missing(node, key):
            continue
        value = _value(node, key)
        expected = hints.get(key, params[key].annotation)
        if not _fits(value, expected):
            raise ConfigError(f"{full}={value!r}: expected {_describe(expected)} ({name}.{key})")


def _signature(obj) -> tuple[dict | None, bool, dict]:
    """(parameters, takes **kwargs, resolved annotations) of a class or function.

    Our own classes that pass ``**kwargs`` on to their base (the miners, the models) are read up
    their MRO, so a key the base takes is checked there and an unknown one is still refused. A base
    whose ``**kwargs`` only reads back old checkpoints (``CONFIG_CLOSED_KWARGS``, the models' legacy
    arguments) takes nothing more from a config.
    """
    try:
        params = dict(inspect.signature(obj).parameters)
    except (TypeError, ValueError):
        return None, True, {}
    hints = _hints(obj.__init__ if inspect.isclass(obj) else obj)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    if inspect.isclass(obj):
        for base in obj.__mro__[1:]:
            if not takes_any or not base.__module__.startswith("sketchembed.") or "__init__" not in vars(base):
                continue
            own = inspect.signature(base.__init__).parameters
            params.update({k: p for k, p in own.items() if k != "self" and k not in params})
            hints = {**_hints(base.__init__), **hints}
            takes_any = (any(p.kind is p.VAR_KEYWORD for p in own.values())
                         and not vars(base).get("CONFIG_CLOSED_KWARGS", False))
    return params, takes_any, hints


def _hints(fn) -> dict[str, Any]:
    """Resolved annotations; one that cannot be resolved is left out (and not checked)."""
    try:
        return typing.get_type_hints(fn)
    except Exception:
        pass
    out = {}
    glb = getattr(fn, "__globals__", {})
    for k, ann in getattr(fn, "__annotations__", {}).items():
        try:
            out[k] = eval(ann, glb) if isinstance(ann, str) else ann  # noqa: S307 - annotations of our imports
        except Exception:
            continue
    return out


def _fits(value: Any, ann: Any) -> bool:
    """Whether a config value can be passed where ``ann`` is declared; unknown kinds of type pass."""
    if ann in (inspect.Parameter.empty, Any, object) or isinstance(ann, (str, typing.TypeVar)):
        return True
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin in (Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if ann is type(None):
        return value is None
    if origin is Literal:
        return value in args or any(isinstance(value, type(a)) and not isinstance(a, bool) for a in args)
    if ann is bool:
        return isinstance(value, bool)
    if ann is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if ann is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if ann is str:
        return isinstance(value, str)
    if ann is torch.Tensor:  # a config holds no tensors (AdamW's lr: float | Tensor)
        return False
    seq = origin if origin is not None else ann
    if seq in (list, tuple, collections.abc.Sequence, collections.abc.Iterable, typing.Sequence):
        if not isinstance(value, (list, tuple)):
            return False
        inner = [a for a in args if a is not Ellipsis]
        return len(inner) != 1 or all(_fits(v, inner[0]) for v in value)
    if seq in (dict, collections.abc.Mapping, typing.Mapping):
        return isinstance(value, dict)
    return True  # classes, callables, paths, …: the class checks those itself


def _describe(ann: Any) -> str:
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if ann is type(None):
        return "null"
    if origin is Literal:
        return " / ".join(repr(a) for a in args)
    return getattr(ann, "__name__", None) or str(ann).replace("typing.", "")
