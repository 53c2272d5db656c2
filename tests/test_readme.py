"""The README walked through as a newcomer would: every fenced shell block marked `<!-- runnable -->`
runs, in order and as written, in a fresh copy of the repository with no virtual environment active
(the first block installs one with install.sh), against the test services (the Slurm cluster of the
test session; the LLM server the blocks start themselves). The docs and the CLI cannot drift apart."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO
from tests.slurm_cluster import wait_for_idle_queue

RUNNABLE = re.compile(r"<!-- runnable -->\n```bash\n(.*?)```", re.S)


def runnable_blocks() -> list[str]:
    return RUNNABLE.findall((REPO / "README.md").read_text())


def fresh_copy(target: Path) -> Path:
    """The repository's files as a clone has them (tracked, and new files git does not ignore)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            (target / name).write_bytes(source.read_bytes())
            (target / name).chmod(source.stat().st_mode)
    return target


def newcomer_env() -> dict[str, str]:
    """This process's environment without its virtual environment (as a new shell has it)."""
    venv = os.environ.get("VIRTUAL_ENV")
    path = [p for p in os.environ["PATH"].split(os.pathsep) if not (venv and p.startswith(venv))]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    return {**env, "PATH": os.pathsep.join(path)}


def test_the_readme_marks_its_runnable_blocks():
    joined = "\n".join(runnable_blocks())
    for command in ("bash install.sh", "curate run jobs/dryrun.yaml", "curate audit", "curate score", "curate mix",
                    "llm/start.sh", "curate label", "curate eval-labels", "curate train", "llm/stop.sh",
                    "curate run jobs/dryrun-slurm.yaml"):
        assert command in joined, command


@pytest.mark.slow
def test_the_readme_runs_as_written(slurm_cluster, tmp_path):
    clone = fresh_copy(tmp_path / "curate")
    env = newcomer_env()
    for i, block in enumerate(runnable_blocks()):
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=clone, env=env, capture_output=True,
                                text=True, timeout=1800)
        (tmp_path / f"block-{i}.log").write_text(f"$ {block}\n{result.stdout}\n{result.stderr}")
        assert result.returncode == 0, f"README block {i}:\n{block}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        assert "Traceback" not in result.stderr, f"README block {i}:\n{block}\n{result.stderr[-3000:]}"
    out = clone / "out"
    # usable results: the dry run's mixes and exports, the hand-run stages, the labeling walkthrough
    assert pq.read_table(out / "dryrun" / "mix" / "data").num_rows > 0
    assert (out / "dryrun" / "export" / "control" / "tokens").is_dir()
    assert pq.read_table(out / "hand" / "control" / "data").num_rows > 0
    assert (out / "hand" / "report" / "index.html").is_file()
    assert pq.read_table(out / "walk" / "labels" / "labels.parquet").num_rows == 20
    walk = next(p.read_text() for p in sorted(tmp_path.glob("block-*.log")) if "curate eval-labels" in p.read_text())
    assert "20 documents in both files" in walk
    # the Slurm block submits and returns; once the chain is done its mix is the local dry run's, byte for byte
    wait_for_idle_queue(timeout=900)
    slurm_mix = out / "dryrun-slurm" / "mix" / "data"
    local = {p.name: p.read_bytes() for p in sorted((out / "dryrun" / "mix" / "data").glob("*.parquet"))}
    assert local and {p.name: p.read_bytes() for p in sorted(slurm_mix.glob("*.parquet"))} == local
