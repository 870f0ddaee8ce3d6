"""The one home of the names of models, losses and miners (the config names under ``conf/model``,
``conf/loss``, ``conf/miner``) and of the loss kinds a model can train with.

A part registers itself where it is defined (``@MODELS.register("lstm")``); config choices,
compatibility checks and error messages read the names from here. Classes that are not registered
still work from a config's ``_target_`` (any PML loss or miner): they are named by their class.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, TypeVar

from pytorch_metric_learning.losses import BaseMetricLossFunction

T = TypeVar("T")

# What a loss consumes: embeddings with mined tuples (PML's metric losses), or class logits.
TRIPLET = "triplet"
CLASSIFICATION = "classification"
LOSS_KINDS = (TRIPLET, CLASSIFICATION)


class Registry(dict):
    """Config name → class, filled by the ``register`` decorator at import time.

    ``attr``: a class attribute the decorator sets to the name, so an instance knows its own name
    (``MODEL_KIND``) without writing it a second time.
    """

    def __init__(self, what: str, attr: str | None = None):
        super().__init__()
        self.what = what  # the config group, for messages ("loss", "miner", "model")
        self.attr = attr

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
        raise ValueError(f"{self.what}={name!r} is unknown; choose one of {self.names()}")

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

    def where(self, attr: str) -> "NamesWhere":
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
LOSSES = Registry("loss")
MINERS = Registry("miner")


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
