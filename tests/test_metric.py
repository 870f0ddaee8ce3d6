"""Distances, triplet losses, miners and triplet accuracy (sketchembed.metric)."""

from __future__ import annotations

import inspect
import itertools
import math

import lightning.pytorch as pl
import pytest
import torch
import torch.distributed as dist
from hydra.utils import instantiate
from omegaconf import OmegaConf
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.losses import TripletMarginLoss
from pytorch_metric_learning.miners import BatchHardMiner, MultiSimilarityMiner, TripletMarginMiner
from pytorch_metric_learning.reducers import AvgNonZeroReducer, MeanReducer
from pytorch_metric_learning.utils.loss_and_miner_utils import convert_to_triplets, get_all_triplets_indices

from helpers import MINER_NAMES, REPO_ROOT
from sketchembed.metric import (
    AllTripletsMiner,
    CrossEntropy,
    EuclideanDistance,
    HardMiner,
    HingeTripletLoss,
    RandomTripletMiner,
    SemiHardMiner,
    SoftmaxTripletLoss,
    SquaredEuclideanDistance,
    TripletAccuracy,
    TripletMiner,
    all_triplets_indices,
    count_triplets,
    gather_across_ranks,
    get_distance,
    mine_batch,
    mining_stats,
    sample_triplets,
    triplet_accuracy,
)
from sketchembed.metric.miners import _torch_all_gather
from sketchembed.models.base import SketchModule
from sketchembed.registry import LOSSES, MINERS, TRIPLET, loss_kind, loss_names

# every registered miner and triplet loss (a new registration is tested by being registered)
TRIPLET_LOSSES = loss_names(TRIPLET)


def _brute_triplets(labels, n_anchors=None):
    b = len(labels)
    n_anchors = b if n_anchors is None else n_anchors
    return {
        (a, p, n)
        for a in range(n_anchors)
        for p in range(b)
        for n in range(b)
        if p != a and labels[p] == labels[a] and labels[n] != labels[a]
    }


def _as_set(idx):
    return set(zip(*(t.tolist() for t in idx)))


def _batch(seed=0, b=24, d=6, classes=4):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(classes, (b,), generator=g)
    labels[-1] = classes  # a singleton class: may only serve as a negative
    return torch.randn(b, d, generator=g), labels


# ------------------------------------------------------------------ distances
def test_distance_matrices_match_direct_computation_and_have_finite_grad_at_zero():
    x = torch.randn(7, 5, dtype=torch.float64) + 100.0  # far from the origin: tests the centring
    y = torch.randn(4, 5, dtype=torch.float64) + 100.0
    direct = (x[:, None] - y[None]).pow(2).sum(-1)
    assert torch.allclose(SquaredEuclideanDistance()(x, y), direct, atol=1e-8)
    assert torch.allclose(EuclideanDistance()(x, y), direct.sqrt(), atol=1e-8)
    self_sq = SquaredEuclideanDistance()(x)
    assert torch.equal(self_sq.diagonal(), torch.zeros(7, dtype=torch.float64))

    z = torch.tensor([[1.0, 2.0], [1.0, 2.0], [4.0, 6.0]], requires_grad=True)  # rows 0, 1 coincide
    d = EuclideanDistance()(z)
    assert d[0, 1] == 0 and torch.isclose(d[0, 2], torch.tensor(5.0))
    d.sum().backward()
    assert torch.isfinite(z.grad).all()
    zp = z.detach().clone().requires_grad_(True)
    EuclideanDistance().pairwise_distance(zp[:2], zp[[1, 0]]).sum().backward()
    assert torch.equal(zp.grad, torch.zeros_like(zp))  # 0, not NaN, at zero distance


def test_get_distance_names_and_errors():
    assert isinstance(get_distance("euclidean"), EuclideanDistance)
    assert isinstance(get_distance("squared"), SquaredEuclideanDistance)
    assert isinstance(get_distance(None), SquaredEuclideanDistance)
    with pytest.raises(ValueError, match="unknown distance 'cosine'"):
        get_distance("cosine")


