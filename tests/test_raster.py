"""The torch rasterizer against independent references on real drawings, and its contracts
(snapshots, truncation, batching, padding, dots, chunking, render_views)."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from bench.raster import study_match
from helpers import real_points
from sketchembed.corpus.embedded import open_embedded
from sketchembed.data.raster import CHUNK_ELEMS, Rasterizer, per_image_standardize, render_views, stroke_ends

FILES = ("apple", "cat", "airplane", "The Eiffel Tower", "bus", "helicopter")


@pytest.fixture(scope="module")
def drawings(shared_quickdraw) -> list[np.ndarray]:
    """A few real simplified drawings per class as (N, 3) float32 points."""
    out = real_points(shared_quickdraw, FILES, 4)
    assert len(out) == 4 * len(FILES)
    return out


def pad(drawings, fill=0.0):
    T = max(len(d) for d in drawings)
    pts = torch.full((len(drawings), T, 3), float(fill))
    for i, d in enumerate(drawings):
        pts[i, : len(d)] = torch.as_tensor(d)
    return pts, torch.tensor([len(d) for d in drawings])


def pil_reference(pts: np.ndarray, r: Rasterizer, ss: int = 4) -> np.ndarray:
    """Independent reference: PIL lines with round joints and caps, drawn ss x larger, box-reduced."""
    S = r.size * ss
    img = Image.new("L", (S, S), 0)
    draw = ImageDraw.Draw(img)
    u = (pts[:, :2] + 0.5 + r.padding) * r.scale * ss
    w = 2 * r.half_width * ss
    start = 0
    for end in np.flatnonzero(pts[:, 2] > 0) + 1:
        seg = [tuple(p) for p in u[start:end]]
        if len(seg) > 1:
            draw.line(seg, fill=255, width=int(round(w)), joint="curve")
        for x, y in (seg[0], seg[-1]):
            draw.ellipse([x - w / 2, y - w / 2, x + w / 2, y + w / 2], fill=255)
        start = end
    return np.asarray(img.reduce(ss), dtype=np.float32) / 255


def brute_force(pts: np.ndarray, r: Rasterizer) -> torch.Tensor:
    """The rasterizer's own formula, evaluated at every pixel for every segment (float64)."""
    S, hw = r.size, r.half_width
    xy = (torch.as_tensor(pts[:, :2], dtype=torch.float64) + 0.5 + r.padding) * r.scale
    pen = [bool(v > 0.5) for v in pts[:, 2]]
    pen[-1] = True
    c = torch.arange(S, dtype=torch.float64) + 0.5
    Y, X = torch.meshgrid(c, c, indexing="ij")
    P = torch.stack([X, Y], -1)
    img = torch.zeros(S, S, dtype=torch.float64)
    for i in range(len(pts)):
        if not pen[i]:
            a, b = xy[i], xy[i + 1]
        elif i == 0 or pen[i - 1]:
            a = b = xy[i]
        else:
            continue
        u = b - a
        l2 = float(u @ u)
        t = ((P - a) @ u / l2).clamp(0, 1) if l2 > 0 else torch.zeros(S, S, dtype=torch.float64)
        d = (P - a - t[..., None] * u).norm(dim=-1)
        img = torch.maximum(img, (hw + 0.5 - d).clamp(0, 1))
    return img


def truncate(pts: np.ndarray, fraction: float) -> np.ndarray:
    """ARCHITECTURE.md: keep the first ceil(f * N) points (at least 2), pen_up = 1 on the last."""
    n = max(2, math.ceil(fraction * len(pts)))
    out = pts[:n].copy()
    out[-1, 2] = 1
    return out


@pytest.mark.parametrize("size,kw", [(64, dict(padding=0.0)), (224, {})])
def test_matches_pil_reference(drawings, size, kw):
    r = Rasterizer(size, **kw)
    pts, n = pad(drawings)
    img = r(pts, n)[:, 0].numpy()
    ious = []
    for i, d in enumerate(drawings):
        ref = pil_reference(d, r)
        a, b = img[i] > 0.5, ref > 0.5
        ious.append((a & b).sum() / (a | b).sum())
        assert ious[-1] > 0.8, (i, ious[-1])
        assert np.abs(img[i] - ref).mean() < 0.03
        assert abs(img[i].sum() - ref.sum()) < 0.15 * ref.sum()      # same amount of ink
    assert np.mean(ious) > 0.85


