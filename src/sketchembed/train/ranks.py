"""When one DDP rank crashes, the user sees that rank's error, not rank 0's "Connection closed by peer".

The failing rank writes its one-line error and traceback to ``error.rank<R>.log`` in the run dir the
moment Lightning reports the exception (:class:`RankFailureReport`, before teardown closes its
connections); rank 0, whose own error is then only the lost connection, prints that rank's line as
the last thing and exits nonzero (:func:`report_other_rank`). When rank 0 fails first, it stops the
ranks it launched, which would otherwise print their lost-connection errors after its own.
"""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from sketchembed.entry import run_dir as _run_dir  # the running app's output dir (tests replace it)
from sketchembed.train.compat import kill_launched_ranks

# What a rank sees when another one died: its own error is only a consequence.
PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "DistBackendError",
             "NCCL communicator was aborted", "Socket Timeout", "Connection refused")
_MAX = 500  # characters of a one-line message


def summary(e: BaseException) -> str:
    text = f"{type(e).__name__}: {' '.join(str(e).split())}"
    return text if len(text) <= _MAX else text[:_MAX] + " …"


def peer_lost(e: BaseException) -> bool:
    text = f"{type(e).__name__}: {e}"
    return any(p in text for p in PEER_LOST)


def rank() -> int:
    return int(getattr(rank_zero_only, "rank", 0) or 0)


# Processes of the current run, as the Trainer last saw it (Lightning unsets WORLD_SIZE at teardown).
_world = {"size": 1}


def world_size() -> int:
    return _world["size"]


def failure_file(run_dir, r: int) -> Path:
    return Path(run_dir) / f"error.rank{r}.log"


def write_failure(run_dir, r: int, e: BaseException) -> Path:
    path = failure_file(run_dir, r)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"rank {r}: {summary(e)}\n\n{''.join(traceback.format_exception(e))}")
    return path


class RankFailureReport(Callback):
    """Record a rank's own error for rank 0 to show; on rank 0, stop the ranks it launched."""

    def __init__(self, run_dir):
        self.run_dir = Path(run_dir)

    def setup(self, trainer, pl_module, stage: str) -> None:
        _world["size"] = int(trainer.world_size)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if trainer.world_size <= 1 or peer_lost(exception):
            return
        if trainer.global_rank != 0:
            write_failure(self.run_dir, trainer.global_rank, exception)
            return
        kill_launched_ranks(trainer)  # rank 0's own error: the others cannot go on


def report_other_rank(e: BaseException, started: float, wait_s: float = 15.0) -> None:
    """In a DDP run, end the process with the failing rank's one line; return when there is none.

    On rank 0 whose error is a lost connection: wait (up to ``wait_s``) for another rank's report
    written in the run dir since ``started`` and print it. On another rank: print its own line (its stack is in its
    file) and exit 1, or exit quietly when it only lost rank 0 (whose error is printed by rank 0).
    """
    run_dir = _run_dir()
    if world_size() <= 1 or run_dir is None:
        return
    r = rank()
    if r != 0:
        if peer_lost(e):
            sys.exit(1)
        path = failure_file(run_dir, r)
        if not path.is_file() or path.stat().st_mtime < started:
            path = write_failure(run_dir, r, e)
        print(f"error: rank {r}: {summary(e)} (traceback: {path})", file=sys.stderr)
        sys.exit(1)
    if not peer_lost(e):
        return
    deadline = time.time() + wait_s
    while True:
        reports = sorted(p for p in Path(run_dir).glob("error.rank*.log")
                         if p != failure_file(run_dir, 0) and p.stat().st_mtime >= started)
        if reports or time.time() > deadline:
            break
        time.sleep(0.2)
    if not reports:
        return
    first = reports[0].read_text().splitlines()[0]
    write_failure(run_dir, 0, e)  # rank 0's own stack, kept too
    print(f"error: {first} (traceback: {reports[0]}; rank 0 then lost its connection)", file=sys.stderr)
    sys.exit(1)