# ------------------------------------------------------------------ losses
# 1-D points: anchor 0 at 0, positive 1 at 1, negative 2 at 3  ->  d+ = 1, d- = 3.
EMB = torch.tensor([[0.0], [1.0], [3.0]])
LAB = torch.tensor([0, 0, 1])
TRIPLET = (torch.tensor([0]), torch.tensor([1]), torch.tensor([2]))


def test_softmax_triplet_loss_hand_computed():
    loss = SoftmaxTripletLoss()
    expected = (math.exp(1) / (math.exp(1) + math.exp(3))) ** 2
    assert loss(EMB, LAB, TRIPLET).item() == pytest.approx(expected, rel=1e-6)
    # No indices: all valid triplets, (0,1,2) and (1,0,2) with d+ = 1, d- = 3 and 2.
    second = (math.exp(1) / (math.exp(1) + math.exp(2))) ** 2
    assert loss(EMB, LAB).item() == pytest.approx((expected + second) / 2, rel=1e-6)
    assert SoftmaxTripletLoss.kind == "triplet"


def test_hinge_loss_hand_computed_zero_when_margin_met():
    # squared distances: d+ = 1, d- = 9
    assert HingeTripletLoss(margin=1.0)(EMB, LAB, TRIPLET).item() == 0.0
    assert HingeTripletLoss(margin=8.5)(EMB, LAB, TRIPLET).item() == pytest.approx(0.5)
    # all triplets: (0,1,2): 1 - 9 + m, (1,0,2): 1 - 4 + m
    assert HingeTripletLoss(margin=4.0)(EMB, LAB).item() == pytest.approx((0 + 1) / 2)
    assert HingeTripletLoss(margin=4.0, reduction="nonzero_mean")(EMB, LAB).item() == pytest.approx(1.0)
    swapped = (torch.tensor([0]), torch.tensor([2]), torch.tensor([1]))  # invalid on purpose: d+ > d-
    assert HingeTripletLoss(margin=0.0)(EMB, torch.tensor([0, 1, 0]), swapped).item() == pytest.approx(8.0)
    with pytest.raises(ValueError, match="reduction"):
        HingeTripletLoss(reduction="sum")


def test_losses_without_triplets_are_zero_but_differentiable():
    e = torch.randn(4, 3, requires_grad=True)
    for loss in (SoftmaxTripletLoss(), HingeTripletLoss()):
        out = loss(e, torch.zeros(4, dtype=torch.long))  # one class: no negatives
        assert out.item() == 0.0
        out.backward()


def test_softmax_loss_gradient_pulls_positive_in_and_pushes_negative_out():
    e = torch.tensor([[0.0, 0.0], [1.0, 0.5], [2.0, 1.0]], requires_grad=True)
    lab = torch.tensor([0, 0, 1])
    trip = (torch.tensor([0]), torch.tensor([1]), torch.tensor([2]))
    SoftmaxTripletLoss()(e, lab, trip).backward()
    stepped = (e - 0.1 * e.grad).detach()
    d = EuclideanDistance()
    before, after = d(e.detach()), d(stepped)
    assert after[0, 1] < before[0, 1]
    assert after[0, 2] > before[0, 2]


def test_cross_entropy_wrapper():
    logits, labels = torch.randn(5, 3), torch.tensor([0, 2, 1, 1, 0])
    ce = CrossEntropy(label_smoothing=0.1)
    expected = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)
    assert torch.isclose(ce(logits, labels), expected)
    assert CrossEntropy.kind == "classification" and HingeTripletLoss.kind == "triplet"


