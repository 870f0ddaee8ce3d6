"""The combined model: at every served stroke end, LSTM state ⊕ CNN embedding of that stroke end's
snapshot → MLP classifier.

The CNN is trained end-to-end (``cnn_ckpt=None``) or transferred from a triplet checkpoint (possibly
trained on other classes) and then frozen or fine-tuned with its own learning rate — the study's best
combined result (87.3 % at 100 %) is the fine-tuned transfer.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sketchembed.data.inputs import InputSettings
from sketchembed.messages import ConfigError
from sketchembed.metric.losses import CrossEntropy
from sketchembed.models.base import SketchModule
from sketchembed.models.checkpoint import read_checkpoint
from sketchembed.nets.backbone import DEFAULT_BACKBONE, ImageEncoder
from sketchembed.nets.sequence import SequenceEncoder, last_states
from sketchembed.registry import CLASSIFICATION, MODELS, TRIPLET

log = logging.getLogger(__name__)

# Image models whose ``encoder`` can be transferred (read from the registry when used).
TRANSFERABLE = MODELS.where("ENCODER_TRANSFERABLE")
# How a drawing becomes the CNN's image: a transferred CNN must be fed images made the same way.
RENDERING = ("image_size", "line_width", "padding", "canvas", "background", "standardize", "channels")


def load_encoder_state(path: str | Path, backbone: str, embedding_dim: int) -> tuple[dict, dict, InputSettings | None]:
    """The ``encoder.*`` weights, the model's arguments (its record) and input settings (None when the
    checkpoint records none) of an image-model checkpoint, read as data, after checking they fit."""
    label = f"model.cnn_ckpt={str(path)!r}"
    if not Path(path).is_file():
        raise FileNotFoundError(f"{label}: no such checkpoint file")
    ck = read_checkpoint(path, label=label)
    hp, kind = dict(ck.record.args), ck.record.kind
    if kind not in TRANSFERABLE:
        raise ValueError(f"{label} is a model_kind={kind!r} checkpoint; "
                         f"the CNN can only be transferred from {TRANSFERABLE} models")
    theirs = (hp.get("backbone"), hp.get("embedding_dim"))
    if theirs != (backbone, int(embedding_dim)):
        raise ValueError(f"{label} holds backbone.name={theirs[0]!r} with "
                         f"embedding_dim={theirs[1]}, but this model has backbone.name={backbone!r} and "
                         f"model.embedding_dim={embedding_dim}: set them to match the checkpoint")
    state = {k[len("encoder."):]: v for k, v in ck.raw["state_dict"].items() if k.startswith("encoder.")}
    if not state:
        raise ValueError(f"{label} has no encoder.* weights")
    return state, hp, ck.record.inputs


@MODELS.register("combined")
class CombinedModel(SketchModule):
    """Args beyond the shared ones: ``transfer`` says the CNN must come from ``cnn_ckpt`` (the
    transfer experiments set it, so a run cannot silently train its CNN from scratch);
    ``cnn_ckpt_source`` is where a checkpoint's transferred CNN came from (written on save)."""

    VIEWS = frozenset({"sequence", "snapshots"})
    # With a triplet loss (loss=hinge / softmax_triplet) the classifier still learns with
    # cross-entropy (``classifier_loss``) and the representation at each drawing's last stroke end is
    # also shaped by that loss (``metric_loss``) on mined in-batch triplets:
    # loss = classifier_loss + triplet_weight * metric_loss. With
    # ``metric_normalize`` the metric loss, and KNN (``embed``), see that representation L2-normalised,
    # so its squared distances lie in [0, 4] whatever the backbone's scale and a margin of 1 means
    # what it means for model=triplet (normalize: true); unnormalised, the hinge of hard triplets
    # grows with the embeddings' scale squared, and inception_v4's large embeddings swamped the
    # cross-entropy (README, "The headline command on a CPU").
    LOSS_KINDS = (CLASSIFICATION, TRIPLET)

    def __init__(self, num_classes: int, backbone: Any = DEFAULT_BACKBONE, embedding_dim: int = 256,
                 hidden: int = 256, layers: int = 2, dropout: float = 0.0, mlp_hidden: int = 256,
                 image_size: int = 64, pretrained: bool = False, normalize: bool = False,
                 drop_rate: float = 0.0, cnn_ckpt: str | None = None, freeze_cnn: bool = False,
                 cnn_lr: float | None = None, input_dim: int = 3, transfer: bool = False,
                 cnn_ckpt_source: str | None = None, triplet_weight: float = 1.0,
                 channels: Sequence[str] = ("ink",), metric_normalize: bool = True, **common: Any):
        self.check_args({"transfer": transfer, "cnn_ckpt": cnn_ckpt, "cnn_ckpt_source": cnn_ckpt_source})
        super().__init__(num_classes=num_classes, **common)
        self.seq_encoder = SequenceEncoder(input_dim=input_dim, hidden=hidden, layers=layers, dropout=dropout)
        self.cnn = ImageEncoder(backbone, embedding_dim=embedding_dim, pretrained=pretrained,
                                image_size=image_size, normalize=normalize, drop_rate=drop_rate,
                                in_chans=len(channels))
        self._record_backbone(self.cnn)
        # the input settings the transferred CNN was trained with (check_transfer_inputs)
        self.transfer_inputs: InputSettings | None = None
        if cnn_ckpt is not None:
            state, hp, self.transfer_inputs = load_encoder_state(cnn_ckpt, self.cnn.backbone_name, embedding_dim)
            self.cnn.load_state_dict(state)
            log.info("model.cnn_ckpt: loaded %d CNN weight tensors from %s", len(state), cnn_ckpt)
            # The transferred embedding was learned with (or without) L2 normalisation: keep it.
            self.cnn.normalize = bool(hp.get("normalize", normalize))
            self.hparams["normalize"] = self.cnn.normalize
            self.hparams["cnn_ckpt_source"] = str(cnn_ckpt)
            if self.transfer_inputs is None:
                if int(hp.get("image_size", image_size)) != int(image_size):
                    raise ConfigError(f"model.cnn_ckpt={str(cnn_ckpt)!r} was trained at data.image_size="
                                      f"{hp.get('image_size')}, this run uses {image_size}: set data.image_size="
                                      f"{hp.get('image_size')}")
                log.warning("model.cnn_ckpt=%s records no input settings (not written by train.py): its "
                            "rendering (line width, background, standardisation …) cannot be checked", cnn_ckpt)
        self.triplet_weight = float(triplet_weight)
        # The configured loss (recorded by its name) becomes one of two named parts: the classifier
        # learns with cross-entropy (the configured one, or a default one beside a metric loss) and,
        # with a triplet-kind loss, the representation with that metric loss. Rebuilt from a record,
        # nothing is built (both None), the space is still the one it learned.
        configured, self.loss = self.loss, None
        with_metric = self.loss_kind == TRIPLET
        self.metric_loss = configured if with_metric else None
        self.classifier_loss = CrossEntropy() if with_metric and configured is not None else configured
        # only a metric loss defines a space of its own; a cross-entropy model's embedding stays as it was
        self.metric_normalize = bool(metric_normalize) and with_metric
        self.freeze_cnn = bool(freeze_cnn)
        if self.freeze_cnn:
            self.cnn.requires_grad_(False)
            self.cnn.eval()
        d = int(hidden) + int(embedding_dim)
        if mlp_hidden and mlp_hidden > 0:
            self.head = nn.Sequential(nn.Linear(d, int(mlp_hidden)), nn.ReLU(), nn.Dropout(float(dropout)),
                                      nn.Linear(int(mlp_hidden), int(num_classes)))
        else:
            self.head = nn.Linear(d, int(num_classes))

    @classmethod
    def check_args(cls, args: Mapping[str, Any]) -> None:
        """A transfer run (``model.transfer: true``, set by model=combined_transfer) needs the CNN's
        checkpoint, so it cannot silently train its CNN from scratch. (``cnn_ckpt: ???`` merged over
        ``null`` stays null: OmegaConf keeps a value when merging MISSING onto it.)"""
        if args.get("transfer") and args.get("cnn_ckpt") is None and args.get("cnn_ckpt_source") is None:
            raise ConfigError("model.cnn_ckpt is required for a transfer run (model.transfer=true, set by "
                              "model=combined_transfer): model.cnn_ckpt=PATH of a "
                              f"{'/'.join(TRANSFERABLE)} checkpoint")
        super().check_args(args)

    def check_transfer_inputs(self, inputs: InputSettings) -> None:
        """Refuse data settings (``inputs``, the run's) that render drawings otherwise than the ones the
        transferred CNN was trained on: white ink on black fed to a CNN that learned black on white,
        or unstandardised pixels to one that learned standardised ones, trains and tests without an
        error, on features that mean nothing. One line naming every differing ``data.*`` key."""
        theirs = self.transfer_inputs
        if theirs is None:
            return
        differ = [k for k in RENDERING if getattr(theirs, k) != getattr(inputs, k)]
        if differ:
            what = ", ".join(f"data.{k}={getattr(theirs, k)!r} (this run: {getattr(inputs, k)!r})" for k in differ)
            raise ConfigError(f"model.cnn_ckpt={self.hparams.get('cnn_ckpt_source')!r} was trained on drawings "
                              f"rendered otherwise: {what}; set these data keys to the checkpoint's values")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        # The transferred weights are in the state dict: loading must not need the source file.
        hp = checkpoint.get("hyper_parameters")
        if hp is not None and hp.get("cnn_ckpt") is not None:
            hp["cnn_ckpt_source"] = str(hp["cnn_ckpt"])
            hp["cnn_ckpt"] = None

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_cnn:  # a frozen CNN keeps its BatchNorm statistics too
            self.cnn.eval()
        return self

    def param_groups(self) -> list[dict[str, Any]]:
        rest = [p for n, p in self.named_parameters() if not n.startswith("cnn.") and p.requires_grad]
        groups = [{"name": "sequence+head", "params": rest}]
        cnn = [p for p in self.cnn.parameters() if p.requires_grad]
        if cnn:
            g = {"name": "cnn", "params": cnn}
            if self.hparams.cnn_lr is not None:
                g["lr"] = float(self.hparams.cnn_lr)
            groups.append(g)
        return groups

    # ---- forward paths ---------------------------------------------------------------------
    def _last_images(self, batch: dict) -> torch.Tensor:
        """The snapshot at each drawing's last stroke end (= the whole drawing's image), ``(B,1,H,W)``."""
        if "snapshots" not in batch:
            if "image" in batch:
                return batch["image"]
            raise KeyError("batch has neither 'snapshots' nor 'image': the DataModule must serve the "
                           "snapshots view for model=combined")
        lengths = batch["lengths"]
        sb, sp = batch["snap_batch"], batch["snap_pos"]
        is_last = sp == (lengths - 1)[sb]
        idx = torch.full((lengths.shape[0],), -1, dtype=torch.long, device=sb.device)
        idx[sb[is_last]] = torch.nonzero(is_last, as_tuple=True)[0]
        if bool((idx < 0).any()):
            missing = torch.nonzero(idx < 0, as_tuple=True)[0].tolist()[:5]
            raise ValueError(f"snap_batch/snap_pos: drawings {missing} have no snapshot at their last "
                             "stroke end; the batch contract requires it")
        return batch["snapshots"][idx]

    def _features(self, batch: dict) -> torch.Tensor:
        """LSTM state ⊕ CNN embedding at each drawing's last stroke end: the classifier's input."""
        states = self.seq_encoder(batch["seq"], batch["lengths"])
        return torch.cat([last_states(states, batch["lengths"]), self.cnn(self._last_images(batch))], dim=-1)

    def _metric_space(self, feats: torch.Tensor) -> torch.Tensor:
        """The space the metric loss shapes and KNN searches (normalised with ``metric_normalize``)."""
        return F.normalize(feats, dim=-1) if self.metric_normalize else feats

    def embed(self, batch: dict) -> torch.Tensor:
        return self._metric_space(self._features(batch))

    def _eval_outputs(self, batch: dict):
        feats = self._features(batch)
        return self._metric_space(feats), self.head(feats)

    def training_loss(self, batch: dict):
        states = self.seq_encoder(batch["seq"], batch["lengths"])
        sb, sp = batch["snap_batch"], batch["snap_pos"]
        feats = torch.cat([states[sb, sp], self.cnn(batch["snapshots"])], dim=-1)
        logits = self.head(feats)
        labels = batch["label"]
        loss = self.classifier_loss(logits, labels[sb])
        extra = {"acc": (logits.detach().argmax(-1) == labels[sb]).float().mean()}
        if self.metric_loss is not None:
            is_last = sp == (batch["lengths"] - 1)[sb]
            emb, emb_labels = self._metric_space(feats[is_last]), labels[sb[is_last]]
            metric = self.metric_loss(*self.mine(emb, emb_labels))
            extra["ce"], extra["metric_loss"] = loss.detach(), metric.detach()
            loss = loss + self.triplet_weight * metric
        return loss, extra
