"""Figures of an evaluation run: t-SNE map, neighbour grids, confusion matrix, early recognition.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas directly (no pyplot), so they
work headless, in dataloader workers and in callbacks without touching global backend state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix

from sketchembed.corpus.sketch import points_to_strokes
from sketchembed.eval.confusion import most_confused_classes, per_class_sorted

WRONG = "#d62728"


def _new_figure(w: float, h: float) -> Figure:
    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def figure_to_array(fig: Figure) -> np.ndarray:
    """RGB ``(H, W, 3)`` uint8 pixels of a figure (for loggers)."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def class_colors(n: int) -> list:
    cmap = colormaps["tab10" if n <= 10 else "tab20" if n <= 20 else "turbo"]
    if n <= 20:
        return [cmap(i) for i in range(n)]
    return [cmap(i / max(n - 1, 1)) for i in range(n)]


def draw_sketch(ax, points, color="black", linewidth: float = 1.5, canvas: float = 255.0) -> None:
    """Draw ``(n, 3)`` (x, y, pen_up) points as strokes, image orientation (y down), no axes ticks."""
    points = np.asarray(points, dtype=np.float32)
    if len(points):
        for s in points_to_strokes(points):
            if len(s) == 1:
                ax.plot(s[:, 0], s[:, 1], "o", color=color, markersize=linewidth)
            else:
                ax.plot(s[:, 0], s[:, 1], "-", color=color, linewidth=linewidth, solid_capstyle="round")
        lo = min(0.0, float(points[:, :2].min()))
        hi = max(canvas, float(points[:, :2].max()))
    else:
        lo, hi = 0.0, canvas
    pad = 0.04 * (hi - lo)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(hi + pad, lo - pad)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def _frame(ax, color, width):
    for sp in ax.spines.values():
        sp.set_visible(True)
        sp.set_color(color)
        sp.set_linewidth(width)


def plot_tsne(path, xy, labels, classes: Sequence[str], title: str | None = None, max_legend: int = 18) -> Path:
    """Scatter of a 2-D map coloured by class, legend beside it.

    With more than ``max_legend`` classes only the ``max_legend`` most frequent ones in the map get
    their own colour and legend entry; the others are drawn in light grey as one "other" entry, so
    the legend stays readable at 345 classes.
    """
    xy = np.asarray(xy)
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=len(classes)) if len(labels) else np.zeros(len(classes), int)
    if len(classes) > max_legend:
        shown = np.sort(np.lexsort((np.arange(len(classes)), -counts))[:max_legend])
    else:
        shown = np.arange(len(classes))
    fig = _new_figure(8, 6.5)
    ax = fig.add_subplot(1, 1, 1)
    size = float(np.clip(3000 / max(len(xy), 1), 2, 30))
    other = ~np.isin(labels, shown)
    if len(shown) < len(classes) and len(shown) <= 18:  # tab20 without its two greys (the "other" colour)
        colors = [colormaps["tab20"](i) for i in range(20) if i not in (14, 15)][:len(shown)]
    else:
        colors = class_colors(len(shown))
    if other.any():
        n_other = len(classes) - len(shown)
        ax.scatter(xy[other, 0], xy[other, 1], s=size, color="#cccccc", alpha=0.5, linewidths=0,
                   label=f"{n_other} other classes ({int(other.sum())})")
    for color, c in zip(colors, shown):
        m = labels == c
        if m.any():
            ax.scatter(xy[m, 0], xy[m, 1], s=size if not other.any() else max(size, 6.0), color=color,
                       label=f"{classes[c]} ({int(m.sum())})",
                       alpha=0.8, linewidths=0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"t-SNE of {len(xy)} embeddings")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, markerscale=max(1, 20 / size))
    return _save(fig, path)


def plot_neighbors(path, ref_points: Sequence[np.ndarray], ref_labels: Sequence[int | None],
                   nbr_points: Sequence[Sequence[np.ndarray]], nbr_labels: Sequence[Sequence[int]],
                   classes: Sequence[str], distances: Sequence[Sequence[float]] | None = None,
                   ref_titles: Sequence[str] | None = None) -> Path:
    """One row per reference drawing: the reference, then its neighbours with their class.

    Neighbours of a different class than a known reference class get a red frame; a reference with
    label ``None``/-1 (a user's sketch) has no class to compare with.
    """
    n = len(ref_points)
    if n == 0:
        raise ValueError("plot_neighbors: no reference drawings")
    k = max((len(r) for r in nbr_points), default=0)
    cell = 1.6
    fig = _new_figure(cell * (k + 1), cell * 1.15 * n)
    for i in range(n):
        ax = fig.add_subplot(n, k + 1, i * (k + 1) + 1)
        draw_sketch(ax, ref_points[i], color="#1f3b73", linewidth=1.8)
        ref = ref_labels[i]
        ref_known = ref is not None and int(ref) >= 0
        title = ref_titles[i] if ref_titles else (classes[int(ref)] if ref_known else "query")
        ax.set_title(title, fontsize=8, fontweight="bold")
        _frame(ax, "#1f3b73", 2.0)
        for j, (pts, lab) in enumerate(zip(nbr_points[i], nbr_labels[i])):
            ax = fig.add_subplot(n, k + 1, i * (k + 1) + j + 2)
            wrong = ref_known and int(lab) != int(ref)
            draw_sketch(ax, pts, color=WRONG if wrong else "black", linewidth=1.2)
            t = classes[int(lab)]
            if distances is not None:
                t += f"\n{float(distances[i][j]):.3g}"
            ax.set_title(t, fontsize=7, color=WRONG if wrong else "black")
            _frame(ax, WRONG if wrong else "#bbbbbb", 3.0 if wrong else 0.6)
    fig.tight_layout()
    return _save(fig, path)