# ------------------------------------------------------------------ triplet indices
def test_all_triplets_match_brute_force_and_pml():
    _, labels = _batch(seed=3, b=15)
    idx = all_triplets_indices(labels)
    assert len(idx[0]) == len(_as_set(idx)) == count_triplets(labels)  # no duplicates
    assert _as_set(idx) == _brute_triplets(labels.tolist())
    assert _as_set(idx) == _as_set(get_all_triplets_indices(labels))
    assert _as_set(all_triplets_indices(labels, n_anchors=6)) == _brute_triplets(labels.tolist(), 6)
    assert count_triplets(torch.tensor([1, 2, 3])) == 0


def test_sampled_triplets_are_valid_and_uniform():
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2])  # class 0 anchors own 4*3*3 = 36 of 36 + 2*1*5 triplets
    a, p, n = sample_triplets(labels, 4000, generator=torch.Generator().manual_seed(0))
    assert _as_set((a, p, n)) <= _brute_triplets(labels.tolist())
    share_class0 = (labels[a] == 0).float().mean().item()
    assert share_class0 == pytest.approx(36 / 46, abs=0.03)


# ------------------------------------------------------------------ miners
@pytest.mark.parametrize("miner", MINER_NAMES)
def test_miner_triplets_are_valid(miner):
    emb, labels = _batch(seed=1)
    a, p, n = MINERS[miner]().mine(emb, labels)
    assert a.dtype == p.dtype == n.dtype == torch.long and len(a) > 0
    assert (labels[a] == labels[p]).all() and (a != p).all()
    assert (labels[a] != labels[n]).all()
    singleton = len(labels) - 1
    assert singleton not in a.tolist() and singleton not in p.tolist()


def test_random_miner_triplets_per_anchor():
    emb, labels = _batch(seed=2)
    a, _, _ = RandomTripletMiner(triplets_per_anchor=3).mine(emb, labels)
    valid_anchors = {t[0] for t in _brute_triplets(labels.tolist())}
    counts = torch.bincount(a, minlength=len(labels))
    assert {i for i in range(len(labels)) if counts[i]} == valid_anchors
    assert set(counts[sorted(valid_anchors)].tolist()) == {3}


def _expected_semi_hard(d, labels, fallback):
    out = set()
    b = len(labels)
    for a, p in itertools.product(range(b), range(b)):
        if a == p or labels[a] != labels[p]:
            continue
        negs = [n for n in range(b) if labels[n] != labels[a]]
        if not negs:
            continue
        farther = [n for n in negs if d[a][n] > d[a][p]]
        if farther:
            out.add((a, p, min(farther, key=lambda n: d[a][n])))
        elif fallback == "hardest":
            out.add((a, p, min(negs, key=lambda n: d[a][n])))
        elif fallback == "easiest":
            out.add((a, p, max(negs, key=lambda n: d[a][n])))
    return out


@pytest.mark.parametrize("fallback", ["hardest", "easiest", "none"])
def test_semi_hard_miner_picks_nearest_negative_beyond_the_positive(fallback):
    emb, labels = _batch(seed=4, b=20, d=3)
    emb[3] = emb[labels != labels[3]].mean(0)  # make some pairs have no farther negative
    d = SquaredEuclideanDistance()(emb).tolist()
    miner = SemiHardMiner(fallback=fallback)
    got = _as_set(miner.mine(emb, labels))
    assert got == _expected_semi_hard(d, labels.tolist(), fallback)
    n_pairs = len({(a, p) for a, p, _ in _brute_triplets(labels.tolist())})
    if fallback == "none":
        assert len(got) < n_pairs
        assert all(d[a][n] > d[a][p] for a, p, n in got)
    else:
        assert len(got) == n_pairs


