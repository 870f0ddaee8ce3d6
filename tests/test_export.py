"""`sketchembed export`: every model kind's inference graph on onnxruntime gives PyTorch's outputs on
the embedded test split, and the reference pre-processing (numpy, the file's metadata alone) gives the
DataModule's inputs; `serve --runtime onnx` serves the file.

Exports take 5-60 s each on a CPU (torch.export traces the model): those tests are ``slow`` (`make
test-slow`); the reference pre-processing and the error paths run in the default suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from sketchembed import cli
from sketchembed.corpus.embedded import open_embedded
from sketchembed.data.datamodule import SketchCollate, SketchDataModule
from sketchembed.data.inputs import CHECKPOINT_KEY, InputSettings
from sketchembed.data.raster import Rasterizer, render_views
from sketchembed.eval.embed import embed_points
from sketchembed.export import METADATA_KEY, export_onnx, graph_inputs, input_metadata, preprocess, read_metadata
from sketchembed.models import MODELS
from sketchembed.models.checkpoint import open_checkpoint
from sketchembed.studio import serve
from sketchembed.studio.runtime import OnnxRunner
from sketchembed.studio.service import Studio

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-4   # max abs difference allowed between onnxruntime and PyTorch outputs
# every model kind, tiny, with the channels each one is exported with
KINDS = {
    "lstm": (dict(hidden=16, layers=2), ("ink",)),
    "direct": (dict(backbone="test_resnet", embedding_dim=16, image_size=32), ("ink", "order")),
    "triplet": (dict(backbone="test_resnet", embedding_dim=16, image_size=32), ("ink",)),
    "combined": (dict(backbone="test_resnet", embedding_dim=16, image_size=32, hidden=16, mlp_hidden=16),
                 ("ink", "order", "time")),
}
STYLES = [dict(image_size=32),
          dict(image_size=48, line_width=5.25, padding=5.0, canvas=255.0, background="white", standardize=True,
               seq_norm="none", seq_origin=(122.5, 122.5), channels=("ink", "order", "time")),
          dict(image_size=24, channels=("time", "ink"), seq_origin=(10.0, -3.0))]


@pytest.fixture(scope="module")
def test_drawings() -> list[np.ndarray]:
    ds = open_embedded("study10")
    return [np.asarray(ds.points(int(i))) for i in ds.indices("test")]


def _served(inputs: InputSettings, drawings) -> dict:
    """What the DataModule serves a model for whole drawings: the collate, then the rasterizer."""
    batch = SketchCollate.from_inputs(inputs)([(-1, 0, 0, np.asarray(p, np.float32)) for p in drawings])
    return render_views(batch, Rasterizer.from_inputs(inputs), ["image"])


# ------------------------------------------------------------------------ reference pre-processing
@pytest.mark.parametrize("style", STYLES)
def test_reference_preprocessing_from_the_metadata_is_what_the_datamodule_serves(test_drawings, style):
    inputs = InputSettings(**style, seq_std=7.5, classes=("a", "b"))
    meta = json.loads(json.dumps(input_metadata(inputs, ("seq", "lengths", "image"))))  # as read from a file
    ref = preprocess(test_drawings, meta)
    want = _served(inputs, test_drawings)
    assert set(ref) == {"seq", "lengths", "image"}
    np.testing.assert_array_equal(ref["lengths"], want["lengths"].numpy())
    np.testing.assert_array_equal(ref["seq"], want["seq"].numpy())
    assert ref["image"].dtype == np.float32 and ref["image"].shape == tuple(want["image"].shape)
    scale = 1.0 if not inputs.standardize else float(want["image"].abs().max())
    np.testing.assert_allclose(ref["image"], want["image"].numpy(), atol=2e-5 * scale, rtol=0)


def test_reference_preprocessing_serves_only_the_graphs_inputs(test_drawings):
    inputs = InputSettings(seq_std=2.0)
    assert set(preprocess(test_drawings[:2], input_metadata(inputs, graph_inputs({"sequence"})))) == {"seq", "lengths"}
    assert set(preprocess(test_drawings[:2], input_metadata(inputs, graph_inputs({"image"})))) == {"image"}
    assert graph_inputs({"sequence", "snapshots"}) == ("seq", "lengths", "image")
    with pytest.raises(ValueError, match="at least one drawing"):
        preprocess([], input_metadata(inputs, ("image",)))


@pytest.mark.parametrize("props, match", [({}, "no 'sketchembed' metadata"), ({METADATA_KEY: "{"}, "not JSON"),
                                          ({METADATA_KEY: '{"format": 9}'}, "metadata format 9")])
def test_metadata_that_is_not_ours_is_one_line_naming_the_file(props, match):
    with pytest.raises(ValueError, match=f"^m.onnx: .*{match}"):
        read_metadata(props, "m.onnx")


def test_export_and_onnx_runtime_errors_are_one_line(tmp_path, capsys):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    for args, needle in [(["export", "--ckpt", str(junk), "--out", str(tmp_path / "m.onnx")], "junk.ckpt"),
                         (["export", "--ckpt", str(junk), "--out", str(tmp_path / "no" / "m.onnx")], "does not exist"),
                         (["export", "--ckpt", str(junk), "--out", str(tmp_path)], "is a directory")]:
        assert cli.main(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, err
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob(".*tmp*"))
    for args in (["serve"], ["serve", "--runtime", "onnx", "--ckpt", str(junk)],
                 ["serve", "--ckpt", str(junk), "--model", str(junk)]):
        assert cli.main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err == "error: give --ckpt CKPT (torch) or --runtime onnx --model FILE.onnx, one of them", err
    with pytest.raises(FileNotFoundError, match="no such file"):
        OnnxRunner(tmp_path / "none.onnx")
    with pytest.raises(ValueError, match="not an ONNX model onnxruntime can load"):
        OnnxRunner(junk)


# ------------------------------------------------------------------------------ exported models
def _checkpoint(kind: str, path: Path) -> Path:
    """A checkpoint of ``kind`` as train.py writes it (weights, hparams, the DataModule's input
    settings), with the initial weights: the comparison needs a model, not a trained one."""
    args, channels = KINDS[kind]
    torch.manual_seed(0)
    dm = SketchDataModule(root="study10", image_size=args.get("image_size", 32), channels=channels)
    model = MODELS[kind](**args, **({} if kind == "triplet" else {"num_classes": dm.num_classes}),
                         **({"channels": channels} if "backbone" in args else {}))
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": L.__version__, CHECKPOINT_KEY: dm.state_dict(),
                "datamodule_hyper_parameters": dict(dm.hparams)}, path)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``kind -> (checkpoint, onnx file)``, each exported once for the module."""
    tmp = tmp_path_factory.mktemp("export")
    cache = {}

    def get(kind: str):
        if kind not in cache:
            ckpt = _checkpoint(kind, tmp / f"{kind}.ckpt")
            export_onnx(ckpt, tmp / f"{kind}.onnx")
            cache[kind] = ckpt, tmp / f"{kind}.onnx"
        return cache[kind]
    return get


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_onnx_outputs_equal_pytorch_and_the_metadata_alone_reproduces_them(exported, kind, test_drawings):
    ckpt, path = exported(kind)
    model, inputs, _, _ = open_checkpoint(ckpt)
    emb, logits, _, _ = embed_points(model, test_drawings, inputs)
    proto = onnx.load(str(path))
    meta = read_metadata({p.key: p.value for p in proto.metadata_props}, str(path))
    assert meta["model_kind"] == kind and meta["inputs"] == list(graph_inputs(model.views))
    assert meta["outputs"] == (["embedding"] if kind == "triplet" else ["embedding", "logits"])
    settings = InputSettings.from_dict(meta["input_settings"])
    assert settings == inputs and settings.channels == KINDS[kind][1] and len(settings.classes) == 10
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = [emb] if logits is None else [emb, logits]
    # the DataModule's tensors in, PyTorch's outputs out
    served = _served(inputs, test_drawings)
    got = session.run(None, {n: served[n].numpy() for n in meta["inputs"]})
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and float(np.abs(g - w).max()) < TOL
    # pre-processed from the metadata alone
    got = session.run(None, preprocess(test_drawings, meta))
    for g, w in zip(got, want, strict=True):
        assert float(np.abs(g - w).max()) < TOL
    # dynamic batch and length: one short drawing alone
    one = session.run(None, preprocess(test_drawings[3:4], meta))
    assert float(np.abs(one[0] - emb[3:4]).max()) < TOL


