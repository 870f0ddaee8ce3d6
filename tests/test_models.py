"""The study's models at tiny sizes: they learn (loss falls on a fixed batch), embed with the right
shapes, log the contract's metric names, round-trip through checkpoints, transfer the triplet CNN, and
refuse bad configs with messages that name the keys."""

from __future__ import annotations

import inspect
import math

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from helpers import (
    MODEL_KINDS,
    REPO_ROOT,
    TINY_BACKBONE,
    TINY_CLASSES,
    TINY_IMAGE,
    TINY_MODEL_SIZES,
    make_batch,
    tiny_model,
)
from sketchembed.data.datamodule import SketchDataModule
from sketchembed.data.inputs import InputSettings
from sketchembed.messages import ConfigError
from sketchembed.metric import TripletAccuracy
from sketchembed.metric.losses import CrossEntropy, HingeTripletLoss, SoftmaxTripletLoss
from sketchembed.models import MODELS, CombinedModel, DirectImageModel, LSTMModel, TripletImageModel, check_compatible
from sketchembed.models.base import DEFAULT_OPTIMIZER, DEFAULT_SCHEDULER, SketchModule
from sketchembed.nets.backbone import DEFAULT_BACKBONE
from sketchembed.registry import CLASSIFICATION, TRIPLET

# the tiny models and the hand-made batch live in tests/helpers.py (test_combined_loss uses them too)
TINY, SIZE, NUM_CLASSES, TINY_SIZES = TINY_BACKBONE, TINY_IMAGE, TINY_CLASSES, TINY_MODEL_SIZES
tiny = tiny_model
# embedding width where it is not embedding_dim (combined: the CNN's 16 next to the LSTM's 16)
EMBED_DIM = {"combined": 32}


def overfit(model, batch, steps: int = 25) -> tuple[float, float]:
    """(first loss, mean of the last 3) after ``steps`` AdamW steps on one fixed batch."""
    opt = model.configure_optimizers()
    model.train()
    losses = []
    for _ in range(steps):
        loss, _ = model.training_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses[0], sum(losses[-3:]) / 3


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_loss_falls_on_a_fixed_batch(kind):
    torch.manual_seed(0)
    kw = {"loss": SoftmaxTripletLoss()} if kind == "triplet" else {}
    if kind == "lstm":  # a 16-unit LSTM needs a bolder step to memorise within a few steps
        kw["lr"] = 2e-2
    model = tiny(kind, **kw)
    first, last = overfit(model, make_batch(B=12), steps=30)
    assert last < 0.6 * first, (first, last)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_embed_and_logits_shapes(kind):
    dim = EMBED_DIM.get(kind, 16)
    model = tiny(kind).eval()
    batch = make_batch(B=5)
    with torch.no_grad():
        assert model.embed(batch).shape == (5, dim)
        logits = model.logits(batch)
    assert (logits is None) if CLASSIFICATION not in MODELS[kind].LOSS_KINDS else logits.shape == (5, NUM_CLASSES)
    assert model.views == MODELS[kind].VIEWS and model.hparams.model_kind == kind


@pytest.mark.parametrize("train_on,expected", [("stroke_ends", "n_strokes"), ("all", "lengths"), ("last", None)])
def test_lstm_train_on_positions(train_on, expected):
    batch = make_batch(B=6)
    _, extra = tiny("lstm", train_on=train_on).training_loss(batch)
    want = 6 if expected is None else int(batch[expected].sum())
    assert extra["positions"] == want


def test_lstm_embed_is_state_at_last_point():
    model = tiny("lstm").eval()
    batch = make_batch(B=4)
    with torch.no_grad():
        states = model.states(batch)
        emb = model.embed(batch)
    for b in range(4):
        assert torch.equal(emb[b], states[b, int(batch["lengths"][b]) - 1])


