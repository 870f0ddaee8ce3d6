"""`sketchembed export`: a checkpoint's inference graph as an ONNX file that carries its own inputs.

The graph is what ``eval`` computes per drawing, at the drawing's last stroke end: from preprocessed
tensors to the embedding (every model) and the logits (classifiers). Its inputs follow the model's
views (``model.views``):

* ``seq`` ``(B, T, 3)`` float32 and ``lengths`` ``(B,)`` int64: the sequence (ARCHITECTURE.md
  "Batches"), for ``lstm`` and ``combined``;
* ``image`` ``(B, C, H, W)`` float32: the whole drawing rendered and styled as the network saw it
  (for ``combined`` this *is* the snapshot at the last stroke end), for ``direct``, ``triplet`` and
  ``combined``.

Batch and sequence length are dynamic axes. The file's ``metadata_props`` hold one JSON entry,
:data:`METADATA_KEY`: the model kind, the graph's input and output names, the checkpoint's input
settings (image size, line width, padding, canvas, polarity, standardisation, channels, sequence
normalisation, classes, …) and the line width in output pixels the rasterizer draws. That is all
:func:`preprocess` — the reference pre-processing, numpy only — needs: a user can feed the graph from
any language by following it (``sketchembed serve --runtime onnx`` reads the same metadata).

The exporter is ``torch.onnx.export(dynamo=True)`` (torch.export), the one torch keeps developing;
the LSTM runs unpacked there (``nets/sequence.py``), which reads the same states.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

import sketchembed
from sketchembed.data.raster import Rasterizer
from sketchembed.models.checkpoint import file_sha256, open_checkpoint, trained_root

try:  # the `export` extra: pip install "sketchembed[export]" (make install has it)
    import onnx
    import onnxscript  # noqa: F401 - torch's dynamo exporter needs it
except ImportError:
    onnx = None
NEEDS_EXTRA = 'needs the export extra: pip install "sketchembed[export]" (onnx, onnxscript, onnxruntime)'

METADATA_KEY = "sketchembed"
METADATA_FORMAT = 1
OPSET = 18
# graph inputs per model view
VIEW_INPUTS = {"sequence": ("seq", "lengths"), "image": ("image",), "snapshots": ("image",)}


def graph_inputs(views) -> tuple[str, ...]:
    """The graph's input names for a model's views, in a fixed order (seq, lengths, image)."""
    names = {n for v in views for n in VIEW_INPUTS.get(v, ())}
    return tuple(n for n in ("seq", "lengths", "image") if n in names)


class InferenceGraph(nn.Module):
    """``(the inputs graph_inputs names) -> (embedding, logits)``: the model's ``_eval_outputs`` on a
    batch holding only the preprocessed tensors (logits left out for embedding-only models)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, seq=None, lengths=None, image=None):
        batch = {k: v for k, v in (("seq", seq), ("lengths", lengths), ("image", image)) if v is not None}
        emb, logits = self.model._eval_outputs(batch)
        return (emb,) if logits is None else (emb, logits)


def _example(names: Sequence[str], inputs) -> dict[str, torch.Tensor]:
    """Example tensors (batch 2, 7 points: sizes no other axis has, so none is taken for a constant)."""
    out = {"seq": torch.randn(2, 7, 3), "lengths": torch.tensor([7, 4]),
           "image": torch.rand(2, len(inputs.channels), inputs.image_size, inputs.image_size)}
    return {n: out[n] for n in names}


def input_metadata(inputs, names: Sequence[str]) -> dict:
    """The part of the metadata :func:`preprocess` reads: the graph's inputs, the input settings and
    the line width in output pixels as the rasterizer draws it (it has a floor of one pixel)."""
    return {"inputs": list(names), "input_settings": inputs.to_dict(),
            "line_px": 2 * Rasterizer.from_inputs(inputs).half_width}


