"""Metric learning parts in pytorch-metric-learning's style: distances, triplet losses, miners.

Miners and losses have PML's interface, so PML's own work next to ours from a config; the model
gets the configured miner injected and calls :func:`mine_batch` before its loss.
"""

from sketchembed.metric.distances import (
    EuclideanDistance,
    SquaredEuclideanDistance,
    get_distance,
    safe_sqrt,
    squared_euclidean_matrix,
)
from sketchembed.metric.losses import (
    CrossEntropy,
    HingeTripletLoss,
    SoftmaxTripletLoss,
    TripletAccuracy,
    TripletLoss,
    triplet_accuracy,
    triplet_sums,
)
from sketchembed.metric.miners import (
    AllTripletsMiner,
    HardMiner,
    MinedBatch,
    RandomTripletMiner,
    SemiHardMiner,
    TripletMiner,
    all_triplets_indices,
    count_triplets,
    gather_across_ranks,
    mine_batch,
    mining_stats,
    random_triplets_per_anchor,
    sample_triplets,
)

__all__ = [
    "AllTripletsMiner",
    "CrossEntropy",
    "EuclideanDistance",
    "HardMiner",
    "HingeTripletLoss",
    "MinedBatch",
    "RandomTripletMiner",
    "SemiHardMiner",
    "SoftmaxTripletLoss",
    "SquaredEuclideanDistance",
    "TripletAccuracy",
    "TripletLoss",
    "TripletMiner",
    "all_triplets_indices",
    "count_triplets",
    "gather_across_ranks",
    "mine_batch",
    "mining_stats",
    "get_distance",
    "random_triplets_per_anchor",
    "safe_sqrt",
    "sample_triplets",
    "squared_euclidean_matrix",
    "triplet_accuracy",
    "triplet_sums",
]