def test_hard_miner_picks_extremes():
    emb, labels = _batch(seed=5)
    d = SquaredEuclideanDistance()(emb)
    a, p, n = HardMiner().mine(emb, labels)
    for ai, pi, ni in zip(a.tolist(), p.tolist(), n.tolist()):
        pos = [j for j in range(len(labels)) if j != ai and labels[j] == labels[ai]]
        neg = [j for j in range(len(labels)) if labels[j] != labels[ai]]
        assert d[ai, pi] == max(d[ai, j] for j in pos)
        assert d[ai, ni] == min(d[ai, j] for j in neg)
    assert len(a) == len({t[0] for t in _brute_triplets(labels.tolist())})


def test_mining_stats_values():
    emb = torch.tensor([[0.0], [1.0], [1.5], [3.0]])
    labels = torch.tensor([0, 0, 1, 1])
    miner = AllTripletsMiner(margin=2.0)
    miner.mine(emb, labels)
    # squared d+ vs d-, margin 2: (0,1,2) 1 vs 2.25 semi-hard; (0,1,3) 1 vs 9 easy;
    # (1,0,2) 1 vs .25 hard; (1,0,3) 1 vs 4 easy; (2,3,0) 2.25 vs 2.25 hard (a tie is not > );
    # (2,3,1) 2.25 vs .25 hard; (3,2,0) 2.25 vs 9 easy; (3,2,1) 2.25 vs 4 semi-hard
    s = {k: v.item() for k, v in miner.last_stats.items()}
    assert s["miner/triplets"] == 8
    assert s["miner/d_pos"] == pytest.approx((1 * 4 + 2.25 * 4) / 8)
    assert s["miner/d_neg"] == pytest.approx((2.25 + 9 + 0.25 + 4 + 2.25 + 0.25 + 9 + 4) / 8)
    assert s["miner/semi_hard"] == pytest.approx(2 / 8)
    assert s["miner/easy"] == pytest.approx(3 / 8)
    assert s["miner/hard"] == pytest.approx(3 / 8)
    # the same numbers through mine_batch (what the models call), for ours and for a PML miner
    _, stats = mine_batch(AllTripletsMiner(margin=2.0), emb, labels)
    assert {k: v.item() for k, v in stats.items()} == pytest.approx(s)
    # PML keeps the triplets with d_neg - d_pos <= margin: a wide one keeps them all
    pml = TripletMarginMiner(margin=100.0, type_of_triplets="all", distance=SquaredEuclideanDistance())
    mined, stats = mine_batch(pml, emb, labels)
    assert _as_set(mined.indices) == _as_set(AllTripletsMiner().mine(emb, labels))
    for key in ("miner/triplets", "miner/d_pos", "miner/d_neg", "miner/hard"):
        assert stats[key].item() == pytest.approx(s[key]), key
    assert stats["miner/easy"].item() == 0.0  # none beyond a margin of 100


@pytest.mark.parametrize("miner", [
    TripletMarginMiner(margin=0.5, type_of_triplets="semihard", distance=SquaredEuclideanDistance()),
    BatchHardMiner(distance=SquaredEuclideanDistance()),
    MultiSimilarityMiner(epsilon=0.5)])
def test_pml_miner_statistics_reuse_the_matrix_the_miner_computed(miner):
    """One B x B distance per step: the statistics read the matrix the PML miner measured, and equal
    the statistics measured separately."""
    emb, labels = _batch(seed=4, b=24)
    calls = []
    handle = miner.distance.register_forward_hook(lambda m, i, o: calls.append(o.shape))
    try:
        mined, stats = mine_batch(miner, emb, labels)
    finally:
        handle.remove()
    assert calls == [(24, 24)]
    a, p, n = convert_to_triplets(mined.indices, labels)
    mat = miner.distance(emb)
    d_pos, d_neg = (mat[a, p], mat[a, n]) if not miner.distance.is_inverted else (-mat[a, p], -mat[a, n])
    want = mining_stats(d_pos, d_neg, float(getattr(miner, "margin", 1.0) or 0.0))
    assert {k: v.item() for k, v in stats.items()} == pytest.approx({k: v.item() for k, v in want.items()})


