"""Batched, vectorized, anti-aliased rasterizer in torch (final images, truncations, snapshots).

It runs for every training batch, on the batch's device, so the hot path has no Python loop per
pixel, segment or drawing and no device-specific code (CPU and CUDA run the same ops).

How it works (see ``docs/ARCHITECTURE.md`` "Rasterizer"):

* every segment (consecutive points of one stroke; a one-point or zero-length stroke is a dot) is
  clipped to the image, then cut into *pieces* of at most ``piece_len`` output pixels;
* each piece evaluates the anti-aliased coverage ``clamp(half_width + 0.5 - distance, 0, 1)`` only in
  a small strip around itself (``window[0]`` pixels along its major axis by ``window[1]`` across,
  centred on the line column by column) and scatters it into the output with ``amax``: segments in
  the simplified data are short, so this is far cheaper than a distance field over the image;
* snapshots share the work: each drawing's snapshots are sorted by position, each segment is drawn
  only into the first snapshot that contains it, and snapshot ``k`` starts as a copy of snapshot
  ``k - 1``. The copy is a loop over the snapshot *rank* (0, 1, 2, ... within a drawing; each step
  handles every drawing of the batch at once), not over drawings. The final image is simply the
  snapshot at ``lengths - 1``. (Drawing every segment into each snapshot that contains it instead
  scatters about as many values as the output holds and measured ~2x slower; a log-step cumulative
  max moves the output through memory several times and was slower still.)

Memory stays bounded: pieces are processed in chunks of at most ``chunk_elems`` strip pixels and the
copies in chunks of rows; beyond that only the requested output is allocated.

Geometry. ``line_width`` and ``padding`` are in *canvas units* (the 256 px canvas of the simplified
data), so a drawing looks the same at every output size: the square ``[-padding, canvas + padding]``
fills the image, point ``c`` (integer canvas pixel, centre ``c + 0.5``) lands at
``(c + 0.5 + padding) * size / (canvas + 2 * padding)`` output pixels. The defaults (width 8,
padding 4.5, i.e. the classic 265 px canvas) give a line of ``size / 33`` output pixels (about 2 px at
64, 6.8 px at 224). Lines are never thinner than ``min_width_px`` output pixels so that small images
keep their strokes. Points outside the canvas (augmentations) are clipped, not wrapped. The study's
geometry is ``canvas=255, padding=5, line_width=3`` (its 255 px canvas plus a 5 px border, 3 px
``cv2.polylines``, then a bicubic resize); ``bench/raster.py`` measures how close we come to it.

Channels (``data.channels``). ``ink`` is the coverage above (the only channel by default, output
unchanged). ``order`` shows the stroke order: coverage x (stroke number) / (strokes so far), so the
latest stroke is brightest (1) and the first of n strokes 1/n; ``time`` does the same by point:
coverage x (number of the segment's last point) / (points so far). Where lines cross the brighter
(later) one wins (``amax``). Both fades are relative to *what the image shows*, not to the finished
drawing: a snapshot after stroke s, or a drawing truncated to a fraction, is exactly the image of
the drawing cut there, so a model reading unfinished sketches is never told how many strokes are
still to come. It costs nothing extra: a segment's weight does not depend on the snapshot, and since
``max(c * w) / n = max(c * w / n)`` the snapshots share their work as for ink and each is divided by
its own count at the end. The CNN's ``in_chans`` is the number of channels.

Output style. :meth:`Rasterizer.snapshots` always returns coverage (ink = 1 on 0). What the network
sees is decided once, in :func:`render_views` via :meth:`Rasterizer.style`: ``background="white"``
(the study: black ink on white, ``1 - coverage``) and ``standardize=True`` (the study's per-image
standardisation, as ``tf.image.per_image_standardization``: ``(x - mean) / max(std, 1/sqrt(N))``).
"""

from __future__ import annotations

import math

import torch

from sketchembed.data.inputs import BACKGROUNDS, CHANNELS, DEFAULTS, InputSettings, check

__all__ = ["BACKGROUNDS", "CHANNELS", "Rasterizer", "per_image_standardize", "render_views", "stroke_ends"]

# Elements per work chunk (strip pixels of pieces, or copied snapshot pixels), by (not CUDA, CUDA):
# cache-sized on a CPU; on a GPU large, as each chunk costs kernel launches and host round trips
# (`python -m bench raster` on an H200, 224 px snapshots, batch 2,048: 2^21 179 k/s, 2^25 368 k/s).
CHUNK_ELEMS = (1 << 21, 1 << 25)


