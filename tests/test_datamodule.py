"""SketchDataModule: the batch contract of ARCHITECTURE.md "Batches", eval truncation, train-only
augmentation, seq_std bookkeeping, DDP shards, and a Lightning run that renders on transfer."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from helpers import compose_cfg
from sketchembed.corpus.store import PreparedWriter
from sketchembed.data.augment import PointAugment
from sketchembed.data.datamodule import BATCH_FIELDS, BatchSettings, SketchCollate, SketchDataModule, delta_std
from sketchembed.data.inputs import RECIPE, InputSettings, keep_count
from sketchembed.data.samplers import PKBatchSampler

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["apple", "bus", "pear", "van"]
PER_SPLIT = (14, 5, 5)  # train, val, test per class


def _write_tiny(root, seed=0, shift_train=0):
    """A small prepared dataset with random multi-stroke drawings; ``shift_train`` scales train deltas."""
    rng = np.random.default_rng(seed)
    splits = []
    with PreparedWriter(root, CLASSES) as w:
        for c in range(len(CLASSES)):
            for split, n in enumerate(PER_SPLIT):
                for _ in range(n):
                    strokes = []
                    for _ in range(rng.integers(1, 7)):
                        k = int(rng.integers(2, 9))
                        step = 20 if (split == 0 and shift_train) else 6
                        start = rng.integers(40, 200, size=2) if not shift_train else rng.integers(120, 124, size=2)
                        xy = np.clip(start + np.cumsum(
                            rng.integers(-step, step + 1, size=(k, 2)), axis=0), 0, 255)
                        strokes.append(xy)
                    pts = np.concatenate([np.c_[s, np.r_[np.zeros(len(s) - 1), 1]] for s in strokes])
                    w.add(pts.astype(np.int16), c, int(rng.integers(1, 2**62)))
                    splits.append(split)
        return w.close(splits=np.array(splits, dtype=np.int8))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny") / "prepared"
    _write_tiny(root)
    return root


def _dm(root, **kw):
    kw.setdefault("batch_size", 8)
    dm = SketchDataModule(root=str(root), **kw)
    dm.setup("fit")
    return dm


def _first(loader):
    return next(iter(loader))


# ------------------------------------------------------------------------------------------ batches
@pytest.mark.parametrize("views", [("sequence",), ("image",), ("snapshots",), ("sequence", "image", "snapshots")])
def test_batch_keys_shapes_dtypes(tiny, views):
    dm = _dm(tiny, views=views, image_size=24, max_snapshots=3)
    b = dm.render(_first(dm.train_dataloader()))
    B, T = b["points"].shape[:2]
    assert B == 8
    for key, shape, dtype in [("points", (B, T, 3), torch.float32), ("seq", (B, T, 3), torch.float32),
                              ("lengths", (B,), torch.int64), ("n_strokes", (B,), torch.int64),
                              ("label", (B,), torch.int64), ("index", (B,), torch.int64),
                              ("key_id", (B,), torch.int64)]:
        assert b[key].shape == shape and b[key].dtype == dtype, key
    S = int(b["n_strokes"].max())
    assert b["stroke_ends"].shape == (B, S) and b["stroke_ends"].dtype == torch.int64
    M = b["snap_batch"].shape[0]
    assert b["snap_pos"].shape == (M,) and b["snap_batch"].dtype == b["snap_pos"].dtype == torch.int64
    assert b["fraction"] == 1.0 and int(b["lengths"].max()) == T
    assert ("image" in b) == ("image" in views) and ("snapshots" in b) == ("snapshots" in views)
    if "image" in views:
        assert b["image"].shape == (B, 1, 24, 24) and float(b["image"].max()) > 0.5
    if "snapshots" in views:
        assert b["snapshots"].shape == (M, 1, 24, 24)


def test_batch_content_matches_store(tiny):
    dm = _dm(tiny, max_snapshots=3)
    b = _first(dm.loader("val"))
    std = dm.seq_std
    store = dm.store
    for i in range(len(b["label"])):
        row = int(b["index"][i])
        n = int(b["lengths"][i])
        raw = np.asarray(store.points(row), dtype=np.float32)
        assert n == len(raw)
        pts = b["points"][i].numpy()
        np.testing.assert_array_equal(pts[:n], raw)
        assert not pts[n:].any()
        assert int(b["label"][i]) == int(store.labels[row]) and int(b["key_id"][i]) == int(store.key_ids[row])
        # seq = normalized deltas, first delta from the origin, pen copied, zero padding
        seq = b["seq"][i].numpy()
        d = np.diff(np.r_[[[0, 0]], raw[:, :2]], axis=0) / std
        np.testing.assert_allclose(seq[:n, :2], d, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(seq[:n, 2], raw[:, 2])
        assert not seq[n:].any()
        # stroke ends = the pen_up positions, in order, padded with -1
        ends = np.flatnonzero(raw[:, 2] == 1)
        se = b["stroke_ends"][i].numpy()
        assert int(b["n_strokes"][i]) == len(ends)
        np.testing.assert_array_equal(se[:len(ends)], ends)
        assert (se[len(ends):] == -1).all()
        # snapshots: <= 3, distinct stroke ends, ascending, the last one is the last point
        pos = b["snap_pos"][b["snap_batch"] == i].numpy()
        assert 1 <= len(pos) == min(3, len(ends))
        assert set(pos) <= set(ends) and (np.diff(pos) > 0).all() and pos[-1] == n - 1


def test_snapshots_evenly_spaced_and_unlimited():
    pts = np.zeros((10, 3), np.float32)
    pts[:, 0] = np.arange(10)
    pts[[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 2] = 1  # 10 one-point strokes -> ends 0..9
    items = [(0, 0, 0, pts)]
    b = SketchCollate(2.0, max_snapshots=3)(items)
    assert b["snap_pos"].tolist() == [3, 6, 9]
    b = SketchCollate(2.0, max_snapshots=None)(items)
    assert b["snap_pos"].tolist() == list(range(10))
    b = SketchCollate(2.0, max_snapshots=1)(items)
    assert b["snap_pos"].tolist() == [9]


def test_fraction_truncation(tiny):
    dm = _dm(tiny, eval_fractions=[1.0, 0.5])
    loaders = dm.val_dataloader()
    assert len(loaders) == 2
    full, half = _first(loaders[0]), _first(loaders[1])
    assert half["fraction"] == 0.5
    assert torch.equal(full["index"], half["index"])
    for i in range(len(full["label"])):
        n = int(full["lengths"][i])
        k = int(half["lengths"][i])
        assert k == (max(2, math.ceil(0.5 * n)) if n >= 2 else n)
        np.testing.assert_array_equal(half["points"][i, :k, :2].numpy(), full["points"][i, :k, :2].numpy())
        np.testing.assert_array_equal(half["points"][i, :k - 1, 2].numpy(), full["points"][i, :k - 1, 2].numpy())
        assert half["points"][i, k - 1, 2] == 1  # the kept part ends a stroke
        assert int(half["stroke_ends"][i, half["n_strokes"][i] - 1]) == k - 1
        assert int(half["snap_pos"][half["snap_batch"] == i][-1]) == k - 1
    assert keep_count(10, 0.3) == 3 and keep_count(3, 0.1) == 2 and keep_count(1, 0.5) == 1


def test_embedded_study10_is_the_default():
    """The shipped real drawings: ten study classes, a sensible std, PK batches even for small classes."""
    from sketchembed import STUDY_CLASSES

    dm = SketchDataModule(batch_size=16, sampler="pk", pk_p=3, pk_k=8, batches_per_epoch=4)
    dm.setup("fit")
    assert dm.class_names == list(STUDY_CLASSES) and dm.num_classes == 10
    assert 5 < dm.seq_std < 100  # canvas px per point step on the 256 canvas
    b = _first(dm.train_dataloader())
    assert b["label"].view(3, 8).unique(dim=1).shape == (3, 1)
    assert (b["points"][..., :2] <= 255).all() and int(b["lengths"].min()) >= 2
    assert SketchDataModule(root="others335").num_classes > 300


# ------------------------------------------------------------------------------------------ samplers
def test_pk_train_batches(tiny):
    dm = _dm(tiny, sampler="pk", pk_p=3, pk_k=4, batches_per_epoch=6)
    loader = dm.train_dataloader()
    assert len(loader) == 6
    for b in loader:
        labels = b["label"].view(3, 4)
        assert (labels == labels[:, :1]).all() and len(set(labels[:, 0].tolist())) == 3


def test_ddp_shards_disjoint_equal(tiny):
    """Two simulated ranks: disjoint equal train shards, eval shards partition the split."""
    dm = _dm(tiny, batch_size=4)
    ds = dm.dataset("train")
    from sketchembed.data.samplers import RandomBatchSampler

    shards = [list(RandomBatchSampler(np.arange(len(ds)), 4, seed=0, num_replicas=2, rank=r)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) > 0
    flat = [i for s in shards for b in s for i in b]
    assert len(flat) == len(set(flat))
    pk = [list(PKBatchSampler(np.arange(len(ds)), ds.labels, 2, 3, seed=0, num_replicas=2, rank=r)) for r in range(2)]
    assert len(pk[0]) == len(pk[1])
    seen = [torch.cat([b["index"] for b in dm.loader("test", num_replicas=2, rank=r)]).tolist() for r in range(2)]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == dm.rows("test").tolist()


def test_predict_rebuild_keeps_shard(tiny):
    """Lightning's predict loop rebuilds the batch sampler around ``loader.sampler``: the shard survives."""
    from lightning.pytorch.trainer.states import RunningStage
    from lightning.pytorch.utilities.data import _update_dataloader

    dm = _dm(tiny, batch_size=3)
    loader = dm.loader("test", num_replicas=2, rank=1)
    rebuilt = _update_dataloader(loader, loader.sampler, mode=RunningStage.PREDICTING)
    assert torch.cat([b["index"] for b in rebuilt]).tolist() == dm.rows("test")[1::2].tolist()


