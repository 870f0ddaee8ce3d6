"""Triplet miners: which (anchor, positive, negative) triplets of a batch the loss sees.

A miner speaks pytorch-metric-learning's language: a module called as ``miner(embeddings, labels)``
that returns an indices tuple. A config under ``miner/`` builds it and the model gets it injected
(``model.miner``); any PML miner works the same way. :func:`mine_batch` is the one call the models
make: it gathers across ranks when our miner asks for it, mines, and returns the statistics the model
logs (``miner/triplets``, ``miner/d_pos``, ``miner/d_neg``, ``miner/semi_hard``, ``miner/easy``,
``miner/hard``; the semi-hard miner adds ``miner/skipped``), which is how one tells whether the
sampling still finds useful triplets late in training.

Ours are kept where they differ from PML in a way the study needs: ``SemiHardMiner`` (the study's
rule has no margin bound; PML's ``TripletMarginMiner(type_of_triplets="semihard")`` keeps only
d_neg < d_pos + margin), ``RandomTripletMiner`` (the study's random triplets), and local anchors
over a cross-rank batch. ``HardMiner`` delegates its choice to PML's ``BatchHardMiner``.

Triplets are addressed through the batch's label structure (``_LabelIndex``), never through a
B x B x B mask, so "all triplets" and uniform sampling stay cheap for large batches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.distributed as dist
from pytorch_metric_learning.distances import BaseDistance
from pytorch_metric_learning.miners import BatchHardMiner
from pytorch_metric_learning.utils.loss_and_miner_utils import convert_to_triplets
from torch import nn

from sketchembed.metric.distances import get_distance
from sketchembed.registry import MINERS

__all__ = [
    "AllTripletsMiner",
    "HardMiner",
    "MinedBatch",
    "RandomTripletMiner",
    "SemiHardMiner",
    "TripletMiner",
    "all_triplets_indices",
    "count_triplets",
    "gather_across_ranks",
    "mine_batch",
    "mining_stats",
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
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return embeddings, labels
        gather_fn = _torch_all_gather
    all_emb, rank = gather_fn(embeddings.detach())
    all_lab, rank_l = gather_fn(labels)
    if rank_l != rank or len(all_emb) != len(all_lab):
        raise RuntimeError("gather_fn returned inconsistent ranks for embeddings and labels")
    for r, (e, lab) in enumerate(zip(all_emb, all_lab)):
        if e.shape[0] != lab.shape[0]:
            raise RuntimeError(f"rank {r}: {e.shape[0]} embeddings but {lab.shape[0]} labels")
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


class TripletMiner(nn.Module):
    """Base of our miners: PML's call (``miner(embeddings, labels) -> (anchors, positives,
    negatives)``), plus cross-rank gathering with local anchors and per-step mining statistics.

    Args:
        distance: ``"squared_euclidean"`` (default), ``"euclidean"`` or a PML ``BaseDistance``.
        margin: only for the statistics (semi-hard: d_pos < d_neg < d_pos + margin; easy:
            d_neg > d_pos + margin), in the mining distance's units; set it to the hinge loss's.
        gather_across_ranks: mine over the embeddings of all ranks (anchors stay local).
        gather_fn: replaces the torch.distributed all-gather (tests, custom backends).
    """

    def __init__(
        self,
        distance: str | BaseDistance = "squared_euclidean",
        margin: float = 1.0,
        gather_across_ranks: bool = False,
        gather_fn: GatherFn | None = None,
    ):
        super().__init__()
        self.distance = get_distance(distance)
        self.margin = float(margin)
        self.gather_across_ranks = bool(gather_across_ranks)
        self.gather_fn = gather_fn
        self.last_stats: dict[str, torch.Tensor] = {}
        self._extra_stats: dict[str, float] = {}  # a subclass's own per-step counts (set in select)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, gather_across_ranks={self.gather_across_ranks}"

    # -- the part subclasses write ------------------------------------------------------------
    def select(self, dist: torch.Tensor, labels: torch.Tensor, n_anchors: int) -> Triplets:
        """Triplets from the (n_anchors, B) distance matrix (rows = the first n_anchors items)."""
        raise NotImplementedError

    # -- public API ---------------------------------------------------------------------------
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, ref_emb=None, ref_labels=None) -> Triplets:
        """PML's miner call. A separate reference set is not supported: set gather_across_ranks."""
        if ref_emb is not None or ref_labels is not None:
            raise ValueError(f"{type(self).__name__} mines within one batch (no ref_emb); for other "
                             "ranks' rows set miner.gather_across_ranks=true")
        return self.mine(embeddings, labels)

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
            self.last_stats = mining_stats(dist[a, p], dist[a, n], self.margin, self._extra_stats)
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