def test_combined_eval_reads_the_last_snapshot():
    model = tiny("combined").eval()
    batch = make_batch(B=5)
    with torch.no_grad():
        from_snaps = model.embed(batch)
        only_image = {k: v for k, v in batch.items() if k != "snapshots"}
        assert torch.allclose(model.embed(only_image), from_snaps, atol=1e-5)
        # dropping a drawing's last-stroke-end snapshot breaks the contract: a clear error
        keep = batch["snap_pos"] != (batch["lengths"] - 1)[batch["snap_batch"]]
        keep[0] = True
        bad = dict(batch, snap_batch=batch["snap_batch"][keep], snap_pos=batch["snap_pos"][keep],
                   snapshots=batch["snapshots"][keep])
        with pytest.raises(ValueError, match="snap_pos"):
            model.embed(bad)


def test_incompatible_losses_name_the_keys():
    with pytest.raises(ValueError, match="loss=hinge is incompatible with model=lstm"):
        check_compatible("lstm", "triplet", loss_name="hinge")
    with pytest.raises(ValueError, match="loss=cross_entropy is incompatible with model=triplet"):
        check_compatible("triplet", CrossEntropy.kind, loss_name="cross_entropy")
    check_compatible("combined", "classification", loss_name="cross_entropy")
    with pytest.raises(ValueError, match="model='nope' is unknown"):
        check_compatible("nope", "triplet")
    with pytest.raises(ValueError, match="loss=hinge is incompatible with model=lstm"):
        LSTMModel(NUM_CLASSES, hidden=8, loss=HingeTripletLoss())
    with pytest.raises(ValueError, match="loss=softmax_triplet is incompatible with model=direct"):
        DirectImageModel(NUM_CLASSES, TINY, image_size=SIZE, loss=SoftmaxTripletLoss())


def test_bad_backbone_and_image_size_name_the_keys():
    with pytest.raises(ValueError, match=r"backbone\.name='resnet10x'"):
        tiny("direct").__class__(NUM_CLASSES, "resnet10x", image_size=64)
    with pytest.raises(ValueError, match=r"data\.image_size=64.*at least 75"):
        TripletImageModel("inception_v4", image_size=64)
    with pytest.raises(ValueError, match=r"model\.train_on"):
        LSTMModel(NUM_CLASSES, train_on="middle")
    with pytest.raises(ValueError, match=r"model\.scheduler"):
        LSTMModel(NUM_CLASSES, scheduler="step")
    with pytest.raises(ValueError, match=r"model\.scheduler"):
        LSTMModel(NUM_CLASSES, optimizer=DEFAULT_OPTIMIZER, scheduler="cosine")


def _old_lr_factor(step: int, kind: str, warmup: int, total: int, min_ratio: float) -> float:
    """The hand-written schedule the configs used before torch's schedulers (reference only)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "cosine":
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    return 1.0


def _lrs(model, total: int) -> list[list[float]]:
    """Each group's learning rate at every step of a ``total``-step run."""
    trainer = type("T", (), {"estimated_stepping_batches": total})()
    model._trainer = trainer  # what configure_optimizers reads
    try:
        conf = model.configure_optimizers()
    finally:
        model._trainer = None
    opt, sched = (conf, None) if not isinstance(conf, dict) else (conf["optimizer"],
                                                                  conf["lr_scheduler"]["scheduler"])
    out = []
    for _ in range(total):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        if sched is not None:
            sched.step()
    return out


@pytest.mark.parametrize("warmup,total", [(0, 50), (1, 20), (4, 37), (10, 110)])
def test_warmup_cosine_equals_the_old_schedule_step_by_step(warmup, total):
    """The default config's schedule (torch's LinearLR + CosineAnnealingLR) gives the learning rate
    the hand-written warmup-cosine gave, at every step, in every parameter group."""
    model = tiny("combined", cnn_lr=1e-4, scheduler=dict(DEFAULT_SCHEDULER, warmup_steps=warmup))
    base = [3e-3, 1e-4]  # sequence+head, cnn (its own rate)
    for step, lrs in enumerate(_lrs(model, total)):
        want = [b * _old_lr_factor(step, "cosine", warmup, total, 0.0) for b in base]
        assert lrs == pytest.approx(want, rel=1e-6, abs=1e-12), step


def _from_old_record(hp: dict):
    """The model an earlier checkpoint's hyper_parameters describe, migrated as a file's are."""
    from sketchembed.models.checkpoint import ModelRecord, migrate

    return LSTMModel.from_record(ModelRecord.read(migrate(hp, "old.ckpt"), "old.ckpt"))


