"""Batched, vectorized, anti-aliased rasterizer in torch (final images, truncations, snapshots).

It runs for every training batch, on the batch's device, so the hot path has no Python loop per
pixel, segment or drawing and no device-specific code (CPU and CUDA run the same ops).

How it works (see ``docs/ARCHITECTURE.md`` "Rasterizer"):

* every segment (consecutive points of one stroke; a one-point or zero-length stroke is a dot) is
  clipped to the image, then cut into *pieces* of at most ``piece_len`` output pixels;
* each piece evaluates the anti-aliased coverage ``clamp(half_width + 0.5 - distance, 0, 1)`` only in
  a small fixed square window around itself and scatters it into the output with ``amax`` (segments
  in the simplified data are short, so a window is far cheaper than a full distance field);
* snapshots share the work: each segment is drawn once, into the *layer* of the first snapshot of its
  drawing that contains it, and a segmented cumulative max over each drawing's snapshots (log-step
  doubling) turns layers into snapshots. The final image is just the snapshot at ``lengths - 1``.

Memory stays bounded: the pieces are processed in chunks of at most ``chunk_elems`` window pixels;
beyond that only the requested output is allocated.

Geometry. ``line_width`` and ``padding`` are in *canvas units* (the 256 px canvas of the simplified
data), so a drawing looks the same at every output size: the square ``[-padding, canvas + padding]``
fills the image, point ``c`` (integer canvas pixel, centre ``c + 0.5``) lands at
``(c + 0.5 + padding) * size / (canvas + 2 * padding)`` output pixels. The defaults (width 8,
padding 4.5, i.e. the classic 265 px canvas) give a line of ``size / 33`` output pixels (about 2 px at
64, 6.8 px at 224). Lines are never thinner than ``min_width_px`` output pixels so that small images
keep their strokes. Points outside the canvas (augmentations) are clipped, not wrapped.
"""

from __future__ import annotations

import math

import torch

__all__ = ["Rasterizer", "render_views", "stroke_ends"]


