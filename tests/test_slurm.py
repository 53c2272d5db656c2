"""The dry run as real Slurm array jobs on a real single-node cluster: same output as the local
executor, and a killed array task is the only thing a relaunch runs again; a job's sample -> label
stages (against a real llama.cpp server) as Slurm jobs, and `curate label --executor slurm`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from curate.schema import LABELS_SCHEMA

from tests.slurm_cluster import REPO, wait_for_idle_queue

pytestmark = pytest.mark.slow


def run_curate(*args) -> subprocess.CompletedProcess:
    """The real `curate` CLI, run from the repository root like a user would."""
    return subprocess.run([sys.executable, "-m", "curate", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def dryrun_job(tmp: Path, name: str, base: str = "dryrun-slurm.yaml", **changes) -> Path:
    """A bundled job (jobs/dryrun-slurm.yaml by default) with its output in `tmp/name` (and `changes`
    merged into sections)."""
    job = yaml.safe_load((REPO / "jobs" / base).read_text())
    if "extends" in job:
        job["extends"] = str(REPO / "jobs" / job["extends"])
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


def slurm_lines(status: subprocess.CompletedProcess) -> dict[str, str]:
    """{Slurm task: its line} of `curate status` output."""
    return {line.split()[0]: line for line in status.stdout.splitlines() if " job " in line}


def wait_for_chain(out: Path, timeout: float = 300) -> None:
    """Wait until no task of the chain last submitted for `out` is running or pending."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = run_curate("status", out)
        lines = slurm_lines(status)
        if lines and all("running 0  pending 0" in line for line in lines.values()):
            return
        time.sleep(1)
    raise TimeoutError(f"chain of {out} still running after {timeout}s:\n{status.stdout}")


def mix_files(out: Path, which: str = "mix") -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / which / "data").glob("part-*.parquet"))}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> Path:
    """jobs/dryrun.yaml on datatrove's LocalPipelineExecutor (the reference output)."""
    tmp = tmp_path_factory.mktemp("local")
    result = run_curate("run", dryrun_job(tmp, "out", base="dryrun.yaml"))
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp / "out"


def test_slurm_dry_run_gives_the_local_output(slurm_cluster, local_run, tmp_path):
    job = dryrun_job(tmp_path, "out")
    stages = submitted(run_curate("run", job))
    assert list(stages) == ["train", "score", "finish", "export"]
    wait_for_chain(tmp_path / "out")
    status = run_curate("status", tmp_path / "out")
    assert status.returncode == 0 and "done 2/2" in status.stdout, status.stdout
    out = tmp_path / "out"
    finish = json.loads((out / "logs" / "slurm" / "finish.json").read_text())
    assert list(finish) == ["score", "filters", "mix", "control", "report"]
    assert not any(s["errors"] for s in finish.values())
    # the whole classifier -> scores -> mix chain is deterministic (fastText with one thread and a
    # fixed seed, seeded mix), so the mix shards are compared byte for byte, and stats.json whole
    assert mix_files(out) and mix_files(out) == mix_files(local_run)
    assert (out / "mix" / "stats.json").read_text() == (local_run / "mix" / "stats.json").read_text()
    assert mix_files(out, "control") == mix_files(local_run, "control")
    for shard in ("00000.parquet", "00001.parquet"):
        assert (out / "scores" / shard).read_bytes() == (local_run / "scores" / shard).read_bytes()
    # a second submission finds every stage current and submits nothing
    again = run_curate("run", job)
    assert again.returncode == 0 and "nothing to submit" in again.stdout, again.stdout
    # without a Slurm client configured, status reads the recorded completions and a relaunch of a
    # finished chain needs no Slurm command
    bare = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}
    status = subprocess.run([sys.executable, "-m", "curate", "status", str(out)], cwd=REPO, capture_output=True,
                            text=True, timeout=120, env=bare)
    assert status.returncode == 0 and "queue state unknown" in status.stdout and "done 2/2" in status.stdout, status
    again = subprocess.run([sys.executable, "-m", "curate", "run", str(job)], cwd=REPO, capture_output=True,
                           text=True, timeout=300, env=bare)
    assert again.returncode == 0 and "nothing to submit" in again.stdout, again.stderr[-2000:]


def test_killed_array_task_is_the_only_rank_run_again(slurm_cluster, local_run, tmp_path):
    gate = tmp_path / "hold-rank-1"
    gate.touch()
    # the site's env_command runs before each task: while the gate file exists, score rank 1 waits
    hold = f'if [ "$SLURM_JOB_NAME" = curate-dryrun-score ] && [ "$SLURM_ARRAY_TASK_ID" = 1 ] && [ -e {gate} ]; ' \
           f'then sleep 600; fi'
    job = dryrun_job(tmp_path, "out", slurm={"env_command": hold})
    out = tmp_path / "out"
    score_job = submitted(run_curate("run", job))["score"]
    completions = out / "logs" / "score" / "datatrove" / "completions"
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
    assert list(stages) == ["score", "finish", "export"]  # the classifier is current: no train job
    assert json.loads((completions.parent / "ranks_to_run.json").read_text()) == [1]
    wait_for_chain(out)
    assert run_curate("status", out).returncode == 0
    # rank 0 did not run again: its shard and completion are the very files of the first launch
    again = (out / "scores" / "00000.parquet").stat()
    assert (again.st_ino, again.st_mtime_ns) == (kept.st_ino, kept.st_mtime_ns)
    assert (completions / "00000").stat().st_mtime_ns == kept_completion
    assert mix_files(out) and mix_files(out) == mix_files(local_run)
    assert (out / "mix" / "stats.json").read_text() == (local_run / "mix" / "stats.json").read_text()
    wait_for_idle_queue()