@pytest.mark.slow
def test_serve_runtime_onnx_guesses_as_the_checkpoint_does(exported, test_drawings, tmp_path, monkeypatch, capsys):
    ckpt, path = exported("combined")
    served = []
    monkeypatch.setattr(serve.uvicorn, "run", lambda app, **kw: served.append(app))
    assert cli.main(["serve", "--onnx", str(path), "--data", "study10", "--index-max", "30", "--port", "0",
                     "--results", str(tmp_path)]) == 0
    assert len(served) == 1 and "sketch studio (combined on onnx, 10 classes, index of 30)" in capsys.readouterr().err
    torch_studio = Studio.open(ckpt, index_max=40, data="study10", progress=False, results_dir=tmp_path,
                               log=lambda m: None)
    onnx_studio = Studio.open(path, runtime="onnx", index_max=40, data="study10", results_dir=tmp_path,
                              log=lambda m: None)
    assert onnx_studio.model_kind == "combined" and onnx_studio.classes == torch_studio.classes
    np.testing.assert_allclose(onnx_studio.index.embeddings, torch_studio.index.embeddings, atol=TOL, rtol=0)
    for points in test_drawings[:5]:
        a, b = onnx_studio.predict(points, k=3), torch_studio.predict(points, k=3)
        assert [c["name"] for c in a["classes"]] == [c["name"] for c in b["classes"]]
        np.testing.assert_allclose([c["p"] for c in a["classes"]], [c["p"] for c in b["classes"]], atol=TOL)
        assert [n["key_id"] for n in a["neighbours"]] == [n["key_id"] for n in b["neighbours"]]


