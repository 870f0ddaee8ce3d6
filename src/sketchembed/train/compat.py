"""The one home of Lightning's private API: every name of it sketchembed uses is imported here only.

Lightning may change or drop its ``_``-names in any release. Keeping them in one module, with the
versions they were checked against (``LIGHTNING_VERSIONS``) and tests/test_compat.py asserting the
installed version and each name's signature, makes an upgrade fail loudly in one place instead of
somewhere inside a training run.
"""

from __future__ import annotations

import signal

import lightning
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loops.fit_loop import _FitLoop
from lightning.pytorch.loops.loop import _Loop
from lightning.pytorch.strategies.launchers.subprocess_script import (
    _SubprocessScriptLauncher,
)
from packaging.specifiers import SpecifierSet
from packaging.version import Version

__all__ = ["LIGHTNING_VERSIONS", "PRIVATE", "PRIVATE_STATE", "kill_launched_ranks", "resume_after_whole_epochs",
           "save_unsaved_state", "supported"]

# The Lightning releases this module's uses of private names were written and checked for.
LIGHTNING_VERSIONS = SpecifierSet(">=2.4,<2.7")

# Every private name used, ``(owner, attribute)``: tests/test_compat.py checks each still exists.
PRIVATE = ((_FitLoop, "restarting"), (_Loop, "restarting"), (_SubprocessScriptLauncher, "kill"),
           (ModelCheckpoint, "_save_topk_checkpoint"), (ModelCheckpoint, "_monitor_candidates"))
# and the private attributes of an instance it reads
PRIVATE_STATE = ((ModelCheckpoint, "_last_global_step_saved"),)


def supported(version: str = lightning.__version__) -> bool:
    """Whether ``version`` of Lightning is one this module was checked against."""
    return Version(version) in LIGHTNING_VERSIONS


def _restarting(loop: _FitLoop, restarting: bool) -> None:
    p = loop.epoch_progress.current
    ended = p.processed and p.ready == p.started == p.processed and loop.epoch_loop.batch_progress.is_last_batch
    if restarting and ended:
        _Loop.restarting.fset(loop, False)  # the epoch is over: begin the next one, as without max_steps
    else:
        _FitLoop.restarting.fset(loop, restarting)


class _WholeEpochFitLoop(_FitLoop):
    restarting = _FitLoop.restarting.setter(_restarting)


def resume_after_whole_epochs(trainer) -> None:
    """Make ``trainer`` continue a checkpoint saved at the end of an epoch with the next epoch.

    With ``trainer.max_steps`` set, Lightning (2.x, its issue #19617) restores such a checkpoint as
    an epoch still to be finished: it runs that epoch's (already trained) remainder — nothing — and
    counts it as another epoch, so ``resume=DIR trainer.max_epochs=2 trainer.max_steps=4`` after one
    epoch of 2 steps trained no step. Here a restored epoch whose last batch was trained counts as
    over, which is what Lightning does without ``max_steps``; a checkpoint from the middle of an
    epoch (``max_steps`` reached there, or a step checkpoint) still continues that epoch.
    """
    if type(trainer.fit_loop) is _FitLoop:
        trainer.fit_loop.__class__ = _WholeEpochFitLoop


def kill_launched_ranks(trainer, signum: int = getattr(signal, "SIGKILL", signal.SIGTERM)) -> None:
    """Stop the ranks this process launched (Lightning's script launcher), if it launched any."""
    launcher = trainer.strategy.launcher
    if isinstance(launcher, _SubprocessScriptLauncher):
        launcher.kill(signum)


def save_unsaved_state(checkpoint: ModelCheckpoint, trainer) -> None:
    """Have ``checkpoint`` save the trainer's current state now unless it already holds this step
    (Lightning saves only at its save points)."""
    if checkpoint._last_global_step_saved != trainer.global_step and not trainer.fast_dev_run:
        checkpoint._save_topk_checkpoint(trainer, checkpoint._monitor_candidates(trainer))