def test_ddp_requires_own_sharding(tiny):
    class FakeTrainer:
        world_size, global_rank = 2, 1

        class _accelerator_connector:  # noqa: N801 - mimics the Trainer attribute
            use_distributed_sampler = True

    dm = _dm(tiny)
    dm.trainer = FakeTrainer()
    with pytest.raises(RuntimeError, match="use_distributed_sampler=False"):
        dm.train_dataloader()
    FakeTrainer._accelerator_connector.use_distributed_sampler = False
    val = dm.val_dataloader()[0]
    assert sum(len(b["label"]) for b in val) == len(dm.rows("val")[1::2])


# ------------------------------------------------------------------------------------------ augment
def _augment():
    """The real augmentation with every part switched on (what conf/augment/default.yaml uses)."""
    return PointAugment(scale=(0.85, 1.15), rotate_deg=12, shear=0.15, translate=12, jitter=0.8,
                        stroke_dropout=0.1)


def test_augment_train_only_and_deterministic(tiny):
    def batch(seed, split="train", epoch=0):
        dm = _dm(tiny, augment=_augment(), seed=seed)
        loader = dm.train_dataloader() if split == "train" else dm.loader(split)
        if epoch:
            loader.batch_sampler.set_epoch(epoch)
        return dm, _first(loader)

    dm, a = batch(1)
    _, a2 = batch(1)
    _, c = batch(2)
    _, e1 = batch(1, epoch=1)
    for k in ("points", "seq", "lengths", "stroke_ends", "snap_pos", "index"):
        assert torch.equal(a[k], a2[k]), k  # same seed, same epoch: the same augmented batch
    for i, r in enumerate(a["index"].tolist()):  # every train drawing was augmented ...
        raw = np.asarray(dm.store.points(r), np.float32)
        n = int(a["lengths"][i])
        assert n != len(raw) or not np.array_equal(a["points"][i, :n].numpy(), raw)
        # ... and seq is derived from the augmented points (views stay consistent)
        pts = a["points"][i, :n].numpy()
        d = np.diff(np.r_[[[0, 0]], pts[:, :2]], axis=0) / dm.seq_std
        np.testing.assert_allclose(a["seq"][i, :n, :2].numpy(), d, rtol=1e-5, atol=1e-5)
        assert int(a["stroke_ends"][i, a["n_strokes"][i] - 1]) == n - 1
    assert not torch.equal(a["points"][0], c["points"][0]) or not torch.equal(a["index"], c["index"])
    assert not torch.equal(a["points"][0], e1["points"][0]) or not torch.equal(a["index"], e1["index"])
    _, v = batch(1, split="val")  # val/test are never augmented
    for i, r in enumerate(v["index"]):
        np.testing.assert_array_equal(v["points"][i, : v["lengths"][i]].numpy(), dm.store.points(int(r)))
    dm_t = _dm(tiny, augment=_augment())
    dm_t.setup("test")
    t = _first(dm_t.test_dataloader()[0])
    r0 = int(t["index"][0])
    np.testing.assert_array_equal(t["points"][0, : t["lengths"][0]].numpy(), dm_t.store.points(r0))