@pytest.mark.parametrize("size,kw", [(32, {}), (48, dict(line_width=20.0, padding=0.0)),
                                     (40, dict(piece_len=3.0))])
def test_exact_against_brute_force(drawings, size, kw):
    """The windowed strips miss no ink and invent none: equal to evaluating every pixel."""
    r = Rasterizer(size, **kw)
    sel = drawings[::3]
    pts, n = pad(sel)
    img = r(pts, n)[:, 0].double()
    for i, d in enumerate(sel):
        torch.testing.assert_close(img[i], brute_force(d, r), atol=1e-4, rtol=0)


def test_snapshots_count_last_equals_final_and_each_is_a_truncation(drawings):
    r = Rasterizer(48)
    pts, n = pad(drawings)
    snaps, sb, sp = r.all_snapshots(pts, n)
    final = r(pts, n)
    strokes = [int((d[:, 2] > 0).sum()) for d in drawings]
    assert snaps.shape == (sum(strokes), 1, 48, 48)
    assert torch.bincount(sb, minlength=len(drawings)).tolist() == strokes
    for b in range(len(drawings)):
        mine = snaps[sb == b]
        torch.testing.assert_close(mine[-1], final[b], atol=1e-6, rtol=0)
        # each snapshot is the drawing rendered up to that stroke end, and ink only grows
        for m, pos in zip(mine, sp[sb == b].tolist()):
            cut = drawings[b][: pos + 1]
            alone = r(torch.as_tensor(cut)[None], torch.tensor([len(cut)]))[0]
            torch.testing.assert_close(m, alone, atol=1e-6, rtol=0)
        assert bool((mine[1:] >= mine[:-1] - 1e-6).all())


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.77])
def test_truncated_snapshot_equals_rendering_truncated_points(drawings, fraction):
    r = Rasterizer(40)
    pts, n = pad(drawings)
    pos = torch.tensor([max(2, math.ceil(fraction * len(d))) - 1 for d in drawings])
    snaps = r.snapshots(pts, n, torch.arange(len(drawings)), pos)
    cut = [truncate(d, fraction) for d in drawings]
    torch.testing.assert_close(snaps, r(*pad(cut)), atol=1e-6, rtol=0)


def test_truncation_on_a_stroke_start_shows_a_dot():
    r = Rasterizer(32, padding=0.0)
    pts = torch.tensor([[[10.0, 10, 0], [100, 10, 1], [200, 200, 0], [220, 200, 1]]])
    img = r.snapshots(pts, torch.tensor([4]), torch.tensor([0]), torch.tensor([2]))
    alone = r(pts[:, :3].clone().index_put_((torch.tensor([0]), torch.tensor([2]), torch.tensor([2])),
                                             torch.tensor(1.0)), torch.tensor([3]))
    torch.testing.assert_close(img, alone)
    assert float(img[0, 0, 24:27, 24:27].max()) > 0.3                 # the dot at (200, 200)
    assert float(img[0, 0, 24:27, 24:27].sum()) > 0.5


def test_mixed_lengths_batch_equals_each_alone_and_padding_leaves_no_ink(drawings):
    r = Rasterizer(48)
    pts, n = pad(drawings)
    junk, _ = pad(drawings, fill=0.0)
    mask = torch.arange(pts.shape[1])[None, :] >= n[:, None]
    gen = torch.Generator().manual_seed(0)
    junk[mask] = torch.rand(int(mask.sum()), 3, generator=gen) * torch.tensor([255.0, 255.0, 1.0])
    together = r(pts, n)
    torch.testing.assert_close(r(junk, n), together, atol=0, rtol=0)
    snaps_junk = r.all_snapshots(junk, n)[0]
    torch.testing.assert_close(snaps_junk, r.all_snapshots(pts, n)[0], atol=0, rtol=0)
    for i, d in enumerate(drawings):
        alone = r(torch.as_tensor(d)[None], torch.tensor([len(d)]))
        torch.testing.assert_close(together[i], alone[0], atol=1e-6, rtol=0)


