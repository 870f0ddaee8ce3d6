"""SketchDataModule: prepared dataset -> the batch dict every model consumes (ARCHITECTURE.md "Batches").

Division of work, and why:

* DataLoader workers (CPU) read points from the memory-mapped store, augment them (train only, on
  the points, so sequence and images stay the same drawing), truncate them to the eval fraction and
  collate: padding, normalized deltas, stroke ends and snapshot positions, in numpy, vectorized over
  the batch, with one float buffer per batch.
* Rasterization runs on the batch's device in :meth:`SketchDataModule.on_after_batch_transfer`
  (``render_views``): images are cheap on a GPU and expensive to ship from workers.

Distributed training: we shard ourselves (see :mod:`sketchembed.data.samplers`), so the Trainer must
run with ``use_distributed_sampler=False``; we raise if it does not. Train: every rank gets the same
number of batches. Val/test: each rank gets a disjoint shard without padding, so no drawing is
counted twice; shards differ by at most one drawing, so log eval metrics per epoch (torchmetrics or
``self.log(..., on_epoch=True, sync_dist=True)``), never with per-step ``sync_dist`` in eval steps.

``seq`` normalization: ``(dx, dy) / seq_std`` with one std for both axes (keeps the aspect ratio),
computed once on the train split's within-drawing deltas as their RMS, i.e. assuming mean 0 (pen
motions go back and forth: over 1,300 shared real drawings the mean delta is 2-4 % of the std).
``dx_0`` is ``x_0 - seq_origin`` and is not counted in the std. The value lives in
:meth:`state_dict`, so checkpoints carry it and a restored model sees the inputs it was trained on.
``seq_norm="none"`` (the study's ``lstm.py``: raw pixel deltas) is ``seq_std = 1``, stored the same way.
``seq_origin``: the study's ``lstm.py`` takes the first point relative to (0, 0) (our default), its
``combined_model.py`` relative to (122.5, 122.5).

Truncation (``fraction_rule``): ``ceil`` (default) keeps ``ceil(f * n)`` points, at least 2, for both the
sequence and the images; ``study`` is the study's code: the image shows ``floor(f * n)`` points (its
``length // 2``) and the sequence runs to point ``floor(f * (n - 1))`` (its LSTM state at
``(len - 1) // 2``), so on odd lengths the image has one point fewer (``image_lengths`` in the batch).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from sketchembed.corpus.embedded import resolve_root
from sketchembed.corpus.prepare import key_hash
from sketchembed.corpus.sketch import DataFormatError
from sketchembed.corpus.store import SPLIT_CODES, PreparedDataset
from sketchembed.corpus.test_dir import open_test_dir
from sketchembed.data.batch_filter import MaxMeanStrokes, stroke_counts
from sketchembed.data.inputs import (
    DEFAULTS,
    RECIPE,
    InputSettings,
    boolean,
    check,
    image_count,
    int_at_least,
    keep_count,
    number,
    one_of,
    optional,
)
from sketchembed.data.raster import Rasterizer, render_views
from sketchembed.data.samplers import PKBatchSampler, RandomBatchSampler, SeededBatches, ShardSampler
from sketchembed.messages import short_list

__all__ = ["BATCH_FIELDS", "FOLD_KEYS", "SAMPLERS", "SPLITS", "VIEWS", "BatchSettings", "SketchCollate",
           "SketchDataModule", "SketchSplit", "check_data_key", "check_fold", "delta_std", "fold_splits"]

VIEWS = ("sequence", "image", "snapshots")
SPLITS = ("train", "val", "test")
SAMPLERS = ("random", "pk")


# ---------------------------------------------------------------------------------------- dataset
class SketchSplit(Dataset):
    """Rows of a prepared dataset as ``(row, label, key_id, points float32 (n, 3))`` items.

    An index may be ``(i, seed)`` (see :class:`SeededBatches`): the seed drives the augmentation of
    that item. Without a seed an augmented item uses ``(seed, row)``, reproducible but the same every
    epoch. ``labels`` are given (not read from the store) so a test store can be mapped onto the
    training classes.
    """

    def __init__(self, store, rows: np.ndarray, labels: np.ndarray, augment=None, seed: int = 0):
        self.store = store
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        if self.labels.shape != self.rows.shape:
            raise ValueError("rows and labels differ in length")
        self.key_ids = np.asarray(store.key_ids)[self.rows].astype(np.int64)
        self.augment = augment
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        aug_seed = None
        if isinstance(i, tuple):
            i, aug_seed = i
        row = int(self.rows[i])
        pts = np.asarray(self.store.points(row), dtype=np.float32)
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, row] if aug_seed is None else aug_seed)
            pts = np.asarray(self.augment(pts, rng), dtype=np.float32)
            if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) == 0:
                raise ValueError(f"augmentation returned points of shape {pts.shape} for row {row}")
        return row, int(self.labels[i]), int(self.key_ids[i]), pts


# ---------------------------------------------------------------------------------------- collate
class SketchCollate:
    """Items -> the batch dict (all but the rendered views). Top-level and picklable for workers.

    Settings are checked by :func:`sketchembed.data.inputs.check` (one rule for every consumer)."""

    def __init__(self, seq_std: float, fraction: float = 1.0, max_snapshots: int | None = DEFAULTS.max_snapshots, *,
                 fraction_rule: str = DEFAULTS.fraction_rule, seq_origin: Sequence[float] = DEFAULTS.seq_origin):
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        self.seq_std = check("seq_std", seq_std)
        if self.seq_std is None:
            raise ValueError("data.seq_std must be a number > 0, got None")
        self.fraction = float(fraction)
        self.max_snapshots = check("max_snapshots", max_snapshots)
        self.fraction_rule = check("fraction_rule", fraction_rule)
        self.seq_origin = np.asarray(check("seq_origin", seq_origin), dtype=np.float32)

    @classmethod
    def from_inputs(cls, inputs: InputSettings, fraction: float = 1.0) -> SketchCollate:
        """The collate of a model's input settings (``inputs.seq_std`` must be known)."""
        return cls(inputs.seq_std, fraction, inputs.max_snapshots, fraction_rule=inputs.fraction_rule,
                   seq_origin=inputs.seq_origin)

    def __call__(self, items: Sequence[tuple]) -> dict:
        B = len(items)
        full = np.fromiter((len(it[3]) for it in items), dtype=np.int64, count=B)
        image_lengths = None
        if self.fraction < 1:
            lengths = np.fromiter((keep_count(n, self.fraction, self.fraction_rule) for n in full),
                                  dtype=np.int64, count=B)
            if self.fraction_rule != "ceil":
                image_lengths = np.fromiter((image_count(n, self.fraction, self.fraction_rule) for n in full),
                                            dtype=np.int64, count=B)
        else:
            lengths = full
        T = int(lengths.max())
        buf = np.zeros((2, B, T, 3), dtype=np.float32)  # [0] points, [1] seq: one allocation
        pts, seq = buf[0], buf[1]
        for b, it in enumerate(items):
            pts[b, :lengths[b]] = it[3][:lengths[b]]
        ar = np.arange(B)
        pts[ar, lengths - 1, 2] = 1.0  # truncation ends a stroke (already 1 for whole drawings)

        valid = np.arange(T)[None, :] < lengths[:, None]
        seq[:, 0, :2] = pts[:, 0, :2] - self.seq_origin
        np.subtract(pts[:, 1:, :2], pts[:, :-1, :2], out=seq[:, 1:, :2])
        seq[..., :2] *= (valid * np.float32(1.0 / self.seq_std))[..., None]
        seq[..., 2] = pts[..., 2]

        eb, et = np.nonzero(valid & (pts[..., 2] > 0.5))  # row-major: grouped by drawing, in order
        n_strokes = np.bincount(eb, minlength=B).astype(np.int64)
        first = np.cumsum(n_strokes) - n_strokes
        stroke_ends = np.full((B, int(n_strokes.max())), -1, dtype=np.int64)
        stroke_ends[eb, np.arange(len(eb)) - first[eb]] = et

        # Snapshots: m of the n stroke ends, k_j = ceil(j n / m) - 1 for j = 1..m: evenly spaced,
        # distinct (n / m >= 1), and k_m = n - 1 is the drawing's last stroke end.
        m = n_strokes if self.max_snapshots is None else np.minimum(n_strokes, self.max_snapshots)
        snap_batch = np.repeat(ar, m)
        j = np.arange(len(snap_batch)) - np.repeat(np.cumsum(m) - m, m) + 1
        nb, mb = n_strokes[snap_batch], m[snap_batch]
        snap_pos = stroke_ends[snap_batch, (j * nb + mb - 1) // mb - 1]

        t = torch.from_numpy(buf)
        extra = {} if image_lengths is None else {"image_lengths": torch.from_numpy(image_lengths)}
        return {**extra,
            "points": t[0],
            "lengths": torch.from_numpy(lengths),
            "seq": t[1],
            "stroke_ends": torch.from_numpy(stroke_ends),
            "n_strokes": torch.from_numpy(n_strokes),
            "snap_batch": torch.from_numpy(snap_batch.astype(np.int64)),
            "snap_pos": torch.from_numpy(snap_pos),
            "label": torch.tensor([it[1] for it in items], dtype=torch.int64),
            "index": torch.tensor([it[0] for it in items], dtype=torch.int64),
            "key_id": torch.tensor([it[2] for it in items], dtype=torch.int64),
            "fraction": self.fraction,
        }


# ---------------------------------------------------------------------------------------- helpers
def delta_std(store, rows: np.ndarray, *, chunk_points: int = 1 << 22) -> float:
    """RMS of the within-drawing (dx, dy) of ``rows`` (mean assumed 0), both axes pooled.

    Walks the store's flat points array in chunks of whole drawings, so it is one vectorized pass
    whatever the number of drawings, with bounded memory.
    """
    offsets = np.asarray(store.offsets)
    pts = store.all_points
    n = len(offsets) - 1
    wanted = np.zeros(n, dtype=bool)
    wanted[np.asarray(rows, dtype=np.int64)] = True
    total, count = 0.0, 0
    a = 0
    while a < n:
        b = int(np.searchsorted(offsets, offsets[a] + chunk_points, side="right")) - 1
        b = min(n, max(b, a + 1))
        if wanted[a:b].any():
            p = np.asarray(pts[offsets[a]:offsets[b], :2], dtype=np.float64)
            local = offsets[a:b + 1] - offsets[a]
            keep = np.repeat(wanted[a:b], np.diff(local))[1:]  # delta t: point t+1 minus point t
            keep[local[1:-1] - 1] = False  # a delta into a drawing's first point crosses drawings
            d = np.diff(p, axis=0)[keep]
            total += float(np.square(d).sum())
            count += 2 * len(d)
        a = b
    if count == 0:
        raise ValueError(f"{store.root}: the train split has no point deltas to compute seq_std from")
    std = math.sqrt(total / count)
    if not std > 0:
        raise ValueError(f"{store.root}: every train delta is zero; cannot normalize seq")
    return std


def _subset(rows: np.ndarray, keep: int, seed: int, salt: int) -> np.ndarray:
    """A reproducible random ``keep`` of ``rows``, kept in row order (good for mmap locality)."""
    if keep >= len(rows):
        return rows
    rng = np.random.default_rng([seed, salt])
    return np.sort(rows[rng.choice(len(rows), size=keep, replace=False)])


FOLD_KEYS = ("k", "index", "seed", "val_share")


def check_fold(fold) -> dict | None:
    """``data.fold`` checked: ``{k, index, seed=0, val_share=None}`` (one ValueError naming the key)."""
    if fold is None:
        return None
    if not isinstance(fold, dict):
        raise ValueError(f"data.fold must be a mapping {{k, index, seed, val_share}} or null, got {fold!r}")
    unknown = sorted(set(fold) - set(FOLD_KEYS))
    if unknown:
        raise ValueError(f"data.fold.{unknown[0]}: unknown key (data.fold takes {', '.join(FOLD_KEYS)})")
    out = {"k": fold.get("k"), "index": fold.get("index"), "seed": fold.get("seed", 0),
           "val_share": fold.get("val_share")}
    for key in ("k", "index", "seed"):
        if not isinstance(out[key], int) or isinstance(out[key], bool):
            raise ValueError(f"data.fold.{key}={out[key]!r}: expected an integer")
    if out["k"] < 2:
        raise ValueError(f"data.fold.k={out['k']}: k-fold cross-validation needs k >= 2")
    if not 0 <= out["index"] < out["k"]:
        raise ValueError(f"data.fold.index={out['index']}: must be in 0..{out['k'] - 1} (data.fold.k={out['k']})")
    share = out["val_share"]
    if share is not None and (isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share < 1):
        raise ValueError(f"data.fold.val_share={share!r}: must be a number in (0, 1) or null (the dataset's own)")
    return out


def _fold(key, v):
    return check_fold(v)


def _path(key, v):
    if v is not None and not isinstance(v, str):
        raise ValueError(f"data.{key} must be a path or null, got {v!r}")
    return v


#: One check per batch setting (the style of :func:`sketchembed.data.inputs.check`): the value
#: normalised, or one ``ValueError`` naming ``data.<key>``.
_BATCH_CHECKS = {
    "batch_size": int_at_least(1),
    "eval_batch_size": optional(int_at_least(1)),
    "sampler": one_of(SAMPLERS),
    "pk_p": int_at_least(1),
    "pk_k": int_at_least(1),
    "batches_per_epoch": optional(int_at_least(1)),
    "max_mean_snapshots": optional(number("> 0", lambda f: f > 0)),
    "num_workers": int_at_least(0),
    "pin_memory": boolean,
    "seed": int_at_least(-(2 ** 63)),
    "train_subset": optional(number("in (0, 1]", lambda f: 0 < f <= 1)),
    "max_train": optional(int_at_least(1)),
    "max_eval": optional(int_at_least(1)),
    "test_dir": _path,
    "fold": _fold,
}


@dataclass(frozen=True)
class BatchSettings:
    """What only shapes batches (sizes, sampler, workers, subsets, the fold, the test drawings): unlike
    :class:`~sketchembed.data.inputs.InputSettings` a model does not depend on them, so they are not
    in its checkpoint's data state. Frozen and checked (:func:`check_data_key`).

    The defaults are ``conf/data/quickdraw.yaml``'s, stated here for code that builds a DataModule
    without Hydra (tests, bench); tests/test_datamodule.py holds the two equal."""

    batch_size: int = 32                    # train batch size for sampler=random (P*K for pk)
    eval_batch_size: int | None = 64        # val/test/loader batch size; None: batch_size
    sampler: str = "random"                 # random | pk (P classes x K drawings per batch)
    pk_p: int = 10
    pk_k: int = 4
    batches_per_epoch: int | None = None    # pk: over all ranks; None ~ one pass over the train rows
    max_mean_snapshots: float | None = None # drop train batches averaging more stroke ends (single-process)
    num_workers: int = 0                    # DataLoader workers (persistent when > 0)
    pin_memory: bool = False
    seed: int = 0                           # sampling, subsets and augmentation (with the epoch)
    train_subset: float | None = None       # keep this share of the train rows
    max_train: int | None = None            # cap on the train rows (a reproducible random subset)
    max_eval: int | None = None             # cap on each of val and test
    test_dir: str | None = None             # test on these drawings instead of the test split
    fold: dict | None = None                # k-fold cross-validation {k, index, seed, val_share}

    def __post_init__(self):
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _BATCH_CHECKS[f.name](f.name, getattr(self, f.name)))
        if self.fold is not None and self.test_dir is not None:
            raise ValueError("data.fold and data.test_dir cannot be combined: a fold's test part is one fold "
                             "of the dataset's own drawings")

    def replace(self, **changes) -> BatchSettings:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


