"""Training callbacks that look at the representation space, not just the loss.

``EmbeddingEvalCallback`` logs KNN accuracy and the linear-probe accuracy on val while training
(the numbers the study judges a space by), ``SampleImagesCallback`` shows once what the model is
actually fed (snapshots/images with labels) — the quickest check that rasterization and labels agree.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging
from PIL import Image

from sketchembed import metric_keys
from sketchembed.eval.embed import embed_loader, to_device
from sketchembed.eval.knn import KNNIndex, knn_accuracy
from sketchembed.eval.plots import image_grid, plot_neighbors, plot_tsne, sketch_grid
from sketchembed.eval.probe import linear_probe
from sketchembed.eval.tsne import tsne_map
from sketchembed.eval.tta import PointTTA, split_predictions

log = logging.getLogger("sketchembed.train")


class EmbeddingEvalCallback(Callback):
    """At validation (and test) end: KNN@K (index = a capped, seeded subset of train) and the probe.

    Rank 0 computes and broadcasts, so every rank logs the same values and they can be monitored
    (checkpointing, sweeps). Val embeddings come from the validation steps' outputs when running in
    one process (no second pass); with several ranks the val split is re-embedded on rank 0.
    """

    def __init__(self, every_n_epochs: int = 1, ks: Sequence[int] = (3, 4), max_train: int = 20000,
                 max_eval: int | None = None, probe_epochs: int = 30, probe: bool = True,
                 batch_size: int | None = None, seed: int = 0):
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.every_n_epochs = int(every_n_epochs)
        self.ks = tuple(int(k) for k in ks)
        self.max_train = int(max_train)
        self.max_eval = max_eval
        self.probe_epochs = int(probe_epochs)
        self.probe = bool(probe)
        self.batch_size = batch_size
        self.seed = int(seed)
        self._collected: list[tuple[np.ndarray, np.ndarray]] = []
        self._warned = False

    # -- collection of the val embeddings computed anyway by validation_step -----------------
    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._collected = []

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._collected = []

    def _collect(self, trainer, outputs, dataloader_idx):
        if trainer.world_size != 1 or not isinstance(outputs, dict) or "embeddings" not in outputs:
            return
        if str(outputs.get("fraction")) != "100":
            return
        self._collected.append((outputs["embeddings"].float().cpu().numpy(), outputs["labels"].cpu().numpy()))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking and self._due(trainer):
            self._collect(trainer, outputs, dataloader_idx)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._collect(trainer, outputs, dataloader_idx)

    # -- evaluation ------------------------------------------------------------------------------
    def _due(self, trainer) -> bool:
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not self._due(trainer):
            return
        self._run(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._run(trainer, pl_module, "test")

    def _run(self, trainer, pl_module, split: str) -> None:
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "loader"):
            if not self._warned:
                log.warning("EmbeddingEvalCallback needs a SketchDataModule (trainer.datamodule); skipped")
                self._warned = True
            return
        values = None
        if trainer.is_global_zero:
            values = self.compute(pl_module, dm, split)
        if trainer.world_size > 1:
            values = trainer.strategy.broadcast(values, src=0)
        self._collected = []
        for name, v in (values or {}).items():
            # identical on every rank (broadcast), so syncing only silences Lightning's DDP warning
            pl_module.log(name, float(v), on_step=False, on_epoch=True, sync_dist=trainer.world_size > 1,
                          prog_bar=name.endswith(metric_keys.knn(self.ks[-1])))

    def compute(self, pl_module, dm, split: str) -> dict[str, float]:
        """``{SPLIT/knn@K, SPLIT/probe_acc, SPLIT/n}`` for the current model (rank-local, no collectives);
        ``SPLIT/n``: the drawings evaluated, the n of the accuracies' confidence intervals."""
        device = pl_module.device
        train = embed_loader(pl_module, dm.loader("train", 1.0, shuffle=True, batch_size=self.batch_size),
                             rasterizer=dm.rasterizer, device=device, max_items=self.max_train, with_logits=False)
        if self._collected:
            q_emb = np.concatenate([e for e, _ in self._collected])
            q_lab = np.concatenate([lab for _, lab in self._collected])
            if self.max_eval is not None:
                q_emb, q_lab = q_emb[: self.max_eval], q_lab[: self.max_eval]
        else:
            q = embed_loader(pl_module, dm.loader(split, 1.0, batch_size=self.batch_size), rasterizer=dm.rasterizer,
                             device=device, max_items=self.max_eval, with_logits=False)
            q_emb, q_lab = q.embeddings, q.labels
        n_classes = getattr(dm, "num_classes", None)
        ks = [k for k in self.ks if k <= len(train)]
        out: dict[str, float] = {metric_keys.key(split, "n"): float(len(q_lab))}
        if ks:
            for k, acc in knn_accuracy(train.embeddings, train.labels, q_emb, q_lab, ks, n_classes).items():
                out[metric_keys.key(split, metric_keys.knn(k))] = acc
        if self.probe:
            res = linear_probe(train.embeddings, train.labels, {split: (q_emb, q_lab)}, n_classes=n_classes,
                               epochs=self.probe_epochs, seed=self.seed)
            out[metric_keys.key(split, "probe_acc")] = res.accuracy[split]
        return out


