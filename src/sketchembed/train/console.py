"""What a training run prints while it trains: the Rich bar on a terminal, one plain line per epoch
when stdout is not a terminal (SLURM, nohup, CI). Both count epochs and steps to whichever of
``trainer.max_steps`` and ``trainer.max_epochs`` ends the run first, and estimate the time left from
the pace of the recent steps, not from the slow first ones. (The library noise every run would
otherwise show is silenced by sketchembed.entry.)"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections import deque
from collections.abc import Iterable

from lightning.pytorch.callbacks import ProgressBar, RichProgressBar

log = logging.getLogger("sketchembed.train")

# The pace is measured over this many recent optimizer steps (validation between them included).
PACE_STEPS = 50


def is_tty() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def _fmt_duration(s: float) -> str:
    s = int(round(max(0.0, s)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def _limit(value) -> int | None:
    """A trainer limit (max_steps, max_epochs) as a positive int; None for "no limit" (-1, None, 0)."""
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None


def planned(trainer) -> tuple[int | None, int | None]:
    """(steps, epochs) the run will train in all: the smaller of what ``max_steps`` and
    ``max_epochs`` allow (None where nothing bounds it, e.g. an endless dataloader)."""
    max_steps, max_epochs = _limit(trainer.max_steps), _limit(trainer.max_epochs)
    batches = getattr(trainer, "num_training_batches", None)
    per_epoch = (math.ceil(batches / max(1, int(getattr(trainer, "accumulate_grad_batches", 1) or 1)))
                 if isinstance(batches, int) and batches > 0 else None)
    steps = [s for s in (max_steps, max_epochs * per_epoch if max_epochs and per_epoch else None) if s]
    epochs = [e for e in (max_epochs, math.ceil(max_steps / per_epoch) if max_steps and per_epoch else None) if e]
    return (min(steps) if steps else None), (min(epochs) if epochs else None)


class RunClock:
    """Elapsed time and the estimated time left, from the optimizer steps seen in this process: the
    pace is that of the last ``PACE_STEPS`` steps (wall time between them, validation included)."""

    def __init__(self, window: int = PACE_STEPS):
        self._marks: deque[tuple[float, int]] = deque(maxlen=window + 1)
        self._start: float | None = None

    def start(self, step: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._start = now
        self._marks.clear()
        self._marks.append((now, int(step)))

    def tick(self, step: int, now: float | None = None) -> None:
        """Called after each training batch; only batches that stepped the optimizer count."""
        if self._marks and self._marks[-1][1] == int(step):
            return
        self._marks.append((time.monotonic() if now is None else now, int(step)))

    def elapsed(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        return 0.0 if self._start is None else now - self._start

    def seconds_per_step(self) -> float | None:
        """Over the recent steps; the first step (start-up, first batch) counts only until others come."""
        marks = list(self._marks)
        if len(marks) > 2:
            marks = marks[1:]  # the interval from the start holds set-up and the first batch
        if len(marks) < 2 or marks[-1][1] <= marks[0][1]:
            return None
        return (marks[-1][0] - marks[0][0]) / (marks[-1][1] - marks[0][1])

    def eta(self, trainer) -> float | None:
        total, _ = planned(trainer)
        pace = self.seconds_per_step()
        if total is None or pace is None:
            return None
        return pace * max(0, total - int(trainer.global_step))


class RunProgressBar(RichProgressBar):
    """Lightning's Rich bar, with the epoch counted to the run's real end (``Epoch 3/3`` for a
    ``max_steps`` run that ends in epoch 3, not ``Epoch 2/59``) and the whole run's ``eta``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.clock = RunClock()

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self.clock.start(trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.clock.tick(trainer.global_step)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def _get_train_description(self, current_epoch: int) -> str:
        _, epochs = planned(self.trainer)
        text = f"Epoch {current_epoch + 1}" + (f"/{epochs}" if epochs else "")
        return f"{text:{len(self.validation_description)}}"  # as Lightning: no flicker beside "Validation"

    def get_metrics(self, trainer, pl_module) -> dict:
        items = super().get_metrics(trainer, pl_module)
        eta = self.clock.eta(trainer)
        if eta is not None:
            items["eta"] = _fmt_duration(eta)
        return items


class EpochLineProgress(ProgressBar):
    """The progress display for logs read from a file (SLURM, nohup, CI): one plain line per training
    epoch to stdout and the run log (``run.log``) instead of a bar that only shows its final state:
    ``epoch 3/60  step 28  train/loss 1.234  val/acc@100 0.512 …  elapsed 1:02  eta 19:40``.

    Training picks it in place of the Rich bar when stdout is not a terminal (``train.run._callbacks``).
    """

    def __init__(self, metrics: Iterable[str] | None = None):
        super().__init__()
        self.metrics = list(metrics) if metrics else None
        self._enabled = True
        self.clock = RunClock()

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer, pl_module) -> None:
        self.clock.start(trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.clock.tick(trainer.global_step)

    def format_line(self, trainer) -> str:
        _, epochs = planned(trainer)
        epoch = trainer.current_epoch + 1
        parts = [f"epoch {epoch}/{epochs}" if epochs else f"epoch {epoch}", f"step {trainer.global_step}"]
        metrics = trainer.callback_metrics
        keys = self.metrics or (["train/loss"] + sorted(k for k in metrics if k.startswith("val/")))
        for k in keys:
            v = metrics.get(k)
            if v is None:
                continue
            try:
                parts.append(f"{k} {float(v):.4g}")
            except (TypeError, ValueError):
                continue
        parts.append(f"elapsed {_fmt_duration(self.clock.elapsed())}")
        eta = self.clock.eta(trainer)
        if eta is not None:
            parts.append(f"eta {_fmt_duration(eta)}")
        return "  ".join(parts)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # Lightning runs the epoch's validation before this hook, so its val metrics are in.
        if not self._enabled or not trainer.is_global_zero or trainer.sanity_checking:
            return
        line = self.format_line(trainer)
        print(line, flush=True)
        # The run log (Hydra's file handler on the root logger) gets it too, without a console copy.
        record = log.makeRecord(log.name, logging.INFO, __file__, 0, line, None, None)
        for h in logging.getLogger().handlers:
            if isinstance(h, logging.FileHandler):
                h.handle(record)
