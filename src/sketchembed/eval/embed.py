"""Run a model over a dataloader and collect embeddings (and logits) as numpy.

Outside a Trainer no ``on_after_batch_transfer`` runs, so the raster views are rendered here with
the same ``render_views`` the DataModule uses — eval sees exactly the images training saw.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from sketchembed.data.datamodule import SketchCollate
from sketchembed.data.inputs import InputSettings
from sketchembed.data.raster import Rasterizer, render_views


@dataclass
class Embedded:
    embeddings: np.ndarray          # (n, D) float32
    logits: np.ndarray | None       # (n, C) float32, None for models without a classifier
    labels: np.ndarray              # (n,) int64
    indices: np.ndarray             # (n,) int64 rows of the prepared dataset
    key_ids: np.ndarray             # (n,) uint64
    pred: np.ndarray | None = None  # (n,) int64 argmax of the logits, kept alone when keep_logits=False
    conf: np.ndarray | None = None  # (n,) float32 softmax probability of ``pred`` (its confidence)

    def __len__(self) -> int:
        return len(self.labels)

    def predictions(self) -> np.ndarray:
        if self.pred is not None:
            return self.pred
        if self.logits is None:
            raise ValueError("this model has no classifier (no logits)")
        return self.logits.argmax(1)


def pick_device(name: str = "auto", key: str = "device") -> torch.device:
    """``--device`` / ``device=``: ``auto`` (CUDA when there is one) or a torch device, checked
    (errors name the setting ``key``)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{key}={name!r} is not a torch device (auto, cpu, cuda, cuda:0 …)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{key}={name}: no CUDA device here ({key}=auto picks one when there is)")
    return dev


