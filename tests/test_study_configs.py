"""The study's experiments show the study's code settings (README, "The study's experiments"), and the
data options they need (fraction rule, raw deltas and their origin, dropping snapshot-heavy
batches) do what they say."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

from sketchembed.commands.evaluate import EvalSettings, _datamodule
from sketchembed.data.batch_filter import MaxMeanStrokes, stroke_counts
from sketchembed.data.datamodule import SketchCollate, SketchDataModule
from sketchembed.data.inputs import image_count, keep_count, read_inputs
from sketchembed.data.raster import Rasterizer, render_views
from sketchembed.study import STUDY as STUDY_FIGURES

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
STUDY = sorted(p.stem for p in (CONF / "experiment").glob("study_*.yaml"))
TRIPLET = [n for n in STUDY if n.startswith("study_triplet_")]
DIRECT = [n for n in STUDY if n.startswith("study_direct_")]
COMBINED = [n for n in STUDY if n.startswith("study_combined_")]


def compose(name: str, *extra: str):
    GlobalHydra.instance().clear()
    os.environ.setdefault("PROJECT_ROOT", str(REPO))
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose("train", overrides=[f"experiment={name}", *extra])


def test_every_study_experiment_is_covered():
    assert set(STUDY) == set(TRIPLET) | set(DIRECT) | set(COMBINED) | {"study_lstm"}
    assert len(TRIPLET) == 6 and len(DIRECT) == 3 and len(COMBINED) == 2


@pytest.mark.parametrize("name", STUDY)
def test_study_inputs_and_loop(name):
    cfg = compose(name)
    d, t = cfg.data, cfg.trainer
    # simplified drawings, study splits (prepared with the study rule), 265 px canvas -> 224 px,
    # 3 px lines, black ink on white, per-image standardisation, "50 %" by the study's rule
    assert d.root.endswith("prepared/study10")
    assert (d.image_size, d.canvas, d.padding, d.line_width) == (224, 255.0, 5.0, 5.25)
    assert d.background == "white" and d.standardize is True
    assert d.fraction_rule == "study" and list(d.eval_fractions) == [1.0, 0.5]
    assert d.seq_norm == "none"
    assert "_target_" not in cfg.augment  # the study does not augment
    # Adam (weight decay 0), constant rate, clipped by value at 1, 50,000 steps in float32
    assert cfg.model.optimizer._target_ == "torch.optim.AdamW" and cfg.model.optimizer.weight_decay == 0.0
    assert cfg.model.scheduler is None
    assert (t.gradient_clip_algorithm, t.gradient_clip_val) == ("value", 1.0)
    assert (t.max_steps, t.max_epochs, t.precision, t.accelerator) == (50000, -1, "32-true", "gpu")


@pytest.mark.parametrize("name", TRIPLET)
def test_study_triplet(name):
    cfg = compose(name)
    assert (cfg.data.sampler, cfg.data.pk_p, cfg.data.pk_k) == ("pk", 3, 10)  # 30 in 3 buckets of 10
    assert cfg.model._target_.endswith("TripletImageModel")
    assert (cfg.model.embedding_dim, cfg.model.optimizer.lr) == (256, 1e-4)
    assert cfg.backbone.name == name.split("_", 2)[2].rsplit("_", 1)[0]
    if name.endswith("_semihard"):
        assert cfg.loss._target_.endswith("HingeTripletLoss")
        assert (cfg.loss.margin, cfg.loss.distance, cfg.loss.reduction) == (1.0, "squared_euclidean", "mean")
        assert cfg.miner._target_.endswith("SemiHardMiner") and cfg.miner.fallback == "none"
    else:
        assert cfg.loss._target_.endswith("SoftmaxTripletLoss") and cfg.loss.distance == "euclidean"
        assert cfg.miner._target_.endswith("RandomTripletMiner")


def test_study_default_backbone_is_resnetv2_50():
    assert "study_triplet_resnetv2_50_semihard" in TRIPLET
    for name in COMBINED:
        assert compose(name).backbone.name == "resnetv2_50"


@pytest.mark.parametrize("name", DIRECT)
def test_study_direct(name):
    cfg = compose(name)
    assert cfg.model._target_.endswith("DirectImageModel") and cfg.loss._target_.endswith("CrossEntropy")
    assert (cfg.data.batch_size, cfg.model.optimizer.lr, cfg.model.embedding_dim) == (30, 1e-4, 256)


def test_study_lstm():
    cfg = compose("study_lstm")
    assert cfg.model._target_.endswith("LSTMModel")
    assert (cfg.model.hidden, cfg.model.layers, cfg.model.train_on) == (256, 2, "stroke_ends")
    assert (cfg.data.batch_size, cfg.data.sampler, cfg.model.optimizer.lr) == (30, "random", 1e-3)
    assert (cfg.data.seq_norm, list(cfg.data.seq_origin)) == ("none", [0.0, 0.0])


@pytest.mark.parametrize("name", COMBINED)
def test_study_combined(name):
    cfg = compose(name)
    m = cfg.model
    assert m._target_.endswith("CombinedModel")
    assert (m.hidden, m.layers, m.embedding_dim, m.mlp_hidden, m.optimizer.lr) == (256, 2, 256, 64, 1e-3)
    assert (cfg.data.batch_size, cfg.data.max_snapshots, cfg.data.max_mean_snapshots) == (20, None, 7)
    assert list(cfg.data.seq_origin) == [122.5, 122.5]
    if name.endswith("_transfer"):
        assert OmegaConf.is_missing(m, "cnn_ckpt") and m.freeze_cnn is False and m.cnn_lr > 0
        assert m.transfer is True
    else:
        assert "cnn_ckpt" not in m or m.cnn_ckpt is None


def test_framework_defaults_are_unchanged():
    """The study's settings are options: the main job keeps normalised inputs and 64 px."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        d = hydra_compose("train").data
    assert (d.image_size, d.canvas, d.background, d.standardize) == (64, 256.0, "black", False)
    assert (d.fraction_rule, d.seq_norm, list(d.seq_origin), d.max_mean_snapshots) == ("ceil", "std", [0.0, 0.0], None)


