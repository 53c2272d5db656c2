"""A real single-node Slurm cluster for the cluster tests (imported by conftest).

`tests/run.sh` starts one with `slurm/start.sh` and exports SLURM_CONF; when pytest runs without it
(e.g. `pytest tests/test_slurm.py` as root), the fixture starts its own and stops it afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _cluster_answers() -> bool:
    if not shutil.which("sinfo"):
        return False
    done = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    return done.returncode == 0 and any(state in done.stdout for state in ("idle", "mix", "alloc"))


def wait_for_idle_queue(timeout: float = 300) -> None:
    """Block until no job is queued or running on the test cluster."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not subprocess.run(["squeue", "-h"], capture_output=True, text=True, check=True).stdout.strip():
            return
        time.sleep(1)
    raise TimeoutError(f"Slurm queue still busy after {timeout}s:\n" + subprocess.run(
        ["squeue"], capture_output=True, text=True).stdout)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """SLURM_CONF of a running Slurm cluster whose queue is idle."""
    started = None
    if not os.environ.get("SLURM_CONF") or not _cluster_answers():
        if os.geteuid() != 0:
            pytest.fail("the Slurm tests need a running cluster (tests/run.sh starts one) or root to start one")
        started = tmp_path_factory.mktemp("slurm")
        subprocess.run(["bash", str(REPO / "slurm" / "start.sh"), str(started)], check=True)
        os.environ["SLURM_CONF"] = str(started / "slurm.conf")
    wait_for_idle_queue()
    yield os.environ["SLURM_CONF"]
    if started is not None:
        subprocess.run(["bash", str(REPO / "slurm" / "stop.sh"), str(started)], check=False)
