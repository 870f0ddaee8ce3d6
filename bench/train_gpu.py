"""`python -m bench train_gpu`: every study experiment at its study settings, bf16, on the GPU.

Each ``conf/experiment/study_*`` config that trains a different network (triplet with vgg16 /
inception_v4 / resnetv2_50, the LSTM, the combined model end-to-end and transferred) is composed as
``python train.py experiment=…`` would, on a generated prepared set of study-sized drawings
(``bench.prepare``'s generator, the study's split rule), with ``trainer.precision=bf16-mixed``. Two
loops of the same optimizer step (bf16 autocast, the study's clipping) are timed:

* fed: batches from the real ``SketchDataModule`` (its workers, pinned memory, the copy to the GPU
  and the on-device rendering in ``on_after_batch_transfer``);
* model-only: one batch, already rendered on the GPU, over and over (the model's own ceiling).

``ratio`` = fed / model-only (goal >= 0.9: the input pipeline is never the bottleneck); peak GPU
memory is that of the model-only loop; ``50k_steps_h`` projects the study's 50,000 steps at the fed
rate. Without CUDA the section is skipped (``--quick`` runs it small on the CPU to check it works).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from bench import save_json
from bench.eval_scale import synthetic_prepared
from bench.train_throughput import Loop, repeat_batch
from sketchembed.entry import conf_dir
from sketchembed.train.run import _instantiate_model, validate

EXPERIMENTS = ("study_triplet_vgg16_semihard", "study_triplet_inception_v4_semihard",
               "study_triplet_resnetv2_50_semihard", "study_lstm", "study_combined_e2e", "study_combined_transfer")
# the triplet run whose CNN the transfer experiment starts from
TRANSFER_FROM = "study_triplet_resnetv2_50_semihard"
STUDY_STEPS = 50_000
FULL = dict(drawings=300_000, warmup=20, steps=60, workers=8)
# CPU smoke run: tiny backbone and images, a few steps
QUICK = dict(drawings=20_000, warmup=1, steps=2, workers=0,
             overrides=["data.batch_size=8", "data.pk_k=4", "data.eval_batch_size=16"],
             image=["backbone=test_resnet", "data.image_size=32", "model.embedding_dim=16"],
             sequence=["model.hidden=16"])


def compose_experiment(name: str, overrides: list[str]):
    """The job config of ``python train.py experiment=NAME OVERRIDES`` (no Hydra run dir is made)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={name}", *overrides])
    return cfg


def _model_views(cfg) -> set:
    return set(validate(cfg)["model_cls"].VIEWS)


def build(cfg):
    """(datamodule set up for fit, model) exactly as ``train.py`` instantiates them."""
    checked = validate(cfg)
    dm = instantiate(cfg.data, augment=None, views=sorted(checked["model_cls"].VIEWS), _convert_="all")
    dm.setup("fit")
    return dm, _instantiate_model(cfg, dm.num_classes, checked["loss_kind"])


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def fed_batches(dm, device: torch.device):
    """The DataModule's own path: loader (workers, pinned memory) -> device -> on-device rendering."""
    while True:
        for batch in dm.train_dataloader():
            yield dm.on_after_batch_transfer(_to(batch, device), 0)