def to_device(batch: dict, device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def model_views(model) -> tuple[str, ...]:
    views = getattr(model, "views", None) or getattr(model, "VIEWS", None) or ()
    return tuple(sorted(views))


def has_classifier(model) -> bool:
    """The model's declared trait (``SketchModule.HAS_CLASSIFIER``); a stand-in model that declares
    none is a classifier when it has ``logits``."""
    return bool(getattr(model, "HAS_CLASSIFIER", callable(getattr(model, "logits", None))))


def embed_batch(model, batch: dict, rasterizer=None, with_logits: bool = True):
    """``(embeddings, logits or None)`` tensors for one batch already on the model's device.

    Uses the model's one-pass ``_eval_outputs`` when it has one (classifiers share the encoder).
    """
    views = model_views(model)
    need = [v for v in views if v in ("image", "snapshots") and v not in batch]
    if need:
        if rasterizer is None:
            raise ValueError(f"the model needs the {need} view(s): pass a rasterizer (datamodule.rasterizer)")
        render_views(batch, rasterizer, need)
    if with_logits and hasattr(model, "_eval_outputs"):
        emb, logits = model._eval_outputs(batch)
    else:
        emb = model.embed(batch)
        logits = model.logits(batch) if with_logits and has_classifier(model) else None
    return emb, logits


class _Grow:
    """A preallocated array filled batch by batch (grows by doubling only if the loader yields more
    rows than announced); ``view()`` is the filled part, no copy."""

    def __init__(self, capacity: int, tail: tuple = (), dtype=np.float32):
        self.a = np.empty((max(1, capacity),) + tail, dtype=dtype)
        self.n = 0

    def put(self, x: np.ndarray) -> None:
        if self.n + len(x) > len(self.a):
            grown = np.empty((max(2 * len(self.a), self.n + len(x)),) + self.a.shape[1:], self.a.dtype)
            grown[:self.n] = self.a[:self.n]
            self.a = grown
        self.a[self.n:self.n + len(x)] = x
        self.n += len(x)

    def view(self) -> np.ndarray:
        return self.a[:self.n]


@torch.no_grad()
def embed_loader(model, loader: Iterable[dict], *, rasterizer=None, device=None, max_items: int | None = None,
                 with_logits: bool = True, progress: Callable[[int], None] | None = None,
                 dtype=np.float32, keep_logits: bool = True) -> Embedded:
    """Embed every batch of ``loader`` (eval mode, no grad; the model's mode is restored after).

    Streams: each batch is rendered, embedded and written into arrays preallocated for the loader's
    dataset size, so memory is the outputs (``dtype``: float32, or float16 to halve a large index)
    plus one batch, whatever the split size. ``keep_logits=False`` keeps only the argmax of the
    logits (``Embedded.pred``, with its softmax probability ``Embedded.conf``; ``(n, C)`` logits of
    1.4 M drawings would not fit). ``max_items``
    stops after that many drawings; ``progress(n)`` is called with each batch size.
    """
    if device is None:
        try:
            device = next(model.parameters()).device
        except StopIteration:
            device = torch.device("cpu")
    try:
        cap = len(loader.dataset)
    except (AttributeError, TypeError):
        cap = 1024
    if max_items is not None:
        cap = min(cap, int(max_items))
    was_training = model.training
    model.eval()
    embs = logs = None
    pred, conf = _Grow(cap, (), np.int64), _Grow(cap, (), np.float32)
    labels, idx, keys = _Grow(cap, (), np.int64), _Grow(cap, (), np.int64), _Grow(cap, (), np.int64)
    n = 0
    try:
        for batch in loader:
            batch = to_device(batch, device)
            emb, logits = embed_batch(model, batch, rasterizer, with_logits)
            b = emb.shape[0]
            take = b if max_items is None else min(b, max_items - n)
            e = emb[:take].float().cpu().numpy()
            if not np.all(np.isfinite(e)):
                raise ValueError("the model produced NaN/inf embeddings")
            if embs is None:
                embs = _Grow(cap, e.shape[1:], dtype)
            embs.put(e)
            if logits is not None:
                top = logits[:take].float().softmax(1).max(1)
                pred.put(top.indices.cpu().numpy())
                conf.put(top.values.cpu().numpy())
                if keep_logits:
                    lg = logits[:take].float().cpu().numpy()
                    if logs is None:
                        logs = _Grow(cap, lg.shape[1:], np.float32)
                    logs.put(lg)
            labels.put(batch["label"][:take].cpu().numpy())
            idx.put(batch["index"][:take].cpu().numpy())
            keys.put(batch["key_id"][:take].cpu().numpy())
            n += take
            if progress is not None:
                progress(take)
            if max_items is not None and n >= max_items:
                break
    finally:
        model.train(was_training)
    if embs is None:
        raise ValueError("embed_loader: the loader yielded no batches (empty split?)")
    return Embedded(embeddings=embs.view(), logits=logs.view() if logs is not None else None,
                    labels=labels.view(), indices=idx.view(), key_ids=keys.view().view(np.uint64),
                    pred=pred.view() if pred.n else None, conf=conf.view() if conf.n else None)


def subset_loader(dm, split: str, positions, fraction: float = 1.0, batch_size: int | None = None):
    """A loader over some positions of ``dm.dataset(split)`` (the order of ``dm.loader``), at a fraction."""
    ds = Subset(dm.dataset(split), np.asarray(positions, dtype=np.int64).tolist())
    return DataLoader(ds, batch_size=int(batch_size or dm.eval_batch_size), shuffle=False,
                      collate_fn=dm.collate(fraction), num_workers=dm.num_workers)


@torch.no_grad()
def embed_points(model, drawings, inputs: InputSettings, *, rasterizer=None, fraction: float = 1.0, device=None):
    """Embed raw ``(n, 3)`` point arrays (a user's sketch) exactly as the DataModule would serve them:
    the collate of the model's ``inputs`` (truncation to ``fraction``, pen_up on the last kept point,
    normalised deltas) and its rasterizer (``rasterizer``: one built once by the caller, else
    ``Rasterizer.from_inputs(inputs)``). Returns ``(emb, logits or None, points, lengths)`` as numpy."""
    rasterizer = rasterizer if rasterizer is not None else Rasterizer.from_inputs(inputs)
    items = [(-1, 0, 0, np.asarray(p, dtype=np.float32)) for p in drawings]
    batch = SketchCollate.from_inputs(inputs, fraction)(items)
    if device is None:
        device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        emb, logits = embed_batch(model, to_device(batch, device), rasterizer)
    finally:
        model.train(was_training)
    return (emb.float().cpu().numpy(), None if logits is None else logits.float().cpu().numpy(),
            batch["points"].numpy(), batch["lengths"].numpy())
