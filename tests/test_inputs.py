"""InputSettings: the input settings of a model are one object, with one set of defaults (the config's
too), one validation, saved in every checkpoint and read back by one function (also from the
checkpoint layout before it existed)."""

from __future__ import annotations

import dataclasses
import inspect
import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from helpers import compose_cfg, tiny
from sketchembed.data.datamodule import SketchCollate, SketchDataModule
from sketchembed.data.inputs import (
    CHECKPOINT_KEY,
    DEFAULTS,
    FIELDS,
    FORMAT_KEY,
    RECIPE,
    InputSettings,
    fraction_tag,
    read_inputs,
)
from sketchembed.data.raster import Rasterizer
from sketchembed.safeload import safe_load
from sketchembed.train.run import train, train_entry

REPO = Path(__file__).resolve().parents[1]
STUDY = dict(image_size=48, line_width=5.25, padding=5.0, canvas=255.0, background="white", standardize=True,
             max_snapshots=None, fraction_rule="study", seq_norm="none", seq_origin=(122.5, 122.5),
             eval_fractions=(1.0, 0.5, 0.25))


def _data_config(*overrides: str):
    GlobalHydra.instance().clear()
    os.environ.setdefault("PROJECT_ROOT", str(REPO))
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides)).data


def test_python_defaults_are_the_config_defaults():
    """conf/data/quickdraw.yaml and InputSettings state the same defaults; the DataModule, the
    collate and the rasterizer take theirs from InputSettings."""
    data = _data_config()
    for key in RECIPE:
        value = data[key]
        value = tuple(value) if key in ("seq_origin", "eval_fractions", "channels") else value
        assert value == getattr(DEFAULTS, key), key
    assert SketchDataModule().inputs == DEFAULTS
    collate = inspect.signature(SketchCollate).parameters
    assert (collate["max_snapshots"].default, collate["fraction_rule"].default, collate["seq_origin"].default) == (
        DEFAULTS.max_snapshots, DEFAULTS.fraction_rule, DEFAULTS.seq_origin)
    r = Rasterizer()
    assert (r.size, r.line_width, r.padding, r.canvas, r.background, r.standardize, r.channels) == (
        DEFAULTS.image_size, DEFAULTS.line_width, DEFAULTS.padding, DEFAULTS.canvas, DEFAULTS.background,
        DEFAULTS.standardize, DEFAULTS.channels) == (64, 8.0, 4.5, 256.0, "black", False, ("ink",))


def test_study_config_is_valid_input_settings():
    data = _data_config("data=study")
    s = InputSettings(**{k: data[k] for k in RECIPE})
    assert (s.canvas, s.background, s.fraction_rule, s.max_snapshots, s.seq_norm) == (255.0, "white", "study", None,
                                                                                      "none")


def test_every_checkpoint_carries_the_settings_and_one_function_reads_them(tmp_path):
    """The DataModule's state (what Lightning saves in a checkpoint) is the whole InputSettings, and
    what read_inputs returns from the saved file builds the same collate and rasterizer."""
    dm = SketchDataModule(root="study10", **STUDY)
    dm.setup("fit")
    state = dm.state_dict()
    assert state[FORMAT_KEY] == 1 and set(state) == {FORMAT_KEY, *FIELDS}
    assert not set(RECIPE) & set(dm.hparams)  # saved once: not again as the DataModule's hparams
    torch.save({CHECKPOINT_KEY: state, "datamodule_hyper_parameters": dict(dm.hparams)}, tmp_path / "x.ckpt")
    back = read_inputs(safe_load(tmp_path / "x.ckpt"), "x.ckpt")
    assert back == dm.input_settings
    assert back.classes == tuple(dm.class_names) and back.seq_std == 1.0 and back.max_snapshots is None
    again = SketchDataModule.from_inputs(back, "study10", views=("image",))
    assert repr(again.rasterizer) == repr(dm.rasterizer) == repr(Rasterizer.from_inputs(back))
    a, b = again.collate(0.5), SketchCollate.from_inputs(back, 0.5)
    assert (a.seq_std, a.max_snapshots, a.fraction_rule, tuple(a.seq_origin)) == (
        b.seq_std, b.max_snapshots, b.fraction_rule, tuple(b.seq_origin)) == (1.0, None, "study", (122.5, 122.5))
    fresh = SketchDataModule(root="study10")
    fresh.load_state_dict(state)  # resume / test: seq_std restored from the new layout too
    assert fresh.seq_std == 1.0


