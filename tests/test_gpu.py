"""The CUDA path: rasterizer, bf16 training with on-device rendering, DDP mining, GPU <-> CPU checkpoints.

Marked ``gpu``: skipped where no CUDA device exists and never selected by the default suite or CI
(`make test-gpu` runs them). Each test states what it compares and the bound it allows.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import read_csv_metrics, run_cli, run_inproc, tiny
from sketchembed.corpus.embedded import open_embedded
from sketchembed.data.datamodule import SketchDataModule
from sketchembed.data.raster import Rasterizer, render_views, stroke_ends
from sketchembed.eval.knn import search
from sketchembed.models import MODELS
from sketchembed.safeload import safe_load

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

REPO = Path(__file__).resolve().parents[1]
# Mean absolute pixel difference allowed between the CUDA and the CPU rasterizer (values in [0, 1]):
# the same float32 ops, so only rounding (and a rare strip-edge pixel) may differ.
RASTER_MAD = 1e-4


def _real_batch(n: int = 96):
    """(points (B,T,3), lengths) of ``n`` real drawings of the embedded study10 set."""
    ds = open_embedded("study10")
    drawings = [ds.points(i).astype(np.float32) for i in range(min(n, len(ds)))]
    T = max(len(d) for d in drawings)
    pts = np.zeros((len(drawings), T, 3), np.float32)
    for i, d in enumerate(drawings):
        pts[i, :len(d)] = d
    return torch.from_numpy(pts), torch.tensor([len(d) for d in drawings])


@pytest.mark.parametrize("size,style", [(64, {}), (224, {}),
                                        (224, dict(line_width=5.25, padding=5.0, canvas=255.0,
                                                   background="white", standardize=True))])
def test_rasterizer_cuda_equals_cpu(size, style):
    points, lengths = _real_batch()
    r = Rasterizer(size, **style)
    cuda = torch.device("cuda")
    # whole drawings
    img_cpu = r(points, lengths)
    img_gpu = r(points.to(cuda), lengths.to(cuda)).cpu()
    assert (img_gpu - img_cpu).abs().mean() < RASTER_MAD
    # every stroke-end snapshot
    sb, sp = stroke_ends(points, lengths)
    snap_cpu = r.snapshots(points, lengths, sb, sp)
    snap_gpu = r.snapshots(points.to(cuda), lengths.to(cuda), sb.to(cuda), sp.to(cuda)).cpu()
    assert snap_cpu.shape[0] > points.shape[0]
    assert (snap_gpu - snap_cpu).abs().mean() < RASTER_MAD
    # a fraction (the first half of the points) through render_views, styled as the network sees it
    half = (lengths // 2).clamp(min=2)
    batch = {"points": points, "lengths": lengths, "image_lengths": half}
    want = render_views(dict(batch), r, ["image"])["image"]
    got = render_views({k: v.to(cuda) for k, v in batch.items()}, r, ["image"])["image"]
    assert got.device.type == "cuda"
    scale = float(want.abs().max()) or 1.0          # standardised images are in std units
    assert (got.cpu() - want).abs().mean() / scale < RASTER_MAD


@pytest.mark.parametrize("channels", [("order", "time"), ("time", "order")])
def test_channel_rasterizer_cuda_equals_cpu(channels):
    """data.channels on the GPU: the same fades, snapshots relative to what they show, as on the CPU;
    the ink channel of a multi-channel image is the one-channel image there too."""
    points, lengths = _real_batch()
    r = Rasterizer(64, channels=channels)
    cuda = torch.device("cuda")
    sb, sp = stroke_ends(points, lengths)
    snap_cpu = r.snapshots(points, lengths, sb, sp)
    snap_gpu = r.snapshots(points.to(cuda), lengths.to(cuda), sb.to(cuda), sp.to(cuda))
    assert snap_gpu.shape == snap_cpu.shape == (len(sb), len(channels), 64, 64)
    for c in range(len(channels)):
        assert (snap_gpu[:, c].cpu() - snap_cpu[:, c]).abs().mean() < RASTER_MAD
    final = r(points.to(cuda), lengths.to(cuda))
    last = torch.cat([torch.nonzero(sb == b)[-1] for b in range(len(lengths))])
    assert torch.equal(final, snap_gpu[last.to(cuda)])
    with_ink = Rasterizer(64, channels=("ink", *channels))(points.to(cuda), lengths.to(cuda))
    assert torch.equal(with_ink[:, :1], Rasterizer(64)(points.to(cuda), lengths.to(cuda)))
    assert torch.equal(with_ink[:, 1:], final)


# ------------------------------------------------------------------------------------ bf16 training
# Every model kind, a few steps on one fixed batch, so the loss must fall.
TRAIN_STEPS = 12


@pytest.mark.parametrize("model", sorted(MODELS))
def test_bf16_training_renders_on_device_and_learns(model, tmp_path, monkeypatch):

    devices = []
    snapshots = Rasterizer.snapshots

    def spy(self, points, *a, **k):
        devices.append(points.device.type)
        return snapshots(self, points, *a, **k)

    monkeypatch.setattr(Rasterizer, "snapshots", spy)
    # 16 train drawings in one batch, no augmentation: every step sees the same batch
    overrides = [*tiny(model), "trainer=gpu", "trainer.precision=bf16-mixed", f"trainer.max_steps={TRAIN_STEPS}",
                 "trainer.max_epochs=-1", "trainer.limit_train_batches=null", "trainer.limit_val_batches=0",
                 "trainer.log_every_n_steps=1", "augment=none", "data.max_train=16", "data.batch_size=16",
                 "data.sampler=random", "data.num_workers=2", "test=false", "callbacks.embedding_eval=null",
                 "model.optimizer.lr=3e-3", "model.scheduler=null"]
    if model == "triplet":
        overrides.append("miner=all")      # every valid triplet of the batch
    run_inproc(overrides, tmp_path)
    if "image" in MODELS[model].VIEWS or "snapshots" in MODELS[model].VIEWS:
        assert devices and set(devices) == {"cuda"}, devices
    losses = [float(r["train/loss"]) for r in read_csv_metrics(tmp_path) if r.get("train/loss")]
    assert len(losses) >= TRAIN_STEPS - 2 and all(np.isfinite(losses)), losses
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses


# ------------------------------------------------------------------------------------ DDP on CUDA
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_mining_gathers_across_ranks_on_cuda(tmp_path):
    """Two ranks share the one GPU: two processes started as two "nodes" of one device each
    (Lightning's external-launch environment), over gloo, since NCCL refuses two ranks on one device.
    On a machine with several GPUs the same config runs with trainer.devices=N over NCCL."""
    n_gpu = torch.cuda.device_count()
    port = _free_port()
    args = [*tiny("triplet"), "trainer=ddp", "trainer.devices=1", "trainer.num_nodes=2",
            "trainer.strategy={_target_:lightning.pytorch.strategies.DDPStrategy,process_group_backend:gloo}",
            "miner=all", "miner.gather_across_ranks=true", "trainer.log_every_n_steps=1",
            "callbacks.embedding_eval=null", "test=false", f"hydra.run.dir={tmp_path}"]
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
               "NODE_RANK": str(rank), "LOCAL_RANK": "0", "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline",
               "HYDRA_FULL_ERROR": "0", "CUDA_VISIBLE_DEVICES": "0" if n_gpu == 1 else str(rank)}
        procs.append(subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    # miner=all with 3 x 4 local batches: 288 triplets on one rank alone; gathered, more.
    counts = [float(r["miner/triplets_step"]) for r in read_csv_metrics(tmp_path) if r.get("miner/triplets_step")]
    assert len(counts) == 2 and all(c > 288 for c in counts), counts
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


# ------------------------------------------------------------------------------------ GPU -> CPU
def test_checkpoint_from_gpu_loads_on_cpu_and_evaluates_alike(tmp_path):
    """A combined model (sequence + snapshots) trained on the GPU at bf16; its checkpoint opens on
    the CPU through the one safe loader, and eval.py on cuda and on cpu gives the same figures."""
    run = tmp_path / "train"
    r = run_cli([*tiny("combined"), "trainer=gpu", "trainer.precision=bf16-mixed", "logger=none", "test=false",
                 "callbacks.embedding_eval=null", f"hydra.run.dir={run}"])
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = run / "checkpoints" / "last.ckpt"
    state = safe_load(ckpt)
    assert all(t.device.type == "cpu" for t in state["state_dict"].values())
    model = MODELS["combined"].load_from_checkpoint(ckpt, map_location="cpu").eval()
    dm = SketchDataModule(root="study10", views=sorted(model.VIEWS), image_size=32, max_snapshots=3)
    dm.load_state_dict(state.get("SketchDataModule", {}))
    batch = dm.render(next(iter(dm.loader("val", 1.0))))
    with torch.no_grad():
        cpu_logits = model.logits(batch)
        model.cuda()
        gpu_logits = model.logits({k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}).cpu()
    assert torch.allclose(cpu_logits, gpu_logits, atol=1e-3, rtol=1e-3)

    metrics = {}
    for device in ("cuda", "cpu"):
        out = tmp_path / f"eval_{device}"
        r = subprocess.run([sys.executable, str(REPO / "eval.py"), f"ckpt_path={ckpt}", f"hydra.run.dir={out}",
                            "logger=none", f"device={device}", "knn.device=auto", "probe.steps=60",
                            "tsne.enabled=false"],
                           cwd=REPO, env={**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0"},
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        metrics[device] = json.loads((out / "metrics.json").read_text())
    n = metrics["cpu"]["n_test"]
    assert metrics["cuda"]["n_test"] == n
    # model predictions: identical up to a drawing whose top two logits tie within float error
    for key in [k for k in metrics["cpu"] if k.startswith("test/acc@")]:
        assert abs(metrics["cuda"][key] - metrics["cpu"][key]) <= 1 / n + 1e-9, key
    # KNN over embeddings: same up to one neighbour-order flip; the probe is trained again on each
    for key in [k for k in metrics["cpu"] if k.startswith("test/knn@")]:
        assert abs(metrics["cuda"][key] - metrics["cpu"][key]) <= 2 / n + 1e-9, key


def test_knn_search_on_cuda_equals_cpu():
    """knn.device=cuda: the torch search on the GPU finds the CPU's neighbours (float32 on both; a
    near-tie may swap two neighbours, so 99.9 % of the rows), across index and query blocks."""
    rng = np.random.default_rng(0)
    index = rng.standard_normal((5000, 64)).astype(np.float32)
    queries = rng.standard_normal((700, 64)).astype(np.float32)
    kw = dict(backend="torch", query_block=256, index_block=2048)
    idx_cpu, d2_cpu = search(index, queries, 5, **kw)
    idx_gpu, d2_gpu = search(index, queries, 5, device="cuda", **kw)
    assert (idx_gpu == idx_cpu).all(axis=1).mean() >= 0.999
    np.testing.assert_allclose(d2_gpu, d2_cpu, rtol=1e-4, atol=1e-3)