def test_constant_rate_and_legacy_records():
    assert all(lrs == [3e-3] for lrs in _lrs(tiny("lstm"), 10))  # scheduler: null
    # a checkpoint written before injection (lr, weight_decay, scheduler="none"|"cosine", warmup, min
    # ratio): its record is rewritten, nothing passes these to a constructor
    old = _from_old_record({"model_kind": "lstm", "num_classes": NUM_CLASSES, "hidden": 8, "lr": 0.02,
                            "weight_decay": 0.0, "scheduler": "cosine", "warmup_steps": 3, "min_lr_ratio": 0.1,
                            "class_names": None})
    assert old.hparams.optimizer == {"name": "adamw", "args": {"lr": 0.02, "weight_decay": 0.0}}
    assert "lr" not in old.hparams and "class_names" not in old.hparams and old.loss is None
    for step, (lr,) in enumerate(_lrs(old, 30)):
        assert lr == pytest.approx(0.02 * _old_lr_factor(step, "cosine", 3, 30, 0.1), rel=1e-6), step
    ramp = _from_old_record({"model_kind": "lstm", "num_classes": NUM_CLASSES, "hidden": 8, "lr": 0.02,
                             "scheduler": "none", "warmup_steps": 4})
    assert ramp.hparams.scheduler["name"] == "torch:LinearLR"
    for step, (lr,) in enumerate(_lrs(ramp, 8)):
        assert lr == pytest.approx(0.02 * _old_lr_factor(step, "none", 4, 8, 0.0)), step
    with pytest.raises(TypeError, match="nope"):  # no **legacy door in the constructors any more
        LSTMModel(NUM_CLASSES, hidden=8, nope=1)
    with pytest.raises(TypeError, match="lr"):
        LSTMModel(NUM_CLASSES, hidden=8, lr=0.02)
    with pytest.raises(ValueError, match=r"model\.optimizer\.lr"):
        LSTMModel(NUM_CLASSES, hidden=8, optimizer=dict(DEFAULT_OPTIMIZER, lr=0.0))


def test_format1_records_migrate_to_names():
    """Checkpoints whose parts are ``_target_`` configs (format 1) load as records of registered names."""
    from sketchembed.models.checkpoint import migrate

    hp = migrate({"model_kind": "triplet", "loss": {"_target_": "pytorch_metric_learning.losses.TripletMarginLoss",
                                                    "margin": 0.2},
                  "miner": {"_target_": "pytorch_metric_learning.miners.BatchHardMiner",
                            "distance": {"_target_": "sketchembed.metric.distances.SquaredEuclideanDistance"}},
                  "optimizer": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1},
                  "scheduler": {"_target_": "torch.optim.lr_scheduler.StepLR", "_partial_": True, "step_size": 2}},
                 "old.ckpt")
    assert hp["loss"] == {"name": "pml:TripletMarginLoss", "args": {"margin": 0.2}}
    assert hp["miner"] == {"name": "pml:BatchHardMiner", "args": {"distance": "squared_euclidean"}}
    assert hp["optimizer"] == {"name": "torch:SGD", "args": {"lr": 0.1}}
    assert hp["scheduler"] == {"name": "torch:StepLR", "args": {"step_size": 2}}


def test_any_torch_optimizer_and_scheduler_from_config():
    model = tiny("lstm", scheduler={"_target_": "torch.optim.lr_scheduler.StepLR", "_partial_": True,
                                    "step_size": 2, "gamma": 0.5})
    assert model.hparams.scheduler == {"name": "torch:StepLR", "args": {"step_size": 2, "gamma": 0.5}}
    sgd = LSTMModel(NUM_CLASSES, hidden=8, optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1},
                    scheduler=None)
    assert type(sgd.configure_optimizers()).__name__ == "SGD" and sgd.hparams.optimizer["name"] == "torch:SGD"
    assert [lr for (lr,) in _lrs(model, 5)] == pytest.approx([3e-3, 3e-3, 1.5e-3, 1.5e-3, 7.5e-4])
    # a class outside the registries cannot be recorded: refused before anything is built
    class Unnamed(torch.nn.Module):
        kind = "classification"

    with pytest.raises(ValueError, match=r"^loss: .*Unnamed is neither registered"):
        LSTMModel(NUM_CLASSES, hidden=8, loss=Unnamed())
    with pytest.raises(ValueError, match=r"model\.optimizer\._target_='collections\.OrderedDict' is no registered"):
        LSTMModel(NUM_CLASSES, hidden=8, optimizer={"_target_": "collections.OrderedDict", "_partial_": True})


