"""Triplet network on images (the study's VGG-16 / Inception-v4 / ResNet-v2-50 runs).

No classifier head: its accuracies come from KNN and the linear probe on the embeddings; validation
logs triplet accuracy and the mean positive/negative distances instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from sketchembed.metric import triplet_accuracy
from sketchembed.models.base import SketchModule
from sketchembed.nets.backbone import DEFAULT_BACKBONE, ImageEncoder
from sketchembed.registry import MODELS, TRIPLET


@MODELS.register("triplet")
class TripletImageModel(SketchModule):
    VIEWS = frozenset({"image"})
    LOSS_KINDS = (TRIPLET,)
    DEFAULT_LOSS = "hinge"
    MONITOR = "val/triplet_acc@100"
    ENCODER_TRANSFERABLE = True
    HAS_CLASSIFIER = False  # accuracies come from KNN / the linear probe on ``embed``
    TRIPLET_METRICS = True

    def __init__(self, backbone: Any = DEFAULT_BACKBONE, embedding_dim: int = 256, image_size: int = 64,
                 pretrained: bool = False, normalize: bool = True, drop_rate: float = 0.0,
                 channels: Sequence[str] = ("ink",), **common: Any):
        super().__init__(**common)
        self.encoder = ImageEncoder(backbone, embedding_dim=embedding_dim, pretrained=pretrained,
                                    image_size=image_size, normalize=normalize, drop_rate=drop_rate,
                                    in_chans=len(channels))
        self._record_backbone(self.encoder)

    def embed(self, batch: dict) -> torch.Tensor:
        return self.encoder(batch["image"])

    def training_loss(self, batch: dict):
        emb = self.embed(batch)
        labels = batch["label"]
        loss = self.loss(*self.mine(emb, labels))
        with torch.no_grad():
            acc, d_pos, d_neg = triplet_accuracy(emb.detach(), labels)
        return loss, {"triplet_acc": acc, "d_pos": d_pos, "d_neg": d_neg}