def metadata(model, inputs, names: Sequence[str], outputs: Sequence[str], ckpt_path, ckpt: Mapping) -> dict:
    """What :func:`preprocess` and a runner need, from the checkpoint alone (module docstring)."""
    if not inputs.classes:
        raise ValueError(f"{ckpt_path}: the checkpoint names no classes (trained before they were saved)")
    return {"format": METADATA_FORMAT, "sketchembed_version": sketchembed.__version__,
            "model_kind": str(getattr(model, "MODEL_KIND", "")),
            **input_metadata(inputs, names), "outputs": list(outputs),
            "checkpoint": str(ckpt_path), "checkpoint_sha256": file_sha256(ckpt_path),
            "trained_on": trained_root(ckpt), "data_seed": _data_seed(ckpt)}


def _data_seed(ckpt: Mapping) -> int | None:
    """The training run's data seed (the studio indexes the sample it picks, as for the checkpoint)."""
    hp = ckpt.get("datamodule_hyper_parameters")
    seed = hp.get("seed") if isinstance(hp, Mapping) else None
    return int(seed) if isinstance(seed, int) and not isinstance(seed, bool) else None


def export_onnx(ckpt_path, out_path) -> dict:
    """Write the checkpoint's inference graph to ``out_path`` (module docstring); returns the metadata.

    Written to a temporary file beside it and renamed, so a failed export leaves no half file and an
    earlier file stays until the new one is complete."""
    if onnx is None:
        raise ValueError(f"sketchembed export {NEEDS_EXTRA}")
    out_path = Path(out_path)
    if out_path.is_dir():
        raise IsADirectoryError(21, "is a directory, give a file name (model.onnx)", str(out_path))
    if not out_path.parent.is_dir():
        raise FileNotFoundError(f"--out {out_path}: folder {out_path.parent} does not exist")
    model, inputs, _, ckpt = open_checkpoint(ckpt_path)    # the one place export opens a checkpoint
    model = model.cpu().eval()
    names = graph_inputs(model.views)
    graph = InferenceGraph(model).eval()
    example = _example(names, inputs)
    with torch.no_grad():
        outputs = ("embedding", "logits")[:len(graph(**example))]
    batch, time = torch.export.Dim("batch"), torch.export.Dim("time")
    axes = {"seq": {0: batch, 1: time}, "lengths": {0: batch}, "image": {0: batch}}
    meta = metadata(model, inputs, names, outputs, ckpt_path, ckpt)
    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    try:
        # the exporter narrates each step and warns about torch internals: kept off the console
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(graph, (), kwargs=example, dynamo=True, opset_version=OPSET,
                                        input_names=list(names), output_names=list(outputs),
                                        dynamic_shapes={n: axes[n] for n in names}, verbose=False)
        program.save(str(tmp))
        proto = onnx.load(str(tmp))
        onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(meta)})
        onnx.save(proto, str(tmp))
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return meta


