"""Wall time and peak memory of each stage of an evaluation (``stages.json`` beside metrics.json),
so `make bench` can say where the time and the memory of eval at scale go.

Peak memory is the process's resident high-water mark (``VmHWM``), reset at the start of each stage
by writing 5 to ``/proc/self/clear_refs`` (Linux); where that is not possible the figure is the
process's peak so far (``ru_maxrss``) and ``peak_resets`` says so.
"""

from __future__ import annotations

import logging
import re
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("sketchembed.eval")


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Resident high-water mark of this process in MiB (since the last reset, on Linux)."""
    try:
        m = re.search(r"VmHWM:\s+(\d+)\s+kB", Path("/proc/self/status").read_text())
        if m:
            return int(m.group(1)) / 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


class Stages:
    """``with stages("embed") as extra: …`` records ``{name: {wall_s, peak_rss_mb, **extra}}`` in
    order; the caller may put facts of the stage (sizes) into ``extra``."""

    def __init__(self):
        self.records: dict[str, dict] = {}
        self.peak_resets = True
        self._t0 = time.perf_counter()

    @contextmanager
    def __call__(self, name: str, **info):
        self.peak_resets = _reset_peak() and self.peak_resets
        t = time.perf_counter()
        extra = dict(info)
        try:
            yield extra
        finally:
            rec = {"wall_s": round(time.perf_counter() - t, 3), "peak_rss_mb": round(peak_rss_mb(), 1), **extra}
            self.records[name] = rec
            log.info("stage %s: %.1f s, peak %.0f MiB", name, rec["wall_s"], rec["peak_rss_mb"])

    def summary(self) -> dict:
        peaks = [r["peak_rss_mb"] for r in self.records.values()]
        return {"stages": self.records, "total_wall_s": round(time.perf_counter() - self._t0, 3),
                "peak_rss_mb": max(peaks, default=round(peak_rss_mb(), 1)), "peak_resets": self.peak_resets}
