"""Config values of the wrong type, unknown keys and counts below their minimum stop `train.py` before
anything is built, with one line naming the key and exit code 2 (sketchembed.train.validate); every
shipped config passes the same check."""

from __future__ import annotations

import functools

import lightning.pytorch as pl
import pytest

from helpers import EXPERIMENTS, MODEL_KINDS, compose_cfg, run_cli, tiny
from helpers import assert_one_line_error as _assert_one_line_error
from sketchembed.entry import check_new_keys
from sketchembed.models.combined import CombinedModel
from sketchembed.models.lstm import LSTMModel
from sketchembed.train.run import train, train_entry
from sketchembed.train.validate import ConfigError, check_config

BAD = {
    "trainer.max_epochs=abc": "trainer.max_epochs='abc'",
    "model.optimizer.lr=abc": "model.optimizer.lr='abc'",
    "data.batch_size=abc": "data.batch_size must be an integer, got 'abc'",
    "+model.foo=1": "model.foo",
    "data.batch_size=0": "data.batch_size must be >= 1, got 0",
    "data.eval_batch_size=-3": "data.eval_batch_size must be >= 1, got -3",
    # every data key by its one check (sketchembed.data.datamodule.check_data_key)
    "data.sampler=fifo": "data.sampler must be one of ('random', 'pk'), got 'fifo'",
    "data.pk_k=0": "data.pk_k must be >= 1, got 0",
    "data.num_workers=-1": "data.num_workers must be >= 0, got -1",
    "data.pin_memory=maybe": "data.pin_memory must be true or false, got 'maybe'",
    "data.train_subset=1.5": "data.train_subset must be a number in (0, 1], got 1.5",
    "data.max_train=0": "data.max_train must be >= 1, got 0",
    "data.max_mean_snapshots=0": "data.max_mean_snapshots must be a number > 0, got 0",
    "data.fold={k:1,index:0}": "data.fold.k=1: k-fold cross-validation needs k >= 2",
    "+data.colour=red": "data.colour: SketchDataModule has no setting 'colour'",
    "trainer.max_epochs=1.5": "trainer.max_epochs=1.5",
    "model.scheduler.warmup_steps=x": "model.scheduler.warmup_steps='x'",
    "+callbacks.model_checkpoint.nope=1": "callbacks.model_checkpoint.nope",
    "callbacks.embedding_eval.ks=[a]": "callbacks.embedding_eval.ks",
    "loss=hinge model=triplet loss.margin=wide": "loss.margin='wide'",
    "model=triplet miner.margin=wide": "miner.margin='wide'",  # a parameter of the miner's base class
    "model=triplet +miner.foo=1": "miner.foo: SemiHardMiner has no parameter 'foo'",
    "+trainer.foo=1": "trainer.foo: Trainer has no parameter 'foo'",
    # layer sizes: 0 trained a 0-d embedding and exited 0, -4 crashed inside torch
    "model=triplet model.embedding_dim=0": "model.embedding_dim=0: must be >= 1",
    "model=direct model.embedding_dim=-4": "model.embedding_dim=-4: must be >= 1",
    "model.hidden=0": "model.hidden=0: must be >= 1",
    "model.layers=0": "model.layers=0: must be >= 1",
    "model=combined model.mlp_hidden=-1": "model.mlp_hidden=-1: must be >= 0",
    "model=triplet +model.drop_rate=2": "model.drop_rate=2: must be in [0, 1)",
    "model.dropout=1.5": "model.dropout=1.5",
    # an image the rasterizer would need terabytes for; a callback the Trainer cannot take (a 59-line
    # traceback); a negative clip value (silently no clipping)
    "data.image_size=100000": "data.image_size must be <= 1024, got 100000",
    "+callbacks.x._target_=collections.OrderedDict":
        "callbacks.x._target_='collections.OrderedDict': not a Lightning callback",
    "trainer.gradient_clip_val=-1": "trainer.gradient_clip_val=-1: must be >= 0",
    # a top-level key no part of the program reads (a key inside a group is checked by its class)
    "+foo=1": "+foo=1: train.py has no setting 'foo'",
    "++sed=3": "++sed=3: train.py has no setting 'sed'",
}


