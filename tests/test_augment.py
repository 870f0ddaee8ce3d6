"""Point augmentations: exact identity, determinism, valid pen_up structure, and views that agree
(rendering augmented points = transforming the rendered image)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from helpers import real_points
from sketchembed.corpus.sketch import points_to_strokes
from sketchembed.data.augment import PointAugment
from sketchembed.data.raster import Rasterizer


@pytest.fixture(scope="module")
def drawings(shared_quickdraw) -> list[np.ndarray]:
    return real_points(shared_quickdraw, ("banana", "truck", "grapes", "van"), 3)


FULL = dict(scale=(0.8, 1.2), rotate_deg=15, shear=0.2, translate=12, jitter=1.0, stroke_dropout=0.3)


def test_identity_config_returns_input_exactly(drawings):
    aug = PointAugment()
    rng = np.random.default_rng(0)
    for d in drawings:
        out = aug(d.astype(np.int16), rng)
        assert out.dtype == np.float32 and np.array_equal(out, d)
    out = PointAugment(**FULL, p=0.0)(drawings[0], rng)
    assert np.array_equal(out, drawings[0])


def test_deterministic_for_a_seeded_rng_and_input_untouched(drawings):
    aug = PointAugment(**FULL)
    d = drawings[1]
    before = d.copy()
    a = aug(d, np.random.default_rng(7))
    b = aug(d, np.random.default_rng(7))
    c = aug(d, np.random.default_rng(8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.array_equal(d, before)


def test_pen_up_structure_kept_and_dropout_drops_whole_strokes(drawings):
    rng = np.random.default_rng(1)
    dropped_any = False
    for d in drawings:
        strokes = [s.tolist() for s in points_to_strokes(d)]
        for _ in range(10):
            out = PointAugment(stroke_dropout=0.5)(d, rng)
            assert out[-1, 2] == 1 and set(np.unique(out[:, 2])) <= {0.0, 1.0}
            kept = [s.tolist() for s in points_to_strokes(out)]
            assert 1 <= len(kept) <= len(strokes)
            it = iter(strokes)                         # kept strokes: whole, in their order
            assert all(any(k == s for s in it) for k in kept)
            dropped_any |= len(kept) < len(strokes)
            full = PointAugment(**FULL)(d, rng)
            assert full[-1, 2] == 1 and np.array_equal(np.flatnonzero(full[:, 2]) + 1,
                                  np.cumsum([len(s) for s in points_to_strokes(full)]))
    assert dropped_any
    for d in drawings:                                 # never all strokes
        out = PointAugment(stroke_dropout=1.0)(d, rng)
        assert len(points_to_strokes(out)) == 1 and out[-1, 2] == 1


def test_affine_is_about_the_centre_with_sampled_ranges(drawings):
    rng = np.random.default_rng(3)
    for d in drawings:
        centre = (d[:, :2].min(0) + d[:, :2].max(0)) / 2
        out, A = PointAugment(scale=(0.5, 2.0)).augment(d, rng)
        s = A[0, 0]
        assert 0.5 <= s <= 2.0 and A[0, 1] == 0 == A[1, 0] and A[1, 1] == s
        np.testing.assert_allclose((out[:, :2].min(0) + out[:, :2].max(0)) / 2, centre, atol=1e-3)
        np.testing.assert_allclose(np.ptp(out[:, :2], 0), s * np.ptp(d[:, :2], 0), rtol=1e-5)
        out, A = PointAugment(rotate_deg=30).augment(d, rng)
        angle = np.degrees(np.arctan2(A[1, 0], A[0, 0]))
        assert abs(angle) <= 30 and abs(np.linalg.det(A[:, :2]) - 1) < 1e-9
        out, A = PointAugment(translate=10).augment(d, rng)
        assert np.all(np.abs(A[:, 2]) <= 10) and np.allclose(A[:, :2], np.eye(2))
        out = PointAugment(jitter=2.0)(d, rng)
        assert 1.0 < np.std(out[:, :2] - d[:, :2]) < 3.0 and np.array_equal(out[:, 2], d[:, 2])


def test_views_agree_render_of_augmented_points_equals_warped_render(drawings):
    """Both views come from the same augmented points: rendering them equals warping the image of
    the original drawing by the same affine (up to resampling blur)."""
    r = Rasterizer(96, line_width=6.0)
    aug = PointAugment(scale=(0.8, 1.1), rotate_deg=20, shear=0.1, translate=10)
    rng = np.random.default_rng(5)
    k = r.scale * (0.5 + r.padding)              # output px = scale * canvas + k
    for d in drawings:
        out, A = aug.augment(d, rng)
        img = r(torch.as_tensor(d)[None], torch.tensor([len(d)]))[0, 0].numpy()
        mine = r(torch.as_tensor(out)[None], torch.tensor([len(out)]))[0, 0].numpy()
        lin, t = A[:, :2], A[:, 2]
        t_out = r.scale * t + k - lin @ np.array([k, k])
        t_cv = t_out + lin @ np.array([0.5, 0.5]) - 0.5           # cv2: pixel centres at integers
        M = np.concatenate([lin, t_cv[:, None]], 1).astype(np.float64)
        warped = cv2.warpAffine(img, M, (r.size, r.size), flags=cv2.INTER_LINEAR)
        a, b = mine > 0.4, warped > 0.4
        assert (a & b).sum() / (a | b).sum() > 0.8
        assert abs(mine.sum() / max(warped.sum(), 1e-6) - 1) < 0.3     # warping also scales the width
        wrong = cv2.warpAffine(img, np.float64([[1, 0, 8], [0, 1, 0]]), (r.size, r.size))
        assert ((wrong > 0.4) & a).sum() / ((wrong > 0.4) | a).sum() < 0.5   # the check can fail


def test_bad_config_and_hydra_instantiation():
    with pytest.raises(ValueError, match="scale"):
        PointAugment(scale=(1.2, 0.8))
    with pytest.raises(ValueError, match="scale"):
        PointAugment(scale=1.1)
    with pytest.raises(ValueError, match="jitter"):
        PointAugment(jitter=-1)
    with pytest.raises(ValueError, match="stroke_dropout"):
        PointAugment(stroke_dropout=1.5)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        PointAugment()(np.zeros((4, 2)), np.random.default_rng(0))
    cfg = OmegaConf.create({"_target_": "sketchembed.data.augment.PointAugment",
                            "scale": [0.9, 1.1], "rotate_deg": 10, "stroke_dropout": 0.1})
    aug = instantiate(cfg)
    assert isinstance(aug, PointAugment) and aug.scale == (0.9, 1.1) and aug.rotate_deg == 10