def test_miner_stats_reach_the_trainer_from_the_injected_miner():
    """A model gets its miner injected (no callback); its miner/* statistics are logged per step."""

    class Table(SketchModule):
        LOSS_KINDS = ("triplet",)
        HAS_CLASSIFIER, TRIPLET_METRICS = False, True
        DEFAULT_LOSS = "hinge"

        def __init__(self, **common):
            super().__init__(**common)
            self.table = torch.nn.Embedding(12, 4)

        def training_loss(self, batch):
            return self.loss(*self.mine(self.table(batch["index"]), batch["label"])), {}

    data = [{"index": torch.arange(12), "label": torch.arange(12) % 3}] * 2
    model = Table(loss=HingeTripletLoss(margin=0.5), miner=SemiHardMiner(margin=0.5), scheduler=None)
    trainer = pl.Trainer(fast_dev_run=2, accelerator="cpu", enable_progress_bar=False,
                         enable_model_summary=False, logger=False)
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=None))
    metrics = trainer.callback_metrics
    for key in ("miner/triplets", "miner/d_pos", "miner/d_neg", "miner/semi_hard", "miner/easy"):
        assert any(k.startswith(key) for k in metrics), (key, sorted(metrics))
    assert metrics["miner/triplets_step"].item() == 12 * 3  # every positive pair once


def test_no_miner_means_every_triplet_not_random_ones():
    emb, labels = _batch(seed=3)
    mined, stats = mine_batch(None, emb, labels)
    assert mined.indices is None and stats == {}
    loss = HingeTripletLoss(margin=0.5)
    assert loss(*mined).item() == pytest.approx(loss(emb, labels, AllTripletsMiner().mine(emb, labels)).item())


# ------------------------------------------------------------------ PML's parts next to ours
def test_hinge_loss_is_pml_triplet_margin_loss_on_squared_distances():
    """Our hinge = PML's TripletMarginLoss with squared Euclidean distances (PML's LpDistance(power=2)
    gives the same numbers) and the mean (or PML's default non-zero mean) reducer."""

    emb, labels = _batch(seed=11, b=24)
    emb = emb.clone().requires_grad_(True)
    mined = SemiHardMiner().mine(emb, labels)
    for reduction, reducer in (("mean", MeanReducer), ("nonzero_mean", AvgNonZeroReducer)):
        ours = HingeTripletLoss(margin=1.0, reduction=reduction)
        pml = TripletMarginLoss(margin=1.0, distance=LpDistance(normalize_embeddings=False, power=2),
                                reducer=reducer())
        for idx in (mined, None):
            a, b = ours(emb, labels, idx), pml(emb, labels, idx)
            assert a.item() == pytest.approx(b.item(), rel=1e-5, abs=1e-6), (reduction, idx is None)
            ga, = torch.autograd.grad(a, emb)
            gb, = torch.autograd.grad(b, emb)
            assert torch.allclose(ga, gb, atol=1e-5)


def test_hard_miner_is_pml_batch_hard_miner():
    for seed in range(5):
        emb, labels = _batch(seed=seed, b=20)
        ours = HardMiner().mine(emb, labels)
        pml = BatchHardMiner(distance=SquaredEuclideanDistance())(emb, labels)
        assert _as_set(ours) == _as_set(pml) and len(ours[0]) == len(pml[0])


def test_hard_miner_over_a_gathered_batch_keeps_local_anchors_and_no_self_pairs():
    torch.manual_seed(1)
    local_emb, local_lab = torch.randn(5, 3), torch.tensor([0, 0, 1, 2, 3])  # class 3: no local positive
    other_emb, other_lab = torch.randn(6, 3), torch.tensor([1, 1, 2, 0, 4, 4])

    def fake_gather(x):
        return [x, other_emb if x.is_floating_point() else other_lab], 0

    emb, lab, (a, p, n) = HardMiner(gather_across_ranks=True, gather_fn=fake_gather).mine_batch(local_emb, local_lab)
    d = SquaredEuclideanDistance()(emb)
    want = set()
    for i in range(5):
        pos = [j for j in range(len(lab)) if j != i and lab[j] == lab[i]]
        neg = [j for j in range(len(lab)) if lab[j] != lab[i]]
        if pos:
            want.add((i, max(pos, key=lambda j: d[i, j]), min(neg, key=lambda j: d[i, j])))
    assert _as_set((a, p, n)) == want and 4 not in a.tolist()


