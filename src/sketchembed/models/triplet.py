"""Triplet network on images (the study's VGG-16 / Inception-v4 / ResNet-v2-50 runs).

No classifier head: its accuracies come from KNN and the linear probe on the embeddings; validation
logs triplet accuracy and the mean positive/negative distances instead.
"""

from __future__ import annotations

from typing import Any

import torch

from sketchembed.models.base import SketchModule
from sketchembed.nets.backbone import ImageEncoder


class TripletImageModel(SketchModule):
    MODEL_KIND = "triplet"
    VIEWS = frozenset({"image"})
    LOSS_KIND = "triplet"
    DEFAULT_LOSS = "hinge"
    MONITOR = "val/triplet_acc@100"

    def __init__(self, backbone: Any = "resnet10t", embedding_dim: int = 256, loss: Any = None,
                 image_size: int = 64, pretrained: bool = False, normalize: bool = True,
                 drop_rate: float = 0.0, lr: float = 1e-3, weight_decay: float = 1e-4,
                 scheduler: str = "none", warmup_steps: int = 0, min_lr_ratio: float = 0.0,
                 num_classes: int | None = None, class_names: list[str] | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["loss"])
        self._setup_common(loss=loss, num_classes=num_classes, lr=lr, weight_decay=weight_decay,
                           scheduler=scheduler, warmup_steps=warmup_steps, min_lr_ratio=min_lr_ratio)
        self.encoder = ImageEncoder(backbone, embedding_dim=embedding_dim, pretrained=pretrained,
                                    image_size=image_size, normalize=normalize, drop_rate=drop_rate)
        self._record_backbone(self.encoder)

    def embed(self, batch: dict) -> torch.Tensor:
        return self.encoder(batch["image"])

    def logits(self, batch: dict) -> None:
        """No classifier: accuracies come from KNN / the linear probe on ``embed``."""
        return None

    def training_loss(self, batch: dict):
        from sketchembed.metric import triplet_accuracy
        from sketchembed.metric.miners import find_miner

        emb = self.embed(batch)
        labels = batch["label"]
        miner = find_miner(self._trainer)  # the configured miner callback (random when none)
        loss = self.loss(*miner.mine_batch(emb, labels))
        with torch.no_grad():
            acc, d_pos, d_neg = triplet_accuracy(emb.detach(), labels)
        return loss, {"triplet_acc": acc, "d_pos": d_pos, "d_neg": d_neg}