def test_python_defaults_equal_config_defaults():
    conf = REPO_ROOT / "conf"
    assert OmegaConf.to_container(OmegaConf.load(conf / "model/optimizer/adamw.yaml")) == DEFAULT_OPTIMIZER
    assert OmegaConf.to_container(OmegaConf.load(conf / "model/scheduler/warmup_cosine.yaml")) == DEFAULT_SCHEDULER
    assert "backbone: " + DEFAULT_BACKBONE in (conf / "train.yaml").read_text()
    for kind, cls in MODELS.items():
        yaml = OmegaConf.load(conf / "model" / f"{kind}.yaml").model
        assert yaml._target_.endswith(cls.__name__)
        for key in yaml:  # every plain value a model config sets is its Python default
            if key.startswith("_") or OmegaConf.is_interpolation(yaml, key):
                continue
            default = inspect.signature(cls.__init__).parameters[key].default
            assert default == yaml[key], (kind, key, yaml[key], default)


def test_transfer_flag_requires_a_cnn_checkpoint():
    with pytest.raises(ValueError, match=r"model\.cnn_ckpt is required.*model\.transfer"):
        CombinedModel(NUM_CLASSES, TINY, image_size=SIZE, transfer=True)


# ---------------------------------------------------------------------- with a Lightning Trainer
def _loaders(n_train: int = 3, B: int = 8):
    train = [make_batch(B=B, seed=i) for i in range(n_train)]
    val = [DataLoader([make_batch(B=B, seed=50, fraction=f)], batch_size=None) for f in (1.0, 0.5)]
    return DataLoader(train, batch_size=None), val


def _trainer(tmp_path, steps: int = 3) -> L.Trainer:
    return L.Trainer(default_root_dir=tmp_path, max_steps=steps, accelerator="cpu", devices=1,
                     logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=1)


def test_models_declare_their_traits():
    """Eval, the studio and the optimized-metric check read these class facts instead of guessing
    from a model's kind, its loss kinds or a None it returns."""
    kinds = ("triplet", "direct", "lstm", "combined")
    assert {k: (MODELS[k].HAS_CLASSIFIER, MODELS[k].TRIPLET_METRICS) for k in kinds} \
        == {"triplet": (False, True), "direct": (True, False), "lstm": (True, False), "combined": (True, False)}
    assert TripletImageModel.eval_metrics() == TripletAccuracy.NAMES and LSTMModel.eval_metrics() == ("acc", "loss")
    with pytest.raises(TypeError, match="declare HAS_CLASSIFIER = False"):
        class Embedder(SketchModule):  # a triplet-only model that still claims a classifier
            LOSS_KINDS = (TRIPLET,)

    class Both(CombinedModel):  # a classifier that also logs triplet metrics: both, from the traits
        TRIPLET_METRICS = True

    assert Both.eval_metrics() == ("acc", "loss", *TripletAccuracy.NAMES)
    both = Both(NUM_CLASSES, TINY, embedding_dim=16, hidden=16, layers=2, mlp_hidden=16, image_size=SIZE).eval()
    with torch.no_grad():
        out = both.validation_step(make_batch(B=6), 0)
    assert out["logits"].shape == (6, NUM_CLASSES) and both.eval_triplet["val_100"].update_called
    assert "val_100" in both.eval_acc


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_trainer_fit_logs_metrics_and_checkpoint_round_trip(kind, tmp_path):
    torch.manual_seed(0)
    model = tiny(kind)
    train, val = _loaders()
    trainer = _trainer(tmp_path)
    trainer.fit(model, train_dataloaders=train, val_dataloaders=val)
    m = trainer.callback_metrics
    if CLASSIFICATION not in MODELS[kind].LOSS_KINDS:
        for key in ("val/triplet_acc@100", "val/triplet_acc@50", "val/d_pos@100", "val/d_neg@50"):
            assert key in m, sorted(m)
        assert "val/acc@100" not in m
    else:
        assert {"val/acc@100", "val/acc@50", "val/loss@100"} <= set(m), sorted(m)
        assert 0.0 <= float(m["val/acc@100"]) <= 1.0
    assert MODELS[kind].MONITOR in m
    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    # plain content: loadable without unpickling arbitrary objects
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert raw["hyper_parameters"]["model_kind"] == kind
    loaded = MODELS[kind].load_from_checkpoint(ckpt, map_location="cpu")
    batch = make_batch(B=4, seed=7)
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.allclose(model.embed(batch), loaded.embed(batch), atol=1e-6)
    # inference builds no training part: the loss stays a record (its kind still known)
    assert loaded.loss is None and loaded.miner is None and loaded.loss_kind == model.loss_kind
    assert loaded.record == model.record and raw["hyper_parameters"] == model.record.to_hparams()