@pytest.mark.parametrize("name", ["pml_semihard", "pml_batch_hard", "pml_multi_similarity"])
def test_pml_miner_configs_train_a_table(name):
    """A PML miner from conf/miner/ mines for our loss (pairs become triplets, as PML does) and logs."""
    miner = instantiate(OmegaConf.load(REPO_ROOT / "conf" / "miner" / f"{name}.yaml"))
    assert not isinstance(miner, TripletMiner)
    _train_table(HingeTripletLoss(margin=0.5), miner)


def test_pml_loss_config_trains_a_table():
    loss = instantiate(OmegaConf.load(REPO_ROOT / "conf" / "loss" / "pml_triplet_margin.yaml"))
    assert isinstance(loss, TripletMarginLoss) and loss_kind(loss) == "triplet"
    _train_table(loss, SemiHardMiner(margin=0.5))


def _train_table(loss, miner, steps: int = 40):
    torch.manual_seed(0)
    labels = torch.arange(16) % 4
    table = torch.nn.Parameter(torch.randn(16, 4) * 0.5)
    opt = torch.optim.Adam([table], lr=0.05)
    acc_before = triplet_accuracy(table.detach(), labels)[0].item()
    counts = []
    for _ in range(steps):
        opt.zero_grad()
        mined, stats = mine_batch(miner, table, labels)
        counts.append(stats["miner/triplets"].item())
        loss(*mined).backward()
        opt.step()
    assert counts[0] > 0  # (late steps may find none left to mine)
    acc_after = triplet_accuracy(table.detach(), labels)[0].item()
    assert acc_before < 0.7 and acc_after > 0.9, (acc_before, acc_after)


@pytest.mark.parametrize("miner_name", MINER_NAMES)
@pytest.mark.parametrize("loss_name", TRIPLET_LOSSES)
def test_loss_falls_when_training_an_embedding_table(loss_name, miner_name):
    # a loss with a margin trains with margin 0.5, its miner mining with the same margin
    kw = {"margin": 0.5} if "margin" in inspect.signature(LOSSES[loss_name]).parameters else {}
    loss, miner = LOSSES[loss_name](**kw), MINERS[miner_name](**kw)
    torch.manual_seed(0)
    labels = torch.arange(16) % 4
    table = torch.nn.Parameter(torch.randn(16, 4) * 0.5)
    opt = torch.optim.Adam([table], lr=0.05)

    def full_loss():
        with torch.no_grad():
            return loss(table, labels).item()  # all triplets: comparable across steps

    before = full_loss()
    acc_before = triplet_accuracy(table.detach(), labels)[0].item()
    for _ in range(40):
        opt.zero_grad()
        loss(*miner.mine_batch(table, labels)).backward()
        opt.step()
    assert full_loss() < 0.5 * before
    acc_after = triplet_accuracy(table.detach(), labels)[0].item()
    assert acc_before < 0.7 and acc_after > 0.9


