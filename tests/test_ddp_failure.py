"""A crash in one DDP rank ends with that rank's own error line and a nonzero exit code, not with
rank 0's "Connection closed by peer" (sketchembed.train.ranks)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import tiny
from sketchembed.train import ranks

REPO = Path(__file__).resolve().parents[1]
PEER = RuntimeError("[pair.cc:561] Connection closed by peer [127.0.0.1]:13449. This is typically caused by "
                    "a remote worker crashing.")


@pytest.fixture
def ddp(monkeypatch, tmp_path):
    """This process as rank R of a 2-process run whose run dir is ``tmp_path``."""
    monkeypatch.setitem(ranks._world, "size", 2)
    monkeypatch.setattr(ranks, "_run_dir", lambda: tmp_path)

    def as_rank(r: int):
        monkeypatch.setattr(ranks, "rank", lambda: r)
    return as_rank


def test_rank0_shows_the_failing_rank_line(ddp, tmp_path, capsys):
    started = time.time()
    ddp(1)
    with pytest.raises(SystemExit) as e:
        ranks.report_other_rank(ValueError("bad batch 3:\n  labels out of range"), started)
    assert e.value.code == 1
    own = capsys.readouterr().err.strip()
    assert own.startswith("error: rank 1: ValueError: bad batch 3: labels out of range (traceback: ")
    ddp(0)
    with pytest.raises(SystemExit) as e:
        ranks.report_other_rank(PEER, started, wait_s=1)
    assert e.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "rank 1: ValueError: bad batch 3" in lines[0] and "Connection closed" not in lines[0]
    assert "Connection closed by peer" in (tmp_path / "error.rank0.log").read_text()  # kept, not shown


def test_rank0_own_error_and_stale_reports_are_left_to_the_entry(ddp, tmp_path, capsys):
    ranks.write_failure(tmp_path, 1, ValueError("from an earlier run"))
    started = time.time() + 1  # the report above predates this run
    ddp(0)
    ranks.report_other_rank(PEER, started, wait_s=0.3)  # nothing of this run: returns
    ranks.report_other_rank(ValueError("rank 0's own"), started)  # its own error: returns
    ddp(1)
    with pytest.raises(SystemExit) as e:  # a rank that only lost rank 0 exits quietly
        ranks.report_other_rank(PEER, started)
    assert e.value.code == 1 and capsys.readouterr().err == ""


def test_single_process_is_untouched(monkeypatch, capsys):
    monkeypatch.setitem(ranks._world, "size", 1)
    ranks.report_other_rank(PEER, time.time())
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("rank", [1, pytest.param(0, marks=pytest.mark.slow)])
def test_ddp_sim_rank_crash_shows_that_rank(rank, tmp_path):
    """Two CPU processes (gloo); tests/ddp_crash.py makes one rank fail on its first batch."""
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    r = subprocess.run([sys.executable, str(REPO / "train.py"), *tiny("lstm"), "trainer=ddp_sim",
                        f"+callbacks.crash={{_target_:tests.ddp_crash.CrashOnRank,rank:{rank}}}",
                        f"hydra.run.dir={tmp_path}"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=600)
    out = (r.stdout + r.stderr).strip()
    assert r.returncode != 0, out[-3000:]
    last = out.splitlines()[-1] if rank else out
    assert f"bad batch 0 on rank {rank}" in last, out[-3000:]
    assert "Connection closed by peer" not in out.split(f"bad batch 0 on rank {rank}")[-1], out[-3000:]