def plot_confusion(path, y_true, y_pred, classes: Sequence[str], title: str | None = None,
                   max_classes: int = 30) -> Path:
    """Row-normalised confusion matrix with counts, rows = true class.

    Above ``max_classes`` classes only the ``max_classes`` classes most involved in confusions are
    shown (rows still normalised by the class's full count), so the figure stays a few inches wide:
    a 345 x 345 grid is neither readable nor openable by common image viewers.
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    cm = confusion_matrix(y_true, y_pred, labels=np.arange(len(classes)))
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0)
    shown = most_confused_classes(cm, max_classes) if len(classes) > max_classes else np.arange(len(classes))
    cm, norm = cm[np.ix_(shown, shown)], norm[np.ix_(shown, shown)]
    names = [classes[i] for i in shown]
    c = len(shown)
    side = max(4.0, 0.55 * c + 2)
    fig = _new_figure(side + 1, side)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(c))
    ax.set_yticks(range(c))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if c <= 30:
        for i in range(c):
            for j in range(c):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    acc = float((y_true == y_pred).mean()) if len(y_true) else float("nan")
    ax.set_title(title or f"confusion (accuracy {100 * acc:.1f} %, n={len(y_true)})")
    if c < len(classes):
        ax.set_xlabel(f"predicted — the {c} classes most involved in confusions, of {len(classes)}")
    fig.tight_layout()
    return _save(fig, path)


def plot_per_class(path, cm, classes: Sequence[str], n_each: int = 20, title: str | None = None) -> Path:
    """Per-class accuracy sorted, worst at the top; with many classes the ``n_each`` worst and the
    ``n_each`` best, the number of classes left out between them said in the figure."""
    rows = per_class_sorted(cm, classes)
    gap = 0
    if len(rows) > 2 * n_each:
        gap = len(rows) - 2 * n_each
        rows = rows[:n_each] + [(f"… {gap} classes …", 0, float("nan"))] + rows[-n_each:]
    fig = _new_figure(7, max(2.5, 0.22 * len(rows) + 1.2))
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(rows))
    acc = np.array([r[2] for r in rows])
    ax.barh(y, np.nan_to_num(100 * acc), color=["#d62728" if a < np.nanmedian(acc) else "#1f77b4" for a in acc])
    ax.set_yticks(y)
    ax.set_yticklabels([f"{r[0]} (n={r[1]})" if r[1] else r[0] for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("accuracy @ 100 % of the drawing (%)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title or f"per-class accuracy, sorted ({len(classes)} classes)")
    fig.tight_layout()
    return _save(fig, path)


def plot_early_recognition(path, curves: Mapping[str, Mapping[float, float]],
                           references: Mapping[str, Mapping[float, float]] | None = None,
                           title: str | None = None) -> Path:
    """Accuracy vs share of the drawing shown. ``curves``: ours; ``references``: dashed, e.g. the study."""
    fig = _new_figure(6.5, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    for name, pts in curves.items():
        f = sorted(pts)
        ax.plot([100 * x for x in f], [100 * pts[x] for x in f], "o-", label=name)
    for name, pts in (references or {}).items():
        f = sorted(pts)
        ax.plot([100 * x for x in f], [100 * pts[x] for x in f], "s--", alpha=0.6, label=name)
    ax.set_xlabel("% of the drawing (points)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(0, 105)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title or "early recognition")
    fig.tight_layout()
    return _save(fig, path)


def image_grid(images, titles: Sequence[str] | None = None, ncols: int = 8) -> np.ndarray:
    """``(M, H, W)`` or ``(M, 1, H, W)`` images in [0, 1] (ink = 1) → one RGB uint8 grid with titles."""
    imgs = np.asarray(images, dtype=np.float32)
    if imgs.ndim == 4:
        imgs = imgs[:, 0]
    m = len(imgs)
    ncols = max(1, min(ncols, m))
    nrows = max(1, -(-m // ncols))
    fig = _new_figure(1.4 * ncols, 1.55 * nrows)
    for i in range(m):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.imshow(1.0 - imgs[i], cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=7)
    fig.tight_layout()
    return figure_to_array(fig)


def sketch_grid(points_list: Sequence[np.ndarray], titles: Sequence[str] | None = None,
                ncols: int = 8) -> np.ndarray:
    """Drawings as vector sketches in one RGB uint8 grid (used when no raster view is at hand)."""
    m = len(points_list)
    ncols = max(1, min(ncols, m))
    nrows = max(1, -(-m // ncols))
    fig = _new_figure(1.4 * ncols, 1.55 * nrows)
    for i, pts in enumerate(points_list):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        draw_sketch(ax, pts, linewidth=1.0)
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=7)
    fig.tight_layout()
    return figure_to_array(fig)
