"""The temporal model: stacked LSTMs over the point deltas, a linear classifier on the hidden state.

Trained by default on the state at every stroke end (the study's "snapshots" mode), so it learns to
classify unfinished drawings; ``train_on="last"`` / ``"all"`` are the ablations.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sketchembed.models.base import SketchModule
from sketchembed.nets.sequence import SequenceEncoder, last_states, stroke_end_positions, valid_positions
from sketchembed.registry import MODELS

TRAIN_ON = ("stroke_ends", "last", "all")


@MODELS.register("lstm")
class LSTMModel(SketchModule):
    VIEWS = frozenset({"sequence"})

    def __init__(self, num_classes: int, hidden: int = 256, layers: int = 2, dropout: float = 0.0,
                 train_on: str = "stroke_ends", input_dim: int = 3, **common: Any):
        if train_on not in TRAIN_ON:
            raise ValueError(f"model.train_on={train_on!r}: choose one of {TRAIN_ON}")
        super().__init__(num_classes=num_classes, **common)
        self.train_on = train_on
        self.encoder = SequenceEncoder(input_dim=input_dim, hidden=hidden, layers=layers, dropout=dropout)
        self.classifier = nn.Linear(int(hidden), int(num_classes))

    def states(self, batch: dict) -> torch.Tensor:
        """All hidden states ``(B, T, H)``."""
        return self.encoder(batch["seq"], batch["lengths"])

    def embed(self, batch: dict) -> torch.Tensor:
        return last_states(self.states(batch), batch["lengths"])

    def _eval_outputs(self, batch: dict):
        emb = self.embed(batch)
        return emb, self.classifier(emb)

    def training_loss(self, batch: dict):
        states = self.states(batch)
        labels = batch["label"]
        if self.train_on == "stroke_ends":
            b, pos = stroke_end_positions(batch["stroke_ends"])
        elif self.train_on == "all":
            b, pos = valid_positions(batch["lengths"], states.shape[1])
        else:
            b = torch.arange(states.shape[0], device=states.device)
            pos = batch["lengths"].to(states.device) - 1
        logits = self.classifier(states[b, pos])
        loss = self.loss(logits, labels[b])
        last = self.classifier(last_states(states, batch["lengths"])).detach()
        return loss, {"acc": (last.argmax(-1) == labels).float().mean(), "positions": float(len(b))}
