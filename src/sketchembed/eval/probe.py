"""The study's "linear classifier on frozen embeddings": embedding → 64 (ReLU) → classes.

It measures how linearly usable a space is, so the embeddings stay frozen and the probe is small and
seeded. The study trains it for 300 steps with Adam 1e-3 (``steps=300``, eval.py's default); the
training callback counts in ``epochs`` instead. No early stopping on the evaluation split (it would
leak it). Inputs are standardised with the train statistics so one learning rate fits every model's
embedding scale; batches are standardised as they are drawn, so a 1.4 M-row (even float16 or
memory-mapped) train set is never copied whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class ProbeResult:
    accuracy: dict[str, float]      # split name -> accuracy in [0, 1]
    train_accuracy: float
    model: nn.Module
    mean: np.ndarray
    std: np.ndarray

    def predict(self, emb: np.ndarray, block: int = 1 << 16) -> np.ndarray:
        out = np.empty(len(emb), np.int64)
        with torch.no_grad():
            for a in range(0, len(emb), block):
                x = (np.asarray(emb[a:a + block], np.float32) - self.mean) / self.std
                out[a:a + len(x)] = self.model(torch.from_numpy(x.astype(np.float32))).argmax(1).numpy()
        return out


def make_probe(dim: int, n_classes: int, hidden: int = 64) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))


def _moments(x: np.ndarray, block: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std in float64, one block at a time."""
    s1 = np.zeros(x.shape[1], np.float64)
    s2 = np.zeros(x.shape[1], np.float64)
    for a in range(0, len(x), block):
        b = np.asarray(x[a:a + block], np.float64)
        if not np.all(np.isfinite(b)):
            raise ValueError("probe: train embeddings contain NaN/inf")
        s1 += b.sum(0)
        s2 += np.square(b).sum(0)
    mean = s1 / len(x)
    std = np.sqrt(np.maximum(s2 / len(x) - mean ** 2, 0.0))
    return mean.astype(np.float32), np.where(std > 1e-8, std, 1.0).astype(np.float32)


def linear_probe(train_emb, train_labels, eval_sets: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
                 *, n_classes: int | None = None, hidden: int = 64, epochs: int = 30, steps: int | None = None,
                 lr: float = 1e-3, batch_size: int = 256, weight_decay: float = 0.0, seed: int = 0) -> ProbeResult:
    """Train the probe on ``train_emb`` and report accuracy on each ``eval_sets[name] = (emb, labels)``.

    ``steps`` (when given) replaces ``epochs``: that many Adam steps on random batches. Runs on CPU
    with its own generator, so it neither depends on nor disturbs the global RNG.
    """
    x = np.asarray(train_emb)
    y = np.asarray(train_labels).astype(np.int64)
    if x.ndim != 2 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"probe needs (n, d) train embeddings with n labels, got {x.shape} and {y.shape}")
    for name, value in (("hidden", hidden), ("batch_size", batch_size), ("steps", 1 if steps is None else steps)):
        if int(value) < 1:
            raise ValueError(f"probe.{name} must be >= 1, got {value}")
    if not lr > 0:
        raise ValueError(f"probe.lr must be > 0, got {lr}")
    n_classes = int(n_classes if n_classes is not None else y.max() + 1)
    mean, std = _moments(x)

    def norm(a):
        return torch.from_numpy(((np.asarray(a, np.float32) - mean) / std).astype(np.float32))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 64-unit MLP gains nothing from threads; on a busy CPU they cost 5x
    try:
        with torch.inference_mode(False), torch.enable_grad():  # callable from Lightning's eval hooks
            return _train(x, y, eval_sets, norm, mean, std, n_classes, int(hidden), epochs, steps, lr,
                          int(batch_size), weight_decay, seed)
    finally:
        torch.set_num_threads(threads)


def _batches(n: int, batch_size: int, epochs: int, steps: int | None, gen: torch.Generator):
    """Row indices of each training batch: ``steps`` random batches, or ``epochs`` shuffled passes."""
    if steps is not None:
        for _ in range(int(steps)):
            yield torch.randint(n, (min(batch_size, n),), generator=gen).sort().values.numpy()
        return
    for _ in range(int(epochs)):
        perm = torch.randperm(n, generator=gen).numpy()
        for start in range(0, n, batch_size):
            yield np.sort(perm[start:start + batch_size])


def _train(x, y, eval_sets, norm, mean, std, n_classes, hidden, epochs, steps, lr, batch_size, weight_decay, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make_probe(x.shape[1], n_classes, hidden)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for b in _batches(len(x), batch_size, epochs, steps, gen):
        opt.zero_grad(set_to_none=True)
        loss_fn(model(norm(x[b])), torch.from_numpy(y[b])).backward()
        opt.step()
    model.eval()
    result = ProbeResult(accuracy={}, train_accuracy=float("nan"), model=model, mean=mean, std=std)

    def acc(a, lab):
        lab = np.asarray(lab).astype(np.int64)
        if len(lab) == 0:
            raise ValueError("probe: empty evaluation split")
        return float((result.predict(a) == lab).mean())

    result.accuracy = {name: acc(e, lab) for name, (e, lab) in (eval_sets or {}).items()}
    result.train_accuracy = acc(x, y)
    return result
