"""docs/ARCHITECTURE.md "How to extend", done from outside the package: one module registers a new
loss, miner and model, one config file each selects them, and `train.py` trains them — no line of
sketchembed changes; a new backbone is one config file. Also: what makes a run a transfer run is a
config key, never a config's name. (A new file format: tests/test_formats.py.)"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch

from helpers import TINY, compose_cfg, read_csv_metrics, run_inproc
from sketchembed.models import check_compatible
from sketchembed.nets.backbone import ImageEncoder
from sketchembed.registry import LOSSES, MINERS, MODELS, loss_names
from sketchembed.train.run import ConfigError, validate

MODULE = '''
"""A tiny loss, miner and model, registered where they are defined."""
import torch
from torch import nn

from sketchembed.metric.miners import TripletMiner
from sketchembed.models.base import SketchModule
from sketchembed.registry import LOSSES, MINERS, MODELS, TRIPLET


@LOSSES.register("ext_margin")
class ExtMarginLoss(nn.Module):
    """PML's call: (embeddings, labels, indices_tuple); ``kind`` says which models it fits."""

    kind = TRIPLET

    def __init__(self, margin: float = 1.0):
        super().__init__()
        self.margin = margin

    def forward(self, embeddings, labels, indices_tuple=None):
        a, p, n = indices_tuple
        d_pos = (embeddings[a] - embeddings[p]).pow(2).sum(1)
        d_neg = (embeddings[a] - embeddings[n]).pow(2).sum(1)
        return torch.relu(d_pos - d_neg + self.margin).mean() + 0.0 * embeddings.sum()


@MINERS.register("ext_first")
class ExtFirstNegativeMiner(TripletMiner):
    """Every positive pair with the anchor's nearest negative (ours: gathering and stats come free)."""

    def select(self, dist, labels, n_anchors):
        same = labels[:n_anchors, None] == labels[None, :]
        pos = same.clone()
        pos[torch.arange(n_anchors), torch.arange(n_anchors)] = False
        a, p = torch.nonzero(pos, as_tuple=True)
        n = dist.masked_fill(same, float("inf")).argmin(1)
        return a, p, n[a]


@MODELS.register("ext_pixels")
class ExtPixelModel(SketchModule):
    """A linear map of the image's pixels: the smallest image model."""

    VIEWS = frozenset({"image"})
    LOSS_KINDS = (TRIPLET,)
    DEFAULT_LOSS = "ext_margin"
    MONITOR = "val/triplet_acc@100"
    HAS_CLASSIFIER = False
    TRIPLET_METRICS = True

    def __init__(self, image_size: int = 32, embedding_dim: int = 8, **common):
        super().__init__(**common)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(image_size * image_size, embedding_dim))

    def embed(self, batch):
        return self.net(batch["image"])

    def training_loss(self, batch):
        return self.loss(*self.mine(self.embed(batch), batch["label"])), {}
