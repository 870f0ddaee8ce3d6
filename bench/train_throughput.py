"""Training throughput of each model fed by the real SketchDataModule, beside the same model fed one
pre-made batch over and over (the model-only ceiling): their ratio is the share of the model's speed
the input pipeline (reading, augmenting, collating, rasterizing) lets through.

Both loops are the same manual AdamW step (``model.training_loss``), so the Trainer's own overhead is
not part of either figure.
"""

from __future__ import annotations

import contextlib
import time

import torch

# CPU defaults: the backbone of the main job (conf/backbone/test_resnet.yaml), 64 px, batch 32.
FULL = dict(backbone="test_resnet", image_size=64, batch_size=32, steps=8, warmup=2, hidden=256, embedding_dim=256)
QUICK = dict(backbone="test_byobnet", image_size=32, batch_size=16, steps=3, warmup=1, hidden=32, embedding_dim=32)
KINDS = ("triplet", "direct", "lstm", "combined")
CPU = torch.device("cpu")


def _augment():
    try:
        from hydra.utils import instantiate
        from omegaconf import OmegaConf

        from sketchembed.entry import conf_dir

        return instantiate(OmegaConf.load(f"{conf_dir()}/augment/default.yaml"))
    except Exception as e:  # the figure is still useful without augmentation; say so
        print(f"  (augmentation off: {type(e).__name__}: {e})")
        return None


def _model(kind: str, num_classes: int, cfg: dict):
    from sketchembed.metric.miners import RandomTripletMiner
    from sketchembed.models import CombinedModel, DirectImageModel, LSTMModel, TripletImageModel

    # constant rate: configure_optimizers returns the bare optimizer the manual loop steps
    img = dict(backbone=cfg["backbone"], image_size=cfg["image_size"], embedding_dim=cfg["embedding_dim"],
               scheduler=None)
    if kind == "triplet":  # random triplets, as measured before miners were injected
        return TripletImageModel(**img, miner=RandomTripletMiner())
    if kind == "direct":
        return DirectImageModel(num_classes, **img)
    if kind == "lstm":
        return LSTMModel(num_classes, hidden=cfg["hidden"], scheduler=None)
    return CombinedModel(num_classes, hidden=cfg["hidden"], **img)


class Loop:
    """One training step as the Trainer takes it (``model.training_loss``, the optimizer the model
    configures, optional bf16 autocast and gradient clipping), timed; shared with ``bench.train_gpu``."""

    def __init__(self, model, device=CPU, *, bf16: bool = False, clip: float | None = None,
                 clip_by_value: bool = False):
        self.model, self.device = model.to(device).train(), torch.device(device)
        opt = model.configure_optimizers()
        self.opt = opt["optimizer"] if isinstance(opt, dict) else opt
        self.bf16, self.clip, self.by_value = bf16, clip, clip_by_value

    def step(self, batch: dict) -> None:
        ctx = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with ctx:
            loss, _ = self.model.training_loss(batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip:
            clip = torch.nn.utils.clip_grad_value_ if self.by_value else torch.nn.utils.clip_grad_norm_
            clip(self.model.parameters(), float(self.clip))
        self.opt.step()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def timed(self, batches, warmup: int, steps: int) -> tuple[float, int]:
        """(seconds, samples) for ``steps`` steps after ``warmup`` untimed ones; ``batches`` yields
        ready-to-use batches (the fed loop does its loading inside the iterator, so it is timed)."""
        it = iter(batches)
        for _ in range(warmup):
            self.step(next(it))
        self.sync()
        n, t0 = 0, time.perf_counter()
        for _ in range(steps):
            batch = next(it)
            n += int(batch["label"].shape[0])
            self.step(batch)
        self.sync()
        return time.perf_counter() - t0, n


def _cycle_loader(dm):
    while True:
        for batch in dm.train_dataloader():
            yield dm.render(batch)


def repeat_batch(batch):
    while True:
        yield batch


def run(quick: bool = False) -> list[dict]:
    from sketchembed.data.datamodule import SketchDataModule

    cfg = QUICK if quick else FULL
    augment = _augment()
    torch.manual_seed(0)
    rows = []
    print(f"  backbone={cfg['backbone']}, {cfg['image_size']} px, batch {cfg['batch_size']}, "
          f"threads {torch.get_num_threads()}, embedded study10, augmentation {'on' if augment else 'off'}")
    for kind in KINDS:
        from sketchembed.models import MODELS

        dm = SketchDataModule(root="study10", views=sorted(MODELS[kind].VIEWS), image_size=cfg["image_size"],
                              batch_size=cfg["batch_size"], augment=augment, num_workers=0,
                              sampler="pk" if kind == "triplet" else "random",
                              pk_p=4, pk_k=max(2, cfg["batch_size"] // 4))
        dm.setup("fit")
        loop = Loop(_model(kind, dm.num_classes, cfg))
        fed_s, fed_n = loop.timed(_cycle_loader(dm), cfg["warmup"], cfg["steps"])
        fixed = dm.render(next(iter(dm.train_dataloader())))
        ceil_s, ceil_n = loop.timed(repeat_batch(fixed), cfg["warmup"], cfg["steps"])
        fed, ceiling = fed_n / fed_s, ceil_n / ceil_s
        rows.append({"model": kind, "backbone": cfg["backbone"] if kind != "lstm" else "-",
                     "image_size": cfg["image_size"], "batch": cfg["batch_size"],
                     "fed_samples_per_s": round(fed, 1), "model_only_samples_per_s": round(ceiling, 1),
                     "ratio": round(fed / ceiling, 3)})
    print(f"  {'model':<10}{'backbone':<14}{'fed /s':>10}{'model-only /s':>16}{'ratio':>8}")
    for r in rows:
        print(f"  {r['model']:<10}{r['backbone']:<14}{r['fed_samples_per_s']:>10.1f}"
              f"{r['model_only_samples_per_s']:>16.1f}{r['ratio']:>8.2f}")
    return rows


if __name__ == "__main__":
    run()