def test_dots_show_ink():
    r = Rasterizer(64, padding=0.0)                                   # 4 canvas units per pixel
    two_same = torch.tensor([[[100.0, 60, 0], [100, 60, 1], [0, 0, 0]]])
    one_point = torch.tensor([[[30.0, 200, 1], [0, 0, 0], [0, 0, 0]]])
    line_then_dot = torch.tensor([[[10.0, 10, 0], [50, 10, 1], [150, 150, 1]]])
    for pts, n, (x, y) in ((two_same, 2, (100, 60)), (one_point, 1, (30, 200)),
                           (line_then_dot, 3, (150, 150))):
        img = r(pts, torch.tensor([n]))[0, 0]
        assert float(img[y // 4, x // 4]) > 0.9
        assert 2 < float(img.sum()) < 5 or n == 3                     # about a disc of diameter 2
    assert float(r(one_point, torch.tensor([0])).sum()) == 0.0       # empty drawing: blank


def test_range_dtype_and_line_width_across_sizes(drawings):
    pts, n = pad(drawings)
    ink = {}
    for size in (32, 64, 128):
        img = Rasterizer(size)(pts, n)
        assert img.dtype == torch.float32 and img.shape == (len(drawings), 1, size, size)
        assert float(img.min()) >= 0.0 and 0.99 < float(img.max()) <= 1.0
        ink[size] = float(img.mean())
    # widths are in canvas units: the share of inked area does not depend on the image size
    assert abs(ink[32] / ink[128] - 1) < 0.15 and abs(ink[64] / ink[128] - 1) < 0.1


def test_chunking_and_window_settings_do_not_change_the_result(drawings):
    pts, n = pad(drawings)
    ref = Rasterizer(48).all_snapshots(pts, n)[0]
    small = Rasterizer(48, chunk_elems=300, piece_len=5.0).all_snapshots(pts, n)[0]
    torch.testing.assert_close(small, ref, atol=1e-5, rtol=0)
    for chunk in CHUNK_ELEMS:   # the CPU and the CUDA defaults: every piece and copy in one chunk or many
        torch.testing.assert_close(Rasterizer(48, chunk_elems=chunk).all_snapshots(pts, n)[0], ref, atol=1e-5, rtol=0)


def test_out_of_canvas_points_are_clipped():
    r = Rasterizer(32, padding=0.0)
    far = torch.tensor([[[-1e7, 128.0, 0], [1e7, 128, 1], [128, 500, 0], [128, 600, 1]]])
    img = r(far, torch.tensor([4]))[0, 0]
    assert float(img[15:17].amax(0).min()) > 0.5          # the horizontal line crosses the image
    assert float(img[:14].sum()) == 0.0 and float(img[18:].sum()) == 0.0    # ... nothing else


def test_snapshot_order_duplicates_and_errors(drawings):
    r = Rasterizer(32)
    pts, n = pad(drawings[:3])
    sb = torch.tensor([2, 0, 2, 1, 0, 2])
    sp = torch.tensor([n[2] - 1, 3, 5, n[1] - 1, 3, 5])
    snaps = r.snapshots(pts, n, sb, sp)
    for m in range(len(sb)):
        one = r.snapshots(pts, n, sb[m:m + 1], sp[m:m + 1])
        torch.testing.assert_close(snaps[m], one[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(snaps[1], snaps[4], atol=0, rtol=0)
    assert r.snapshots(pts, n, sb[:0], sp[:0]).shape == (0, 1, 32, 32)
    with pytest.raises(ValueError, match="out of range"):
        r.snapshots(pts, n, torch.tensor([0]), n[:1])
    with pytest.raises(ValueError, match="out of range"):
        r.snapshots(pts, n, torch.tensor([3]), torch.tensor([0]))
    bad = pts.clone()
    bad[0, 1, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        r(bad, n)
    bad[0, 1, 0] = pts[0, 1, 0]
    short = int(n.argmin())
    assert n[short] < pts.shape[1]
    bad[short, n[short]:, :2] = float("nan")                  # beyond lengths: ignored
    torch.testing.assert_close(r(bad, n), r(pts, n))
    assert r(torch.zeros(2, 0, 3), torch.zeros(2, dtype=torch.long)).abs().sum() == 0
    with pytest.raises(ValueError, match="too wide"):
        Rasterizer(8, line_width=200.0)


def test_render_views_adds_image_and_snapshots(drawings):
    r = Rasterizer(32)
    pts, n = pad(drawings[:5])
    sb, sp = stroke_ends(pts, n)
    batch = {"points": pts, "lengths": n, "snap_batch": sb, "snap_pos": sp}
    out = render_views(dict(batch), r, {"image", "snapshots"})
    torch.testing.assert_close(out["image"], r(pts, n), atol=1e-6, rtol=0)
    torch.testing.assert_close(out["snapshots"], r.snapshots(pts, n, sb, sp), atol=1e-6, rtol=0)
    only = render_views(dict(batch), r, {"image", "sequence"})
    assert "snapshots" not in only and only["image"].shape == (5, 1, 32, 32)
    assert "image" not in render_views(dict(batch), r, {"snapshots"})
    assert set(render_views(dict(batch), r, {"sequence"})) == set(batch)
    with pytest.raises(KeyError, match="snap_batch"):
        render_views({"points": pts, "lengths": n}, r, {"snapshots"})


# ------------------------------------------------------------------ the study's output style
def test_study_geometry_puts_point_c_at_pixel_c_plus_border():
    """canvas=255, padding=5 at 265 px = the study's 255 px canvas with a 5 px border, 1:1."""
    r = Rasterizer(265, line_width=3.0, padding=5.0, canvas=255.0)
    for c in (0, 17, 128, 255):
        img = r(torch.tensor([[[float(c), float(c), 1.0]]]), torch.tensor([1]))[0, 0]
        assert float(img[c + 5, c + 5]) == 1.0
        assert float(img[c + 5, c + 5 + 3]) == 0.0 and float(img[c + 5 + 3, c + 5]) == 0.0
        at = torch.arange(265, dtype=torch.float32)
        cy, cx = (float((img.sum(k) * at).sum() / img.sum()) for k in (1, 0))
        assert abs(cy - (c + 5)) < 1e-4 and abs(cx - (c + 5)) < 1e-4  # centred on the pixel


def test_style_white_background_and_per_image_standardisation(drawings):
    pts, n = pad(drawings[:6])
    cov = Rasterizer(48)(pts, n)
    white = Rasterizer(48, background="white")
    torch.testing.assert_close(white.style(cov), 1.0 - cov)
    std = Rasterizer(48, background="white", standardize=True).style(cov)
    flat = std.reshape(len(cov), -1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(len(cov)), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat.std(1, unbiased=False), torch.ones(len(cov)), atol=1e-4, rtol=0)
    # tf.image.per_image_standardization: a flat image stays finite (0), the floor is 1/sqrt(N)
    flat_img = torch.full((1, 1, 4, 4), 0.7)
    torch.testing.assert_close(per_image_standardize(flat_img), torch.zeros_like(flat_img), atol=1e-5, rtol=0)
    faint = torch.zeros(1, 1, 4, 4)
    faint[0, 0, 0, 0] = 0.01
    ref = (faint - faint.mean()) / (1 / 4)                       # std 0.0024 < 1/sqrt(16)
    torch.testing.assert_close(per_image_standardize(faint), ref)
    # the style never changes the coverage the rasterizer computes
    torch.testing.assert_close(Rasterizer(48, background="white", standardize=True)(pts, n), cov)


def test_render_views_styles_both_views(drawings):
    r = Rasterizer(32, background="white", standardize=True)
    pts, n = pad(drawings[:4])
    sb, sp = stroke_ends(pts, n)
    out = render_views({"points": pts, "lengths": n, "snap_batch": sb, "snap_pos": sp}, r, {"image", "snapshots"})
    torch.testing.assert_close(out["image"], r.style(r(pts, n)), atol=1e-5, rtol=0)
    torch.testing.assert_close(out["snapshots"], r.style(r.snapshots(pts, n, sb, sp)), atol=1e-5, rtol=0)


def test_render_views_image_lengths_shows_fewer_points(drawings):
    r = Rasterizer(32)
    pts, n = pad(drawings[:4])
    shown = torch.clamp(n // 2, min=1)
    out = render_views({"points": pts, "lengths": n, "image_lengths": shown}, r, {"image"})
    torch.testing.assert_close(out["image"], r.snapshots(pts, n, torch.arange(4), shown - 1), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kw, match", [({"background": "grey"}, "background"),
                                       ({"standardize": 1}, "standardize")])
def test_bad_style_is_an_error(kw, match):
    with pytest.raises(ValueError, match=match):
        Rasterizer(32, **kw)


def test_study_settings_match_the_studys_cv2_rendering(shared_quickdraw):
    """conf/data/study.yaml renders like the study's cv2.polylines(thickness 3, LINE_AA) + bicubic."""
    config, nominal = study_match(real_points(shared_quickdraw, FILES, 6))
    assert config["setting"] == "conf/data/study.yaml" and nominal["line_width"] == 3.0
    assert config["mad"] < 0.006 and config["mad_standardized"] < 0.03
    assert nominal["mad"] > 3 * config["mad"]   # the nominal 3 px draws visibly thinner lines


# ------------------------------------------------------------------------------------ channels
# sha256 of every stroke-end snapshot of the embedded study10 test split (float32 bytes), rendered by
# the rasterizer before channels existed (commit dd7dfbb): the default output must not change a bit.
INK_SHA256 = {28: "1ff0d4256cad86bd6a1971b280868d60dc5210a1ce5732582b5cc263bd2dfdfe",
              64: "d4e466691c8bc10914d79f3dca73e5281ab5746b492f492cbd073e30f2046379"}


@pytest.fixture(scope="module")
def embedded_test():
    """(points, lengths) of the embedded study10 test split: real drawings shipped with the package."""
    ds = open_embedded("study10")
    return pad([np.asarray(ds.points(int(i)), np.float32) for i in ds.indices("test")])


@pytest.mark.parametrize("size", sorted(INK_SHA256))
def test_default_ink_output_is_bit_exact_with_the_rasterizer_before_channels(embedded_test, size):
    pts, n = embedded_test
    snaps, _, _ = Rasterizer(size).all_snapshots(pts, n)
    assert snaps.shape[1] == 1 and Rasterizer(size, channels=["ink"]).channels == ("ink",)
    assert hashlib.sha256(snaps.numpy().tobytes()).hexdigest() == INK_SHA256[size]
    # the ink channel of a multi-channel image is that same image, bit for bit
    multi, _, _ = Rasterizer(size, channels=("time", "ink", "order")).all_snapshots(pts, n)
    assert multi.shape == (snaps.shape[0], 3, size, size)
    assert torch.equal(multi[:, 1:2], snaps)


def test_order_and_time_channels_of_a_two_stroke_drawing():
    """Stroke 1: 2 points (a horizontal line at y=60); stroke 2: 3 points (a line at y=180, bent at
    x=128). Order: stroke k of n so far shines k / n; time: a segment shines (its last point's
    number) / (points so far)."""
    r = Rasterizer(64, padding=0.0, canvas=256.0, channels=("ink", "order", "time"))
    pts = torch.tensor([[[20.0, 60, 0], [230, 60, 1], [20, 180, 0], [128, 180, 0], [230, 180, 1]]])
    n = torch.tensor([5])
    px = lambda c: int((c + 0.5) * 64 / 256)  # noqa: E731 - canvas unit -> output pixel
    img = r(pts, n)[0]
    ink, order, time = img
    y1, y2 = px(60), px(180)
    assert float(ink[y1, px(120)]) == float(ink[y2, px(70)]) == float(ink[y2, px(180)]) == 1.0
    assert float(order[y1, px(120)]) == pytest.approx(1 / 2) and float(order[y2, px(70)]) == 1.0
    assert float(time[y1, px(120)]) == pytest.approx(2 / 5)       # segment 0 -> 1 ends on point 2 of 5
    assert float(time[y2, px(70)]) == pytest.approx(4 / 5) and float(time[y2, px(180)]) == 1.0
    # off the lines every channel is blank; on them order and time are ink times their weight
    assert float(img[:, px(120), px(120)].abs().max()) == 0.0
    assert bool((order <= ink + 1e-6).all()) and bool((time <= ink + 1e-6).all())
    # the snapshot after stroke 1 knows nothing of stroke 2: stroke 1 is the latest, at 1
    snap = r.snapshots(pts, n, torch.tensor([0]), torch.tensor([1]))[0]
    assert float(snap[0, y2].max()) == 0.0
    assert float(snap[1, y1, px(120)]) == 1.0 and float(snap[2, y1, px(120)]) == 1.0


def test_where_strokes_cross_the_later_one_shows():
    r = Rasterizer(64, padding=0.0, channels=("order",))
    pts = torch.tensor([[[128.0, 20, 0], [128, 230, 1], [20, 128, 0], [230, 128, 1]]])
    img = r(pts, torch.tensor([4]))[0, 0]
    c = int(128.5 * 64 / 256)
    assert float(img[c, c]) == 1.0 and float(img[c - 10, c]) == pytest.approx(0.5)


@pytest.mark.parametrize("channels", [("ink", "order"), ("ink", "order", "time")])
def test_channel_snapshots_are_the_truncated_drawings_and_the_last_is_the_final_image(embedded_test, channels):
    """A snapshot is the image of the drawing cut there (fades relative to what is drawn so far),
    and at 100 % it is the final image."""
    pts, n = embedded_test
    pts, n = pts[:12], n[:12]
    r = Rasterizer(32, channels=channels)
    snaps, sb, sp = r.all_snapshots(pts, n)
    final = r(pts, n)
    assert snaps.shape[1] == final.shape[1] == len(channels)
    for b in range(len(n)):
        mine, pos = snaps[sb == b], sp[sb == b].tolist()
        assert torch.equal(mine[-1], final[b])
        for m, p in zip(mine, pos):
            cut = pts[b, : p + 1].clone()
            cut[-1, 2] = 1
            torch.testing.assert_close(m, r(cut[None], torch.tensor([p + 1]))[0], atol=1e-6, rtol=0)
    # a fraction that ends mid-stroke: the partial stroke is the latest one
    half = torch.tensor([max(2, math.ceil(0.5 * int(k))) for k in n])
    torch.testing.assert_close(r.snapshots(pts, n, torch.arange(len(n)), half - 1),
                               r(*pad([truncate(pts[b, : n[b]].numpy(), 0.5) for b in range(len(n))])),
                               atol=1e-6, rtol=0)


def test_styles_and_render_views_handle_channels(embedded_test):
    pts, n = embedded_test
    pts, n = pts[:5], n[:5]
    r = Rasterizer(32, background="white", standardize=True, channels=("ink", "time"))
    cov = r(pts, n)
    styled = r.style(cov)
    assert styled.shape == (5, 2, 32, 32)
    # each channel is standardised on its own (ink and time have different ranges)
    flat = styled.reshape(10, -1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(10), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat.std(1, unbiased=False), torch.ones(10), atol=1e-4, rtol=0)
    torch.testing.assert_close(Rasterizer(32, background="white", channels=("ink", "time")).style(cov), 1 - cov)
    sb, sp = stroke_ends(pts, n)
    out = render_views({"points": pts, "lengths": n, "snap_batch": sb, "snap_pos": sp}, r, {"image", "snapshots"})
    assert out["image"].shape == (5, 2, 32, 32) and out["snapshots"].shape == (len(sb), 2, 32, 32)
    torch.testing.assert_close(out["image"], styled, atol=1e-5, rtol=0)


@pytest.mark.parametrize("channels", [["ink", "colour"], [], ["ink", "ink"], 3])
def test_bad_channels_name_the_config_key(channels):
    with pytest.raises(ValueError, match=r"^data\.channels must be a list of channels"):
        Rasterizer(32, channels=channels)