# ------------------------------------------------------------------------------------------ seq_std
def test_seq_std_from_train_only_and_restored(tmp_path):
    root = tmp_path / "shifted"
    store = _write_tiny(root, shift_train=1)  # train deltas ~3x larger than val/test ones
    dm = _dm(root)
    train, rest = store.indices("train"), np.r_[store.indices("val"), store.indices("test")]
    d = []
    for r in train:
        p = np.asarray(store.points(r), np.float64)
        d.append(np.diff(p[:, :2], axis=0).ravel())
    expected = float(np.sqrt(np.mean(np.square(np.concatenate(d)))))
    assert dm.seq_std == pytest.approx(expected, rel=1e-9)
    assert delta_std(store, rest) < 0.6 * dm.seq_std
    assert delta_std(store, train, chunk_points=7) == pytest.approx(expected, rel=1e-9)  # chunking is exact

    state = dm.state_dict()
    fresh = SketchDataModule(root=str(root))
    fresh.load_state_dict({**state, "seq_std": 123.0})
    fresh.setup("fit")
    assert fresh.seq_std == 123.0  # restored, not recomputed
    b = _first(fresh.loader("val"))
    assert b["seq"][0, 1, 0].item() == pytest.approx(
        (b["points"][0, 1, 0] - b["points"][0, 0, 0]).item() / 123.0)
    with pytest.raises(ValueError, match="classes"):
        fresh.load_state_dict({**state, "classes": ["x"] * 4})


