"""Triplet miners: which (anchor, positive, negative) triplets of a batch the loss sees.

Each miner is a Lightning ``Callback`` so that a config selects it under ``miner/`` and the Trainer
carries it; the triplet model finds it with :func:`find_miner` and calls
``miner.mine_batch(embeddings, labels)`` every training step. The callback hook then logs what the
miner saw (``miner/triplets``, ``miner/d_pos``, ``miner/d_neg``, ``miner/semi_hard``,
``miner/easy``, ``miner/hard``; the semi-hard miner adds ``miner/skipped``), which is how one tells
whether the sampling still finds useful triplets late in training.

Triplets are addressed through the batch's label structure (``_LabelIndex``), never through a
B x B x B mask, so "all triplets" and uniform sampling stay cheap for large batches.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch
from lightning.pytorch.callbacks import Callback
from pytorch_metric_learning.distances import BaseDistance

from sketchembed.metric.distances import get_distance

__all__ = [
    "AllTripletsMiner",
    "HardMiner",
    "MinedBatch",
    "RandomTripletMiner",
    "SemiHardMiner",
    "TripletMiner",
    "all_triplets_indices",
    "count_triplets",
    "find_miner",
    "gather_across_ranks",
    "random_triplets_per_anchor",
    "sample_triplets",
]

Triplets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
# gather_fn(x) -> (one tensor per rank, this rank's index); rank tensors may differ in length.
GatherFn = Callable[[torch.Tensor], tuple[Sequence[torch.Tensor], int]]


def _empty(device) -> Triplets:
    e = torch.empty(0, dtype=torch.long, device=device)
    return e, e.clone(), e.clone()


# --------------------------------------------------------------------------------------------
# Triplets by number: the label structure of a batch
# --------------------------------------------------------------------------------------------
class _LabelIndex:
    """The batch sorted by label, so the j-th positive / k-th negative of an anchor is arithmetic.

    Anchor ``a`` has ``n_pos[a] * n_neg[a]`` triplets; triplet number ``t`` of the batch maps to
    (a, j-th positive, k-th negative) with a search in the cumulative counts. Only rows below
    ``n_anchors`` may be anchors (the local rows of a cross-rank batch).
    """

    def __init__(self, labels: torch.Tensor, n_anchors: int | None = None):
        if labels.ndim != 1:
            raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
        labels = labels.long()
        b = labels.numel()
        dev = labels.device
        self.order = torch.argsort(labels, stable=True)
        _, inv, counts = torch.unique_consecutive(
            labels[self.order], return_inverse=True, return_counts=True
        )
        starts = torch.cumsum(counts, 0) - counts
        cls = torch.empty_like(self.order)
        cls[self.order] = inv
        self.pos_in_class = torch.empty_like(self.order)
        self.pos_in_class[self.order] = torch.arange(b, device=dev) - starts[inv]
        self.count = counts[cls]
        self.start = starts[cls]
        self.n_pos = self.count - 1
        self.n_neg = b - self.count
        per_anchor = self.n_pos * self.n_neg
        if n_anchors is not None:
            per_anchor = per_anchor.clone()
            per_anchor[n_anchors:] = 0
        self.per_anchor = per_anchor
        self.cum = torch.cumsum(per_anchor, 0)
        self.total = int(self.cum[-1]) if b else 0

    def positive(self, a: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """Index of the j-th member (0-based, the anchor skipped) of a's class."""
        q = j + (j >= self.pos_in_class[a]).long()
        return self.order[self.start[a] + q]

    def negative(self, a: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Index of the k-th element (0-based, in label order) outside a's class."""
        r = k + (k >= self.start[a]).long() * self.count[a]
        return self.order[r]

    def from_ids(self, t: torch.Tensor) -> Triplets:
        a = torch.searchsorted(self.cum, t, right=True)
        local = t - (self.cum[a] - self.per_anchor[a])
        n_neg = self.n_neg[a]
        j, k = local // n_neg, local % n_neg
        return a, self.positive(a, j), self.negative(a, k)

    def valid_anchors(self) -> torch.Tensor:
        return torch.nonzero(self.per_anchor > 0).flatten()


def count_triplets(labels: torch.Tensor, n_anchors: int | None = None) -> int:
    """Number of valid triplets (anchors among the first ``n_anchors`` rows if given)."""
    return _LabelIndex(labels, n_anchors).total


def all_triplets_indices(labels: torch.Tensor, n_anchors: int | None = None) -> Triplets:
    """Every valid triplet, like PML's ``get_all_triplets_indices`` but without a B^3 mask."""
    index = _LabelIndex(labels, n_anchors)
    if index.total == 0:
        return _empty(labels.device)
    return index.from_ids(torch.arange(index.total, device=labels.device))


def sample_triplets(
    labels: torch.Tensor, n: int, n_anchors: int | None = None, generator: torch.Generator | None = None
) -> Triplets:
    """``n`` triplets drawn uniformly (with replacement) from all valid triplets of the batch."""
    index = _LabelIndex(labels, n_anchors)
    if index.total == 0 or n <= 0:
        return _empty(labels.device)
    t = torch.randint(index.total, (n,), generator=generator, device="cpu").to(labels.device)
    return index.from_ids(t)


def random_triplets_per_anchor(
    labels: torch.Tensor, triplets_per_anchor: int = 1, n_anchors: int | None = None
) -> Triplets:
    """For every anchor with a positive and a negative: that many (uniform positive, uniform negative)."""
    index = _LabelIndex(labels, n_anchors)
    a = index.valid_anchors().repeat_interleave(triplets_per_anchor)
    if a.numel() == 0:
        return _empty(labels.device)
    u = torch.rand(2, a.numel(), device=labels.device)
    j = torch.minimum((u[0] * index.n_pos[a]).long(), index.n_pos[a] - 1)
    k = torch.minimum((u[1] * index.n_neg[a]).long(), index.n_neg[a] - 1)
    return a, index.positive(a, j), index.negative(a, k)


# --------------------------------------------------------------------------------------------
# Cross-rank gathering
# --------------------------------------------------------------------------------------------
def _torch_all_gather(x: torch.Tensor) -> tuple[list[torch.Tensor], int]:
    """All-gather that tolerates different batch sizes per rank (pads to the largest)."""
    import torch.distributed as dist

    world = dist.get_world_size()
    size = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes = [int(s) for s in sizes]
    padded = torch.cat([x, x.new_zeros((max(sizes) - x.shape[0], *x.shape[1:]))]).contiguous()
    out = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(out, padded)
    return [o[:s] for o, s in zip(out, sizes)], dist.get_rank()


def gather_across_ranks(
    embeddings: torch.Tensor, labels: torch.Tensor, gather_fn: GatherFn | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's rows first (with their gradient), then the other ranks' rows in rank order.

    Other ranks' rows are detached (PML's approach): each rank back-propagates only through its
    own embeddings, so no collective is needed in backward and ranks cannot deadlock there.
    Without ``gather_fn`` and without an initialised process group this is the identity.
    """
    if gather_fn is None:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return embeddings, labels
        gather_fn = _torch_all_gather
    all_emb, rank = gather_fn(embeddings.detach())
    all_lab, rank_l = gather_fn(labels)
    if rank_l != rank or len(all_emb) != len(all_lab):
        raise RuntimeError("gather_fn returned inconsistent ranks for embeddings and labels")
    for r, (e, l) in enumerate(zip(all_emb, all_lab)):
        if e.shape[0] != l.shape[0]:
            raise RuntimeError(f"rank {r}: {e.shape[0]} embeddings but {l.shape[0]} labels")
    others = [r for r in range(len(all_emb)) if r != rank]
    emb = torch.cat([embeddings] + [all_emb[r].detach().to(embeddings.device, embeddings.dtype) for r in others])
    lab = torch.cat([labels] + [all_lab[r].to(labels.device) for r in others])
    return emb, lab


# --------------------------------------------------------------------------------------------
# Miners
# --------------------------------------------------------------------------------------------
class MinedBatch(NamedTuple):
    """What the loss needs: the (possibly gathered) batch and triplet indices into it."""

    embeddings: torch.Tensor
    labels: torch.Tensor
    indices: Triplets


class TripletMiner(Callback):
    """Base: distances for mining, cross-rank gathering, and per-step mining statistics.

    Args:
        distance: ``"squared_euclidean"`` (default), ``"euclidean"`` or a PML ``BaseDistance``.
        margin: only for the statistics (semi-hard: d_pos < d_neg < d_pos + margin; easy:
            d_neg > d_pos + margin), in the mining distance's units; set it to the hinge loss's.
        gather_across_ranks: mine over the embeddings of all ranks (anchors stay local).
        gather_fn: replaces the torch.distributed all-gather (tests, custom backends).
        log_stats: log the statistics in ``on_train_batch_end``.
    """

    def __init__(
        self,
        distance: str | BaseDistance = "squared_euclidean",
        margin: float = 1.0,
        gather_across_ranks: bool = False,
        gather_fn: GatherFn | None = None,
        log_stats: bool = True,
    ):
        super().__init__()
        self.distance = get_distance(distance)
        self.margin = float(margin)
        self.gather_across_ranks = bool(gather_across_ranks)
        self.gather_fn = gather_fn
        self.log_stats = bool(log_stats)
        self.last_stats: dict[str, torch.Tensor] | None = None
        self._extra_stats: dict[str, float] = {}  # a subclass's own per-step counts (set in select)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(distance={type(self.distance).__name__}, margin={self.margin}, "
            f"gather_across_ranks={self.gather_across_ranks})"
        )

    # -- the part subclasses write ------------------------------------------------------------
    def select(self, dist: torch.Tensor, labels: torch.Tensor, n_anchors: int) -> Triplets:
        """Triplets from the (n_anchors, B) distance matrix (rows = the first n_anchors items)."""
        raise NotImplementedError

    # -- public API ---------------------------------------------------------------------------
    def mine(
        self, embeddings: torch.Tensor, labels: torch.Tensor, n_anchors: int | None = None
    ) -> Triplets:
        """(anchors, positives, negatives) LongTensors indexing ``embeddings``; no gathering here.

        Only the first ``n_anchors`` rows serve as anchors (default: all). Records the step's
        statistics in ``last_stats``.
        """
        if embeddings.ndim != 2 or labels.ndim != 1 or embeddings.shape[0] != labels.shape[0]:
            raise ValueError(
                f"expected embeddings (B, D) and labels (B,), got {tuple(embeddings.shape)} "
                f"and {tuple(labels.shape)}"
            )
        n_anchors = embeddings.shape[0] if n_anchors is None else int(n_anchors)
        labels = labels.to(embeddings.device).long()
        with torch.no_grad():
            emb = embeddings.detach()
            rows = emb if n_anchors == emb.shape[0] else emb[:n_anchors]
            dist = self.distance(rows, None if rows is emb else emb)
            a, p, n = self.select(dist, labels, n_anchors)
            a, p, n = a.long(), p.long(), n.long()
            self._record(dist[a, p], dist[a, n])
        return a, p, n

    def mine_batch(self, embeddings: torch.Tensor, labels: torch.Tensor) -> MinedBatch:
        """Gather across ranks if configured (local rows first), then mine with local anchors.

        The model passes the result to the loss: ``loss(*mined)`` – the indices refer to the
        returned (possibly gathered) embeddings, which keep the gradient of the local rows.
        """
        n_local = embeddings.shape[0]
        if self.gather_across_ranks:
            embeddings, labels = gather_across_ranks(embeddings, labels, self.gather_fn)
        return MinedBatch(embeddings, labels, self.mine(embeddings, labels, n_anchors=n_local))

    # -- statistics ---------------------------------------------------------------------------
    def _record(self, d_pos: torch.Tensor, d_neg: torch.Tensor) -> None:
        n = d_pos.numel()
        stats = {"miner/triplets": torch.tensor(float(n), device=d_pos.device)}
        stats.update({k: torch.tensor(float(v), device=d_pos.device) for k, v in self._extra_stats.items()})
        if n:
            d_pos, d_neg = d_pos.float(), d_neg.float()
            stats["miner/d_pos"] = d_pos.mean()
            stats["miner/d_neg"] = d_neg.mean()
            stats["miner/semi_hard"] = ((d_neg > d_pos) & (d_neg < d_pos + self.margin)).float().mean()
            stats["miner/easy"] = (d_neg > d_pos + self.margin).float().mean()
            stats["miner/hard"] = (d_neg <= d_pos).float().mean()
        self.last_stats = stats

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.log_stats and self.last_stats:
            pl_module.log_dict(self.last_stats, on_step=True, on_epoch=True, batch_size=1)
        self.last_stats = None


class RandomTripletMiner(TripletMiner):
    """Random valid triplets: per anchor, ``triplets_per_anchor`` uniform (positive, negative) —
    the study's first sampling."""

    def __init__(self, triplets_per_anchor: int = 1, **kwargs):
        super().__init__(**kwargs)
        if triplets_per_anchor < 1:
            raise ValueError(f"triplets_per_anchor must be >= 1, got {triplets_per_anchor}")
        self.triplets_per_anchor = int(triplets_per_anchor)

    def select(self, dist, labels, n_anchors):
        return random_triplets_per_anchor(labels, self.triplets_per_anchor, n_anchors)


class AllTripletsMiner(TripletMiner):
    """Every valid triplet (what the losses use when given no indices)."""

    def select(self, dist, labels, n_anchors):
        return all_triplets_indices(labels, n_anchors)


def _masks(dist: torch.Tensor, labels: torch.Tensor, n_anchors: int):
    same = labels[:n_anchors, None] == labels[None, :]
    pos = same.clone()
    pos[torch.arange(n_anchors, device=dist.device), torch.arange(n_anchors, device=dist.device)] = False
    return pos, ~same


class SemiHardMiner(TripletMiner):
    """FaceNet semi-hard: for every positive pair (a, p), the nearest negative still farther than
    the positive (smallest d_an with d_an > d_ap), with no upper (margin) bound.

    With ``fallback="none"`` this is exactly the study's rule (``triplet-training.py``): in a batch of
    three class-pure buckets, every (anchor, positive) pair of a bucket gets the closest sample of the
    other two buckets that is farther than the positive. Where none qualifies the study's code silently
    takes the first other sample; we skip that pair instead and count it (``miner/skipped``, the
    number of positive pairs without a semi-hard negative, logged for every fallback).

    Args:
        fallback: what a pair with no such negative gets — ``"hardest"`` (the nearest negative),
            ``"easiest"`` (the farthest negative, TF-addons' choice), or ``"none"`` (skipped).
    """

    FALLBACKS = ("hardest", "easiest", "none")

    def __init__(self, fallback: str = "hardest", **kwargs):
        super().__init__(**kwargs)
        if fallback not in self.FALLBACKS:
            raise ValueError(f"fallback must be one of {self.FALLBACKS}, got {fallback!r}")
        self.fallback = fallback

    def select(self, dist, labels, n_anchors):
        pos, neg = _masks(dist, labels, n_anchors)
        n_neg = neg.sum(1)
        # Each anchor's negatives sorted by distance (non-negatives pushed to the end as +inf);
        # the semi-hard negative of (a, p) is the first one strictly beyond d_ap.
        neg_d = dist.masked_fill(~neg, float("inf"))
        sorted_d, sorted_i = neg_d.sort(dim=1)
        a, p = torch.nonzero(pos & (n_neg > 0)[:, None], as_tuple=True)
        self._extra_stats = {"miner/skipped": 0}
        if a.numel() == 0:
            return _empty(dist.device)
        first = torch.searchsorted(sorted_d, dist.contiguous(), right=True)[a, p]
        found = first < n_neg[a]
        self._extra_stats["miner/skipped"] = int((~found).sum())
        if self.fallback == "hardest":
            col = torch.where(found, first, torch.zeros_like(first))
        elif self.fallback == "easiest":
            col = torch.where(found, first, n_neg[a] - 1)
        else:
            a, p, col = a[found], p[found], first[found]
        return a, p, sorted_i[a, col]


class HardMiner(TripletMiner):
    """Batch-hard: per anchor, the farthest positive and the nearest negative."""

    def select(self, dist, labels, n_anchors):
        pos, neg = _masks(dist, labels, n_anchors)
        ok = pos.any(1) & neg.any(1)
        a = torch.nonzero(ok).flatten()
        if a.numel() == 0:
            return _empty(dist.device)
        p = dist.masked_fill(~pos, float("-inf")).argmax(1)
        n = dist.masked_fill(~neg, float("inf")).argmin(1)
        return a, p[a], n[a]


def find_miner(trainer) -> TripletMiner:
    """The single ``TripletMiner`` among ``trainer.callbacks``.

    With none, a ``RandomTripletMiner()`` is created and appended to the callbacks (so its
    statistics are logged and later calls get the same one); several is a config error.
    ``trainer=None`` (a model used outside a Trainer) gets a fresh default.
    """
    if trainer is None:
        return RandomTripletMiner()
    miners = [cb for cb in trainer.callbacks if isinstance(cb, TripletMiner)]
    if len(miners) > 1:
        raise ValueError(
            "several triplet miners among the trainer's callbacks: "
            + ", ".join(repr(m) for m in miners)
            + " – select exactly one under miner/"
        )
    if miners:
        return miners[0]
    miner = RandomTripletMiner()
    trainer.callbacks.append(miner)
    return miner
