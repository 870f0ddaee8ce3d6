"""The study's "linear classifier on frozen embeddings": embedding → 64 → classes (ReLU).

It measures how linearly usable a space is, so the embeddings stay frozen and the probe is small,
seeded and trained for a fixed number of epochs (no early stopping on the evaluation split, which
would leak it). Inputs are standardised with the train statistics so one learning rate fits every
model's embedding scale.
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

    def predict(self, emb: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(((np.asarray(emb, np.float32) - self.mean) / self.std).astype(np.float32))
        with torch.no_grad():
            return self.model(x).argmax(1).numpy()


def make_probe(dim: int, n_classes: int, hidden: int = 64) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))


def linear_probe(train_emb, train_labels, eval_sets: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
                 *, n_classes: int | None = None, hidden: int = 64, epochs: int = 30, lr: float = 1e-3,
                 batch_size: int = 256, weight_decay: float = 0.0, seed: int = 0) -> ProbeResult:
    """Train the probe on ``train_emb`` and report accuracy on each ``eval_sets[name] = (emb, labels)``.

    Runs on CPU with its own generator, so it neither depends on nor disturbs the global RNG.
    """
    x = np.asarray(train_emb, dtype=np.float32)
    y = np.asarray(train_labels).astype(np.int64)
    if x.ndim != 2 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"probe needs (n, d) train embeddings with n labels, got {x.shape} and {y.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("probe: train embeddings contain NaN/inf")
    n_classes = int(n_classes if n_classes is not None else y.max() + 1)
    mean = x.mean(0)
    std = x.std(0)
    std = np.where(std > 1e-8, std, 1.0).astype(np.float32)

    def norm(a):
        return torch.from_numpy(((np.asarray(a, np.float32) - mean) / std).astype(np.float32))

    with torch.inference_mode(False), torch.enable_grad():  # callable from Lightning's eval hooks
        return _train(x, y, eval_sets, norm, mean, std, n_classes, hidden, epochs, lr, batch_size,
                      weight_decay, seed)


def _train(x, y, eval_sets, norm, mean, std, n_classes, hidden, epochs, lr, batch_size, weight_decay, seed):
    xt, yt = norm(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make_probe(x.shape[1], n_classes, hidden)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), batch_size):
            b = perm[start:start + batch_size]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(xt[b]), yt[b]).backward()
            opt.step()
    model.eval()

    def acc(a, lab):
        lab = np.asarray(lab).astype(np.int64)
        if len(lab) == 0:
            raise ValueError("probe: empty evaluation split")
        with torch.no_grad():
            pred = model(norm(a)).argmax(1).numpy()
        return float((pred == lab).mean())

    accuracy = {name: acc(e, lab) for name, (e, lab) in (eval_sets or {}).items()}
    return ProbeResult(accuracy=accuracy, train_accuracy=acc(x, y), model=model, mean=mean, std=std)
