"""The study's two triplet losses, a cross-entropy wrapper, and triplet accuracy.

Losses follow PML's calling convention, ``loss(embeddings, labels, indices_tuple=None)``; without
indices they use every valid triplet of the batch. ``kind`` tells configs which models a loss fits
("triplet": embeddings + mined tuples; "classification": logits); any PML loss is triplet-kind
(:func:`sketchembed.registry.loss_kind`). The hinge loss *is* PML's ``TripletMarginLoss`` on squared
distances; only the softmax triplet loss, which PML lacks, is computed here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pytorch_metric_learning.distances import BaseDistance
from pytorch_metric_learning.losses import TripletMarginLoss
from pytorch_metric_learning.reducers import AvgNonZeroReducer, MeanReducer
from pytorch_metric_learning.utils.loss_and_miner_utils import convert_to_triplets
from torch import nn
from torchmetrics import Metric

from sketchembed.metric.distances import get_distance
from sketchembed.metric.miners import Triplets, all_triplets_indices, count_triplets, sample_triplets
from sketchembed.registry import CLASSIFICATION, LOSSES, TRIPLET

__all__ = ["CrossEntropy", "HingeTripletLoss", "SoftmaxTripletLoss", "TripletAccuracy", "TripletLoss",
           "triplet_accuracy", "triplet_sums"]


def _check_indices(indices_tuple, labels: torch.Tensor) -> Triplets:
    if len(indices_tuple) == 4:  # a pair miner's (a1, p, a2, n): the triplets they form, as PML does
        indices_tuple = convert_to_triplets(indices_tuple, labels)
    if len(indices_tuple) != 3:
        raise ValueError(f"expected an (anchors, positives, negatives) tuple, got {len(indices_tuple)} tensors")
    a, p, neg = (torch.as_tensor(t).long() for t in indices_tuple)
    if not (a.shape == p.shape == neg.shape) or a.ndim != 1:
        raise ValueError(f"triplet index tensors differ in shape: {a.shape}, {p.shape}, {neg.shape}")
    return a, p, neg


class TripletLoss(nn.Module):
    """Base: distances of each triplet's (anchor, positive) and (anchor, negative) pairs."""

    kind = TRIPLET
    default_distance = "euclidean"

    def __init__(self, distance: str | BaseDistance | None = None):
        super().__init__()
        self.distance = get_distance(distance, default=self.default_distance)

    def triplet_losses(self, d_pos: torch.Tensor, d_neg: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def reduce(self, losses: torch.Tensor) -> torch.Tensor:
        return losses.mean()

    def pair_distances(self, embeddings, labels, indices_tuple=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(d_pos, d_neg) per triplet; all valid triplets when ``indices_tuple`` is None."""
        if embeddings.ndim != 2 or labels.ndim != 1 or embeddings.shape[0] != labels.shape[0]:
            raise ValueError(
                f"expected embeddings (B, D) and labels (B,), got {tuple(embeddings.shape)} "
                f"and {tuple(labels.shape)}"
            )
        if indices_tuple is None:
            a, p, n = all_triplets_indices(labels.to(embeddings.device))
        else:
            a, p, n = _check_indices(indices_tuple, labels)
        if a.numel() == 0:
            empty = embeddings.new_zeros(0)
            return empty, empty
        a, p, n = a.to(embeddings.device), p.to(embeddings.device), n.to(embeddings.device)
        # Anchors are the leading rows (local rows of a gathered batch): only those rows needed.
        rows = int(a.max()) + 1
        query = embeddings if rows == embeddings.shape[0] else embeddings[:rows]
        mat = self.distance(query, None if query is embeddings else embeddings)
        return mat[a, p], mat[a, n]

    def forward(self, embeddings, labels, indices_tuple=None) -> torch.Tensor:
        d_pos, d_neg = self.pair_distances(embeddings, labels, indices_tuple)
        if d_pos.numel() == 0:
            # No triplet: a zero that still belongs to the graph, so backward/DDP go on.
            return embeddings.sum() * 0.0
        return self.reduce(self.triplet_losses(d_pos, d_neg))


@LOSSES.register("softmax_triplet")
class SoftmaxTripletLoss(TripletLoss):
    """Hoffer & Ailon's triplet-network loss (the study's "exp" loss):
    (e^{d+} / (e^{d+} + e^{d-}))^2 = sigmoid(d+ - d-)^2, mean over triplets.
    It never reaches 0, so every triplet keeps pulling, with less force once d- >> d+.

    ``distance``: ``"euclidean"`` (default; plain, not squared, distances as in the study's code) or
    ``"squared_euclidean"``. Ours because PML has no such loss."""

    default_distance = "euclidean"

    def triplet_losses(self, d_pos, d_neg):
        return torch.sigmoid(d_pos.float() - d_neg.float()).pow(2)


@LOSSES.register("hinge")
class HingeTripletLoss(TripletMarginLoss):
    """max(0, d+ - d- + margin) on squared Euclidean distances (FaceNet), for semi-hard mining:
    PML's ``TripletMarginLoss`` with our distance and reducer named in config words.

    Args:
        margin: alpha, in the distance's units.
        reduction: ``"mean"`` over all triplets (FaceNet, the study; PML's ``MeanReducer``) or
            ``"nonzero_mean"`` over the triplets that still violate the margin (``AvgNonZeroReducer``,
            PML's default: keeps the gradient from fading as most triplets become easy).
        distance: ``"squared_euclidean"`` (default), ``"euclidean"`` or a PML distance.
    """

    kind = TRIPLET
    REDUCTIONS = {"mean": MeanReducer, "nonzero_mean": AvgNonZeroReducer}

    def __init__(self, margin: float = 1.0, reduction: str = "mean",
                 distance: str | BaseDistance | None = "squared_euclidean"):
        if reduction not in self.REDUCTIONS:
            raise ValueError(f"reduction must be one of {tuple(self.REDUCTIONS)}, got {reduction!r}")
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        super().__init__(margin=float(margin), distance=get_distance(distance, default="squared_euclidean"),
                         reducer=self.REDUCTIONS[reduction]())
        self.reduction = reduction


@LOSSES.register("cross_entropy")
class CrossEntropy(nn.Module):
    """Cross-entropy on logits, for the classifiers (direct CNN, LSTM, combined)."""

    kind = CLASSIFICATION

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels.long(), label_smoothing=self.label_smoothing)


@torch.no_grad()
def triplet_sums(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    indices_tuple: Triplets | None = None,
    *,
    max_triplets: int | None = 200_000,
    distance: str | BaseDistance = "euclidean",
    generator: torch.Generator | None = None,
    chunk: int = 65_536,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(triplets with d_neg > d_pos, sum of d_pos, sum of d_neg, number of triplets), float64.

    Sums rather than means, so batches (and ranks) combine by adding: a batch without any valid
    triplet adds nothing instead of a NaN. Without indices: all valid triplets, or — when there are
    more than ``max_triplets`` — that many drawn uniformly from them (an unbiased estimate; pass a
    ``generator`` to fix it). Distances are computed in chunks, so big evaluation sets fit in memory.
    """
    dist = get_distance(distance)
    labels = labels.to(embeddings.device)
    if indices_tuple is None:
        total = count_triplets(labels)
        if max_triplets is not None and total > max_triplets:
            indices_tuple = sample_triplets(labels, max_triplets, generator=generator)
        else:
            indices_tuple = all_triplets_indices(labels)
    a, p, n = _check_indices(indices_tuple, labels)
    a, p, n = a.to(embeddings.device), p.to(embeddings.device), n.to(embeddings.device)
    correct = torch.zeros((), dtype=torch.float64, device=embeddings.device)
    sum_pos = torch.zeros_like(correct)
    sum_neg = torch.zeros_like(correct)
    for s in range(0, a.numel(), chunk):
        ea = embeddings[a[s : s + chunk]]
        d_pos = dist.pairwise_distance(ea, embeddings[p[s : s + chunk]])
        d_neg = dist.pairwise_distance(ea, embeddings[n[s : s + chunk]])
        correct += (d_neg > d_pos).sum()
        sum_pos += d_pos.double().sum()
        sum_neg += d_neg.double().sum()
    return correct, sum_pos, sum_neg, int(a.numel())


def triplet_accuracy(embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple: Triplets | None = None,
                     **kwargs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(share of triplets with d_neg > d_pos, mean d_pos, mean d_neg); see :func:`triplet_sums`
    for the options. With no valid triplet (one class, or no class with two items) all three are NaN.
    """
    correct, sum_pos, sum_neg, total = triplet_sums(embeddings, labels, indices_tuple, **kwargs)
    if total == 0:
        nan = torch.tensor(float("nan"), device=embeddings.device)
        return nan, nan.clone(), nan.clone()
    return (correct / total).float(), (sum_pos / total).float(), (sum_neg / total).float()


class TripletAccuracy(Metric):
    """Triplet accuracy and mean d_pos / d_neg over an epoch, accumulated as sums of in-batch
    triplets: averaging per-batch shares would weigh a batch of 10 triplets like one of 10,000, and
    one batch without any (many classes, small batches) would turn the epoch's value into NaN.
    Reduced across DDP ranks by summing. ``compute()`` → dict(triplet_acc, d_pos, d_neg); NaN
    only when the whole epoch had no valid triplet."""

    full_state_update = False
    NAMES = ("triplet_acc", "d_pos", "d_neg")  # compute()'s keys: the logged metric names

    def __init__(self, distance: str = "euclidean", max_triplets: int | None = 200_000, **kwargs):
        super().__init__(**kwargs)
        self.distance = distance
        self.max_triplets = max_triplets
        for name in ("correct", "sum_pos", "sum_neg", "total"):
            self.add_state(name, default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        correct, sum_pos, sum_neg, total = triplet_sums(embeddings.detach(), labels, distance=self.distance,
                                                        max_triplets=self.max_triplets)
        self.correct += correct.to(self.correct.device)
        self.sum_pos += sum_pos.to(self.sum_pos.device)
        self.sum_neg += sum_neg.to(self.sum_neg.device)
        self.total += total

    def compute(self) -> dict[str, torch.Tensor]:
        if self.total == 0:
            values = [torch.tensor(float("nan"), device=self.total.device) for _ in self.NAMES]
        else:
            values = [(s / self.total).float() for s in (self.correct, self.sum_pos, self.sum_neg)]
        return dict(zip(self.NAMES, values))
