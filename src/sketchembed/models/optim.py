"""The optimizers and learning-rate schedules of the configs under their config names
(``conf/model/optimizer/adamw.yaml``, ``conf/model/scheduler/warmup_cosine.yaml``); every other
``torch.optim`` optimizer or ``torch.optim.lr_scheduler`` class is ``torch:<Class>``
(:data:`sketchembed.registry.OPTIMIZERS`, :data:`~sketchembed.registry.SCHEDULERS`).

A checkpoint records the optimizer and scheduler by these names; a factory that takes
``total_steps`` gets the run's number of optimizer steps.
"""

from __future__ import annotations

from torch.optim import AdamW, Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR

from sketchembed.registry import OPTIMIZERS, SCHEDULERS

OPTIMIZERS.register("adamw")(AdamW)

# The configs' defaults (conf/model/optimizer/adamw.yaml, conf/model/scheduler/warmup_cosine.yaml; a
# test holds them equal): what a model built without them uses, and what old checkpoints migrate to.
DEFAULT_OPTIMIZER = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1.0e-3, "weight_decay": 1.0e-4}
DEFAULT_SCHEDULER = {"_target_": "sketchembed.models.optim.warmup_cosine", "_partial_": True,
                     "warmup_steps": 0, "eta_min": 0.0}


@SCHEDULERS.register("warmup_cosine")
def warmup_cosine(optimizer: Optimizer, total_steps: int, warmup_steps: int = 0,
                  eta_min: float = 0.0) -> LRScheduler:
    """Linear warmup over ``warmup_steps`` steps (step k at (k+1)/warmup of the rate), then cosine
    decay to ``eta_min`` at ``total_steps``; stepped once per optimizer step."""
    warmup = int(warmup_steps)
    if warmup < 0:
        raise ValueError(f"model.scheduler.warmup_steps={warmup_steps} must be >= 0")
    cosine = CosineAnnealingLR(optimizer, T_max=max(1, int(total_steps) - warmup), eta_min=float(eta_min))
    if warmup <= 1:  # one warmup step is the full rate already
        return cosine if warmup == 0 else SequentialLR(optimizer, [_constant(optimizer, 1), cosine], [1])
    ramp = LinearLR(optimizer, start_factor=1.0 / warmup, end_factor=1.0, total_iters=warmup - 1)
    return SequentialLR(optimizer, [ramp, cosine], milestones=[warmup])


def _constant(optimizer: Optimizer, steps: int) -> LRScheduler:
    return LinearLR(optimizer, start_factor=1.0, end_factor=1.0, total_iters=steps)