class PerDrawingPredictions(Callback):
    """At test end (rank 0): every test drawing's prediction by the tested model, written to
    ``DIRPATH/test_predictions.npz`` — ``key_ids``, ``labels``, ``pred@100``/``pred@50`` (the head, per
    eval fraction) and ``knn@K`` (strict vote, index = the train split): eval's ``predictions.npz``
    keys, so runs on the same drawings can be compared pairwise (McNemar). Cross-validation pools
    these files over folds. With ``tta`` (:class:`~sketchembed.eval.tta.PointTTA`) the predictions
    average the TTA views, and their accuracies are logged as ``test_tta/…`` beside the plain ones."""

    FILENAME = "test_predictions.npz"

    def __init__(self, dirpath: str, k: int = 3, max_train: int | None = 20000, tta: PointTTA | None = None):
        super().__init__()
        self.dirpath, self.k, self.max_train, self.tta = Path(dirpath), int(k), max_train, tta

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        dm = trainer.datamodule
        if not trainer.is_global_zero or dm is None or not hasattr(dm, "loader"):
            return
        preds = split_predictions(pl_module, dm, "test", k=self.k, tta=self.tta, max_train=self.max_train)
        self.dirpath.mkdir(parents=True, exist_ok=True)
        np.savez(self.dirpath / self.FILENAME, **preds)
        if self.tta is None:
            return
        pl_module.log(metric_keys.key("test_tta", "n"), float(len(preds["labels"])), rank_zero_only=True)
        for column, pred in preds.items():
            if column.startswith(("pred@", "knn@")):  # pred@TAG -> acc@TAG
                name = column.replace("pred@", "acc@")
                pl_module.log(metric_keys.key("test_tta", name), float((pred == preds["labels"]).mean()),
                              rank_zero_only=True)


