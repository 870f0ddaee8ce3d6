"""The one home of the names of models, losses, miners, optimizers and schedulers (the config names
under ``conf/model``, ``conf/loss``, ``conf/miner``, ``conf/model/optimizer``, ``conf/model/scheduler``)
and of the loss kinds a model can train with.

A part registers itself where it is defined (``@MODELS.register("lstm")``); config choices,
compatibility checks, error messages and checkpoint records read the names from here. A library's
parts need no registration: ``pml:TripletMarginLoss`` is the public class of that name in
``pytorch_metric_learning.losses``, ``torch:SGD`` the one in ``torch.optim``. A name is only ever
looked up in these registries and modules (already imported): a checkpoint naming a part imports nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any, NamedTuple, TypeVar

import pytorch_metric_learning.losses as pml_losses
import pytorch_metric_learning.miners as pml_miners
import torch.optim as torch_optim
import torch.optim.lr_scheduler as torch_schedulers
from pytorch_metric_learning.losses import BaseMetricLossFunction
from pytorch_metric_learning.miners import BaseMiner

T = TypeVar("T")

# What a loss consumes: embeddings with mined tuples (PML's metric losses), or class logits.
TRIPLET = "triplet"
CLASSIFICATION = "classification"
LOSS_KINDS = (TRIPLET, CLASSIFICATION)


class Library(NamedTuple):
    """A library's parts named without registration: ``prefix:Class`` is a public class of ``module``
    that subclasses ``base`` (and is not ``base`` itself)."""

    prefix: str
    module: ModuleType
    base: type

    def get(self, name: str) -> type | None:
        prefix, sep, cls_name = name.partition(":")
        if not sep or prefix != self.prefix or not cls_name.isidentifier() or cls_name.startswith("_"):
            return None
        cls = vars(self.module).get(cls_name)  # the module's own namespace: no lazy import runs
        ok = isinstance(cls, type) and issubclass(cls, self.base) and cls is not self.base
        return cls if ok else None

    def name_of(self, cls: type) -> str | None:
        name = f"{self.prefix}:{cls.__name__}"
        return name if self.get(name) is cls else None


class Registry(dict):
    """Config name → class, filled by the ``register`` decorator at import time.

    ``attr``: a class attribute the decorator sets to the name, so an instance knows its own name
    (``MODEL_KIND``) without writing it a second time. ``library``: a library whose public parts are
    named ``prefix:Class`` without registration (PML's losses, torch's optimizers).
    """

    def __init__(self, what: str, attr: str | None = None, library: Library | None = None):
        super().__init__()
        self.what = what  # the config group, for messages ("loss", "miner", "model")
        self.attr = attr
        self.library = library

    def register(self, name: str) -> Callable[[T], T]:
        def deco(cls: T) -> T:
            old = self.get(name)
            if old is not None and old is not cls:
                raise ValueError(f"{self.what}={name!r} is registered twice: {old.__qualname__} and "
                                 f"{cls.__qualname__}")
            self[name] = cls
            if self.attr:
                setattr(cls, self.attr, name)
            return cls

        return deco

    def __missing__(self, name: str):
        cls = self.library.get(name) if self.library is not None and isinstance(name, str) else None
        if cls is not None:
            return cls
        lib = f" or {self.library.prefix}:<class>" if self.library is not None else ""
        raise ValueError(f"{self.what}={str(name)[:80]!r} is unknown; choose one of {self.names()}{lib}")

    def known(self, name: Any) -> bool:
        """Whether ``name`` is a registered name or a library part's ``prefix:Class``."""
        return isinstance(name, str) and (
            name in self or (self.library is not None and self.library.get(name) is not None))

    def record_name(self, obj: Any) -> str | None:
        """The name a checkpoint records for a class or instance: its registered name, else its library
        name (``pml:TripletMarginLoss``); None when it has neither (a checkpoint could not name it)."""
        cls = obj if isinstance(obj, type) else type(obj)
        for name, c in self.items():
            if c is cls:
                return name
        return self.library.name_of(cls) if self.library is not None else None

    def name_for_target(self, target: Any) -> str | None:
        """The record name of the class a config's ``_target_`` string names (``torch.optim.AdamW`` →
        ``adamw``), found among the registered and library parts by path, never by import."""
        if not isinstance(target, str):
            return None
        for name, c in self.items():
            if target == f"{c.__module__}.{c.__qualname__}":
                return name
        lib = self.library
        if lib is not None:
            module, _, cls_name = target.rpartition(".")
            cls = lib.get(f"{lib.prefix}:{cls_name}")
            if cls is not None and module in (lib.module.__name__, cls.__module__):
                return self.record_name(cls)
        return None

    def names(self) -> list[str]:
        return sorted(self)

    def name_of(self, obj: Any) -> str:
        """The config name of a class or instance (``hinge``); its class name when not registered."""
        if isinstance(obj, str):
            return obj
        cls = obj if isinstance(obj, type) else type(obj)
        for name, c in self.items():
            if c is cls:
                return name
        return cls.__name__

    def where(self, attr: str) -> NamesWhere:
        """The names of the registered classes with a true ``attr``, read when used (not frozen at
        import, so a model registered later counts too)."""
        return NamesWhere(self, attr)


class NamesWhere:
    """A live, read-only view of registered names whose class has a true attribute."""

    def __init__(self, registry: Registry, attr: str):
        self.registry, self.attr = registry, attr

    def _names(self) -> tuple[str, ...]:
        return tuple(n for n in self.registry.names() if getattr(self.registry[n], self.attr, False))

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __repr__(self) -> str:
        return repr(self._names())

    __str__ = __repr__


MODELS = Registry("model", attr="MODEL_KIND")
LOSSES = Registry("loss", library=Library("pml", pml_losses, BaseMetricLossFunction))
MINERS = Registry("miner", library=Library("pml", pml_miners, BaseMiner))
# what ``model.optimizer`` / ``model.scheduler`` build (``_partial_`` configs: params → optimizer,
# optimizer → scheduler); the configs' own names are registered in models/optim.py
OPTIMIZERS = Registry("optimizer", library=Library("torch", torch_optim, torch_optim.Optimizer))
SCHEDULERS = Registry("scheduler", library=Library("torch", torch_schedulers, torch_schedulers.LRScheduler))


def loss_kind(loss: Any) -> str | None:
    """``"triplet"`` or ``"classification"`` for a loss class or instance; None when unknown.

    A loss says it with a ``kind`` attribute; PML's metric losses (embeddings, labels,
    indices_tuple) are triplet-kind without one.
    """
    cls = loss if isinstance(loss, type) else type(loss)
    kind = getattr(cls, "kind", None)
    if kind in LOSS_KINDS:
        return kind
    if issubclass(cls, BaseMetricLossFunction):
        return TRIPLET
    return None


def loss_names(kind: str) -> list[str]:
    """The registered losses of one kind, for messages (``loss=hinge or loss=softmax_triplet``)."""
    return [n for n in LOSSES.names() if loss_kind(LOSSES[n]) == kind]