def mining_stats(d_pos: torch.Tensor, d_neg: torch.Tensor, margin: float,
                 extra: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
    """``miner/*`` scalars of one step's triplets (their distances under the mining distance)."""
    n = d_pos.numel()
    stats = {"miner/triplets": torch.tensor(float(n), device=d_pos.device)}
    stats.update({k: torch.tensor(float(v), device=d_pos.device) for k, v in (extra or {}).items()})
    if n:
        d_pos, d_neg = d_pos.float(), d_neg.float()
        stats["miner/d_pos"] = d_pos.mean()
        stats["miner/d_neg"] = d_neg.mean()
        stats["miner/semi_hard"] = ((d_neg > d_pos) & (d_neg < d_pos + margin)).float().mean()
        stats["miner/easy"] = (d_neg > d_pos + margin).float().mean()
        stats["miner/hard"] = (d_neg <= d_pos).float().mean()
    return stats


def mine_batch(miner: nn.Module | None, embeddings: torch.Tensor, labels: torch.Tensor
               ) -> tuple[MinedBatch, dict[str, torch.Tensor]]:
    """(what ``loss(*mined)`` needs, the step's ``miner/*`` statistics) for any miner.

    Ours may gather across ranks; any other PML-style miner is called as ``miner(embeddings,
    labels)``, its pairs converted to triplets for the statistics (measured with the miner's own
    ``distance``). Without a miner the indices are None: the loss uses every valid triplet.
    """
    if miner is None:
        return MinedBatch(embeddings, labels, None), {}
    if isinstance(miner, TripletMiner):
        mined = miner.mine_batch(embeddings, labels)
        return mined, miner.last_stats
    distance = getattr(miner, "distance", None) or get_distance(None)
    indices, mat = _mine_keeping_matrix(miner, distance, embeddings, labels)
    with torch.no_grad():
        a, p, n = convert_to_triplets(indices, labels)
        if mat is None:  # the miner measured no distance of this batch to itself: measured here
            mat = distance(embeddings.detach())
        d_pos, d_neg = mat[a, p], mat[a, n]
        if distance.is_inverted:  # a similarity: compare as distances
            d_pos, d_neg = -d_pos, -d_neg
        stats = mining_stats(d_pos, d_neg, float(getattr(miner, "margin", 1.0) or 0.0))
    return MinedBatch(embeddings, labels, indices), stats


def _mine_keeping_matrix(miner: nn.Module, distance: BaseDistance, embeddings: torch.Tensor,
                         labels: torch.Tensor):
    """``miner(embeddings, labels)`` and the B x B matrix its distance computed on the way (None if
    it computed none), so the statistics do not measure the batch a second time."""
    seen: list[torch.Tensor] = []
    b = embeddings.shape[0]

    def keep(module, inputs, out):
        if inputs and inputs[0] is embeddings and tuple(out.shape) == (b, b):
            seen.append(out.detach().clone())  # a copy: some miners mask it in place

    handle = distance.register_forward_hook(keep) if distance is getattr(miner, "distance", None) else None
    try:
        indices = miner(embeddings, labels)
    finally:
        if handle is not None:
            handle.remove()
    return indices, (seen[-1] if seen else None)


@MINERS.register("random")
class RandomTripletMiner(TripletMiner):
    """Random valid triplets: per anchor, ``triplets_per_anchor`` uniform (positive, negative) —
    the study's first sampling. Ours because PML has no random miner (only a loss option)."""

    def __init__(self, triplets_per_anchor: int = 1, **kwargs):
        super().__init__(**kwargs)
        if triplets_per_anchor < 1:
            raise ValueError(f"triplets_per_anchor must be >= 1, got {triplets_per_anchor}")
        self.triplets_per_anchor = int(triplets_per_anchor)

    def select(self, dist, labels, n_anchors):
        return random_triplets_per_anchor(labels, self.triplets_per_anchor, n_anchors)


@MINERS.register("all")
class AllTripletsMiner(TripletMiner):
    """Every valid triplet (what the losses use when given no indices)."""

    def select(self, dist, labels, n_anchors):
        return all_triplets_indices(labels, n_anchors)


def _masks(dist: torch.Tensor, labels: torch.Tensor, n_anchors: int):
    same = labels[:n_anchors, None] == labels[None, :]
    pos = same.clone()
    pos[torch.arange(n_anchors, device=dist.device), torch.arange(n_anchors, device=dist.device)] = False
    return pos, ~same


@MINERS.register("semihard")
class SemiHardMiner(TripletMiner):
    """FaceNet semi-hard: for every positive pair (a, p), the nearest negative still farther than
    the positive (smallest d_an with d_an > d_ap), with no upper (margin) bound. Ours because of that
    bound: PML's ``TripletMarginMiner(type_of_triplets="semihard")`` keeps only d_an < d_ap + margin
    (``miner=pml_semihard``), which is not the study's rule.

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


@MINERS.register("hard")
class HardMiner(TripletMiner):
    """Batch-hard: per anchor, the farthest positive and the nearest negative — PML's
    ``BatchHardMiner`` on our mining distance (tests/test_metric.py checks they agree). This class
    only adds what ours share: local anchors over a cross-rank batch and the statistics."""

    def select(self, dist, labels, n_anchors):
        rows = dist.new_zeros(labels.shape[0], 1)  # stand-ins: PML gets the distances we computed
        ref = (rows, labels) if n_anchors < labels.shape[0] else ()  # a cross-rank batch: local anchors
        a, p, n = BatchHardMiner(distance=_Given(dist))(rows[:n_anchors], labels[:n_anchors], *ref)
        keep = p != a  # with a reference batch PML may pair an anchor with itself (its leading rows)
        return a[keep], p[keep], n[keep]


class _Given(BaseDistance):
    """A PML distance that returns a matrix computed already (ours, once per step)."""

    def __init__(self, mat: torch.Tensor):
        super().__init__(normalize_embeddings=False)
        self.mat = mat

    def compute_mat(self, query_emb, ref_emb):
        return self.mat