def _gsm_docs(folder: Path, n: int) -> Path:
    """The `n` shortest GSM8K documents of the bundled reference labels, as an input file."""
    gold = pq.read_table(REPO / "curate" / "data" / "labels" / "gold.parquet")
    gsm = gold.filter(pc.starts_with(gold["url"], "gsm8k"))
    gsm = gsm.take(pc.sort_indices(pc.utf8_length(gsm["text"]))).slice(0, n)
    path = folder / "docs.parquet"
    pq.write_table(gsm.select(["url", "text"]), path)
    return path


def test_sample_and_label_run_as_slurm_jobs_before_train(slurm_cluster, llama_server, tmp_path):
    """sample (2 short GSM8K documents) -> label (the real llama.cpp server) -> train -> score -> finish
    are submitted as one chain. Train reads only the label stage's labels, and 2 of them are too few
    for its cross-validation, so the chain stops there: train fails with its one-line error and
    Slurm cancels score and finish (kill_invalid_depend)."""
    small = {"server_type": "endpoint", "endpoint_url": llama_server.url, "model": "smollm2", "max_doc_tokens": 40,
             "max_tokens": 48, "concurrency": 1}
    job = dryrun_job(tmp_path, "out", input={"paths": [str(_gsm_docs(tmp_path, 4))]}, sample={"n": 2}, label=small,
                     train={"cv_folds": 2})
    spec = yaml.safe_load(job.read_text())
    spec["train"]["labels"] = None  # the label stage makes train's labels (dryrun.yaml names the bundled ones)
    spec["slurm"]["stages"] = {"label": {"cpus_per_task": 2, "mem_per_cpu_gb": 1, "time": "00:15:00"}}
    job.write_text(yaml.safe_dump(spec, sort_keys=False))
    out = tmp_path / "out"
    stages = submitted(run_curate("run", job))
    assert list(stages) == ["sample", "label", "train", "score", "finish", "export"]
    wait_for_chain(out)

    jobs = json.loads((out / "logs" / "slurm" / "jobs.json").read_text())
    assert {stage: info["job_id"] for stage, info in jobs.items()} == stages
    # what Slurm was given (datatrove keeps the submitted script): the label task its own resources, the others theirs
    script = {task: (Path(info["logging_dir"]) / "launch_script.slurm").read_text() for task, info in jobs.items()}
    assert "#SBATCH --cpus-per-task=2\n" in script["label"] and "#SBATCH --mem-per-cpu=1G\n" in script["label"]
    assert "#SBATCH --time=00:15:00\n" in script["label"]
    for task in ("sample", "train", "score", "finish"):
        assert "#SBATCH --cpus-per-task=1\n" in script[task] and "#SBATCH --time=00:20:00\n" in script[task], task
    for stage in ("sample", "label"):  # each ran as its Slurm job and finished
        assert (Path(jobs[stage]["logging_dir"]) / "completions" / "00000").exists()
    labels = pq.read_table(out / "labels" / "labels.parquet")
    assert labels.schema.equals(LABELS_SCHEMA) and labels.num_rows == 2
    assert sorted(labels["id"].to_pylist()) == sorted(pq.read_table(out / "sample" / "sample.parquet")["id"].to_pylist())
    assert set(labels["labeler"].to_pylist()) == {"smollm2"} and all(labels["raw_response"].to_pylist())
    status = run_curate("status", out)
    lines = slurm_lines(status)
    assert status.returncode == 1 and list(lines) == list(stages), status.stdout
    assert "done 1/1" in lines["sample"] and "done 1/1" in lines["label"], status.stdout
    assert "failed 1 (ranks 0)" in lines["train"] and not (out / "classifier" / "model.bin").exists()
    train_log = "".join(p.read_text() for p in Path(jobs["train"]["slurm_logs"]).glob(f"{stages['train']}*"))
    assert "2 usable rows are too few for 2-fold cross-validation" in train_log, train_log[-2000:]

    # relaunched: sample and labels are current, only train -> score -> finish are submitted again
    again = submitted(run_curate("run", job))
    assert list(again) == ["train", "score", "finish", "export"]
    wait_for_chain(out)

    # the single command: `curate label --executor slurm` labels the same sample in a Slurm job
    single = tmp_path / "single"
    result = run_curate("label", out / "sample" / "sample.parquet", "--out", single, "--executor", "slurm",
                        "--job", job, *(f"--{k.replace('_', '-')}={v}" for k, v in small.items()))
    assert list(submitted(result)) == ["label"]
    wait_for_chain(single)
    assert run_curate("status", single).returncode == 0
    relabeled = pq.read_table(single / "labels" / "labels.parquet")
    assert sorted(relabeled["id"].to_pylist()) == sorted(labels["id"].to_pylist())
    wait_for_idle_queue()
