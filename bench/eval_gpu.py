"""`python -m bench eval_gpu`: `python eval.py` at the study's scale on the GPU, timed per stage.

A study model (``experiment=study_triplet_resnetv2_50_semihard``: ResNet-v2-50, 224 px, the study's
input settings) trained for two steps on a generated ten-class set of 300,000 drawings (the study's
split: 200 k train / 50 k val / 50 k test), then the whole eval with ``device=cuda``: 100,000 train
drawings embedded for the KNN index and the probe, all 50,000 test drawings, 5,000 at each of the
curve's other fractions, t-SNE of 5,000 and every figure. Its ``stages.json`` gives wall time and
peak resident memory per stage. Speed does not depend on how well the model is trained. Then the
KNN search alone at 100 k and 1.4 M indexed embeddings: faiss and torch on the CPU beside torch on
the GPU (``knn.device=cuda``), the measurement behind ``knn.device``'s default. Without CUDA the
section is skipped (``--quick`` checks it small on the CPU).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench import save_json
from bench.eval_scale import REPO, _print_eval, knn_backends, run_eval, synthetic_prepared, train_checkpoint

EXPERIMENT = "study_triplet_resnetv2_50_semihard"
FULL = dict(drawings=300_000, max_train=100_000, workers=8, overrides=[], knn_index=(100_000, 1_400_000),
            knn_queries=10_000)
QUICK = dict(drawings=20_000, max_train=2_000, workers=0, knn_index=(2_000,), knn_queries=500,
             overrides=["backbone=test_resnet", "data.image_size=32", "model.embedding_dim=16", "data.pk_k=4"])


def run(quick: bool = False, device: str | None = None) -> dict:
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dev.startswith("cpu") and not quick:
        print("  no CUDA device: skipped (`--quick` checks it on the CPU)")
        return {}
    size = QUICK if quick else FULL
    prepared = synthetic_prepared(size["drawings"])
    work = REPO / ".bench" / "eval_gpu"
    t = time.perf_counter()
    ckpt = train_checkpoint(prepared, work / "train", overrides=[f"experiment={EXPERIMENT}", *size["overrides"],
                                                                 *([] if dev.startswith("cuda") else
                                                                   ["trainer=cpu", "data.pin_memory=false"])])
    print(f"  {EXPERIMENT}: checkpoint after 2 steps in {time.perf_counter() - t:.0f} s")
    res = run_eval(ckpt, work / "eval", f"device={dev}", f"knn.max_train={size['max_train']}",
                   f"data.num_workers={size['workers']}")
    name = torch.cuda.get_device_name(0) if dev.startswith("cuda") else "cpu"
    _print_eval(f"10 classes on {name}", res)
    knn = knn_backends(size["knn_index"], size["knn_queries"])
    for r in knn:
        print("  knn: " + ", ".join(f"{k}={v}" for k, v in r.items()))
    return {"experiment": EXPERIMENT, "device": name, "drawings": size["drawings"], **res, "knn_backends": knn}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.eval_gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device")
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    res = run(a.quick, a.device)
    save_json(a.json, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