BATCH_FIELDS = tuple(f.name for f in dataclasses.fields(BatchSettings))


def check_data_key(key: str, value):
    """``data.<key>`` checked by its one check (an input setting's or a batch setting's), normalised;
    a key that is neither is one ``ValueError`` naming it. ``root`` is the DataModule's own argument."""
    if key in RECIPE:
        return check(key, value)
    if key in _BATCH_CHECKS:
        return _BATCH_CHECKS[key](key, value)
    raise ValueError(f"data.{key}: SketchDataModule has no setting {key!r} (it takes: root, "
                     f"{short_list([*RECIPE, *BATCH_FIELDS], 40)})")


def _split_keys(keys: dict, inputs: InputSettings, batch: BatchSettings) -> tuple[InputSettings, BatchSettings]:
    """``inputs`` and ``batch`` with the data config's flat ``keys`` applied, each key to its record."""
    for key in set(keys) - set(RECIPE) - set(BATCH_FIELDS):
        check_data_key(key, keys[key])  # names the key
    return (inputs.replace(**{k: v for k, v in keys.items() if k in RECIPE}),
            batch.replace(**{k: v for k, v in keys.items() if k in BATCH_FIELDS}))


def fold_splits(labels: np.ndarray, key_ids: np.ndarray, k: int, index: int, *, seed: int = 0,
                val_share: float) -> np.ndarray:
    """Split codes (0 train, 1 val, 2 test) of every drawing for fold ``index`` of ``k``.

    Within each class, drawings are ranked by the seeded key_id hash of ``prepare`` (ties by key_id)
    and dealt round-robin into the k folds, so each fold holds every class in proportion (class
    counts per fold differ by at most one) and every drawing is in exactly one fold's test part.
    Fold ``index`` is the test part; of the remaining drawings of each class the first
    ``round(val_share * n)`` ranks (at least one when two remain) are val, the rest train."""
    labels = np.asarray(labels, dtype=np.int64)
    key_ids = np.asarray(key_ids, dtype=np.uint64)
    order = np.lexsort((key_ids, key_hash(key_ids, seed), labels))
    sorted_labels = labels[order]
    starts = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank = np.arange(len(order)) - starts                 # rank within its class
    codes = np.full(len(order), SPLIT_CODES["train"], dtype=np.int8)
    test = rank % k == index
    codes[test] = SPLIT_CODES["test"]
    rest = ~test
    # rank among the class's remaining drawings, and how many remain per class
    rest_rank = np.cumsum(rest) - 1
    rest_rank -= np.concatenate([[0], np.cumsum(rest)])[starts]
    n_rest = np.bincount(sorted_labels[rest], minlength=int(labels.max()) + 1 if len(labels) else 0)[sorted_labels]
    n_val = np.where(n_rest >= 2, np.maximum(1, np.round(val_share * n_rest)), 0)
    n_val = np.minimum(n_val, n_rest - 1)  # leave train at least one drawing of the class
    codes[rest & (rest_rank < n_val)] = SPLIT_CODES["val"]
    out = np.empty(len(order), dtype=np.int8)
    out[order] = codes
    return out