# ----------------------------------------------------------------------------- reading the file back
def read_metadata(props: Mapping[str, str], where: str = "model") -> dict:
    """The metadata of an exported file from its ``metadata_props`` (``onnx``: ``{p.key: p.value for p
    in model.metadata_props}``; onnxruntime: ``session.get_modelmeta().custom_metadata_map``)."""
    raw = props.get(METADATA_KEY)
    if raw is None:
        raise ValueError(f"{where}: no {METADATA_KEY!r} metadata: not written by `sketchembed export`")
    try:
        meta = json.loads(raw)
    except ValueError:
        raise ValueError(f"{where}: its {METADATA_KEY!r} metadata is not JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != METADATA_FORMAT:
        raise ValueError(f"{where}: metadata format {meta.get('format') if isinstance(meta, dict) else '?'!r}; "
                         f"this code reads {METADATA_FORMAT}")
    return meta


def preprocess(drawings: Sequence[np.ndarray], meta: Mapping) -> dict[str, np.ndarray]:
    """The reference pre-processing: whole drawings -> the graph's inputs, from the metadata alone.

    ``drawings``: ``(n, 3)`` arrays of ``(x, y, pen_up)`` on the 0-255 canvas (pen_up = 1 on each
    stroke's last point; the last point always ends a stroke). Numpy only and written to be read:
    porting it is how another program feeds the graph. It computes what the DataModule serves
    (``SketchCollate`` and ``Rasterizer``; tests/test_export.py holds them equal)."""
    s = meta["input_settings"]
    pts = [np.asarray(d, dtype=np.float32).reshape(-1, 3).copy() for d in drawings]
    if not pts or min(len(p) for p in pts) < 1:
        raise ValueError("preprocess: give at least one drawing, each with at least one point")
    for p in pts:
        p[-1, 2] = 1.0                                   # the last point ends its stroke
    out: dict[str, np.ndarray] = {}
    if "seq" in meta["inputs"]:
        lengths = np.array([len(p) for p in pts], dtype=np.int64)
        seq = np.zeros((len(pts), int(lengths.max()), 3), dtype=np.float32)
        for b, p in enumerate(pts):
            d = np.diff(p[:, :2], axis=0, prepend=np.asarray(s["seq_origin"], np.float32)[None])
            seq[b, :len(p), :2] = d * np.float32(1.0 / s["seq_std"])
            seq[b, :len(p), 2] = p[:, 2]
        out["seq"], out["lengths"] = seq, lengths
    if "image" in meta["inputs"]:
        images = np.stack([_render(p, s, meta["line_px"]) for p in pts])
        if s["background"] == "white":
            images = 1.0 - images
        if s["standardize"]:
            flat = images.reshape(images.shape[0] * images.shape[1], -1)
            std = np.maximum(flat.std(1, keepdims=True), 1.0 / math.sqrt(flat.shape[1]))
            images = ((flat - flat.mean(1, keepdims=True)) / std).reshape(images.shape)
        out["image"] = images.astype(np.float32)
    return out


def _render(p: np.ndarray, s: Mapping, line_px: float) -> np.ndarray:
    """One drawing -> ``(C, H, W)`` coverage: ``clip(line_px / 2 + 0.5 - distance to the nearest
    segment, 0, 1)`` at each pixel centre; ``order``/``time`` weight each segment by its stroke / last
    point number over the drawing's count, the brighter segment winning (ARCHITECTURE.md "Rasterizer").
    Each segment is measured only over the pixels its line can reach (its box, widened by the reach)."""
    size = int(s["image_size"])
    scale = np.float32(size / (s["canvas"] + 2 * s["padding"]))
    xy = ((p[:, :2] + np.float32(0.5 + s["padding"])) * scale).astype(np.float64)   # output pixels
    pen = p[:, 2] > 0.5
    start = np.concatenate([[True], pen[:-1]])
    stroke = np.cumsum(start) - 1
    seg = np.flatnonzero(~pen | start)                           # a segment k -> k+1, or a dot at k
    end = np.where(pen[seg], seg, seg + 1)                       # (a one-point stroke is a dot)
    weight = {"ink": np.ones(len(seg)), "order": (stroke[end] + 1) / (stroke[-1] + 1), "time": (end + 1) / len(p)}
    reach = line_px / 2 + 0.5
    img = np.zeros((len(s["channels"]), size, size))
    for k, (a, b) in enumerate(zip(xy[seg], xy[end])):
        lo = np.clip(np.floor(np.minimum(a, b) - reach), 0, size).astype(int)
        hi = np.clip(np.ceil(np.maximum(a, b) + reach), 0, size).astype(int)
        if (hi <= lo).any():
            continue                                             # off the image
        px = np.stack(np.meshgrid(np.arange(lo[0], hi[0]) + 0.5, np.arange(lo[1], hi[1]) + 0.5), -1)  # (h, w, x/y)
        ab = b - a
        t = np.clip((px - a) @ ab / ab.dot(ab), 0, 1) if ab.any() else 0.0
        cov = np.clip(reach - np.linalg.norm(px - (a + np.multiply.outer(t, ab)), axis=-1), 0, 1)
        for c, ch in enumerate(s["channels"]):
            window = img[c, lo[1]:hi[1], lo[0]:hi[0]]
            np.maximum(window, cov * weight[ch][k], out=window)
    return img


# ------------------------------------------------------------------------------------------- command
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="sketchembed checkpoint (.ckpt) of any model kind")
    parser.add_argument("--out", required=True, help="the ONNX file to write (e.g. model.onnx)")


def run(args) -> int:
    meta = export_onnx(args.ckpt, args.out)
    print(f"wrote {args.out}: {meta['model_kind']} model, inputs {', '.join(meta['inputs'])} -> "
          f"{', '.join(meta['outputs'])}; input settings in its metadata ({METADATA_KEY!r})", file=sys.stderr)
    return 0