def test_reads_checkpoints_written_before_input_settings():
    """Before: seq_std and classes in the DataModule state, the rest in its hparams (every constructor
    argument, so a null max_snapshots is null, not the default), older runs lacking newer keys."""
    hp = {"root": "study10", "image_size": 48, "line_width": 5.25, "padding": 5.0, "max_snapshots": None,
          "views": ["image", "sequence"], "batch_size": 8}
    ckpt = {"datamodule_hyper_parameters": hp, CHECKPOINT_KEY: {"seq_std": 2.5, "classes": ["a", "b"]}}
    s = read_inputs(ckpt)
    assert (s.image_size, s.line_width, s.padding, s.max_snapshots, s.seq_std, s.classes) == (
        48, 5.25, 5.0, None, 2.5, ("a", "b"))
    assert s.replace(image_size=64, line_width=8.0, padding=4.5, max_snapshots=8, seq_std=None,
                     classes=None) == DEFAULTS
    with pytest.raises(ValueError, match="old.ckpt: checkpoint carries no data state"):
        read_inputs({"datamodule_hyper_parameters": hp}, "old.ckpt")


@pytest.mark.parametrize("key, bad", [("image_size", 0), ("image_size", 3.5), ("image_size", 100_000),
                                      ("line_width", 0), ("padding", -1),
                                      ("canvas", "big"), ("background", "grey"), ("standardize", 1),
                                      ("max_snapshots", "all"), ("fraction_rule", "floor"), ("seq_norm", "z"),
                                      ("seq_origin", [1.0]), ("seq_origin", [float("nan"), 0]),
                                      ("eval_fractions", [0.5, 1.0]), ("eval_fractions", [1.0, 0.0]),
                                      ("seq_std", -1.0), ("channels", ["ink", "colour"]), ("channels", []),
                                      ("channels", ["ink", "ink"])])
def test_a_bad_value_is_one_line_naming_the_key(key, bad):
    with pytest.raises(ValueError, match=rf"^data\.{key} must"):
        InputSettings(**{key: bad})
    if key in RECIPE:  # the DataModule validates through the same code
        with pytest.raises(ValueError, match=rf"^data\.{key} must"):
            SketchDataModule(**{key: bad})
    state = {**DEFAULTS.replace(seq_std=1.0).to_dict(), key: bad}
    with pytest.raises(ValueError, match=rf"^bad.ckpt: data\.{key} must"):
        read_inputs({CHECKPOINT_KEY: state}, "bad.ckpt")


def test_the_rasterizer_and_collate_validate_through_the_same_code():
    msgs = []
    for build in (lambda: Rasterizer(32, background="grey"), lambda: InputSettings(background="grey"),
                  lambda: SketchDataModule(background="grey")):
        with pytest.raises(ValueError) as e:
            build()
        msgs.append(str(e.value))
    assert len(set(msgs)) == 1, msgs
    with pytest.raises(ValueError, match="data.fraction_rule must"):
        SketchCollate(1.0, fraction_rule="floor")


def test_unknown_keys_and_formats_are_named():
    state = {**DEFAULTS.replace(seq_std=1.0).to_dict(), "colour": "red"}
    with pytest.raises(ValueError, match=r"x.ckpt: unknown input settings \['colour'\]"):
        read_inputs({CHECKPOINT_KEY: state}, "x.ckpt")
    with pytest.raises(ValueError, match="format 2"):
        read_inputs({CHECKPOINT_KEY: {**state, FORMAT_KEY: 2}}, "x.ckpt")


def test_frozen_and_normalised():
    s = InputSettings(image_size=32.0, seq_origin=[1, 2], max_snapshots=0, classes=["a"])
    assert (s.image_size, s.seq_origin, s.max_snapshots, s.classes) == (32, (1.0, 2.0), None, ("a",))
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.image_size = 64
    assert [fraction_tag(f) for f in (1.0, 0.5, 0.1, 0.125)] == ["100", "50", "10", "12.5"]


def test_channels_are_saved_and_checkpoints_without_them_read_as_ink():
    """``channels`` came after input_settings_format 1: a saved state without it is an ink image."""
    s = InputSettings(channels=["ink", "order"], seq_std=1.0)
    assert s.channels == ("ink", "order") and s.to_dict()["channels"] == ["ink", "order"]
    assert read_inputs({CHECKPOINT_KEY: s.to_dict()}).channels == ("ink", "order")
    old = {k: v for k, v in DEFAULTS.replace(seq_std=1.0).to_dict().items() if k != "channels"}
    assert read_inputs({CHECKPOINT_KEY: old}).channels == ("ink",)
    assert read_inputs({CHECKPOINT_KEY: {"seq_std": 2.0}}).channels == ("ink",)   # the older layout
    dm = SketchDataModule(root="study10", channels=["ink", "time"])
    assert dm.rasterizer.channels == ("ink", "time") and dm.state_dict()["channels"] == ["ink", "time"]


def test_an_unknown_channel_in_the_config_is_one_line_naming_data_channels_and_exit_2(tmp_path, capsys):
    cfg = compose_cfg([*tiny("direct"), "data.channels=[ink,colour]"], tmp_path)
    with pytest.raises(SystemExit) as e:
        train_entry("train", train)(cfg)
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert e.value.code == 2 and len(errors) == 1, errors
    assert errors[0].startswith("error: data.channels must be a list of channels") and "'colour'" in errors[0]
