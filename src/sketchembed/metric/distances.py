"""Pairwise distances for mining and triplet losses.

Both classes are PML ``BaseDistance`` subclasses, so they also plug into pytorch-metric-learning's
losses and miners. We do not use PML's ``LpDistance`` for this: it calls ``torch.cdist``, whose
sqrt gradient blows up (or goes NaN) for pairs at (almost) zero distance. Normalisation is off
by default: unit-norm embeddings are the model's decision, not the distance's.
"""

from __future__ import annotations

import torch
from pytorch_metric_learning.distances import BaseDistance

__all__ = [
    "EuclideanDistance",
    "SquaredEuclideanDistance",
    "get_distance",
    "safe_sqrt",
    "squared_euclidean_matrix",
]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _upcast(x: torch.Tensor) -> torch.Tensor:
    # The |x|^2 + |y|^2 - 2xy expansion cancels badly in half precision.
    return x.float() if x.dtype in _LOW_PRECISION else x


def squared_euclidean_matrix(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """(N, M) squared distances, clamped at 0; exact zeros on the diagonal when ``y`` is ``x``.

    Points are centred on their common mean first: distances do not change, but the expansion
    loses far less precision when the embeddings sit far from the origin.
    """
    same = y is None or y is x
    x = _upcast(x)
    y = x if same else _upcast(y)
    mu = (torch.cat([x, y]) if not same else x).mean(0, keepdim=True).detach()
    x = x - mu
    y = x if same else y - mu
    sq = x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1).unsqueeze(0) - 2.0 * (x @ y.T)
    sq = sq.clamp_min(0.0)
    if same:
        eye = torch.eye(sq.shape[0], dtype=torch.bool, device=sq.device)
        sq = sq.masked_fill(eye, 0.0)
    return sq


def safe_sqrt(sq: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """sqrt with a zero (not inf/NaN) gradient where ``sq <= eps``."""
    mask = sq > eps
    root = torch.where(mask, sq, torch.ones_like(sq)).sqrt()
    return torch.where(mask, root, torch.zeros_like(sq))


class SquaredEuclideanDistance(BaseDistance):
    """||x - y||^2: the mining default and the hinge loss's distance (as in FaceNet)."""

    name = "squared_euclidean"

    def __init__(self, normalize_embeddings: bool = False, **kwargs):
        super().__init__(normalize_embeddings=normalize_embeddings, p=2, power=1, **kwargs)

    def compute_mat(self, query_emb, ref_emb):
        return squared_euclidean_matrix(query_emb, ref_emb)

    def pairwise_distance(self, query_emb, ref_emb):
        return (_upcast(query_emb) - _upcast(ref_emb)).pow(2).sum(-1)


class EuclideanDistance(BaseDistance):
    """||x - y||: the softmax triplet loss's distance (Hoffer & Ailon)."""

    name = "euclidean"

    def __init__(self, normalize_embeddings: bool = False, eps: float = 1e-12, **kwargs):
        super().__init__(normalize_embeddings=normalize_embeddings, p=2, power=1, **kwargs)
        self.eps = eps

    def compute_mat(self, query_emb, ref_emb):
        return safe_sqrt(squared_euclidean_matrix(query_emb, ref_emb), self.eps)

    def pairwise_distance(self, query_emb, ref_emb):
        sq = (_upcast(query_emb) - _upcast(ref_emb)).pow(2).sum(-1)
        return safe_sqrt(sq, self.eps)


_BY_NAME = {
    "euclidean": EuclideanDistance,
    "l2": EuclideanDistance,
    "squared_euclidean": SquaredEuclideanDistance,
    "squared": SquaredEuclideanDistance,
    "sq_euclidean": SquaredEuclideanDistance,
}


def get_distance(spec: str | BaseDistance | None, default: str = "squared_euclidean") -> BaseDistance:
    """A distance from a config value: a name (``euclidean``, ``squared_euclidean``) or an instance."""
    if spec is None:
        spec = default
    if isinstance(spec, BaseDistance):
        if spec.is_inverted:
            raise ValueError(f"{type(spec).__name__} is a similarity; triplet code needs a distance")
        return spec
    if isinstance(spec, str):
        try:
            return _BY_NAME[spec.lower()]()
        except KeyError:
            raise ValueError(
                f"unknown distance {spec!r}; expected one of {sorted(_BY_NAME)}"
            ) from None
    raise TypeError(f"distance must be a name or a BaseDistance, got {type(spec).__name__}")


def config_name(distance: BaseDistance) -> str | None:
    """The config name of one of our distances (``squared_euclidean``); None for any other."""
    cls = type(distance)
    return cls.name if cls in _BY_NAME.values() else None