def test_batch_defaults_are_the_config_defaults():
    """conf/data/quickdraw.yaml states BatchSettings' defaults (``seed``: the run's ``${seed}``), and
    its keys are exactly the settings the DataModule takes, so ``data.<key>=`` keeps its names."""
    raw = OmegaConf.to_container(OmegaConf.load(REPO / "conf/data/quickdraw.yaml"), resolve=False)
    assert set(raw) == {"_target_", "root", *RECIPE, *BATCH_FIELDS}
    assert raw["seed"] == "${seed}"
    assert {k: raw[k] for k in BATCH_FIELDS if k != "seed"} == {
        k: v for k, v in BatchSettings().to_dict().items() if k != "seed"}
    assert (BatchSettings().batch_size, BatchSettings().pk_p, BatchSettings().pk_k) == (32, 10, 4)


def test_hydra_builds_it_from_flat_keys():
    """The config's flat keys (and their overrides) land in the record each belongs to."""
    cfg = compose_cfg(["data.pk_p=3", "data.image_size=32", "data.eval_batch_size=7"])
    dm = instantiate(cfg.data, views=["sequence"], _convert_="all")
    assert dm.batch == BatchSettings(pk_p=3, eval_batch_size=7, seed=int(cfg.seed))
    assert dm.inputs == InputSettings(image_size=32) and dm.eval_batch_size == 7
    assert not set(RECIPE) & set(dm.hparams) and dm.hparams["pk_p"] == 3  # inputs are saved as the state