class Rasterizer:
    """``Rasterizer(size)(points (B,T,3), lengths (B,)) -> (B,C,size,size)`` float in [0,1], ink = 1.

    ``channels`` (default ``("ink",)``, C = 1) chooses what each channel shows (module docstring,
    "Channels").

    ``background`` and ``standardize`` do not change that coverage; they are the output style that
    :func:`render_views` applies (:meth:`style`).
    """

    def __init__(self, size: int = DEFAULTS.image_size, line_width: float = DEFAULTS.line_width,
                 padding: float = DEFAULTS.padding, canvas: float = DEFAULTS.canvas, *,
                 background: str = DEFAULTS.background, standardize: bool = DEFAULTS.standardize,
                 channels=DEFAULTS.channels, min_width_px: float = 1.0, piece_len: float | None = None,
                 chunk_elems: int | None = None):
        # the input settings' own checks (sketchembed.data.inputs), one rule for every consumer
        self.background = check("background", background)
        self.standardize = check("standardize", standardize)
        self.channels = check("channels", channels)
        self.size = check("image_size", size)
        self.line_width = check("line_width", line_width)
        self.padding = check("padding", padding)
        self.canvas = check("canvas", canvas)
        self.scale = self.size / (self.canvas + 2 * self.padding)   # output px per canvas unit
        self.half_width = max(self.line_width * self.scale, float(min_width_px)) / 2
        r = self.half_width + 0.5                  # reach of the anti-aliased rim from the centre line
        rows = int(math.ceil(2 * r * math.sqrt(2) + 1.5))
        rim = int(math.ceil(2 * r + 1.5))
        if max(rows, rim + 1) > self.size:
            raise ValueError(f"line width {self.line_width} is too wide for a {self.size} px image")
        if piece_len is None:      # measured (bench/raster.py): short pieces for small images
            piece_len = max(6.0, self.size / 8)
        self.piece_len = float(max(1.0, min(piece_len, self.size - rim)))
        self.window = (int(math.ceil(self.piece_len)) + rim, rows)
        self.chunk_elems = None if chunk_elems is None else int(chunk_elems)

    @classmethod
    def from_inputs(cls, inputs: InputSettings, **kwargs) -> Rasterizer:
        """The rasterizer of a model's input settings (``kwargs``: the speed knobs)."""
        return cls(inputs.image_size, inputs.line_width, inputs.padding, inputs.canvas,
                   background=inputs.background, standardize=inputs.standardize, channels=inputs.channels,
                   **kwargs)

    def __repr__(self) -> str:
        return (f"Rasterizer(size={self.size}, line_width={self.line_width}, padding={self.padding}, "
                f"canvas={self.canvas}, background={self.background!r}, standardize={self.standardize}, "
                f"channels={list(self.channels)})")

    def style(self, coverage: torch.Tensor) -> torch.Tensor:
        """Coverage (ink = 1 on 0; ``(M, C, H, W)``) -> the network's input: polarity (every channel),
        then per-image standardisation (each channel on its own)."""
        out = 1.0 - coverage if self.background == "white" else coverage
        return per_image_standardize(out) if self.standardize else out

    # ------------------------------------------------------------------ public API
    def __call__(self, points: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The whole drawing (the first ``lengths[b]`` points) of every row."""
        lengths = torch.as_tensor(lengths, device=points.device).long()
        b = torch.arange(points.shape[0], device=points.device)
        return self.snapshots(points, lengths, b, lengths - 1)

    def all_snapshots(self, points: torch.Tensor, lengths: torch.Tensor):
        """Every stroke-end snapshot: ``(images (M,1,H,W), snap_batch (M,), snap_pos (M,))``."""
        snap_batch, snap_pos = stroke_ends(points, lengths)
        return self.snapshots(points, lengths, snap_batch, snap_pos), snap_batch, snap_pos

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
        lengths = torch.as_tensor(lengths, device=dev).long().reshape(-1)
        snap_batch = torch.as_tensor(snap_batch, device=dev).long().reshape(-1)
        snap_pos = torch.as_tensor(snap_pos, device=dev).long().reshape(-1)
        if lengths.shape != (B,):
            raise ValueError(f"lengths must be ({B},), got {tuple(lengths.shape)}")
        M = snap_batch.numel()
        if snap_batch.shape != snap_pos.shape:
            raise ValueError("snap_batch and snap_pos must have the same length")
        idx = torch.arange(T, device=dev)
        valid = idx < lengths[:, None]
        # Every check in one host round trip (each one stalls a GPU's queue).
        bad_len, bad_snap, bad_xy = torch.stack([
            ((lengths < 0) | (lengths > T)).any(),
            ((snap_batch < 0) | (snap_batch >= B)).any()
            | ((snap_pos < -1) | (snap_pos >= lengths[snap_batch.clamp(0, max(B - 1, 0))])).any(),
            ~(torch.isfinite(points[..., :2]).all(-1) | ~valid).all()]).tolist() if B else (False, M > 0, False)
        if bad_len:
            raise ValueError(f"lengths must lie in 0..{T} (the points' T)")
        if bad_snap:
            raise ValueError("snap_batch/snap_pos out of range (need 0 <= snap_batch < B and "
                             "-1 <= snap_pos < lengths[snap_batch])")
        if bad_xy:
            raise ValueError("points hold non-finite coordinates within lengths")
        NC = len(self.channels)
        if M == 0 or T == 0:
            return torch.zeros(M, NC, H, W, device=dev)
        xy = (points[..., :2].float() + (0.5 + self.padding)) * self.scale   # output px
        pen = (points[..., 2] > 0.5) | (idx == lengths[:, None] - 1)     # last point closes its stroke
        start = torch.ones_like(pen)
        start[:, 1:] = pen[:, :-1]
        connect = valid & ~pen                                            # segment i -> i+1
        isolated = valid & pen & start                                    # one-point stroke: a dot
        sb, si = (connect | isolated).nonzero(as_tuple=True)
        seg_a = xy[sb, si]
        seg_b = torch.where(connect[sb, si, None], xy[sb, (si + 1).clamp(max=T - 1)], seg_a)
        seg_end = si + connect[sb, si].long()                             # last point it needs
        stroke = torch.cumsum(start.long(), 1) - 1                        # stroke index of each point

        # Snapshots sorted by (drawing, position); rank = place within the drawing.
        key = snap_batch * (T + 1) + (snap_pos + 1)
        sorted_key, perm = torch.sort(key, stable=True)
        rank = torch.arange(M, device=dev) - torch.searchsorted(sorted_key, snap_batch[perm] * (T + 1))
        # Each segment goes to the first snapshot of its drawing that contains it (if any).
        first = torch.searchsorted(sorted_key, sb * (T + 1) + (seg_end + 1))
        ok = first < torch.searchsorted(sorted_key, (sb + 1) * (T + 1))
        seg_a, seg_b, first = seg_a[ok], seg_b[ok], first[ok]
        # Per segment: (its snapshot row, stroke number, point number): the fades' weights (1-based).
        tag = torch.stack([first, stroke[sb, seg_end][ok] + 1, seg_end[ok] + 1], 1)

        # A truncation ending on a stroke's first point: that point alone, as a dot. (Copied on into
        # later snapshots it changes nothing: they hold the segment starting there.)
        sp = snap_pos.clamp(min=0)
        tm = ((snap_pos >= 0) & ~pen[snap_batch, sp] & start[snap_batch, sp]).nonzero(as_tuple=True)[0]
        inv_perm = torch.empty_like(perm)
        inv_perm[perm] = torch.arange(M, device=dev)
        tp = xy[snap_batch[tm], sp[tm]]
        seg_a = torch.cat([seg_a, tp])
        seg_b = torch.cat([seg_b, tp])
        tag = torch.cat([tag, torch.stack([inv_perm[tm], stroke[snap_batch[tm], sp[tm]] + 1, sp[tm] + 1], 1)])

        chunk = self.chunk_elems or CHUNK_ELEMS[dev.type == "cuda"]
        out = torch.empty(M, NC * H * W, dtype=torch.float32, device=dev)
        out.index_fill_(0, perm[rank == 0], 0.0)
        pa, pb, ptag = self._pieces(seg_a, seg_b, tag)
        prank = rank[ptag[:, 0]]
        order = torch.argsort(prank, stable=True)
        pa, pb, ptag, prank = pa[order], pb[order], ptag[order], prank[order]
        player = perm[ptag[:, 0]]
        # weight of each channel's coverage (None: ink, coverage itself), scaled to [0, 1] at the end
        weights = [None if c == "ink" else ptag[:, 1 if c == "order" else 2].float() for c in self.channels]
        n_rank = int(rank.max()) + 1
        piece_start = [0] + torch.cumsum(torch.bincount(prank, minlength=n_rank), 0).tolist()
        snap_order = torch.argsort(rank, stable=True)                    # sorted positions by rank
        snap_start = [0] + torch.cumsum(torch.bincount(rank, minlength=n_rank), 0).tolist()
        rows_per_copy = max(1, chunk // (NC * H * W))
        buf = out.new_empty(min(rows_per_copy, M), NC * H * W)
        flat = out.view(-1)
        copied = 0                     # snapshots of ranks 1..copied start from their predecessor

        def copy_through(k: int) -> None:
            nonlocal copied
            for q in range(copied + 1, k + 1):
                pos = snap_order[snap_start[q]:snap_start[q + 1]]
                for c in range(0, pos.numel(), rows_per_copy):
                    pc = pos[c:c + rows_per_copy]
                    tmp = torch.index_select(out, 0, perm[pc - 1], out=buf[:pc.numel()])
                    out.index_copy_(0, perm[pc], tmp)
            copied = max(copied, k)

        # Coverage in big chunks of pieces (in rank order); the scatter and the copies then go rank
        # by rank, so that a snapshot is copied on only once all its own pieces are in.
        C, R = self.window
        step = max(1, chunk // (C * R))
        n_p = pa.shape[0]
        k = 0
        for s in range(0, n_p, step):
            e = min(s + step, n_p)
            idx, cov = self._coverage(pa[s:e], pb[s:e], player[s:e], NC * H * W)
            while k < n_rank and piece_start[k] < e:
                lo, hi = max(piece_start[k], s), min(piece_start[k + 1], e)
                if hi > lo:
                    copy_through(k)
                    for c, w in enumerate(weights):      # NC <= 3: one scatter per channel
                        val = cov[lo - s:hi - s] if w is None else cov[lo - s:hi - s] * w[lo:hi, None]
                        flat.scatter_reduce_(0, (idx[lo - s:hi - s] + c * H * W).reshape(-1), val.reshape(-1),
                                             reduce="amax", include_self=True)
                if piece_start[k + 1] > e:
                    break          # rank k continues in the next chunk
                k += 1
        copy_through(n_rank - 1)
        out = out.view(M, NC, H, W)
        # The fades relative to what snapshot m shows: strokes so far, points so far (sp + 1).
        shown = {"order": stroke[snap_batch, sp] + 1, "time": sp + 1}
        for c, name in enumerate(self.channels):
            if name != "ink":
                out[:, c] /= shown[name].float()[:, None, None]
        return out

    # ------------------------------------------------------------------ internals
    def _pieces(self, a: torch.Tensor, b: torch.Tensor, tag: torch.Tensor):
        """Clip segments ``a -> b`` (output px) to the image and cut them into pieces of at most
        ``piece_len``; returns ``(piece_a, piece_b, tag of each piece)``."""
        dev = a.device
        # Clip to the image plus a margin wider than the line (Liang-Barsky), so far-off points cost
        # no pieces and stray coordinates cannot blow up memory.
        margin = self.half_width + 2.0
        lo, hi = -margin, self.size + margin
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
        a, d, t0, t1, tag = a[vis], d[vis], t0[vis], t1[vis], tag[vis]
        a, d = a + t0[:, None] * d, (t1 - t0)[:, None] * d
        n = torch.ceil(d.norm(dim=1) / self.piece_len).clamp(min=1).long()
        seg = torch.repeat_interleave(torch.arange(n.numel(), device=dev), n)
        k = (torch.arange(seg.numel(), device=dev) - (torch.cumsum(n, 0) - n)[seg]).float()
        nf = n[seg].float()
        d = d[seg]
        return a[seg] + (k / nf)[:, None] * d, a[seg] + ((k + 1) / nf)[:, None] * d, tag[seg]

    def _coverage(self, pa: torch.Tensor, pb: torch.Tensor, row: torch.Tensor, stride: int):
        """Anti-aliased coverage of pieces ``pa -> pb`` (output px) in their strips:
        ``(flat index into out (P, C*R), coverage (P, C*R))`` for images ``out[row]`` (rows of
        ``stride`` elements; the index is into the row's first channel)."""
        dev = pa.device
        H = W = self.size
        C, R = self.window
        col = torch.arange(C, device=dev)
        rows = torch.arange(R, device=dev)
        r = self.half_width + 0.5
        u = pb - pa
        # Work in (major, minor) axes: the piece's longer extent runs along the strip.
        mx = u[:, 0].abs() >= u[:, 1].abs()
        am = torch.where(mx, pa[:, 0], pa[:, 1])
        an = torch.where(mx, pa[:, 1], pa[:, 0])
        um = torch.where(mx, u[:, 0], u[:, 1])
        un = torch.where(mx, u[:, 1], u[:, 0])
        ln = torch.hypot(um, un)
        dot = ln <= 1e-9
        one = torch.ones_like(ln)
        uhm = torch.where(dot, one, um / torch.where(dot, one, ln))
        uhn = torch.where(dot, 0.0, un / torch.where(dot, one, ln))
        slope = torch.where(dot, 0.0, un / torch.where(dot, one, um))
        # First column/row of the strip, kept inside the image: a strip shifted inwards still covers
        # every in-image pixel the piece can ink, so no bounds mask is needed. Every pixel within r of
        # the piece lies within r * sqrt(1 + slope^2) of its line, across.
        om = torch.floor(torch.minimum(am, am + um) - r).clamp_(0.0, float(W - C))
        cm = om[:, None] + col + 0.5 - am[:, None]                      # (P,C) column centre - start
        hb = r * torch.sqrt(1.0 + slope * slope)
        on = torch.floor(an[:, None] + cm * slope[:, None] - hb[:, None]).clamp_(0.0, float(H - R))
        # along/across the piece = per-column part + per-row part, so each is one full-size op.
        dn0 = on - an[:, None]                                          # (P,C) first row - start
        rc = (rows.float() + 0.5)[None, None, :]                        # (1,1,R)
        along = (cm * uhm[:, None] + dn0 * uhn[:, None])[:, :, None] + rc * uhn[:, None, None]
        across = (dn0 * uhm[:, None] - cm * uhn[:, None])[:, :, None] + rc * uhm[:, None, None]
        beyond = along.sub_(torch.clamp(along, min=torch.zeros_like(ln)[:, None, None],
                                         max=ln[:, None, None]))
        cov = torch.hypot(across, beyond, out=across).neg_().add_(r).clamp_(0.0, 1.0)
        sm = torch.where(mx, 1, W)                                       # index strides of the axes
        sn = torch.where(mx, W, 1)
        head = (row * stride + om.long() * sm)[:, None] + col * sm[:, None] + on.long() * sn[:, None]
        idx = head[:, :, None] + rows * sn[:, None, None]                # (P,C,R) into out
        n = pa.shape[0]
        return idx.reshape(n, -1), cov.reshape(n, -1)


def per_image_standardize(images: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / max(std, 1 / sqrt(N))`` over each image channel's N pixels (``tf.image.
    per_image_standardization``, which the study used, on its one channel); the floor keeps a blank
    image finite (0). Channels are standardised each on its own: ink, order and time have different
    value ranges, and pooled statistics would let one set another's scale."""
    flat = images.reshape(images.shape[0] * images.shape[1], -1)
    n = flat.shape[1]
    mean = flat.mean(1, keepdim=True)
    std = flat.std(1, unbiased=False, keepdim=True).clamp_min(1.0 / math.sqrt(max(n, 1)))
    return ((flat - mean) / std).reshape(images.shape)


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

    When both are asked for they are rendered in one pass, so each segment is drawn once. The image
    shows the first ``batch["image_lengths"]`` points when the batch has them (the study's fraction
    rule keeps one point fewer for the image than for the sequence on odd lengths), else ``lengths``.
    Both views get the rasterizer's output :meth:`~Rasterizer.style`.
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
        shown = batch.get("image_lengths", lengths)
        shown = torch.as_tensor(shown, device=points.device).long()
        sb = torch.cat([sb, torch.arange(B, device=points.device)])
        sp = torch.cat([sp, shown - 1])
    images = rasterizer.style(rasterizer.snapshots(points, lengths, sb, sp))
    if want_snaps:
        batch["snapshots"] = images[:n_snap]
    if want_image:
        batch["image"] = images[n_snap:]
    return batch