'''

CONFIGS = {
    "loss/ext_margin.yaml": "_target_: ext_parts.ExtMarginLoss\nmargin: 0.5\n",
    "miner/ext_first.yaml": "_target_: ext_parts.ExtFirstNegativeMiner\ngather_across_ranks: false\n",
    "model/ext_pixels.yaml": textwrap.dedent("""\
        # @package _global_
        defaults:
          - override /loss: ext_margin
          - override /miner: ext_first
        model:
          _target_: ext_parts.ExtPixelModel
          image_size: ${data.image_size}
          embedding_dim: 8
        data:
          sampler: pk
        """),
    # a backbone is a config file naming any timm model (nets/backbone.py builds it, in_chans=1)
    "backbone/ext_tiny.yaml": "name: test_efficientnet\npretrained: false\n",
    "backbone/ext_typo.yaml": "name: test_efficientnett\npretrained: false\n",
    # a transfer experiment whose name says nothing about transfer
    "experiment/renamed_fine_tune.yaml": textwrap.dedent("""\
        # @package _global_
        defaults:
          - override /model: combined_transfer
        """),
}


@pytest.fixture
def ext(tmp_path, monkeypatch):
    """The module on sys.path and its configs in a Hydra search path, as a user's project would."""
    (tmp_path / "ext_parts.py").write_text(MODULE)
    for rel, text in CONFIGS.items():
        (tmp_path / "conf" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "conf" / rel).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield f"hydra.searchpath=[file://{tmp_path / 'conf'}]"
    sys.modules.pop("ext_parts", None)
    for registry, name in ((LOSSES, "ext_margin"), (MINERS, "ext_first"), (MODELS, "ext_pixels")):
        registry.pop(name, None)


def test_a_new_loss_miner_and_model_train_from_config(ext, tmp_path):
    run_dir = tmp_path / "run"
    cfg, _, metrics = run_inproc(["model=ext_pixels", *TINY, "trainer.log_every_n_steps=1", ext], run_dir)
    assert {"ext_margin", "ext_first", "ext_pixels"} <= set(LOSSES) | set(MINERS) | set(MODELS)
    model_cls = MODELS["ext_pixels"]
    assert model_cls.MODEL_KIND == "ext_pixels"
    assert "test/triplet_acc@100" in metrics and Path(metrics["best_checkpoint"]).is_file()
    counts = [float(r["miner/triplets_step"]) for r in read_csv_metrics(run_dir) if r.get("miner/triplets_step")]
    assert len(counts) == 2 and all(c > 0 for c in counts)  # the new miner's statistics, every step
    # the registry now names the new loss where losses are listed
    assert "ext_margin" in loss_names("triplet")
    with pytest.raises(ValueError, match="loss=ext_margin"):
        check_compatible("direct", "classification", loss_name="cross_entropy",
                         model_cls=model_cls)
    loaded = model_cls.load_from_checkpoint(metrics["best_checkpoint"], map_location="cpu")
    # the checkpoint records the new parts by their registered names (read back as data, not built)
    assert loaded.record.miner.name == "ext_first" and loaded.record.loss.name == "ext_margin"
    assert loaded.record.loss.args["margin"] == 0.5 and loaded.loss is None


def test_a_new_backbone_is_one_config_file(ext, tmp_path):
    cfg = compose_cfg(["model=triplet", "backbone=ext_tiny", *TINY[1:], ext], tmp_path)
    assert validate(cfg)["model_cls"] is MODELS["triplet"]
    encoder = ImageEncoder(cfg.model.backbone, embedding_dim=8, image_size=int(cfg.data.image_size))
    assert encoder.backbone_name == "test_efficientnet"
    assert encoder(torch.zeros(2, 1, cfg.data.image_size, cfg.data.image_size)).shape == (2, 8)
    with pytest.raises(ValueError, match="backbone.name='test_efficientnett' is not a timm model"):
        validate(compose_cfg(["model=triplet", "backbone=ext_typo", *TINY[1:], ext], tmp_path))


def test_transfer_is_a_config_key_not_a_name(ext, tmp_path):
    cfg = compose_cfg(["experiment=renamed_fine_tune", ext], tmp_path)
    assert cfg.model.transfer is True
    with pytest.raises(ConfigError, match="model.cnn_ckpt is required"):
        validate(cfg)
    cfg = compose_cfg(["model=combined", "model.transfer=true"], tmp_path)
    with pytest.raises(ConfigError, match="model.cnn_ckpt is required"):
        validate(cfg)


def test_pml_loss_and_miner_train_from_config_without_registration(tmp_path):
    """Any PML loss or miner is a config file away (conf/loss/pml_*.yaml, conf/miner/pml_*.yaml)."""
    run_dir = tmp_path / "run"
    cfg, _, metrics = run_inproc(["model=triplet", *TINY, "model.embedding_dim=16", "loss=pml_triplet_margin",
                                  "miner=pml_semihard", "trainer.log_every_n_steps=1", "test=false"], run_dir)
    assert cfg.loss._target_.startswith("pytorch_metric_learning.losses")
    counts = [r["miner/triplets_step"] for r in read_csv_metrics(run_dir) if r.get("miner/triplets_step")]
    assert len(counts) == 2


@pytest.mark.parametrize("group,registry", [("loss", LOSSES), ("miner", MINERS), ("model", MODELS)])
def test_every_registered_part_has_its_config_file(group, registry):
    """A registered name is the config name: conf/<group>/<name>.yaml builds that very class."""
    conf = Path(__file__).resolve().parents[1] / "conf" / group
    ours = {n: c for n, c in registry.items() if c.__module__.startswith("sketchembed.")}
    assert ours
    for name, cls in ours.items():
        text = (conf / f"{name}.yaml").read_text()
        assert f"_target_: {cls.__module__}.{cls.__qualname__}" in text or \
            f"_target_: sketchembed.models.{cls.__qualname__}" in text, (name, cls)
