"""How the studio runs its model: a checkpoint's torch model, or an ONNX file from `sketchembed export`.

A runner turns drawings (simplified ``(n, 3)`` point arrays) into ``(embeddings, logits or None)``
as numpy; the :class:`~sketchembed.studio.service.Studio` asks nothing else of it. The torch runner
goes through :func:`~sketchembed.eval.embed.embed_points` (what `suggest` and eval compute); the ONNX
runner takes its input settings from the file's metadata alone and pre-processes with the collate
and rasterizer they build (the DataModule's own code, fast on a CPU; :func:`sketchembed.export.
preprocess`, the numpy reference for other programs, computes the same: tests/test_export.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from sketchembed.data.datamodule import SketchCollate, SketchDataModule
from sketchembed.data.inputs import InputSettings
from sketchembed.data.raster import Rasterizer, render_views
from sketchembed.eval.embed import embed_points, has_classifier
from sketchembed.eval.knn import KNNIndex, pack_points
from sketchembed.eval.suggest import check_index_matches
from sketchembed.export import NEEDS_EXTRA, read_metadata

try:  # the `export` extra
    import onnxruntime
except ImportError:
    onnxruntime = None

RUNTIMES = ("torch", "onnx")
INDEX_BATCH = 256  # drawings per onnxruntime call while indexing


class TorchRunner:
    """A checkpoint's model (in eval mode) and its input settings."""

    def __init__(self, model, inputs: InputSettings):
        self.model, self.inputs = model, inputs
        self.rasterizer = Rasterizer.from_inputs(inputs)
        self.device = next(model.parameters()).device
        self.model_kind = str(getattr(model, "MODEL_KIND", "") or model.hparams.get("model_kind", "?"))
        self.has_classifier = has_classifier(model)

    def __call__(self, drawings: Sequence[np.ndarray]):
        emb, logits, _, _ = embed_points(self.model, drawings, self.inputs, rasterizer=self.rasterizer,
                                         device=self.device)
        return emb, logits


class OnnxRunner:
    """An exported model on onnxruntime's CPU provider; its input settings come from the file."""

    device = "cpu"

    def __init__(self, path):
        self.path = Path(path)
        if onnxruntime is None:
            raise ValueError(f"--runtime onnx {NEEDS_EXTRA}")
        if not self.path.is_file():
            raise FileNotFoundError(f"--model {self.path}: no such file")
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's own exception types (InvalidProtobuf, Fail, ...)
            first = (str(e).splitlines() or [type(e).__name__])[0][:200]
            raise ValueError(f"--model {self.path}: not an ONNX model onnxruntime can load ({first})") from None
        self.meta = read_metadata(self.session.get_modelmeta().custom_metadata_map, str(self.path))
        have = [i.name for i in self.session.get_inputs()]
        if have != list(self.meta["inputs"]):
            raise ValueError(f"--model {self.path}: graph inputs {have} differ from its metadata's "
                             f"{self.meta['inputs']}")
        self.inputs = InputSettings.from_dict(self.meta["input_settings"], str(self.path))
        self.collate, self.rasterizer = SketchCollate.from_inputs(self.inputs), Rasterizer.from_inputs(self.inputs)
        self.model_kind = str(self.meta["model_kind"])
        self.has_classifier = "logits" in self.meta["outputs"]
        self.checkpoint_sha256 = str(self.meta.get("checkpoint_sha256") or "")

    def __call__(self, drawings: Sequence[np.ndarray]):
        batch = self.collate([(-1, 0, 0, np.asarray(p, dtype=np.float32)) for p in drawings])
        if "image" in self.meta["inputs"]:
            render_views(batch, self.rasterizer, ["image"])
        out = self.session.run(list(self.meta["outputs"]), {n: batch[n].numpy() for n in self.meta["inputs"]})
        return out[0], (out[1] if len(out) > 1 else None)


def as_runner(model, inputs: InputSettings):
    """A runner as it is; a torch model (what ``Studio.open`` loads from a checkpoint) in a TorchRunner."""
    return model if isinstance(model, (TorchRunner, OnnxRunner)) else TorchRunner(model, inputs)


def onnx_index(runner: OnnxRunner, index_dir, root: Path, index_max: int | None,
               log: Callable[[str], None]) -> KNNIndex:
    """``index_dir`` (it must come from the checkpoint the file was exported from), else an index of
    ``root``'s training drawings embedded by the file: the drawings ``Studio.open`` would index for the
    checkpoint (the DataModule's ``max_train`` sample with the training run's seed)."""
    if index_dir is not None:
        index = KNNIndex.load(index_dir)
        check_index_matches(index, runner.meta.get("checkpoint") or str(runner.path), runner.checkpoint_sha256)
        log(f"index: {len(index)} drawings from {index_dir}")
        return index
    dm = SketchDataModule.from_inputs(runner.inputs, root, views=(), eval_fractions=(1.0,), max_train=index_max,
                                      seed=int(runner.meta.get("data_seed") or 0))
    store, rows = dm.split_store("train"), dm.rows("train")
    log(f"building an index of {len(rows)} training drawings of {store.root} with {runner.path.name}")
    drawings = [np.asarray(store.points(int(i))) for i in rows]
    emb = np.concatenate([runner(drawings[s:s + INDEX_BATCH])[0] for s in range(0, len(rows), INDEX_BATCH)])
    points, offsets = pack_points(drawings)
    return KNNIndex(embeddings=emb, labels=np.asarray(store.labels)[rows], key_ids=np.asarray(store.key_ids)[rows],
                    classes=list(store.classes), ckpt_path=str(runner.meta.get("checkpoint") or runner.path),
                    ckpt_sha256=runner.checkpoint_sha256, indices=rows, points=points, offsets=offsets,
                    meta={"split": "train", "data": str(store.root), "model_kind": runner.model_kind,
                          "runtime": "onnx"})
