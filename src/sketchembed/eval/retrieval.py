"""Retrieval metrics of the embedding space — P@1, R-precision, MAP@R, NMI and AMI — as
pytorch-metric-learning's ``AccuracyCalculator`` computes them (Musgrave et al., *A Metric Learning
Reality Check*): the evaluated drawings are the queries, the KNN index (the train embeddings,
``knn.max_train`` of them) the reference (``embeddings_come_from_same_source=False``: a query is
never in the reference set). Only the neighbour search is ours (:func:`sketchembed.eval.knn.search`,
exact, with eval's ``knn.backend``/``knn.device``), handed to the calculator as its ``knn_func``.

Cost, and how it is bounded:

* P@1: every evaluated drawing, on the neighbours the KNN stage already found (one search serves
  ``knn@K`` and P@1; P@1 is the class of the nearest indexed drawing, so it equals ``knn@1``).
* R-precision and MAP@R look at each query's R nearest indexed drawings, R = the indexed drawings
  of its class: ~10,000 at the study's 100 k index of 10 classes, 140,000 over the whole 1.4 M train
  split. The calculator asks for k = the largest R (``k="max_bin_count"``), so R is never capped
  (a cap would turn R-precision into precision@cap). What is bounded is the number of queries
  (``retrieval.max_queries``, a reproducible random sample of the evaluated drawings, default 2,000)
  and the memory: the queries are searched in groups of at most ``retrieval.max_pairs`` query × R
  neighbours (and at least ``GROUPS`` groups, see below).
* NMI and AMI: k-means (faiss, seeded; clusters = classes among the queries) of every evaluated
  embedding against its class.

Intervals (95 %, next to the other intervals in ``metrics.json``'s ``intervals``): P@1 is a share
of the n queries — Wilson (:mod:`sketchembed.eval.stats`). R-precision and MAP@R are means of
per-query values in [0, 1]; the calculator returns only the mean, so the queries are split at random
into ``GROUPS`` groups, each group's mean comes from the calculator and the interval is a t interval
over the group means (batch means: with equal-sized random groups their mean is the overall mean
and their spread gives its standard error). NMI and AMI come from one clustering of all queries, not
a mean over queries: no interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import FaissKMeans

from sketchembed import metric_keys
from sketchembed.eval.knn import search
from sketchembed.eval.stats import batch_means_interval

# Random query groups of R-precision and MAP@R (their interval: a t interval with GROUPS - 1 df).
GROUPS = 20
# metrics.json key of each AccuracyCalculator metric (``test/…``).
KEYS = {"precision_at_1": "p@1", "r_precision": "r_precision", "mean_average_precision_at_r": "map@r",
        "NMI": "nmi", "AMI": "ami"}
R_METRICS = ("r_precision", "mean_average_precision_at_r")


@dataclass(frozen=True)
class Bounds:
    """Eval's ``retrieval.*``: queries of R-precision/MAP@R (None: all) and query × R per group."""

    max_queries: int | None = 2000
    max_pairs: int = 4_000_000


class SearchKNN:
    """``knn_func`` of the calculator: eval's exact search (``search_kw``: backend, device, query_block)."""

    def __init__(self, **search_kw):
        self.search_kw = search_kw

    def __call__(self, query, k, reference, ref_includes_query=False):
        if ref_includes_query:
            raise ValueError("the queries are never in the reference set here")
        idx, d2 = search(reference.cpu().numpy(), query.cpu().numpy(), int(k), **self.search_kw)
        return torch.from_numpy(d2).to(query.device), torch.from_numpy(idx).to(query.device)


class Precomputed:
    """``knn_func`` serving neighbours already found (the KNN stage's), so P@1 needs no second search."""

    def __init__(self, idx: np.ndarray, d2: np.ndarray):
        self.idx, self.d2 = np.asarray(idx, np.int64), np.asarray(d2, np.float32)

    def __call__(self, query, k, reference=None, ref_includes_query=False):
        if ref_includes_query or len(query) != len(self.idx) or k > self.idx.shape[1]:
            raise ValueError(f"precomputed neighbours: {self.idx.shape} serve {len(query)} queries with k={k}")
        return torch.from_numpy(self.d2[:, :k].copy()), torch.from_numpy(self.idx[:, :k].copy())


def _calculator(include, k, knn_func=None, seed: int = 0) -> AccuracyCalculator:
    # min_points_per_centroid=1: no faiss warning on a small test set (every query is a training point)
    kmeans = FaissKMeans(niter=20, seed=int(seed), gpu=False, verbose=False, min_points_per_centroid=1)
    return AccuracyCalculator(include=tuple(include), k=k, device=torch.device("cpu"), knn_func=knn_func,
                              kmeans_func=kmeans)