def test_study_data_config_builds_a_datamodule():
    cfg = compose("study_combined_e2e", "data.root=study10", "data.num_workers=0", "data.pin_memory=false")
    dm = instantiate(cfg.data, seed=0)
    r = dm.rasterizer
    assert (r.size, r.canvas, r.padding, r.line_width, r.background, r.standardize) == (
        224, 255.0, 5.0, 5.25, "white", True)
    assert dm.seq_std == 1.0 and dm.seq_origin == (122.5, 122.5) and dm.batch.max_mean_snapshots == 7


# ------------------------------------------------------------------------------ data options
@pytest.mark.parametrize("n", [1, 2, 3, 10, 11, 57])
def test_study_fraction_rule_is_the_first_half_of_the_points(n):
    assert image_count(n, 0.5, "study") == max(1, n // 2)  # its image: points[:length // 2]
    assert keep_count(n, 0.5, "study") - 1 == (n - 1) // 2  # its LSTM state at point (len - 1) // 2
    assert image_count(n, 1.0, "study") == keep_count(n, 1.0, "study") == n
    # ours: ceil(f * n), at least 2, both views
    assert image_count(n, 0.5) == keep_count(n, 0.5) == min(n, max(2, -(-n // 2)))


def _items(lengths, strokes_every=3):
    rng = np.random.default_rng(0)
    out = []
    for i, n in enumerate(lengths):
        pts = np.zeros((n, 3), np.float32)
        pts[:, :2] = rng.integers(0, 256, size=(n, 2))
        pts[strokes_every - 1::strokes_every, 2] = 1
        pts[-1, 2] = 1
        out.append((i, 0, i, pts))
    return out


def test_study_rule_renders_fewer_points_in_the_image_on_odd_lengths():
    items = _items([11, 10, 1])
    batch = SketchCollate(1.0, 0.5, None, fraction_rule="study")(items)
    assert batch["lengths"].tolist() == [6, 5, 1] and batch["image_lengths"].tolist() == [5, 5, 1]
    r = Rasterizer(32)
    render_views(batch, r, ["image"])
    for b, (_, _, _, pts) in enumerate(items):
        shown = pts[:batch["image_lengths"][b]].copy()
        shown[-1, 2] = 1
        alone = r(torch.from_numpy(shown)[None], torch.tensor([len(shown)]))
        assert torch.allclose(batch["image"][b], alone[0], atol=1e-6), b
    assert "image_lengths" not in SketchCollate(1.0, 0.5, None)(items)  # ceil: one length for both


def test_raw_deltas_and_first_point_origin():
    items = _items([7, 4])
    batch = SketchCollate(1.0, 1.0, None, seq_origin=(122.5, 122.5))(items)
    for b, (_, _, _, pts) in enumerate(items):
        seq = batch["seq"][b, :len(pts)].numpy()
        np.testing.assert_allclose(seq[0, :2], pts[0, :2] - 122.5)
        np.testing.assert_allclose(seq[1:, :2], np.diff(pts[:, :2], axis=0))
        np.testing.assert_array_equal(seq[:, 2], pts[:, 2])


def test_seq_norm_none_means_std_one_and_is_carried_by_the_state():
    dm = SketchDataModule(root="study10", seq_norm="none")
    assert dm.seq_std == 1.0 and dm.state_dict()["seq_std"] == 1.0
    normed = SketchDataModule(root="study10")
    assert normed.seq_std > 1.0  # canvas units: the real train deltas are several pixels


@pytest.mark.parametrize("key, value", [("background", "grey"), ("standardize", "yes"),
                                        ("fraction_rule", "floor"), ("seq_norm", "minmax"),
                                        ("seq_origin", [1.0]), ("seq_origin", ["a", 2]),
                                        ("max_mean_snapshots", 0), ("max_mean_snapshots", "7")])
def test_bad_option_values_name_their_key(key, value):
    with pytest.raises(ValueError, match=f"data.{key}"):
        SketchDataModule(root="study10", **{key: value})


def test_stroke_counts_match_the_drawings():
    dm = SketchDataModule(root="study10")
    rows = dm.rows("train")[::7]
    counts = stroke_counts(dm.store, rows, chunk_drawings=5)
    assert counts.tolist() == [int((np.asarray(dm.store.points(r))[:, 2] > 0).sum()) for r in rows]


def test_max_mean_strokes_drops_exactly_the_heavy_batches():
    strokes = np.array([1, 9, 2, 2, 8, 8, 3, 4])
    inner = [[0, 1], [2, 3], [4, 5], [6, 7]]  # means 5, 2, 8, 3.5
    f = MaxMeanStrokes(inner, strokes, 5.0)
    assert list(f) == [[0, 1], [2, 3], [6, 7]] and len(f) == 3
    with pytest.raises(ValueError, match="data.max_mean_snapshots"):
        len(MaxMeanStrokes(inner, strokes, 1.0))


def test_datamodule_train_batches_respect_max_mean_snapshots():
    dm = SketchDataModule(root="study10", batch_size=8, max_mean_snapshots=3, seed=0)
    dm.setup("fit")
    loader = dm.train_dataloader()
    plain = SketchDataModule(root="study10", batch_size=8, seed=0)
    plain.setup("fit")
    n = 0
    for batch in loader:
        assert float(batch["n_strokes"].float().mean()) <= 3
        n += 1
    assert n == len(loader) and 0 < n < len(plain.train_dataloader())


def test_human_baseline_quotes_both_study_figures():
    human = STUDY_FIGURES["human"]["acc"]
    assert "84" in human and "72.1" in human and "43 answers" in human


def test_eval_rebuilds_the_study_inputs_from_a_checkpoint(tmp_path):
    """eval.py, `index build` and `suggest` serve a study checkpoint the inputs it was trained on."""
    hp = {"root": "study10", "image_size": 48, "line_width": 5.25, "padding": 5.0, "canvas": 255.0,
          "background": "white", "standardize": True, "fraction_rule": "study", "seq_norm": "none",
          "seq_origin": [122.5, 122.5], "views": ["image", "sequence"]}
    ckpt = {"datamodule_hyper_parameters": hp, "SketchDataModule": {"seq_std": 1.0, "classes": None}}
    st = EvalSettings.from_config(OmegaConf.merge(OmegaConf.load(REPO / "conf" / "eval.yaml"),
                                                  {"batch_size": 8, "seed": 0}))
    inputs = read_inputs(ckpt)
    for dm in (SketchDataModule.from_inputs(inputs, "study10"), _datamodule(st, ckpt, tmp_path / "x.ckpt", ["image"])):
        r = dm.rasterizer
        assert (r.size, r.line_width, r.padding, r.canvas, r.background, r.standardize) == (
            48, 5.25, 5.0, 255.0, "white", True)
        collate = dm.collate(0.5)
        assert collate.fraction_rule == "study" and collate.seq_std == 1.0
        assert collate.seq_origin.tolist() == [122.5, 122.5]
    assert (inputs.canvas, inputs.background, inputs.standardize, inputs.fraction_rule, inputs.seq_origin) == (
        255.0, "white", True, "study", (122.5, 122.5))
