"""The learning-rate schedule of the configs (``conf/model/scheduler/warmup_cosine.yaml``), built from
torch's schedulers; optimizers come straight from ``torch.optim`` (``conf/model/optimizer/``).

Any ``torch.optim.lr_scheduler`` class works as ``model.scheduler`` too (``_partial_: true``);
a factory that takes ``total_steps`` gets the run's number of optimizer steps.
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR


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