class BatchNormEMA(EMAWeightAveraging):
    """Lightning's EMA of the weights, with BatchNorm statistics that belong to the averaged weights.

    Averaging BatchNorm's running statistics like the weights (Lightning's ``use_buffers=True``) pairs
    averaged weights with statistics of other weights: in fold 0 of a CV of the default job at 9c90e5c
    (epoch ~15 of 60, 48 val drawings) the averaged model scored 23 % on validation, the trained
    weights 67 %, and the averaged weights with statistics recomputed 67 % too. So only the weights
    are averaged, and before each validation (and at the end of training) the statistics are
    recomputed with the averaged weights on at most ``bn_batches`` training batches (torch's
    ``update_bn`` recipe). A model without BatchNorm skips it."""

    def __init__(self, decay: float = 0.999, bn_batches: int = 50, **kwargs):
        if kwargs.pop("use_buffers", False):
            raise ValueError("callbacks.weight_averaging.use_buffers: BatchNormEMA averages weights only and "
                             "recomputes BatchNorm statistics (leave use_buffers out)")
        if isinstance(bn_batches, bool) or not isinstance(bn_batches, int) or bn_batches < 1:
            raise ValueError(f"callbacks.weight_averaging.bn_batches={bn_batches!r}: expected an integer >= 1")
        super().__init__(decay=decay, use_buffers=False, **kwargs)
        self.bn_batches = bn_batches

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        super().on_validation_epoch_start(trainer, pl_module)  # the averaged weights are now pl_module's
        if self._average_model is not None and not trainer.sanity_checking:
            self.recompute_batchnorm(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)               # the averaged weights, for good
        self.recompute_batchnorm(trainer, pl_module)

    @torch.no_grad()
    def recompute_batchnorm(self, trainer, pl_module) -> None:
        norms = [m for m in pl_module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        dm = trainer.datamodule
        if not norms or dm is None:
            return
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None                                   # a plain mean over the batches seen
        was_training = pl_module.training
        pl_module.train()
        try:
            for i, batch in enumerate(dm.train_dataloader()):
                if i >= self.bn_batches:
                    break
                pl_module.embed(dm.on_after_batch_transfer(to_device(batch, pl_module.device), 0))
        finally:
            for m, momentum in zip(norms, momenta):
                m.momentum = momentum
            pl_module.train(was_training)


class SampleImagesCallback(Callback):
    """Logs one grid of what the model sees in training (snapshots, else images, else the points)
    with class names, once, to every logger that takes images (wandb, tensorboard); else a no-op."""

    def __init__(self, n: int = 24, ncols: int = 8, key: str = "samples/train"):
        super().__init__()
        self.n, self.ncols, self.key = int(n), int(ncols), key
        self._done = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._done:
            return
        self._done = True
        if not trainer.is_global_zero or not trainer.loggers:
            return
        dm = trainer.datamodule
        classes = list(getattr(dm, "class_names", []) or [])
        try:
            grid = self.make_grid(batch, classes)
        except Exception as e:  # a picture must never stop a training run
            log.warning("SampleImagesCallback: could not draw samples (%s)", e)
            return
        log_image(trainer.loggers, self.key, grid, trainer.global_step)

    def make_grid(self, batch: dict, classes: Sequence[str]) -> np.ndarray:
        labels = batch["label"].cpu().numpy()

        def name(i):
            return classes[int(i)] if 0 <= int(i) < len(classes) else str(int(i))

        if "snapshots" in batch:
            sb = batch["snap_batch"].cpu().numpy()[: self.n]
            n_per = np.bincount(batch["snap_batch"].cpu().numpy(), minlength=len(labels))
            pos = np.concatenate([np.arange(c) for c in n_per])[: self.n] if len(sb) else sb
            titles = [f"{name(labels[b])} {p + 1}/{n_per[b]}" for b, p in zip(sb, pos)]
            return image_grid(batch["snapshots"][: self.n].float().cpu().numpy(), titles, self.ncols)
        if "image" in batch:
            imgs = batch["image"][: self.n].float().cpu().numpy()
            return image_grid(imgs, [name(lab) for lab in labels[: len(imgs)]], self.ncols)
        pts = batch["points"][: self.n].cpu().numpy()
        lengths = batch["lengths"][: self.n].cpu().numpy()
        return sketch_grid([p[:n] for p, n in zip(pts, lengths)], [name(lab) for lab in labels[: len(pts)]],
                           self.ncols)


def log_image(loggers, key: str, image: np.ndarray, step: int) -> list[str]:
    """Send an RGB ``(H, W, 3)`` uint8 image to each logger that can take one; returns their names."""
    used = []
    for lg in loggers:
        cls = type(lg).__name__
        try:
            if cls == "WandbLogger":
                lg.log_image(key=key, images=[image], step=step)
            elif cls == "TensorBoardLogger":
                lg.experiment.add_image(key, image, global_step=step, dataformats="HWC")
            elif hasattr(lg, "log_image"):
                lg.log_image(key=key, images=[image], step=step)
            else:
                continue
        except Exception as e:  # never fail training over a picture
            log.warning("could not log %s to %s (%s)", key, cls, e)
            continue
        used.append(cls)
    return used


class SpaceImagesCallback(Callback):
    """Every ``every_n_val_epochs`` validations, a small picture of the representation space as it
    forms: nearest train neighbours of a few val drawings, and a t-SNE map of val embeddings.

    Written to ``<run dir>/space/`` and sent to every logger that takes images (wandb, tensorboard);
    skipped (nothing computed) when no logger takes images. Sizes are capped so one picture costs
    seconds: ``max_train`` train drawings as the neighbour pool, ``tsne_points`` val drawings.
    """

    def __init__(self, every_n_val_epochs: int = 10, n_refs: int = 4, k: int = 5, max_train: int = 1000,
                 tsne_points: int = 300, seed: int = 0):
        super().__init__()
        if int(every_n_val_epochs) < 1:
            raise ValueError(f"every_n_val_epochs must be >= 1, got {every_n_val_epochs}")
        self.every = int(every_n_val_epochs)
        self.n_refs, self.k = int(n_refs), int(k)
        self.max_train, self.tsne_points, self.seed = int(max_train), int(tsne_points), int(seed)
        self._val_count = 0

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        self._val_count += 1
        if self._val_count % self.every or not trainer.is_global_zero:
            return
        loggers = [lg for lg in trainer.loggers if type(lg).__name__ in ("WandbLogger", "TensorBoardLogger")
                   or hasattr(lg, "log_image")]
        dm = trainer.datamodule
        if not loggers or dm is None or not hasattr(dm, "loader"):
            return
        try:
            paths = self.draw(pl_module, dm, trainer.current_epoch, trainer.default_root_dir)
        except Exception as e:  # a picture must never stop a training run
            log.warning("SpaceImagesCallback: could not draw the space (%s)", e)
            return
        for key, path in paths.items():
            with Image.open(path) as im:
                log_image(loggers, key, np.asarray(im.convert("RGB")), trainer.global_step)

    def draw(self, pl_module, dm, epoch: int, out_dir) -> dict[str, Path]:
        """Write ``space/neighbors_eNNN.png`` and ``space/tsne_eNNN.png``; ``{logger key: path}``."""
        classes = list(dm.class_names)
        device = pl_module.device
        train = embed_loader(pl_module, dm.loader("train", 1.0, shuffle=True), rasterizer=dm.rasterizer,
                             device=device, max_items=self.max_train, with_logits=False)
        val = embed_loader(pl_module, dm.loader("val", 1.0, shuffle=True), rasterizer=dm.rasterizer,
                           device=device, max_items=self.tsne_points, with_logits=False)
        out = Path(out_dir) / "space"
        paths = {}
        rng = np.random.default_rng([self.seed, epoch])
        refs = np.sort(rng.choice(len(val), min(self.n_refs, len(val)), replace=False))
        index = KNNIndex(train.embeddings, train.labels, train.key_ids, classes)
        idx, dist = index.query(val.embeddings[refs], k=min(self.k, len(train)))
        tstore, vstore = dm.split_store("train"), dm.split_store("val")
        paths["space/neighbors"] = plot_neighbors(
            out / f"neighbors_e{epoch:03d}.png", [vstore.points(int(val.indices[r])) for r in refs],
            [int(val.labels[r]) for r in refs], [[tstore.points(int(train.indices[j])) for j in row] for row in idx],
            [[int(train.labels[j]) for j in row] for row in idx], classes, distances=dist)
        xy = tsne_map(val.embeddings, seed=self.seed, max_points=None)
        paths["space/tsne"] = plot_tsne(out / f"tsne_e{epoch:03d}.png", xy, val.labels, classes,
                                        title=f"t-SNE of {len(val)} val embeddings, epoch {epoch + 1}")
        return paths
