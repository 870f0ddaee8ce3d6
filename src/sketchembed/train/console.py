"""What a run prints: one plain line per epoch when stdout is not a terminal (SLURM, nohup, CI), and
the library noise every run would otherwise show (doubled INFO lines, tips, deprecation warnings)
silenced at the source.

"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from typing import Iterable

from lightning.pytorch.callbacks import ProgressBar

log = logging.getLogger("sketchembed.train")

# Messages from libraries that carry nothing for a sketchembed user.
NOISY_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\).*",         # lightning's pytree shim on torch >= 2.10
)
NOISY_LOG_TEXT = ("litlogger", "litmodels")           # Lightning's product tips


class _DropText(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(t in msg for t in NOISY_LOG_TEXT)


def quiet_libraries() -> None:
    """Remove the noise a user would see on every run. Idempotent; call after logging is set up.

    * Lightning adds its own console handler when imported before Hydra configured logging, so each
      INFO line came twice: its handlers go, its records reach the root (Hydra's) handlers once.
    * Lightning's product tips, the LeafSpec deprecation, optuna's plugin chatter, openTSNE's INFO
      lines: dropped.
    """
    import lightning.pytorch  # noqa: F401 - its import installs the handler removed below

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                lg.removeHandler(h)
        lg.propagate = True
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        lg = logging.getLogger(name)
        if not any(isinstance(f, _DropText) for f in lg.filters):
            lg.addFilter(_DropText())
    for pattern in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    # optuna logs every trial and the sampler's experimental-feature notes at INFO/WARNING; the
    # sweeper's own lines (one per trial and the best result) are kept.
    logging.getLogger("optuna").setLevel(logging.ERROR)
    # openTSNE announces its gradient method at INFO on every map (the space pictures, eval's t-SNE)
    logging.getLogger("openTSNE").setLevel(logging.WARNING)


def quiet_sweeper(argv: list[str]) -> None:
    """Before Hydra starts: an Optuna sweep (``hparams_search=optuna``) would print optuna's own
    coloured INFO lines beside the sweeper's; optuna sets its level when first imported, so it is set
    here, before the sweeper imports it (and only then: importing optuna costs seconds)."""
    if not any("optuna" in a for a in argv):
        return
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


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