def _dataloader_kwargs(num_workers: int, pin_memory: bool) -> dict:
    kw = {"num_workers": int(num_workers), "pin_memory": bool(pin_memory)}
    if num_workers > 0:
        kw["persistent_workers"] = True
    return kw


# ---------------------------------------------------------------------------------------- module
class SketchDataModule(L.LightningDataModule):
    """Hydra-configured DataModule serving ARCHITECTURE.md "Batches".

    Built from two records: ``inputs`` (:class:`~sketchembed.data.inputs.InputSettings`: what a model
    sees, saved in its checkpoints) and ``batch`` (:class:`BatchSettings`: what only shapes batches),
    each defaulting to its defaults. ``keys`` are the ``data`` config's flat keys (``data.batch_size``,
    ``data.image_size``, …; Hydra passes them so), each applied to the record it belongs to; a key of
    neither is one ``ValueError`` naming it (:func:`check_data_key`).

    Args:
        root: prepared dataset directory, or an embedded set's name (``study10``, ``others335``).
        views: views to render on device (``sequence`` needs no rendering; ``seq`` is always served).
        augment: a point augmentation ``(points, rng) -> points`` applied to train only, or None.
        inputs: image (rasterizer), sequence (``seq_norm``, ``seq_origin``), truncation
            (``fraction_rule``, module docstring) and snapshot settings; val/test dataloader ``i``
            serves drawings truncated to ``inputs.eval_fractions[i]``.
        batch: batch sizes, the sampler (``pk``: class-balanced P classes x K drawings per batch),
            workers, the seed, subsets and caps of the splits, ``max_mean_snapshots`` (drop training
            batches whose drawings average more stroke ends; the study's ``combined_model.py`` used 7),
            ``test_dir`` (evaluate on these drawings instead of the test split: a prepared dataset or a
            folder of per-class files, prepared into a temporary directory; class names must be among
            the training classes, labels are mapped by name) and ``fold`` (``{k, index, seed,
            val_share}``: fold ``index`` of ``k`` over all the dataset's drawings replaces its splits,
            :func:`fold_splits`; ``val_share`` null = the dataset's own val / (train + val) share).
    """

    def __init__(self, root: str = "study10", views: Iterable[str] = ("sequence", "image"), augment=None, *,
                 inputs: InputSettings = DEFAULTS, batch: BatchSettings | None = None, **keys):
        super().__init__()
        self.inputs, self.batch = _split_keys(keys, inputs.replace(seq_std=None, classes=None),
                                             BatchSettings() if batch is None else batch)
        self.root = str(root)
        self.views = tuple(views)
        bad = set(self.views) - set(VIEWS)
        if bad:
            raise ValueError(f"unknown views {sorted(bad)}; choose from {VIEWS}")
        # the input settings are saved once, as this module's state (InputSettings), not as hparams too
        self.save_hyperparameters({"root": self.root, "views": list(self.views), **self.batch.to_dict()})
        self.augment = augment
        self._seq_std: float | None = inputs.seq_std
        self._fold_codes: np.ndarray | None = None
        self._rasterizer = None
        self._store = None
        self._test_store = None
        self._test_tmp = None
        self._rows: dict[str, np.ndarray] = {}

    @classmethod
    def from_inputs(cls, inputs: InputSettings, root, **keys) -> SketchDataModule:
        """A DataModule over ``root`` serving a model the inputs it was trained on (``inputs`` as read by
        :func:`~sketchembed.data.inputs.read_inputs`: its settings and its ``seq_std``), whatever the
        dataset (its labels are then that dataset's own). ``keys``: ``views``, ``augment``, ``batch``
        and flat data keys (as the constructor)."""
        return cls(root=str(root), inputs=inputs, **keys)

    @property
    def eval_batch_size(self) -> int:
        return self.batch.eval_batch_size or self.batch.batch_size

    @property
    def num_workers(self) -> int:
        return self.batch.num_workers

    @property
    def test_dir(self) -> str | None:
        return self.batch.test_dir

    @property
    def seq_origin(self) -> tuple[float, float]:
        return self.inputs.seq_origin

    @property
    def eval_fractions(self) -> tuple[float, ...]:
        return self.inputs.eval_fractions

    @property
    def input_settings(self) -> InputSettings:
        """Everything a model trained on this module needs to see the same inputs (saved in checkpoints)."""
        return self.inputs.replace(seq_std=self.seq_std, classes=tuple(self.class_names))

    # -- dataset facts ------------------------------------------------------------------------------
    @property
    def store(self):
        """The prepared dataset (opened on first use, so models can ask for ``num_classes`` early)."""
        if self._store is None:
            self._store = PreparedDataset(resolve_root(self.root))
        return self._store

    @property
    def class_names(self) -> list[str]:
        return list(self.store.classes)

    @property
    def num_classes(self) -> int:
        return len(self.store.classes)

    @property
    def seq_std(self) -> float:
        """Std of the train deltas (from the checkpoint when one was loaded, else computed once);
        1 with ``seq_norm="none"``, so a checkpoint's state says how its deltas were scaled."""
        if self._seq_std is None:
            self._seq_std = 1.0 if self.inputs.seq_norm == "none" else delta_std(self.store, self.split_rows("train"))
        return self._seq_std

    @property
    def rasterizer(self):
        if self._rasterizer is None:
            self._rasterizer = Rasterizer.from_inputs(self.inputs)
        return self._rasterizer

    # -- Lightning hooks ----------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in needed.get(stage, SPLITS):
            self.rows(split)
        self.seq_std  # noqa: B018 - computed here, once, on the train split (unless restored)

    def state_dict(self) -> dict:
        """The input settings (:class:`InputSettings`, with ``seq_std`` and ``classes``): what a
        checkpoint needs to serve its model the same inputs anywhere (:func:`read_inputs` reads it)."""
        return self.input_settings.to_dict()

    def load_state_dict(self, state: dict) -> None:
        """Restore ``seq_std`` (any layout: the settings, or the older ``{seq_std, classes}``); the
        other settings are this run's config."""
        classes = state.get("classes")
        if classes is not None and list(classes) != self.class_names:
            raise ValueError(f"checkpoint was trained on {len(classes)} classes [{short_list(classes)}], but "
                             f"{self.root} has {len(self.class_names)} [{short_list(self.class_names)}]: labels "
                             "would not match")
        self._seq_std = float(state["seq_std"])

    def on_after_batch_transfer(self, batch, dataloader_idx: int = 0):
        return self.render(batch)

    def render(self, batch: dict) -> dict:
        """Add the requested rendered views to a (device) batch; eval code calls this for ``loader``."""
        if "image" not in self.views and "snapshots" not in self.views:
            return batch
        return render_views(batch, self.rasterizer, self.views)

    # -- rows and datasets -----------------------------------------------------------------------------
    def split_rows(self, split: str) -> np.ndarray:
        """Rows of ``split`` in the store before subsets and caps: the prepared dataset's split, or
        under ``fold`` the fold's part of all its drawings."""
        if self.batch.fold is None:
            return self.store.indices(split)
        if self._fold_codes is None:
            share = self.batch.fold["val_share"]
            if share is None:  # the dataset's own share of val among the drawings that are not test
                n_val, n_train = len(self.store.indices("val")), len(self.store.indices("train"))
                share = n_val / max(1, n_val + n_train)
            self._fold_codes = fold_splits(self.store.labels, self.store.key_ids,
                                           self.batch.fold["k"], self.batch.fold["index"],
                                           seed=self.batch.fold["seed"], val_share=share)
        return np.flatnonzero(self._fold_codes == SPLIT_CODES[split]).astype(np.int64)

    def rows(self, split: str) -> np.ndarray:
        """Rows (of :meth:`split_store`) that serve ``split``, after subsets and caps."""
        if split not in self._rows:
            if split == "test" and self.batch.test_dir is not None:
                rows = np.arange(len(self._open_test_dir()), dtype=np.int64)
            else:
                rows = self.split_rows(split)
            salt = SPLITS.index(split)
            if split == "train":
                if self.batch.train_subset is not None:
                    rows = _subset(rows, max(1, round(self.batch.train_subset * len(rows))), self.batch.seed, salt)
                if self.batch.max_train is not None:
                    rows = _subset(rows, int(self.batch.max_train), self.batch.seed, salt + 10)
            elif self.batch.max_eval is not None:
                rows = _subset(rows, int(self.batch.max_eval), self.batch.seed, salt)
            self._rows[split] = rows
        return self._rows[split]

    def split_store(self, split: str):
        return self._open_test_dir() if split == "test" and self.batch.test_dir is not None else self.store

    def dataset(self, split: str, *, augment: bool = False) -> SketchSplit:
        store, rows = self.split_store(split), self.rows(split)
        labels = np.asarray(store.labels)[rows].astype(np.int64)
        if store is not self.store:
            labels = self._map_labels(store)[labels]
        if len(rows) == 0:
            raise ValueError(f"{store.root}: the {split} split is empty")
        return SketchSplit(store, rows, labels, self.augment if augment else None, self.batch.seed)

    def _map_labels(self, store) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.class_names)}
        missing = [c for c in store.classes if c not in index]
        if missing:
            raise DataFormatError(store.root, None, f"classes [{short_list(missing)}] are not among "
                                                    f"the training classes of {self.root}")
        return np.array([index[c] for c in store.classes], dtype=np.int64)

    def _open_test_dir(self):
        """Hook for evaluation on outside drawings (``test_dir``); see the class docstring."""
        if self._test_store is None:
            self._test_store, self._test_tmp = open_test_dir(self.batch.test_dir)
        return self._test_store

    # -- distribution ---------------------------------------------------------------------------------
    def _dist(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 1, 0
        world = int(trainer.world_size)
        if world > 1:
            conn = getattr(trainer, "_accelerator_connector", None)
            if getattr(conn, "use_distributed_sampler", False):
                raise RuntimeError("SketchDataModule shards batches across ranks itself: run the Trainer with "
                                   "use_distributed_sampler=False (trainer config)")
        return world, int(trainer.global_rank)

    # -- dataloaders ----------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        world, rank = self._dist()
        ds = self.dataset("train", augment=True)
        positions = np.arange(len(ds))
        if self.batch.sampler == "pk":
            bs = PKBatchSampler(positions, ds.labels, self.batch.pk_p, self.batch.pk_k,
                                batches_per_epoch=self.batch.batches_per_epoch,
                                seed=self.batch.seed, num_replicas=world, rank=rank)
        else:
            bs = RandomBatchSampler(positions, self.batch.batch_size, shuffle=True, drop_last=True,
                                    seed=self.batch.seed, num_replicas=world, rank=rank)
        if self.batch.max_mean_snapshots is not None:
            if world > 1:
                raise ValueError("data.max_mean_snapshots is single-process only: ranks would drop different "
                                 "batches and run different numbers of steps")
            bs = MaxMeanStrokes(bs, stroke_counts(ds.store, ds.rows), float(self.batch.max_mean_snapshots))
        if ds.augment is not None:
            bs = SeededBatches(bs, self.batch.seed)
        return DataLoader(ds, batch_sampler=bs, collate_fn=self.collate(1.0),
                          **_dataloader_kwargs(self.batch.num_workers, self.batch.pin_memory))

    def collate(self, fraction: float = 1.0) -> SketchCollate:
        """The collate for drawings truncated to ``fraction``, with this module's sequence settings."""
        return SketchCollate.from_inputs(self.inputs.replace(seq_std=self.seq_std), fraction)

    def val_dataloader(self) -> list[DataLoader]:
        world, rank = self._dist()
        return [self.loader("val", f, num_replicas=world, rank=rank) for f in self.eval_fractions]

    def test_dataloader(self) -> list[DataLoader]:
        world, rank = self._dist()
        return [self.loader("test", f, num_replicas=world, rank=rank) for f in self.eval_fractions]

    def predict_dataloader(self) -> DataLoader:
        world, rank = self._dist()
        return self.loader("test", 1.0, num_replicas=world, rank=rank)

    def loader(self, split: str, fraction: float = 1.0, shuffle: bool = False, *, batch_size: int | None = None,
               num_replicas: int = 1, rank: int = 0, num_workers: int | None = None) -> DataLoader:
        """Any split (never augmented) at a fraction, for embedding/eval code. Batches are not rendered:
        call :meth:`render` (or ``render_views``) on them after moving them to the device.

        Unsharded by default; ``num_replicas``/``rank`` give rank ``rank`` its disjoint shard.
        ``shuffle=True`` shuffles reproducibly (seed) and may repeat a few drawings to even the ranks.
        """
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        ds = self.dataset(split)
        bsz = int(batch_size or self.eval_batch_size)
        collate = self.collate(fraction)
        workers = self.batch.num_workers if num_workers is None else int(num_workers)
        kw = _dataloader_kwargs(workers, self.batch.pin_memory)
        if shuffle:
            bs = RandomBatchSampler(np.arange(len(ds)), bsz, shuffle=True, drop_last=False, seed=self.batch.seed,
                                    num_replicas=num_replicas, rank=rank)
            return DataLoader(ds, batch_sampler=bs, collate_fn=collate, **kw)
        # A plain sampler (not a batch sampler): Lightning's predict loop rebuilds the batch sampler
        # around ``loader.sampler`` and would otherwise drop our shard.
        return DataLoader(ds, sampler=ShardSampler(len(ds), num_replicas, rank), batch_size=bsz,
                          drop_last=False, collate_fn=collate, **kw)

    def teardown(self, stage: str | None = None) -> None:
        if self._test_tmp is not None and stage in (None, "test"):
            self._test_store = None
            self._test_tmp.cleanup()
            self._test_tmp = None
            self._rows.pop("test", None)