def _f32(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def precision_at_1(index_emb, index_labels, query_emb, query_labels,
                   neighbours: tuple[np.ndarray, np.ndarray]) -> tuple[float, int]:
    """(P@1, n queries it is a share of) on each query's nearest index rows ``(idx, d2)``."""
    y, ref_y = np.asarray(query_labels, np.int64), np.asarray(index_labels, np.int64)
    acc = _calculator(["precision_at_1"], 1, Precomputed(*neighbours)).get_accuracy(
        _f32(query_emb), y, _f32(index_emb), ref_y)
    return float(acc["precision_at_1"]), int(np.isin(y, ref_y).sum())


def query_sample(query_labels, index_labels, bounds: Bounds, seed: int) -> np.ndarray:
    """The queries of R-precision/MAP@R, shuffled: a reproducible random ``max_queries`` of those
    whose class is in the index (the calculator leaves the others out too)."""
    rows = np.flatnonzero(np.isin(np.asarray(query_labels), np.asarray(index_labels)))
    rng = np.random.default_rng([int(seed), 13])
    rows = rng.permutation(rows)
    return rows if bounds.max_queries is None else rows[: bounds.max_queries]


def r_max(index_labels, query_labels) -> int:
    """The largest R among the queries: indexed drawings of their most frequent class in the index
    (the k the calculator searches); 0 without queries."""
    counts = np.bincount(np.asarray(index_labels, np.int64))
    present = np.unique(np.asarray(query_labels, np.int64))
    present = present[present < len(counts)]
    return int(counts[present].max()) if len(present) else 0


def r_metrics(index_emb, index_labels, query_emb, query_labels, bounds: Bounds, seed: int = 0,
              **search_kw) -> tuple[dict, dict, np.ndarray]:
    """R-precision and MAP@R: ``({name: value}, {name: interval dict}, query rows)`` over
    :func:`query_sample`, searched and scored group by group (see the module's docstring)."""
    ref, ref_y = _f32(index_emb), np.asarray(index_labels, np.int64)
    y = np.asarray(query_labels, np.int64)
    rows = query_sample(y, ref_y, bounds, seed)
    if not len(rows):
        return {}, {}, rows
    per_group = max(1, bounds.max_pairs // r_max(ref_y, y[rows]))  # queries whose R neighbours fit max_pairs
    n_groups = min(len(rows), max(GROUPS, math.ceil(len(rows) / per_group)))
    groups = np.array_split(rows, n_groups)
    calc = _calculator(R_METRICS, "max_bin_count", SearchKNN(**search_kw))
    means = {m: [] for m in R_METRICS}
    for g in map(np.sort, groups):
        acc = calc.get_accuracy(_f32(query_emb[g]), y[g], ref, ref_y)
        for m in R_METRICS:
            means[m].append(acc[m])
    sizes = [len(g) for g in groups]
    values, intervals = {}, {}
    for m in R_METRICS:
        value, ci = batch_means_interval(means[m], sizes)
        values[m] = value
        if ci is not None:
            intervals[m] = ci
    return values, intervals, np.sort(rows)


def clustering(query_emb, query_labels, seed: int = 0) -> dict:
    """NMI and AMI of a seeded k-means of the query embeddings (clusters = classes among them)."""
    y = np.asarray(query_labels, np.int64)
    if len(y) < 2:
        return {}
    acc = _calculator(["NMI", "AMI"], None, seed=seed).get_accuracy(_f32(query_emb), y)
    return {m: float(acc[m]) for m in ("NMI", "AMI")}


@dataclass
class Retrieval:
    """What eval adds to metrics.json: flat ``values`` (``SPLIT/p@1`` …, ``n_retrieval_queries``,
    ``retrieval_r_max``), the ``intervals`` other than Wilson's, the Wilson n of P@1
    (``n_overrides``) and the ``rows`` of the R-precision/MAP@R queries."""

    values: dict
    intervals: dict
    n_overrides: dict
    rows: np.ndarray


def retrieval_metrics(index_emb, index_labels, query_emb, query_labels, neighbours, *, bounds: Bounds = Bounds(),
                      seed: int = 0, split: str = "test", **search_kw) -> Retrieval:
    """Every retrieval metric of the queries against the index; ``neighbours``: the queries' nearest
    index rows ``(idx, d2)`` from the KNN stage; ``search_kw``: eval's search settings."""
    p1, n1 = precision_at_1(index_emb, index_labels, query_emb, query_labels, neighbours)
    r_values, r_intervals, rows = r_metrics(index_emb, index_labels, query_emb, query_labels, bounds, seed,
                                            **search_kw)
    keys = {m: metric_keys.key(split, k) for m, k in KEYS.items()}
    values = {keys["precision_at_1"]: p1} | {keys[m]: v for m, v in r_values.items()}
    values |= {keys[m]: v for m, v in clustering(query_emb, query_labels, seed).items()}
    ref_y, y = np.asarray(index_labels, np.int64), np.asarray(query_labels, np.int64)
    values["n_retrieval_queries"] = int(len(rows))
    values["retrieval_r_max"] = r_max(ref_y, y[rows])
    return Retrieval(values, {keys[m]: ci for m, ci in r_intervals.items()}, {keys["precision_at_1"]: n1}, rows)