def test_checkpoint_never_asks_for_a_download():
    model = tiny("direct")
    ckpt = {"hyper_parameters": dict(model.hparams, pretrained=True)}
    model.on_save_checkpoint(ckpt)
    assert ckpt["hyper_parameters"]["pretrained"] is False and ckpt["hyper_parameters"]["pretrained_init"]


@pytest.fixture(scope="module")
def triplet_ckpt(tmp_path_factory):
    """A TripletImageModel checkpoint (trained on *other* classes: 6 here vs 4 below)."""
    tmp = tmp_path_factory.mktemp("triplet")
    model = TripletImageModel(TINY, embedding_dim=16, image_size=SIZE, normalize=True)
    trainer = _trainer(tmp, steps=1)
    trainer.fit(model, train_dataloaders=DataLoader([make_batch(B=12, num_classes=6)], batch_size=None))
    path = tmp / "triplet.ckpt"
    trainer.save_checkpoint(path)
    return path, {k: v.clone() for k, v in model.encoder.state_dict().items()}


def test_transfer_loads_triplet_cnn_frozen(triplet_ckpt):
    path, weights = triplet_ckpt
    model = tiny("combined", cnn_ckpt=str(path), freeze_cnn=True)
    for k, v in model.cnn.state_dict().items():
        assert torch.equal(v, weights[k]), k
    assert model.cnn.normalize  # the transferred embedding keeps its L2 normalisation
    assert all(g["name"] != "cnn" for g in model.param_groups())
    overfit(model, make_batch(B=8), steps=2)
    assert not model.cnn.training  # BatchNorm statistics stay frozen too
    for k, v in model.cnn.state_dict().items():
        assert torch.equal(v, weights[k]), f"frozen {k} changed"


def test_transfer_fine_tune_has_own_lr_and_checkpoint_needs_no_source(triplet_ckpt, tmp_path):
    path, weights = triplet_ckpt
    model = tiny("combined", cnn_ckpt=str(path), cnn_lr=1e-5)
    opt = model.configure_optimizers()
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == {"sequence+head": 3e-3, "cnn": 1e-5}
    overfit(model, make_batch(B=8), steps=2)
    assert any(not torch.equal(v, weights[k]) for k, v in model.cnn.state_dict().items())
    # The combined checkpoint carries the weights; loading it does not re-read the source file.
    trainer = _trainer(tmp_path, steps=1)
    trainer.strategy.connect(model)
    ckpt = tmp_path / "combined.ckpt"
    trainer.save_checkpoint(ckpt)
    hp = torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]
    assert hp["cnn_ckpt"] is None and hp["cnn_ckpt_source"] == str(path)
    loaded = CombinedModel.load_from_checkpoint(ckpt, map_location="cpu")
    for k, v in model.cnn.state_dict().items():
        assert torch.equal(v, loaded.cnn.state_dict()[k])