def test_built_from_records_keys_override_them():
    batch, inputs = BatchSettings(batch_size=4, sampler="pk"), InputSettings(image_size=32, seq_std=2.0)
    dm = SketchDataModule(batch=batch, inputs=inputs, pk_k=2, max_snapshots=3)
    assert dm.batch == batch.replace(pk_k=2) and dm.inputs == InputSettings(image_size=32, max_snapshots=3)
    assert dm.seq_std == 2.0  # a restored seq_std is kept (not computed again), not part of the recipe
    assert SketchDataModule(batch_size=4, eval_batch_size=None).eval_batch_size == 4  # null: batch_size
    with pytest.raises(ValueError, match=r"^data\.colour: SketchDataModule has no setting 'colour'"):
        SketchDataModule(colour="red")
    with pytest.raises(ValueError, match=r"^data\.batch_size must be >= 1, got 0$"):
        SketchDataModule(batch_size=0)
    with pytest.raises(ValueError, match=r"^data\.seed must be an integer, got 'x'$"):
        BatchSettings(seed="x")


def test_subsets_and_errors(tiny):
    dm = _dm(tiny, max_train=10, max_eval=3, seed=4)
    assert len(dm.rows("train")) == 10 and len(dm.rows("val")) == 3
    assert set(dm.rows("train")) <= set(dm.store.indices("train"))
    assert len(_dm(tiny, train_subset=0.5).rows("train")) == 28
    assert dm.num_classes == 4 and dm.class_names == CLASSES
    with pytest.raises(ValueError, match="views"):
        SketchDataModule(views=["sound"])
    with pytest.raises(ValueError, match="sampler"):
        SketchDataModule(sampler="fifo")
    with pytest.raises(ValueError, match="eval_fractions"):
        SketchDataModule(eval_fractions=[1.0, 0.0])
    with pytest.raises(ValueError, match="start with 1.0"):
        SketchDataModule(eval_fractions=[0.5, 1.0])


def test_test_dir_prepared_maps_labels_by_name(tmp_path, tiny):
    other = tmp_path / "other"
    with PreparedWriter(other, ["van", "apple"]) as w:
        w.add(np.array([[1, 1, 0], [5, 5, 1]], np.int16), 0, 11)
        w.add(np.array([[2, 2, 0], [9, 9, 1]], np.int16), 1, 12)
        w.close(splits=np.array([0, 1], np.int8))
    dm = _dm(tiny, test_dir=str(other))
    dm.setup("test")
    b = _first(dm.test_dataloader()[0])
    assert b["label"].tolist() == [CLASSES.index("van"), CLASSES.index("apple")]
    assert b["key_id"].tolist() == [11, 12]
    bad = tmp_path / "bad"
    with PreparedWriter(bad, ["zebra"]) as w:
        w.add(np.array([[1, 1, 0], [5, 5, 1]], np.int16), 0, 1)
        w.close(splits=np.array([2], np.int8))
    with pytest.raises(Exception, match="zebra"):
        _dm(tiny, test_dir=str(bad)).dataset("test")


def test_test_dir_of_class_files_is_prepared(tmp_path, shared_quickdraw):
    """A folder of per-class ndjson files (real drawings) becomes the test split, labels by name."""
    folder = tmp_path / "eval_files"
    folder.mkdir()
    for name, n in (("bus", 3), ("apple", 4)):
        lines = (shared_quickdraw / "simplified" / f"{name}.ndjson").read_text().splitlines()[:n]
        (folder / f"{name}.ndjson").write_text("\n".join(lines) + "\n")
    root = tmp_path / "train_set"
    _write_tiny(root)
    dm = SketchDataModule(root=str(root), test_dir=str(folder), batch_size=16)
    dm.setup("test")
    b = _first(dm.test_dataloader()[0])
    assert sorted(b["label"].tolist()) == [0] * 4 + [1] * 3  # apple = 0, bus = 1 in CLASSES
    assert int(b["lengths"].min()) >= 2
    dm.teardown("test")