# ------------------------------------------------------------------- channels, end to end (real runs)
def _cli(script: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline", WANDB_SILENT="true", HYDRA_FULL_ERROR="0")
    cmd = [sys.executable, *(["-m", "sketchembed.cli"] if script == "sketchembed" else [str(REPO / script)]), *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_model_with_an_order_channel_trains_evaluates_and_exports(tmp_path, test_drawings):
    run = tmp_path / "run"
    r = _cli("train.py", "model=combined", "backbone=test_resnet", "data.image_size=32", "model.embedding_dim=16",
             "model.hidden=16", "model.mlp_hidden=16", "data.channels=[ink,order]", "data.batch_size=8",
             "data.max_snapshots=3", "trainer.max_epochs=1", "trainer.max_steps=2", "trainer.limit_train_batches=2",
             "trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0", "logger=none", "test=false",
             "callbacks.sample_images=null", "callbacks.embedding_eval=null", "callbacks.progress=null",
             "callbacks.lr_monitor=null", f"hydra.run.dir={run}")
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = run / "checkpoints" / "last.ckpt"
    model, inputs, _, _ = open_checkpoint(ckpt)
    assert inputs.channels == ("ink", "order")
    assert next(p for p in model.cnn.backbone.parameters() if p.dim() == 4).shape[1] == 2  # in_chans
    r = _cli("eval.py", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'eval'}", "logger=none", "probe.steps=20",
             "tsne.enabled=false")
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n_test"] == len(test_drawings) and 0 <= metrics["test/acc@100"] <= 1
    r = _cli("sketchembed", "export", "--ckpt", str(ckpt), "--out", str(tmp_path / "m.onnx"))
    assert r.returncode == 0, r.stderr[-3000:]
    emb, logits, _, _ = embed_points(model, test_drawings, inputs)
    runner = OnnxRunner(tmp_path / "m.onnx")
    got_emb, got_logits = runner(test_drawings)
    assert float(np.abs(got_emb - emb).max()) < TOL and float(np.abs(got_logits - logits).max()) < TOL