def test_transfer_mismatch_names_the_keys(triplet_ckpt, tmp_path):
    path, _ = triplet_ckpt
    with pytest.raises(ValueError, match=r"model\.cnn_ckpt=.*embedding_dim=16.*model\.embedding_dim=8"):
        CombinedModel(NUM_CLASSES, TINY, embedding_dim=8, hidden=8, image_size=SIZE, cnn_ckpt=str(path))
    with pytest.raises(FileNotFoundError, match=r"model\.cnn_ckpt"):
        tiny("combined", cnn_ckpt=str(tmp_path / "missing.ckpt"))
    lstm = tiny("lstm")
    trainer = _trainer(tmp_path, steps=1)
    trainer.strategy.connect(lstm)
    bad = tmp_path / "lstm.ckpt"
    trainer.save_checkpoint(bad)
    with pytest.raises(ValueError, match=r"model\.cnn_ckpt=.*model_kind='lstm'"):
        tiny("combined", cnn_ckpt=str(bad))


def test_transfer_checks_the_inputs_the_cnn_was_trained_on(triplet_ckpt, tmp_path):
    """A CNN sees drawings only as it learned them: rendered otherwise (size, ink on background,
    standardisation …) it is refused, naming the data keys; a checkpoint recording no input settings
    can only be checked for its image size (which was a warning)."""
    path, _ = triplet_ckpt
    with pytest.raises(ConfigError, match=r"model\.cnn_ckpt=.*data\.image_size=32, this run uses 48"):
        CombinedModel(NUM_CLASSES, TINY, embedding_dim=16, hidden=8, image_size=48, cnn_ckpt=str(path))
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    ckpt["SketchDataModule"] = InputSettings(image_size=SIZE, seq_std=1.0).to_dict()
    torch.save(ckpt, tmp_path / "with_inputs.ckpt")
    model = tiny("combined", cnn_ckpt=str(tmp_path / "with_inputs.ckpt"))
    model.check_transfer_inputs(InputSettings(image_size=SIZE, max_snapshots=None, seq_norm="none"))  # not rendering
    with pytest.raises(ConfigError) as e:
        model.check_transfer_inputs(InputSettings(image_size=SIZE, background="white", line_width=5.25))
    assert "data.line_width=8.0 (this run: 5.25)" in str(e.value) and "data.background='black'" in str(e.value)
    assert "image_size" not in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------------- on the embedded real data
@pytest.mark.parametrize("kind", ["combined", "triplet"])
def test_loss_falls_on_a_real_batch(kind):
    """A real batch from the default SketchDataModule (embedded study10 drawings, rendered views)."""

    torch.manual_seed(0)
    dm = SketchDataModule(views=sorted(MODELS[kind].VIEWS), image_size=SIZE, batch_size=12,
                          sampler="pk" if kind == "triplet" else "random", pk_p=3, pk_k=4)
    dm.setup("fit")
    batch = dm.render(next(iter(dm.train_dataloader())))
    assert set(MODELS[kind].VIEWS) - {"sequence"} <= set(batch)
    if kind == "combined":
        model = CombinedModel(dm.num_classes, TINY, embedding_dim=16, hidden=16, mlp_hidden=16,
                              image_size=SIZE, optimizer=dict(DEFAULT_OPTIMIZER, lr=3e-3, weight_decay=0.0),
                              scheduler=None)
    else:
        model = tiny("triplet")
    first, last = overfit(model, batch, steps=20)
    assert last < 0.7 * first, (first, last)


def test_combined_records_before_the_normalised_metric_term_keep_their_raw_space():
    """A combined checkpoint of an earlier format was trained with its metric term on the raw
    embedding: migrating its record says so, so its ``embed`` (KNN, suggestions) is what it learned."""
    from sketchembed.models.checkpoint import migrate

    old = migrate({"model_kind": "combined", "num_classes": NUM_CLASSES}, "old.ckpt")
    assert old["metric_normalize"] is False
    assert migrate({"model_kind": "lstm", "num_classes": NUM_CLASSES}, "old.ckpt").get("metric_normalize") is None
    new = migrate({**old, "metric_normalize": True}, "new.ckpt")  # this format: what it says stands
    assert new["metric_normalize"] is True
