"""The combined model with a metric loss (`python train.py model=combined backbone=inception_v4
loss=hinge`, the README's headline command): loss = cross-entropy + triplet_weight * metric loss,
the metric loss on the L2-normalised representation, so its size does not follow the backbone's
scale (inception_v4's large embeddings made the unnormalised hinge term swamp the cross-entropy and
the run's loss rise)."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from helpers import MODEL_TINY, TINY, compose_cfg, make_batch, read_csv_metrics, run_inproc, tiny_model
from sketchembed.metric.losses import CrossEntropy, HingeTripletLoss
from sketchembed.models import CombinedModel

SMALL = ["model.embedding_dim=16", "model.hidden=16", "model.mlp_hidden=16"]


def tiny_combined(**kw) -> CombinedModel:
    return tiny_model("combined", **kw)


def _model(tmp_path, *overrides: str) -> tuple[CombinedModel, dict]:
    cfg = compose_cfg(["loss=hinge", "backbone=test_resnet", "data.image_size=32", "data.batch_size=16",
                       "data.max_snapshots=3", "augment=none", *SMALL, *overrides], tmp_path)
    dm = instantiate(cfg.data, views=sorted(CombinedModel.VIEWS), _convert_="all")
    dm.setup("fit")
    miner = instantiate(cfg.miner, _convert_="all") if cfg.get("miner") else None  # train.py builds the parts
    model = instantiate(cfg.model, num_classes=dm.num_classes, loss=instantiate(cfg.loss, _convert_="all"),
                        miner=miner, _recursive_=False, _convert_="all")
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    return model, batch


@pytest.mark.parametrize("normalize", [True, False])
def test_the_metric_term_does_not_grow_with_the_embedding_scale(tmp_path, normalize):
    """A CNN whose embeddings are 30x larger (as an unnormalised deep backbone's can be): on unit
    vectors the hinge term stays within its bound (squared distances <= 4, margin 1: <= 5);
    unnormalised it grows with the scale squared. (miner=all: every triplet, the hard ones included,
    whose hinge is d_pos - d_neg + 1 and so follows the scale; the default semi-hard miner picks
    such triplets only where a pair has no semi-hard negative.)"""
    torch.manual_seed(0)
    model, batch = _model(tmp_path, "miner=all", f"model.metric_normalize={normalize}")
    model.train()  # batch statistics: the drawings' features differ (at init the running ones barely do)
    with torch.no_grad():
        _, before = model.training_loss(batch)
        model.cnn.proj.weight.mul_(30.0)
        model.cnn.proj.bias.mul_(30.0)
        _, after = model.training_loss(batch)
    if normalize:
        assert after["metric_loss"] <= 5.0 and before["metric_loss"] <= 5.0
        emb = model.embed(batch)
        assert torch.allclose(emb.norm(dim=-1), torch.ones(len(emb)), atol=1e-5)  # KNN searches that space
    else:
        assert after["metric_loss"] > 50 * max(float(before["metric_loss"]), 0.1)


def test_a_cross_entropy_combined_model_keeps_its_raw_embedding(tmp_path):
    model, batch = _model(tmp_path, "loss=cross_entropy")
    assert model.metric_loss is None and not model.metric_normalize
    model.eval()
    with torch.no_grad():
        emb, logits = model._eval_outputs(batch)
    assert not torch.allclose(emb.norm(dim=-1), torch.ones(len(emb)))
    assert torch.equal(logits, model.head(emb))


@pytest.mark.slow
def test_headline_command_loss_falls_on_the_embedded_data(tmp_path):
    """`model=combined backbone=inception_v4 loss=hinge` at a CPU size (test_resnet, 32 px, small
    layers) on 48 embedded real drawings (debug=overfit's subset): over 24 steps the loss falls, and
    the metric term stays within its bound. (The inception_v4 command itself: README, "The headline
    command on a CPU".)"""
    overrides = [o for o in TINY
                 if not o.startswith(("trainer.max_steps", "trainer.limit_train", "trainer.max_epochs"))]
    run_inproc(["model=combined", "loss=hinge", *overrides, *MODEL_TINY["combined"], "augment=none",
                "data.max_train=48", "data.batch_size=16", "trainer.max_steps=24", "trainer.max_epochs=8",
                "trainer.log_every_n_steps=1", "callbacks.embedding_eval=null", "callbacks.space_images=null",
                "test=false"], tmp_path)
    rows = [r for r in read_csv_metrics(tmp_path) if r.get("train/loss")]
    loss = [float(r["train/loss"]) for r in rows]
    assert len(loss) == 24
    first, last = sum(loss[:6]) / 6, sum(loss[-6:]) / 6
    assert last < 0.95 * first, loss  # measured: 3.22 -> 2.88 (seed 42)
    assert all(float(r["train/metric_loss"]) <= 5.0 for r in rows)


@pytest.mark.parametrize(("loss", "classifier", "metric"), [("hinge", CrossEntropy, HingeTripletLoss),
                                                          ("cross_entropy", CrossEntropy, type(None))])
def test_the_two_losses_are_named_parts_and_the_record_keeps_the_configured_one(loss, classifier, metric):
    """The classifier's loss and the optional metric loss are two parts of the model; the checkpoint
    records the configured loss by its registered name."""
    model = tiny_combined(loss=loss)
    assert type(model.classifier_loss) is classifier and type(model.metric_loss) is metric and model.loss is None
    assert model.record.loss.name == loss
    if loss == "cross_entropy":  # the configured one itself, with its arguments
        assert tiny_combined(loss=CrossEntropy(label_smoothing=0.1)).classifier_loss.label_smoothing == 0.1


def test_a_rebuilt_metric_combined_model_embeds_in_the_space_it_learned():
    """Rebuilt from its record (as a checkpoint is loaded: no loss built), a model trained with a
    metric loss still embeds in the normalised space KNN searched while it trained."""
    torch.manual_seed(0)
    model = tiny_combined(loss="hinge").eval()
    loaded = CombinedModel.from_record(model.record)
    loaded.load_state_dict(model.state_dict())
    loaded.eval()
    assert loaded.metric_loss is None and loaded.classifier_loss is None and loaded.metric_normalize
    batch = make_batch(B=5)
    with torch.no_grad():
        assert torch.equal(model.embed(batch), loaded.embed(batch))
