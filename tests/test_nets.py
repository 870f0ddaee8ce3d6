"""Network parts: timm encoder by name with config-key errors, the packed LSTM and its state helpers."""

from __future__ import annotations

import pytest
import torch

from sketchembed.nets import (
    ImageEncoder,
    SequenceEncoder,
    check_backbone,
    gather_states,
    last_states,
    min_image_size,
    stroke_end_positions,
    valid_positions,
)

TINY = "test_byobnet"  # timm's tiny test network: real architecture, trains in milliseconds


def test_image_encoder_shapes_and_normalisation():
    enc = ImageEncoder(TINY, embedding_dim=16, image_size=32, normalize=True)
    z = enc(torch.rand(3, 1, 32, 32))
    assert z.shape == (3, 16)
    assert torch.allclose(z.norm(dim=-1), torch.ones(3), atol=1e-5)
    raw = ImageEncoder(TINY, embedding_dim=16, image_size=32, normalize=False)
    assert not torch.allclose(raw(torch.rand(3, 1, 32, 32)).norm(dim=-1), torch.ones(3), atol=1e-3)


def test_backbone_config_mapping_is_accepted():
    enc = ImageEncoder({"name": TINY, "pretrained": False}, embedding_dim=8, image_size=32)
    assert enc.backbone_name == TINY and enc(torch.zeros(2, 1, 32, 32)).shape == (2, 8)


def test_unknown_backbone_names_key_and_close_matches():
    with pytest.raises(ValueError, match=r"backbone\.name='resnet10x'.*resnet10t"):
        check_backbone("resnet10x", 64)
    with pytest.raises(ValueError, match=r"backbone\.name"):
        ImageEncoder("no_such_net_at_all", image_size=64)


@pytest.mark.parametrize("name,small,minimum", [("inception_v4", 64, 75), ("vgg16", 16, 32)])
def test_too_small_image_names_key_and_minimum(name, small, minimum):
    with pytest.raises(ValueError, match=rf"data\.image_size={small}.*{name}.*at least {minimum} px"):
        check_backbone(name, small)
    assert min_image_size(name) == minimum
    # and the minimum itself is accepted (meta device: no weights are built)
    assert check_backbone({"name": name}, minimum) > 0


def test_study_backbones_resolve_on_meta():
    # Feature sizes of the study's three backbones at the sizes they are used at.
    assert check_backbone("resnetv2_50", 64) == 2048
    assert check_backbone("inception_v4", 299) == 1536
    assert check_backbone("vgg16", 64) == 4096


def _seq_batch(lengths, T, dim=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), T, dim, generator=g)
    for b, n in enumerate(lengths):
        x[b, n:] = 0
    return x, torch.tensor(lengths)


def test_sequence_encoder_ignores_padding_and_zeroes_it():
    torch.manual_seed(0)
    enc = SequenceEncoder(hidden=8, layers=2).eval()
    x, lengths = _seq_batch([5, 3, 7], T=7)
    states = enc(x, lengths)
    assert states.shape == (3, 7, 8)
    assert torch.all(states[1, 3:] == 0) and torch.all(states[0, 5:] == 0)
    # Same states as running the drawing alone without padding.
    alone = enc(x[1:2, :3], torch.tensor([3]))
    assert torch.allclose(states[1, :3], alone[0], atol=1e-6)
    # Padding garbage must not leak in.
    y = x.clone()
    y[1, 3:] = 100.0
    assert torch.allclose(enc(y, lengths)[1, :3], states[1, :3], atol=1e-6)


def test_state_helpers():
    states = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)
    lengths = torch.tensor([3, 4])
    assert last_states(states, lengths).flatten().tolist() == [2.0, 7.0]
    ends = torch.tensor([[0, 2, -1], [1, 3, 3]])[:, :2]
    b, pos = stroke_end_positions(ends)
    assert b.tolist() == [0, 0, 1, 1] and pos.tolist() == [0, 2, 1, 3]
    assert gather_states(states, b, pos).flatten().tolist() == [0.0, 2.0, 5.0, 7.0]
    vb, vp = valid_positions(lengths, 4)
    assert len(vb) == 7 and vp[vb == 0].tolist() == [0, 1, 2]


def test_sequence_encoder_rejects_empty_drawing():
    enc = SequenceEncoder(hidden=4, layers=1)
    with pytest.raises(ValueError, match="lengths"):
        enc(torch.zeros(2, 3, 3), torch.tensor([3, 0]))
