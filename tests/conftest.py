"""Shared fixtures: paths to the real data beside the project and to the bundled sample; and a check, at the end
of the session, that the tests left no process running."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from tests.slurm_cluster import slurm_cluster  # noqa: F401  (the real Slurm cluster fixture)
from tests.llm_server import llama_server  # noqa: F401  (the real llama.cpp LLM server fixture)
from tests.s3_server import s3_server  # noqa: F401  (the real S3-compatible server fixture)

from tests.helpers import BUNDLED_DOCS, REPO  # noqa: F401  (imported from here by the tests)

SHARED = REPO.parent / "shared"
BUNDLED_LABELS = REPO / "curate" / "data" / "labels" / "gold.parquet"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "data" / "mathweb").is_dir():
        pytest.fail(f"the shared data folder is missing: {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory) -> Path:
    """A real fastText behavior classifier trained on the bundled reference labels."""
    from curate.config import TrainConfig
    from curate.classifier import MODEL_FILE
    from curate.train import train

    out = tmp_path_factory.mktemp("classifier")
    train(BUNDLED_LABELS, out, TrainConfig(epoch=10))
    return out / MODEL_FILE


SESSION_MARK = "CURATE_TEST_SESSION"  # in the environment of every process the session starts


def pytest_sessionstart(session):
    os.environ[SESSION_MARK] = uuid.uuid4().hex


def _own_helper(process) -> bool:
    """A resource tracker or forkserver of this pytest process's own pools: it ends when pytest ends."""
    import psutil

    try:
        return process.ppid() == os.getpid() and any(
            f"from {package}.{helper} import main" in " ".join(process.cmdline())
            for package in ("multiprocessing", "multiprocess") for helper in ("resource_tracker", "forkserver"))
    except psutil.Error:
        return False


def pytest_sessionfinish(session, exitstatus):
    """Fail the session when a process it started (a curate command, a pool worker, a server...) still runs
    10 s after the last test: a stray process, e.g. one whose parent was killed."""
    from tests.processes import describe, marked, still_running

    left = [p for p in still_running(marked(SESSION_MARK, os.environ[SESSION_MARK]), timeout=10) if not _own_helper(p)]
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        reporter.ensure_newline()
        reporter.write_line(f"the test session left {len(left)} process(es) running:", red=True, bold=True)
        for process in left:
            reporter.write_line(f"  {describe(process)}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
