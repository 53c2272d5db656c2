"""The dry run as real Slurm array jobs on a real single-node cluster: same output as the local
executor, and a killed array task is the only thing a relaunch runs again."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.slurm_cluster import REPO, wait_for_idle_queue

pytestmark = pytest.mark.slow


def run_curate(*args) -> subprocess.CompletedProcess:
    """The real `curate` CLI, run from the repository root like a user would."""
    return subprocess.run([sys.executable, "-m", "curate", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def dryrun_job(tmp: Path, name: str, **changes) -> Path:
    """jobs/dryrun-slurm.yaml with its output in `tmp/name` (and `changes` merged into sections)."""
    job = yaml.safe_load((REPO / "jobs" / "dryrun-slurm.yaml").read_text())
    job["output_dir"] = str(tmp / name)
    for section, values in changes.items():
        job[section] = {**job.get(section, {}), **values} if isinstance(values, dict) else values
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def submitted(result: subprocess.CompletedProcess) -> dict[str, str]:
    assert result.returncode == 0, result.stderr[-3000:]
    return {line.split()[1].rstrip(":"): line.split()[-1] for line in result.stdout.splitlines()
            if line.startswith("submitted ")}


def wait_for_chain(out: Path, timeout: float = 300) -> None:
    """Wait until no stage of the chain last submitted for `out` is running or pending."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = run_curate("status", out)
        if "running 0  pending 0" in status.stdout and all(
                "running 0  pending 0" in line for line in status.stdout.splitlines()):
            return
        time.sleep(1)
    raise TimeoutError(f"chain of {out} still running after {timeout}s:\n{status.stdout}")


def mix_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "mix").glob("part-*.parquet"))}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> Path:
    """The dry run on datatrove's LocalPipelineExecutor (the reference output)."""
    tmp = tmp_path_factory.mktemp("local")
    result = run_curate("run", dryrun_job(tmp, "out"), "--executor", "local")
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp / "out"


def test_slurm_dry_run_gives_the_local_output(slurm_cluster, local_run, tmp_path):
    job = dryrun_job(tmp_path, "out")
    stages = submitted(run_curate("run", job))
    assert list(stages) == ["train", "score", "finish"]
    wait_for_chain(tmp_path / "out")
    status = run_curate("status", tmp_path / "out")
    assert status.returncode == 0 and "done 2/2" in status.stdout, status.stdout
    out = tmp_path / "out"
    assert json.loads((out / "slurm" / "result.json").read_text())["errors"] == []
    # the whole classifier -> scores -> mix chain is deterministic (fastText with one thread and a
    # fixed seed, seeded mix), so the mix shards are compared byte for byte, and stats.json whole
    assert mix_files(out) and mix_files(out) == mix_files(local_run)
    assert (out / "mix" / "stats.json").read_text() == (local_run / "mix" / "stats.json").read_text()
    for shard in ("00000.parquet", "00001.parquet"):
        assert (out / "scores" / shard).read_bytes() == (local_run / "scores" / shard).read_bytes()
    # a second submission finds every stage current and submits nothing
    again = run_curate("run", job)
    assert again.returncode == 0 and "nothing to submit" in again.stdout, again.stdout


def test_killed_array_task_is_the_only_rank_run_again(slurm_cluster, local_run, tmp_path):
    gate = tmp_path / "hold-rank-1"
    gate.touch()
    # the site's env_command runs before each task: while the gate file exists, score rank 1 waits
    hold = f'if [ "$SLURM_JOB_NAME" = curate-dryrun-score ] && [ "$SLURM_ARRAY_TASK_ID" = 1 ] && [ -e {gate} ]; ' \
           f'then sleep 600; fi'
    job = dryrun_job(tmp_path, "out", slurm={"env_command": hold})
    out = tmp_path / "out"
    score_job = submitted(run_curate("run", job))["score"]
    completions = out / "scores" / "logs" / "completions"
    deadline = time.monotonic() + 240
    while not ((completions / "00000").exists() and "RUNNING" in subprocess.run(
            ["squeue", "-h", "-j", f"{score_job}_1", "-o", "%T"], capture_output=True, text=True).stdout):
        assert time.monotonic() < deadline, run_curate("status", out).stdout
        time.sleep(1)
    # a relaunch while the chain is still queued is refused
    refused = run_curate("run", job)
    assert refused.returncode != 0 and "still queued or running" in refused.stderr, refused.stderr
    subprocess.run(["scancel", f"{score_job}_1"], check=True)
    wait_for_chain(out)
    status = run_curate("status", out)
    assert status.returncode == 1 and "failed 1 (ranks 1)" in status.stdout, status.stdout
    assert not (out / "scores" / "00001.parquet").exists() and not (out / "mix").exists()

    gate.unlink()
    kept = (out / "scores" / "00000.parquet").stat()
    kept_completion = (completions / "00000").stat().st_mtime_ns
    stages = submitted(run_curate("run", job))
    assert list(stages) == ["score", "finish"]  # the classifier is current: no train job
    assert json.loads((out / "scores" / "logs" / "ranks_to_run.json").read_text()) == [1]
    wait_for_chain(out)
    assert run_curate("status", out).returncode == 0
    # rank 0 did not run again: its shard and completion are the very files of the first launch
    again = (out / "scores" / "00000.parquet").stat()
    assert (again.st_ino, again.st_mtime_ns) == (kept.st_ino, kept.st_mtime_ns)
    assert (completions / "00000").stat().st_mtime_ns == kept_completion
    assert mix_files(out) and mix_files(out) == mix_files(local_run)
    assert (out / "mix" / "stats.json").read_text() == (local_run / "mix" / "stats.json").read_text()
    wait_for_idle_queue()