class Rasterizer:
    """``Rasterizer(size)(points (B,T,3), lengths (B,)) -> (B,1,size,size)`` float in [0,1], ink = 1."""

    def __init__(self, size: int = 64, line_width: float = 8.0, padding: float = 4.5,
                 canvas: float = 256.0, *, min_width_px: float = 1.0, piece_len: float | None = None,
                 chunk_elems: int = 1 << 21, snap_mode: str = "expand"):
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if line_width <= 0 or padding < 0 or canvas <= 0:
            raise ValueError(f"need line_width > 0, padding >= 0, canvas > 0; got "
                             f"{line_width}, {padding}, {canvas}")
        self.size = int(size)
        self.line_width = float(line_width)
        self.padding = float(padding)
        self.canvas = float(canvas)
        self.scale = self.size / (self.canvas + 2 * self.padding)   # output px per canvas unit
        self.half_width = max(self.line_width * self.scale, float(min_width_px)) / 2
        if piece_len is None:
            piece_len = max(4.0, 2.0 * self.half_width + 3.0)
        # The window holds a piece plus the anti-aliased rim on both sides, and fits in the image.
        rim = int(math.ceil(2 * self.half_width)) + 3
        if rim + 1 > self.size:
            raise ValueError(f"line width {self.line_width} is too wide for a {self.size} px image")
        self.piece_len = float(min(piece_len, self.size - rim))
        self.window = int(math.ceil(self.piece_len)) + rim
        self.chunk_elems = int(chunk_elems)
        self.chunk_pieces = max(1, self.chunk_elems // (self.window * self.window))
        if snap_mode not in ("expand", "cummax"):
            raise ValueError(f"snap_mode must be 'expand' or 'cummax', got {snap_mode!r}")
        self.snap_mode = snap_mode

    def __repr__(self) -> str:
        return (f"Rasterizer(size={self.size}, line_width={self.line_width}, padding={self.padding}, "
                f"canvas={self.canvas})")

    # ------------------------------------------------------------------ public API
    def __call__(self, points: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The whole drawing (the first ``lengths[b]`` points) of every row."""
        lengths = torch.as_tensor(lengths, device=points.device).long()
        b = torch.arange(points.shape[0], device=points.device)
        return self.snapshots(points, lengths, b, lengths - 1)

    def snapshots(self, points: torch.Tensor, lengths: torch.Tensor, snap_batch: torch.Tensor,
                  snap_pos: torch.Tensor) -> torch.Tensor:
        """Image ``m`` = drawing ``snap_batch[m]`` truncated after point ``snap_pos[m]`` (inclusive).

        A truncation that ends on a stroke's first point shows that point as a dot, as rendering the
        truncated points (whose last point gets pen_up = 1) would. ``snap_pos = -1`` is a blank image.
        """
        if points.dim() != 3 or points.shape[-1] != 3:
            raise ValueError(f"points must be (B, T, 3), got {tuple(points.shape)}")
        dev = points.device
        B, T, _ = points.shape
        H = W = self.size
        lengths = torch.as_tensor(lengths, device=dev).long()
        snap_batch = torch.as_tensor(snap_batch, device=dev).long().reshape(-1)
        snap_pos = torch.as_tensor(snap_pos, device=dev).long().reshape(-1)
        if lengths.shape != (B,):
            raise ValueError(f"lengths must be ({B},), got {tuple(lengths.shape)}")
        if snap_batch.shape != snap_pos.shape:
            raise ValueError("snap_batch and snap_pos must have the same length")
        M = snap_batch.numel()
        out = torch.zeros(M, H * W, dtype=torch.float32, device=dev)
        if M == 0:
            return out.view(0, 1, H, W)
        if bool(((snap_batch < 0) | (snap_batch >= B)).any()) or bool(
                ((snap_pos < -1) | (snap_pos >= lengths.clamp(max=T)[snap_batch.clamp(0, B - 1)])).any()):
            raise ValueError("snap_batch/snap_pos out of range (snap_pos must be < lengths[snap_batch])")

        xy = points[..., :2].float() + 0.5 + self.padding
        xy = xy * self.scale                                              # output px
        idx = torch.arange(T, device=dev)
        valid = idx < lengths[:, None]
        pen = (points[..., 2] > 0.5) | (idx == lengths[:, None] - 1)     # last point closes its stroke
        start = torch.ones_like(pen)
        start[:, 1:] = pen[:, :-1]
        connect = valid & ~pen                                            # segment i -> i+1
        isolated = valid & pen & start                                    # one-point stroke: a dot
        seg_ok = connect | isolated
        nxt = torch.cat([xy[:, 1:], xy[:, -1:]], dim=1)
        a = xy
        bpt = torch.where(connect[..., None], nxt, xy)
        end = idx + connect.long()                                        # last point the segment needs
        sb, si = seg_ok.nonzero(as_tuple=True)
        seg_a, seg_b, seg_end = a[sb, si], bpt[sb, si], end[sb, si]

        # Snapshots sorted by (drawing, position): the ones containing a segment are one run, from
        # the first that contains it to the drawing's last.
        key = snap_batch * (T + 1) + (snap_pos + 1)
        sorted_key, perm = torch.sort(key, stable=True)
        first = torch.searchsorted(sorted_key, sb * (T + 1) + (seg_end + 1))
        stop = torch.searchsorted(sorted_key, (sb + 1) * (T + 1))
        if self.snap_mode == "cummax":
            count = (first < stop).long()
        else:
            count = (stop - first).clamp(min=0)

        # A truncation ending on a stroke's first point: that point alone, in its own image.
        sp = snap_pos.clamp(min=0)
        tail = (snap_pos >= 0) & ~pen[snap_batch, sp] & start[snap_batch, sp]
        tm = tail.nonzero(as_tuple=True)[0]
        tp = xy[snap_batch[tm], sp[tm]]
        inv_perm = torch.empty_like(perm)
        inv_perm[perm] = torch.arange(M, device=dev)
        seg_a = torch.cat([seg_a, tp])
        seg_b = torch.cat([seg_b, tp])
        first = torch.cat([first, inv_perm[tm]])
        count = torch.cat([count, torch.ones_like(tm)])

        self._draw(out, seg_a, seg_b, first, count, perm)
        if self.snap_mode == "cummax":
            self._cummax(out, sorted_key, perm, snap_batch, T)
        return out.view(M, 1, H, W)

    def all_snapshots(self, points: torch.Tensor, lengths: torch.Tensor):
        """Every stroke-end snapshot: ``(images (M,1,H,W), snap_batch (M,), snap_pos (M,))``."""
        snap_batch, snap_pos = stroke_ends(points, lengths)
        return self.snapshots(points, lengths, snap_batch, snap_pos), snap_batch, snap_pos

    # ------------------------------------------------------------------ internals
    def _draw(self, out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, first: torch.Tensor,
              count: torch.Tensor, layers: torch.Tensor) -> None:
        """Scatter-max the coverage of segments ``a -> b`` (output px) into the images
        ``layers[first[s] : first[s] + count[s]]`` of ``out``; the coverage is computed once."""
        dev = out.device
        H = W = self.size
        HW = H * W
        hw = self.half_width
        keep = count > 0
        a, b, first, count = a[keep], b[keep], first[keep], count[keep]
        # Clip each segment to the image plus a margin wider than the line (Liang-Barsky), so far-off
        # points cost no pieces and stray coordinates cannot blow up memory.
        margin = hw + 2.0
        lo, hi = -margin, W + margin
        d = b - a
        moving = d.abs() > 1e-12
        safe = torch.where(moving, d, torch.ones_like(d))
        t_lo, t_hi = (lo - a) / safe, (hi - a) / safe
        inside = (a >= lo) & (a <= hi)
        inf = torch.full_like(t_lo, float("inf"))
        t_in = torch.where(moving, torch.minimum(t_lo, t_hi), torch.where(inside, -inf, inf))
        t_out = torch.where(moving, torch.maximum(t_lo, t_hi), torch.where(inside, inf, -inf))
        t0 = t_in.amax(dim=1).clamp(min=0.0)
        t1 = t_out.amin(dim=1).clamp(max=1.0)
        vis = t0 <= t1
        a, d, t0, t1, first, count = a[vis], d[vis], t0[vis], t1[vis], first[vis], count[vis]
        a, b = a + t0[:, None] * d, a + t1[:, None] * d
        if first.numel() == 0:
            return

        # Cut into pieces no longer than piece_len so that each fits one fixed-size window.
        n = torch.ceil((b - a).norm(dim=1) / self.piece_len).clamp(min=1).long()
        seg = torch.repeat_interleave(torch.arange(n.numel(), device=dev), n)
        k = (torch.arange(seg.numel(), device=dev) - (torch.cumsum(n, 0) - n)[seg]).float()
        nf = n[seg].float()
        d = (b - a)[seg]
        pa = a[seg] + (k / nf)[:, None] * d
        pb = a[seg] + ((k + 1) / nf)[:, None] * d
        pfirst, pcount = first[seg], count[seg]

        # Chunks bounded both in pieces and in scattered (piece x image) windows.
        K = self.window
        per = K * K
        cum = torch.cumsum(pcount, 0)
        n_p = pcount.numel()
        budget = max(1, self.chunk_elems // per)
        bounds, s = [], 0
        while s < n_p:
            base = cum[s - 1] if s else torch.zeros((), dtype=cum.dtype, device=dev)
            e = int(torch.searchsorted(cum, base + budget, right=True))
            e = min(max(e, s + 1), s + self.chunk_pieces, n_p)
            bounds.append((s, e))
            s = e
        ar = torch.arange(K, device=dev, dtype=torch.float32) + 0.5
        grid = (torch.arange(K, device=dev)[:, None] * W + torch.arange(K, device=dev)).reshape(1, -1)
        flat = out.view(-1)
        hi_o = float(W - K)
        for s, e in bounds:
            ca, cb = pa[s:e], pb[s:e]
            # Window's first pixel, kept inside the image: it still covers every in-image pixel the
            # piece can ink, so no bounds mask is needed.
            o = torch.floor(torch.minimum(ca, cb) - hw - 0.5).clamp_(0.0, hi_o)
            u = cb - ca
            ln = u.norm(dim=1)
            uh = u / ln.clamp(min=1e-12)[:, None]
            uh[ln <= 1e-12] = torch.tensor([1.0, 0.0], device=dev)
            px = (o[:, 0, None] + ar - ca[:, 0, None])[:, None, :]       # (P,1,K) pixel x - start x
            py = (o[:, 1, None] + ar - ca[:, 1, None])[:, :, None]       # (P,K,1)
            along = px * uh[:, 0, None, None] + py * uh[:, 1, None, None]
            across = py * uh[:, 0, None, None] - px * uh[:, 1, None, None]
            beyond = along - along.clamp(0.0, None).clamp_(max=ln[:, None, None])
            cov = torch.hypot(across, beyond).neg_().add_(hw + 0.5).clamp_(0.0, 1.0).reshape(len(ca), -1)
            pix = (o[:, 1].long() * W + o[:, 0].long())                 # (P,)
            c = pcount[s:e]
            if bool((c == 1).all()):
                dest = layers[pfirst[s:e]] * HW + pix
                flat.scatter_reduce_(0, (dest[:, None] + grid).reshape(-1), cov.reshape(-1),
                                     reduce="amax", include_self=True)
                continue
            rep = torch.repeat_interleave(torch.arange(len(c), device=dev), c)
            j = torch.arange(rep.numel(), device=dev) - (torch.cumsum(c, 0) - c)[rep]
            dest = layers[pfirst[s:e][rep] + j] * HW + pix[rep]
            flat.scatter_reduce_(0, (dest[:, None] + grid).reshape(-1), cov[rep].reshape(-1),
                                 reduce="amax", include_self=True)

    @staticmethod
    def _cummax(out: torch.Tensor, sorted_key: torch.Tensor, perm: torch.Tensor,
                snap_batch: torch.Tensor, T: int) -> None:
        """Per drawing, cumulative max over its snapshots in position order (Hillis-Steele doubling)."""
        M = perm.numel()
        sb_sorted = snap_batch[perm]
        group_first = torch.searchsorted(sorted_key, sb_sorted * (T + 1))
        rank = torch.arange(M, device=perm.device) - group_first
        max_rank = int(rank.max())
        step = 1
        while step <= max_rank:
            pos = (rank >= step).nonzero(as_tuple=True)[0]
            rows, src = perm[pos], perm[pos - step]
            out[rows] = torch.maximum(out[rows], out[src])
            step *= 2


def stroke_ends(points: torch.Tensor, lengths: torch.Tensor):
    """``(snap_batch, snap_pos)`` of every stroke end; a drawing's last point always counts as one."""
    dev = points.device
    T = points.shape[1]
    lengths = torch.as_tensor(lengths, device=dev).long()
    idx = torch.arange(T, device=dev)
    valid = idx < lengths[:, None]
    ends = valid & ((points[..., 2] > 0.5) | (idx == lengths[:, None] - 1))
    return ends.nonzero(as_tuple=True)


def render_views(batch: dict, rasterizer: Rasterizer, views) -> dict:
    """Add ``image`` and/or ``snapshots`` to a batch (see ARCHITECTURE.md "Batches"); returns it.

    When both are asked for they are rendered in one pass, so each segment is drawn once.
    """
    views = set(views)
    want_image, want_snaps = "image" in views, "snapshots" in views
    if not (want_image or want_snaps):
        return batch
    for key in ("points", "lengths") + (("snap_batch", "snap_pos") if want_snaps else ()):
        if key not in batch:
            raise KeyError(f"render_views: batch has no {key!r} (needed for views {sorted(views)})")
    points, lengths = batch["points"], batch["lengths"]
    B = points.shape[0]
    sb = torch.empty(0, dtype=torch.long, device=points.device)
    sp = sb
    if want_snaps:
        sb = torch.as_tensor(batch["snap_batch"], device=points.device).long()
        sp = torch.as_tensor(batch["snap_pos"], device=points.device).long()
    n_snap = sb.numel()
    if want_image:
        lengths_d = torch.as_tensor(lengths, device=points.device).long()
        sb = torch.cat([sb, torch.arange(B, device=points.device)])
        sp = torch.cat([sp, lengths_d - 1])
    images = rasterizer.snapshots(points, lengths, sb, sp)
    if want_snaps:
        batch["snapshots"] = images[:n_snap]
    if want_image:
        batch["image"] = images[n_snap:]
    return batch
