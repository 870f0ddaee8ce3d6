"""The "direct training" baseline: the same image encoder + a linear classifier, cross-entropy."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sketchembed.models.base import SketchModule
from sketchembed.nets.backbone import ImageEncoder


class DirectImageModel(SketchModule):
    MODEL_KIND = "direct"
    VIEWS = frozenset({"image"})

    def __init__(self, num_classes: int, backbone: Any = "resnet10t", embedding_dim: int = 256,
                 loss: Any = None, image_size: int = 64, pretrained: bool = False,
                 normalize: bool = False, drop_rate: float = 0.0, lr: float = 1e-3,
                 weight_decay: float = 1e-4, scheduler: str = "none", warmup_steps: int = 0,
                 min_lr_ratio: float = 0.0, class_names: list[str] | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["loss"])
        self._setup_common(loss=loss, num_classes=num_classes, lr=lr, weight_decay=weight_decay,
                           scheduler=scheduler, warmup_steps=warmup_steps, min_lr_ratio=min_lr_ratio)
        self.encoder = ImageEncoder(backbone, embedding_dim=embedding_dim, pretrained=pretrained,
                                    image_size=image_size, normalize=normalize, drop_rate=drop_rate)
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