# ------------------------------------------------------------------------------------------ Lightning
class _Consumer(L.LightningModule):
    """Trivial model touching every key the views promise; records what it saw."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen = []

    def training_step(self, batch, batch_idx):
        self.seen.append(("train", sorted(k for k in batch if k in ("image", "snapshots")),
                          batch["image"].shape[0] == batch["label"].shape[0],
                          batch["snapshots"].shape[0] == batch["snap_pos"].shape[0]))
        return (self.w * batch["image"].mean() + self.w * batch["snapshots"].mean() + batch["seq"].sum() * 0).sum()

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self.seen.append(("val", dataloader_idx, batch["fraction"], "image" in batch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_fast_dev_run_renders_on_transfer(tiny):
    dm = SketchDataModule(root=str(tiny), views=("image", "snapshots"), image_size=16, batch_size=4,
                          max_snapshots=2)
    model = _Consumer()
    trainer = L.Trainer(fast_dev_run=True, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(model, datamodule=dm)
    assert ("train", ["image", "snapshots"], True, True) in model.seen
    assert ("val", 0, 1.0, True) in model.seen and ("val", 1, 0.5, True) in model.seen


def test_pickles_for_workers_and_ddp_spawn(tiny):
    """ddp_spawn pickles the DataModule, spawn workers the dataset and collate: all must round-trip."""
    import pickle

    dm = _dm(tiny, augment=_augment())
    clone = pickle.loads(pickle.dumps(dm))
    assert clone.seq_std == dm.seq_std and clone.store.root == dm.store.root
    ds = pickle.loads(pickle.dumps(dm.dataset("train", augment=True)))
    collate = pickle.loads(pickle.dumps(SketchCollate(dm.seq_std, 0.5, 2)))
    b = collate([ds[(0, 123)], ds[(1, 7)]])
    ref = SketchCollate(dm.seq_std, 0.5, 2)([dm.dataset("train", augment=True)[(0, 123)],
                                             dm.dataset("train", augment=True)[(1, 7)]])
    assert all(torch.equal(b[k], ref[k]) for k in ("points", "seq", "snap_pos", "stroke_ends"))


@pytest.mark.slow
def test_spawned_workers(tiny):
    """Workers started with spawn (macOS/Windows default) get everything by pickling."""
    from torch.utils.data import DataLoader

    dm = _dm(tiny)
    ds = dm.dataset("val")
    loader = DataLoader(ds, batch_size=5, num_workers=2, multiprocessing_context="spawn",
                        collate_fn=SketchCollate(dm.seq_std))
    got = torch.cat([b["index"] for b in loader])
    assert got.tolist() == dm.rows("val").tolist()


def test_workers_pickle_collate(tiny):
    """num_workers=2: dataset, store and collate travel to worker processes."""
    dm = _dm(tiny, num_workers=2, augment=_augment())
    ref = _dm(tiny, num_workers=0, augment=_augment())
    got = [b["points"] for b in dm.train_dataloader()]
    want = [b["points"] for b in ref.train_dataloader()]
    assert len(got) == len(want) and all(torch.equal(a, b) for a, b in zip(got, want))


class _Recorder(L.LightningModule):
    """Writes the dataset rows each rank saw (train, then val loader 0) to ``out/<rank>.json``."""

    def __init__(self, out):
        super().__init__()
        self.out = str(out)
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.rows = {"train": [], "val": []}

    def training_step(self, batch, batch_idx):
        self.rows["train"].append(batch["index"].tolist())
        return (self.w * batch["seq"].mean()).sum()

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        if dataloader_idx == 0 and not self.trainer.sanity_checking:
            self.rows["val"] += batch["index"].tolist()

    def on_fit_end(self):
        import json
        from pathlib import Path

        Path(self.out, f"{self.global_rank}.json").write_text(json.dumps(self.rows))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["random", "pk"])
def test_real_ddp_two_cpu_ranks(tiny, tmp_path, sampler):
    """Lightning ddp_spawn, 2 CPU ranks: disjoint equal train shards, val split partitioned once."""
    import json

    dm = SketchDataModule(root=str(tiny), views=("sequence",), batch_size=4, sampler=sampler, pk_p=2, pk_k=3)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=1,
                        use_distributed_sampler=False, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0)
    trainer.fit(_Recorder(tmp_path), datamodule=dm)
    seen = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    assert len(seen[0]["train"]) == len(seen[1]["train"]) > 0
    batches = [tuple(b) for s in seen for b in s["train"]]
    assert len(set(batches)) == len(batches)
    if sampler == "random":  # no drawing twice in an epoch across ranks
        flat = [i for b in batches for i in b]
        assert len(flat) == len(set(flat))
    val = seen[0]["val"] + seen[1]["val"]
    assert sorted(val) == SketchDataModule(root=str(tiny)).rows("val").tolist()  # each drawing exactly once
