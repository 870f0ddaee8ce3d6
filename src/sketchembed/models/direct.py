"""The "direct training" baseline: the same image encoder + a linear classifier, cross-entropy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from sketchembed.models.base import SketchModule
from sketchembed.nets.backbone import DEFAULT_BACKBONE, ImageEncoder
from sketchembed.registry import MODELS


@MODELS.register("direct")
class DirectImageModel(SketchModule):
    VIEWS = frozenset({"image"})
    ENCODER_TRANSFERABLE = True

    def __init__(self, num_classes: int, backbone: Any = DEFAULT_BACKBONE, embedding_dim: int = 256,
                 image_size: int = 64, pretrained: bool = False, normalize: bool = False,
                 drop_rate: float = 0.0, channels: Sequence[str] = ("ink",), **common: Any):
        super().__init__(num_classes=num_classes, **common)
        self.encoder = ImageEncoder(backbone, embedding_dim=embedding_dim, pretrained=pretrained,
                                    image_size=image_size, normalize=normalize, drop_rate=drop_rate,
                                    in_chans=len(channels))
        self._record_backbone(self.encoder)
        self.classifier = nn.Linear(int(embedding_dim), int(num_classes))

    def embed(self, batch: dict) -> torch.Tensor:
        return self.encoder(batch["image"])

    def _eval_outputs(self, batch: dict):
        emb = self.embed(batch)
        return emb, self.classifier(emb)

    def training_loss(self, batch: dict):
        _, logits = self._eval_outputs(batch)
        labels = batch["label"]
        loss = self.loss(logits, labels)
        acc = (logits.detach().argmax(-1) == labels).float().mean()
        return loss, {"acc": acc}
