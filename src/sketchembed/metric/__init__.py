"""Metric learning parts in pytorch-metric-learning's style: distances, triplet losses, miners.

Miners are Lightning callbacks (chosen under ``miner/``); the triplet model gets the configured one
with :func:`find_miner` and feeds ``miner.mine_batch(...)`` to its loss.
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
    find_miner,
    gather_across_ranks,
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
    "find_miner",
    "gather_across_ranks",
    "get_distance",
    "random_triplets_per_anchor",
    "safe_sqrt",
    "sample_triplets",
    "squared_euclidean_matrix",
    "triplet_accuracy",
    "triplet_sums",
]