def save_encoder_checkpoint(model, path: Path) -> Path:
    """A checkpoint the transfer experiment's ``model.cnn_ckpt`` accepts (weights + the hparams it checks)."""
    hp = {k: model.hparams[k] for k in ("model_kind", "backbone", "embedding_dim")}
    torch.save({"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, "hyper_parameters": hp}, path)
    return path


def measure(name: str, prepared: Path, device: torch.device, size: dict, extra: list[str], work: Path) -> dict:
    overrides = [f"data.root={prepared}", f"data.num_workers={size['workers']}", "trainer.precision=bf16-mixed",
                 *extra, *size.get("overrides", [])]
    if name == "study_combined_transfer":
        overrides.append(f"model.cnn_ckpt={work / 'cnn.ckpt'}")
    if size["workers"] == 0:
        overrides.append("data.pin_memory=false")
    cfg = compose_experiment(name, overrides)
    if "image" in size or "sequence" in size:       # the quick run's small parts, where the model has them
        views = _model_views(cfg)
        extra_quick = [*(size["image"] if views & {"image", "snapshots"} else []),
                       *(size["sequence"] if "sequence" in views else [])]
        cfg = compose_experiment(name, overrides + extra_quick)
    torch.manual_seed(0)
    dm, model = build(cfg)
    loop = Loop(model, device, bf16="bf16" in str(cfg.trainer.precision), clip=cfg.trainer.get("gradient_clip_val"),
                clip_by_value=cfg.trainer.get("gradient_clip_algorithm") == "value")
    fed_s, fed_n = loop.timed(fed_batches(dm, device), size["warmup"], size["steps"])
    fixed = next(fed_batches(dm, device))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    only_s, only_n = loop.timed(repeat_batch(fixed), size["warmup"], size["steps"])
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    if name == TRANSFER_FROM:
        save_encoder_checkpoint(model, work / "cnn.ckpt")
    fed, only = fed_n / fed_s, only_n / only_s
    steps_per_s = size["steps"] / fed_s
    backbone = cfg.backbone.name if "image" in model.VIEWS or "snapshots" in model.VIEWS else "-"
    row = {"experiment": name, "backbone": backbone, "image_size": int(cfg.data.image_size),
           "batch": int(fixed["label"].shape[0]), "precision": str(cfg.trainer.precision),
           "workers": size["workers"], "fed_samples_per_s": round(fed, 1),
           "model_only_samples_per_s": round(only, 1), "ratio": round(fed / only, 3),
           "fed_steps_per_s": round(steps_per_s, 2), "peak_gpu_gib": None if peak is None else round(peak, 2),
           "study_50k_steps_h": round(STUDY_STEPS / steps_per_s / 3600, 2)}
    del loop, model, dm
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def run(quick: bool = False, device: str | None = None, experiments=EXPERIMENTS, work: Path | None = None,
        drawings: int | None = None) -> list[dict]:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type != "cuda" and not quick:
        print("  no CUDA device: skipped (`--quick` checks it on the CPU)")
        return []
    size = dict(QUICK if quick else FULL)
    if drawings:
        size["drawings"] = drawings
    work = Path(work or Path(".bench") / "train_gpu")
    work.mkdir(parents=True, exist_ok=True)
    prepared = synthetic_prepared(size["drawings"])
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"  {name}; {size['drawings']:,} generated drawings ({prepared}); {size['steps']} timed steps "
          f"after {size['warmup']}; DataModule workers {size['workers']}")
    if "study_combined_transfer" in experiments and TRANSFER_FROM not in experiments:
        experiments = [TRANSFER_FROM, *experiments]
    rows = []
    for exp in sorted(experiments, key=lambda e: e == "study_combined_transfer"):
        t0 = time.perf_counter()
        row = measure(exp, prepared, dev, size, [], work)
        row["device"] = name
        rows.append(row)
        print(f"  {exp:<38}{row['backbone']:<14}{row['image_size']:>4} px  batch {row['batch']:>3}  "
              f"fed {row['fed_samples_per_s']:>8.1f}/s  model-only {row['model_only_samples_per_s']:>8.1f}/s  "
              f"ratio {row['ratio']:.2f}  peak {row['peak_gpu_gib']} GiB  50k steps {row['study_50k_steps_h']} h"
              f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.train_gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device")
    p.add_argument("--drawings", type=int)
    p.add_argument("--experiments", nargs="+", choices=EXPERIMENTS, default=list(EXPERIMENTS))
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    rows = run(a.quick, a.device, a.experiments, drawings=a.drawings)
    save_json(a.json, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
