"""Batch samplers for training and evaluation, sharded across DDP ranks by us.

Why our own sharding: the class-balanced P x K sampler builds whole batches, which Lightning's
``use_distributed_sampler`` cannot split (it wraps per-sample samplers). So every sampler here takes
``num_replicas``/``rank``, builds the *global* list of batches from ``(seed, epoch)`` alone (identical
on every rank), and hands rank ``r`` the batches ``r, r + R, r + 2R, ...``: shards are disjoint and every
rank gets the same number of batches (a rank waiting for a batch that never comes hangs DDP). Run the
Trainer with ``use_distributed_sampler=False``.

Lightning calls ``set_epoch`` only on ``loader.sampler`` and ``loader.batch_sampler.sampler``, never on
the batch sampler itself, so the batch samplers expose ``sampler`` = themselves to get their epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler


def _resolve_replicas(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    """Explicit values win; otherwise the initialised process group; otherwise one process."""
    if num_replicas is None:
        num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if rank is None:
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    num_replicas, rank = int(num_replicas), int(rank)
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(f"need 0 <= rank < num_replicas, got rank={rank}, num_replicas={num_replicas}")
    return num_replicas, rank


class _EpochBatchSampler(Sampler[list[int]]):
    """Common bookkeeping: epoch, seed, rank."""

    def __init__(self, seed: int, num_replicas: int | None, rank: int | None):
        self.seed = int(seed)
        self.epoch = 0
        self.num_replicas, self.rank = _resolve_replicas(num_replicas, rank)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def sampler(self):
        """Lightning's ``_set_sampler_epoch`` reaches ``batch_sampler.sampler.set_epoch`` only."""
        return self

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch])


class RandomBatchSampler(_EpochBatchSampler):
    """Shuffled (or ordered) batches over ``indices``, one shard per rank.

    ``drop_last=True`` (training): each rank gets ``len // (batch_size * R)`` full batches.
    ``drop_last=False``: the permutation is padded by wrapping around (like ``DistributedSampler``)
    so every rank gets the same number of batches, the last possibly short; only use it where
    repeating a few drawings is harmless.
    """

    def __init__(self, indices: Sequence[int] | np.ndarray, batch_size: int, *, shuffle: bool = True,
                 drop_last: bool = True, seed: int = 0, num_replicas: int | None = None,
                 rank: int | None = None):
        super().__init__(seed, num_replicas, rank)
        self.indices = np.asarray(indices, dtype=np.int64)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(self.indices) == 0:
            raise ValueError("RandomBatchSampler got no indices")
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        if self.drop_last and len(self) == 0:
            raise ValueError(f"{len(self.indices)} drawings cannot fill one batch of {batch_size} on each of "
                             f"{self.num_replicas} rank(s); lower batch_size or set drop_last=False")

    def __len__(self) -> int:
        n, b, r = len(self.indices), self.batch_size, self.num_replicas
        if self.drop_last:
            return n // (b * r)
        return math.ceil(math.ceil(n / r) / b)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.indices[self._rng().permutation(len(self.indices))] if self.shuffle else self.indices
        n, b, r = len(order), self.batch_size, self.num_replicas
        if self.drop_last:
            nb = len(self)
            batches = order[: nb * b * r].reshape(nb * r, b)[self.rank::r]
            yield from (row.tolist() for row in batches)
            return
        per_rank = math.ceil(n / r)
        padded = np.resize(order, per_rank * r)  # np.resize repeats from the start
        mine = padded[self.rank * per_rank:(self.rank + 1) * per_rank]
        for i in range(0, per_rank, b):
            yield mine[i:i + b].tolist()


