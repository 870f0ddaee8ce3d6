"""What a training run prints: one plain line per epoch when stdout is not a terminal (SLURM, nohup,
CI). (The library noise every run would otherwise show is silenced by sketchembed.entry.)"""

from __future__ import annotations

import logging
import sys
import time
from typing import Iterable

from lightning.pytorch.callbacks import ProgressBar

log = logging.getLogger("sketchembed.train")


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
        self._start: float | None = None
        self._first_epoch = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = time.monotonic()
        self._first_epoch = trainer.current_epoch

    def format_line(self, trainer) -> str:
        elapsed = time.monotonic() - (self._start if self._start is not None else time.monotonic())
        epoch = trainer.current_epoch + 1
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        done = max(1, epoch - self._first_epoch)
        parts = [f"epoch {epoch}/{total}" if total else f"epoch {epoch}", f"step {trainer.global_step}"]
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
        parts.append(f"elapsed {_fmt_duration(elapsed)}")
        if total:
            parts.append(f"eta {_fmt_duration(elapsed / done * max(0, total - epoch))}")
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