# ------------------------------------------------------------------ cross-rank gathering
def test_gather_across_ranks_bookkeeping_with_fake_gather():
    torch.manual_seed(0)
    # This is rank 1 of 3; rank sizes differ. Local rows are all class 0 except one class-1 row,
    # so most negatives of local anchors live on other ranks.
    local_emb = torch.randn(4, 3, requires_grad=True)
    local_lab = torch.tensor([0, 0, 0, 1])
    # Other ranks' tensors require grad here, to check that they enter detached.
    other_emb = {0: torch.randn(3, 3, requires_grad=True), 2: torch.randn(5, 3, requires_grad=True)}
    other_lab = {0: torch.tensor([1, 2, 2]), 2: torch.tensor([0, 1, 3, 3, 2])}

    def fake_gather(x):
        table = other_emb if x.is_floating_point() else other_lab
        return [table[0], x, table[2]], 1

    miner = SemiHardMiner(gather_across_ranks=True, gather_fn=fake_gather)
    emb, lab, (a, p, n) = miner.mine_batch(local_emb, local_lab)
    assert emb.shape == (12, 3) and lab.tolist() == [0, 0, 0, 1, 1, 2, 2, 0, 1, 3, 3, 2]
    assert torch.equal(emb[4:7], other_emb[0]) and torch.equal(emb[7:], other_emb[2])
    assert a.max() < 4 and set(a.tolist()) == {0, 1, 2, 3}  # every local anchor has a positive elsewhere
    assert (lab[a] == lab[p]).all() and (lab[a] != lab[n]).all()
    assert (n >= 4).any() and (p >= 4).any()  # partners come from other ranks
    d = SquaredEuclideanDistance()(emb.detach()).tolist()
    assert _as_set((a, p, n)) == {t for t in _expected_semi_hard(d, lab.tolist(), "hardest") if t[0] < 4}

    HingeTripletLoss(margin=10.0)(emb, lab, (a, p, n)).backward()
    assert local_emb.grad is not None and local_emb.grad.abs().sum() > 0
    assert all(t.grad is None for t in other_emb.values())


def test_gather_is_identity_without_process_group_and_works_in_a_single_rank_group(tmp_path):
    emb, labels = _batch(seed=6, b=8)
    out_emb, out_lab = gather_across_ranks(emb, labels)
    assert out_emb is emb and out_lab is labels
    a, _, _ = SemiHardMiner(gather_across_ranks=True).mine_batch(emb, labels).indices
    assert len(a) > 0

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        parts, rank = _torch_all_gather(labels)
        assert rank == 0 and len(parts) == 1 and torch.equal(parts[0], labels)
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------ triplet accuracy
def test_triplet_accuracy_hand_computed_and_capped():
    emb = torch.tensor([[0.0], [1.0], [1.5], [3.0]])
    labels = torch.tensor([0, 0, 1, 1])
    acc, d_pos, d_neg = triplet_accuracy(emb, labels)
    # Euclidean: d+ 1,1,1,1,1.5,1.5,1.5,1.5 ; d- 1.5,3,.5,2,1.5,.5,3,2 -> 5 of 8 with d- > d+
    assert acc.item() == pytest.approx(5 / 8)
    assert d_pos.item() == pytest.approx(1.25)
    assert d_neg.item() == pytest.approx(14 / 8)
    one = (torch.tensor([0]), torch.tensor([1]), torch.tensor([3]))
    assert triplet_accuracy(emb, labels, one)[0].item() == 1.0
    assert math.isnan(triplet_accuracy(emb, torch.zeros(4, dtype=torch.long))[0].item())

    emb, labels = _batch(seed=7, b=60)
    exact = triplet_accuracy(emb, labels, max_triplets=None)[0].item()
    capped = triplet_accuracy(emb, labels, max_triplets=5000, generator=torch.Generator().manual_seed(1))
    assert count_triplets(labels) > 5000
    assert capped[0].item() == pytest.approx(exact, abs=0.03)