@pytest.mark.parametrize("override", list(BAD))
def test_bad_value_is_one_line_naming_the_key_before_the_trainer(override, tmp_path, capsys, monkeypatch):
    built, init = [], pl.Trainer.__init__

    @functools.wraps(init)  # keeps the signature the check reads
    def spy(self, *a, **k):
        built.append(1)
        init(self, *a, **k)

    monkeypatch.setattr(pl.Trainer, "__init__", spy)
    model = next((o.split("=", 1)[1] for o in override.split() if o.startswith("model=")), "lstm")
    cfg = compose_cfg([*tiny(model), *override.split()], tmp_path)
    with pytest.raises(SystemExit) as e:
        train_entry("train", train)(cfg)
    assert e.value.code == 2 and not built
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and BAD[override] in errors[0], errors


def test_message_names_the_expected_type_and_the_class():
    cfg = compose_cfg(["model=lstm", "data.root=[a]"])
    with pytest.raises(ConfigError, match=r"data.root=\['a'\]: expected str \(SketchDataModule.root\)"):
        check_config(cfg)
    cfg = compose_cfg(["model=lstm", "+model.foo=1"])
    with pytest.raises(ConfigError, match="model.foo: LSTMModel has no parameter 'foo' .*hidden"):
        check_config(cfg)


@pytest.mark.parametrize("model_cls", [LSTMModel, CombinedModel])
def test_model_argument_rules_live_in_check_args(model_cls):
    """The models' own check (not train.validate) holds their argument rules: one line naming the key."""
    for args, message in (({"hidden": 0}, "model.hidden=0: must be >= 1"),
                          ({"mlp_hidden": -1}, "model.mlp_hidden=-1: must be >= 0"),
                          ({"dropout": 1.0}, r"model.dropout=1.0: must be in \[0, 1\)")):
        with pytest.raises(ConfigError, match=f"^{message}"):
            model_cls.check_args(args)
    model_cls.check_args({"hidden": 1, "mlp_hidden": 0, "dropout": 0.0, "layers": "${x}"})


def test_shipped_sizes_and_group_options_pass(tmp_path):
    """The lowest values that mean something, a group option added with +, an existing key with ++."""
    for overrides in (["model=combined", "model.mlp_hidden=0", "model.embedding_dim=1", "model.hidden=1",
                       "model.layers=1", "model.dropout=0.0", "data.image_size=1024", "trainer.gradient_clip_val=0.5"],
                      ["model=lstm", "++seed=3", "+optim=study"]):
        cfg = compose_cfg(overrides, tmp_path)
        check_config(cfg)
        check_new_keys("train")


@pytest.mark.parametrize("overrides", [
    [f"model={m}"] for m in MODEL_KINDS] + [
    ["model=combined_transfer", "model.cnn_ckpt=/x.ckpt"],
    ["trainer=ddp_sim"], ["trainer=gpu"], ["trainer=ddp"], ["logger=csv"], ["logger=tensorboard"],
    ["logger=none"], ["callbacks=none"], ["augment=none"], ["data=others335"], ["data=full"],
    ["hparams_search=optuna"], ["model=triplet", "loss=softmax_triplet", "miner=random"],
    ["model=triplet", "miner=hard"], ["model=triplet", "miner=all"], ["backbone=inception_v4"]])
def test_shipped_configs_pass(overrides):
    check_config(compose_cfg(overrides))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiments_pass(name):
    check_config(compose_cfg([f"experiment={name}", "model.cnn_ckpt=/x.ckpt"] if "transfer" in name
                             else [f"experiment={name}"]))


def test_real_exit_code(tmp_path):
    r = run_cli([*tiny("lstm"), "trainer.max_epochs=abc", f"hydra.run.dir={tmp_path}"], timeout=300)
    _assert_one_line_error(r, "trainer.max_epochs='abc'")
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "csv").exists()