class PKBatchSampler(_EpochBatchSampler):
    """Class-balanced batches: P distinct classes x K drawings each (the study's class-pure buckets, P=3).

    Classes are drawn uniformly (without replacement within a batch), so rare classes are seen as often
    as common ones. Within a class the drawings are walked through a fresh permutation, so an epoch
    covers a class before repeating any drawing; a class with fewer than K drawings is sampled with
    replacement. Batches come out class-grouped: ``batch[i*K:(i+1)*K]`` share a class.

    ``batches_per_epoch`` counts batches over *all* ranks (default: ``len(indices) // (P*K)``, i.e. about
    one pass over the data); each rank gets ``ceil(batches_per_epoch / R)``.
    """

    def __init__(self, indices: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray, p: int, k: int,
                 *, batches_per_epoch: int | None = None, seed: int = 0, num_replicas: int | None = None,
                 rank: int | None = None):
        super().__init__(seed, num_replicas, rank)
        self.indices = np.asarray(indices, dtype=np.int64)
        labels = np.asarray(labels)
        if labels.shape != self.indices.shape:
            raise ValueError(f"labels {labels.shape} and indices {self.indices.shape} differ in shape")
        if p < 1 or k < 1:
            raise ValueError(f"P and K must be >= 1, got P={p}, K={k}")
        self.p, self.k = int(p), int(k)
        self.classes, inverse = np.unique(labels, return_inverse=True)
        if len(self.classes) < self.p:
            raise ValueError(f"P={p} classes per batch but the split has only {len(self.classes)} classes")
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(len(self.classes) + 1))
        self.members = [self.indices[order[a:b]] for a, b in zip(bounds[:-1], bounds[1:])]
        if batches_per_epoch is None:
            batches_per_epoch = max(1, len(self.indices) // (self.p * self.k))
        if batches_per_epoch < 1:
            raise ValueError(f"batches_per_epoch must be >= 1, got {batches_per_epoch}")
        self.batches_per_epoch = int(batches_per_epoch)

    @property
    def batch_size(self) -> int:
        return self.p * self.k

    def __len__(self) -> int:
        return math.ceil(self.batches_per_epoch / self.num_replicas)

    def _global_batches(self) -> np.ndarray:
        """All ranks' batches for this epoch, (len * R, P*K); depends on (seed, epoch) only."""
        rng = self._rng()
        n_batches = len(self) * self.num_replicas
        out = np.empty((n_batches, self.p * self.k), dtype=np.int64)
        perms = [None] * len(self.classes)
        cursor = np.zeros(len(self.classes), dtype=np.int64)
        k = self.k
        for bi in range(n_batches):
            chosen = rng.choice(len(self.classes), size=self.p, replace=False)
            for j, c in enumerate(chosen):
                members = self.members[c]
                if len(members) < k:
                    picked = members[rng.integers(0, len(members), size=k)]
                else:
                    if perms[c] is None or cursor[c] + k > len(members):
                        perms[c] = rng.permutation(len(members))
                        cursor[c] = 0
                    picked = members[perms[c][cursor[c]:cursor[c] + k]]
                    cursor[c] += k
                out[bi, j * k:(j + 1) * k] = picked
        return out

    def __iter__(self) -> Iterator[list[int]]:
        yield from (row.tolist() for row in self._global_batches()[self.rank::self.num_replicas])


class ShardSampler(Sampler[int]):
    """Evaluation sharding without padding: rank r gets items r, r+R, ... in order.

    No drawing is repeated, so metrics are exact, but ranks may differ by one item (and so by one batch).
    Lightning's epoch-level logging and torchmetrics sync at epoch end and cope with that; a
    ``self.log(..., on_step=True, sync_dist=True)`` in an eval step would not.
    """

    def __init__(self, n: int, num_replicas: int | None = None, rank: int | None = None):
        self.n = int(n)
        self.num_replicas, self.rank = _resolve_replicas(num_replicas, rank)

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.num_replicas))


class WrappedBatches(Sampler):
    """Base of the wrappers around a batch sampler: passes the epoch on and exposes what Lightning and
    the other wrappers look for (``sampler``, ``batch_size``, ``rank``)."""

    def __init__(self, batch_sampler):
        self.batch_sampler = batch_sampler
        self.epoch = 0

    @property
    def rank(self) -> int:
        return int(getattr(self.batch_sampler, "rank", 0))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(epoch)

    @property
    def sampler(self):
        """Lightning's ``_set_sampler_epoch`` reaches ``batch_sampler.sampler.set_epoch`` only."""
        return self

    @property
    def batch_size(self):
        return getattr(self.batch_sampler, "batch_size", None)



class SeededBatches(WrappedBatches):
    """Wraps a batch sampler so that each item carries its own augmentation seed: ``(index, seed)``.

    Why: augmentation runs in DataLoader workers, which know neither the epoch nor the seed (and
    persistent workers never see ``set_epoch``). The seed of item ``j`` of batch ``b`` depends on
    ``(seed, epoch, rank, b, j)`` only, so augmented batches are reproducible whatever ``num_workers``.
    """

    def __init__(self, batch_sampler, seed: int = 0):
        super().__init__(batch_sampler)
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self):
        rank = self.rank
        for b, batch in enumerate(self.batch_sampler):
            seeds = np.random.SeedSequence([self.seed, self.epoch, rank, b]).generate_state(len(batch), np.uint64)
            yield [(int(i), int(s)) for i, s in zip(batch, seeds)]