def test_epoch_triplet_accuracy_sums_batches_and_ignores_batches_without_triplets():
    """Many classes and small eval batches: some batches hold no valid triplet. The epoch value is
    the share over all in-batch triplets (not a mean of per-batch shares, never NaN from one batch)."""

    emb1, lab1 = torch.tensor([[0.0], [1.0], [1.5], [3.0]]), torch.tensor([0, 0, 1, 1])  # 8 triplets, 5 right
    emb2, lab2 = torch.tensor([[0.0], [5.0], [9.0]]), torch.tensor([3, 4, 5])              # no triplet
    emb3, lab3 = torch.tensor([[0.0], [0.1], [5.0]]), torch.tensor([7, 7, 8])              # 2 triplets, 2 right
    m = TripletAccuracy()
    for e, y in ((emb1, lab1), (emb2, lab2), (emb3, lab3)):
        m.update(e, y)
    out = m.compute()
    assert out["triplet_acc"].item() == pytest.approx(7 / 10)  # a mean of batch shares would be NaN or 0.81
    assert out["d_pos"].item() == pytest.approx((8 * 1.25 + 2 * 0.1) / 10)
    assert out["d_neg"].item() == pytest.approx((14 + 5.0 + 4.9) / 10)
    m.reset()
    m.update(emb2, lab2)
    assert math.isnan(m.compute()["triplet_acc"].item())


# ------------------------------------------------------------------ the study's settings
def test_softmax_loss_distance_option_plain_or_squared():
    """The study's "exp" loss runs on plain Euclidean distances (the default); squared is the option."""
    plain = (math.exp(1) / (math.exp(1) + math.exp(3))) ** 2
    squared = (math.exp(1) / (math.exp(1) + math.exp(9))) ** 2
    assert SoftmaxTripletLoss(distance="euclidean")(EMB, LAB, TRIPLET).item() == pytest.approx(plain, rel=1e-6)
    assert SoftmaxTripletLoss(distance="squared_euclidean")(EMB, LAB, TRIPLET).item() == pytest.approx(
        squared, rel=1e-5)
    for name, cls, distance in (("softmax_triplet", SoftmaxTripletLoss, EuclideanDistance),
                                ("hinge", HingeTripletLoss, SquaredEuclideanDistance)):
        loss = instantiate(OmegaConf.load(REPO_ROOT / "conf" / "loss" / f"{name}.yaml"))
        assert type(loss) is cls and type(loss.distance) is distance


def _study_semi_hard(d, labels):
    """The study's rule, literally: per (anchor, positive) of a bucket, the closest sample of the other
    buckets farther than the positive; pairs with none are skipped (and counted)."""
    picked, skipped = set(), 0
    for a in range(len(labels)):
        for p in range(len(labels)):
            if p == a or labels[p] != labels[a]:
                continue
            farther = [n for n in range(len(labels)) if labels[n] != labels[a] and d[a][n] > d[a][p]]
            if farther:
                picked.add((a, p, min(farther, key=lambda n: d[a][n])))
            else:
                skipped += 1
    return picked, skipped


def test_semi_hard_miner_is_the_study_rule_on_three_buckets_of_ten():
    g = torch.Generator().manual_seed(7)
    labels = torch.tensor([4] * 10 + [1] * 10 + [7] * 10)    # three class-pure buckets of 10
    emb = torch.randn(30, 8, generator=g) + labels[:, None] * 0.3
    emb[0] = 40.0                                           # a far positive: its pairs find no negative
    d = SquaredEuclideanDistance()(emb).tolist()
    expected, skipped = _study_semi_hard(d, labels.tolist())
    assert skipped >= 9
    miner = SemiHardMiner(fallback="none")
    assert _as_set(miner.mine(emb, labels)) == expected
    assert miner.last_stats["miner/skipped"].item() == skipped
    assert miner.last_stats["miner/triplets"].item() == 30 * 9 - skipped
    # with a fallback the count still says how many pairs had no semi-hard negative
    hardest = SemiHardMiner(fallback="hardest")
    hardest.mine(emb, labels)
    assert hardest.last_stats["miner/skipped"].item() == skipped
    assert hardest.last_stats["miner/triplets"].item() == 30 * 9
