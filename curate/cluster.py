"""Where stages run: datatrove executors built from the job file, the Slurm chain of a job, its
status, and the dask cluster of the mix's global pass.

Locally a stage runs on datatrove's LocalPipelineExecutor. On Slurm every stage is a datatrove
SlurmPipelineExecutor (an sbatch array job): `train` and `finish` (scores summary, mix, card) are
one-task pipelines around the stage functions, `score` is one array task per rank, and each waits
for the one before with an `afterok` dependency. Every stage keeps datatrove's completions in its
logging folder, so relaunching a partly failed chain submits only the ranks that did not finish.
"""

from __future__ import annotations

import json
import os
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from datatrove.pipeline.base import PipelineStep
from datatrove.utils.logging import logger

from curate.config import Job, SlurmConfig
from curate.io import list_input_files, read_json, write_json

SLURM_DIR, JOBS_FILE, RESULT_FILE = "slurm", "jobs.json", "result.json"
SCORES_DIR = "scores"
DASK_WORKER_TIMEOUT_S = 600
ACTIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED"}


class ClusterError(ValueError):
    """The Slurm cluster cannot take the job as asked (one-line message)."""


def _slurm(*args: str) -> str:
    try:
        done = subprocess.run(list(args), capture_output=True, text=True, check=True)
    except FileNotFoundError:
        raise ClusterError(f"'{args[0]}' not found: is this a Slurm login node? (export SLURM_CONF if needed)") from None
    except subprocess.CalledProcessError as e:
        raise ClusterError(f"{' '.join(args)} failed: {e.stderr.strip().splitlines()[-1] if e.stderr.strip() else e}") from None
    return done.stdout


def default_partition() -> str:
    """The cluster's default partition (the one `sinfo` marks with '*')."""
    partitions = _slurm("sinfo", "-h", "-o", "%P").split()
    for name in partitions:
        if name.endswith("*"):
            return name[:-1]
    if partitions:
        return partitions[0]
    raise ClusterError("the Slurm cluster lists no partition; set slurm.partition in the job file")


def build_executor(pipeline: list, *, tasks: int, workers: int, logging_dir: str | Path,
                   slurm: SlurmConfig | None = None, job_name: str = "curate", depends=None):
    """A LocalPipelineExecutor, or with `slurm` site settings a SlurmPipelineExecutor (whose `run()`
    submits an array job of `tasks` ranks, at most `workers` at a time, after `depends` succeeded)."""
    if slurm is None:
        from datatrove.executor import LocalPipelineExecutor

        return LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=min(workers, tasks),
                                     logging_dir=str(logging_dir))
    from datatrove.executor import SlurmPipelineExecutor

    return SlurmPipelineExecutor(
        pipeline=pipeline, tasks=tasks, workers=workers, logging_dir=str(Path(logging_dir).resolve()),
        partition=slurm.partition or default_partition(), time=slurm.time, cpus_per_task=slurm.cpus_per_task,
        mem_per_cpu_gb=slurm.mem_per_cpu_gb, gpus_per_task=slurm.gpus_per_task, job_name=job_name,
        env_command=slurm.env_command, sbatch_args=dict(slurm.sbatch_args), max_array_size=slurm.max_array_size,
        qos=slurm.sbatch_args.get("qos"), depends=depends,
    )


@dataclass
class DaskCluster:
    """Where the mix's global pass runs: a dask LocalCluster in this process, or (with `slurm`
    settings) `slurm.dask_workers` worker jobs of a dask-jobqueue SLURMCluster."""

    slurm: SlurmConfig | None = None
    log_dir: str | None = None
    job_name: str = "curate-dask"

    @classmethod
    def for_job(cls, job: Job) -> DaskCluster:
        if job.executor != "slurm" or job.slurm.dask_workers == 0:
            return cls()
        return cls(job.slurm, str((job.out / SLURM_DIR / "dask").resolve()), f"{_name_prefix(job)}-dask")

    @contextmanager
    def client(self):
        """A dask distributed Client on this cluster, made the default for `.compute()`."""
        from distributed import Client

        if self.slurm is None:
            from distributed import LocalCluster

            # in-process; its diagnostics servers listen on loopback only (None still binds 0.0.0.0:8787)
            cluster = LocalCluster(n_workers=1, threads_per_worker=os.cpu_count() or 1, processes=False,
                                   dashboard_address="127.0.0.1:0", worker_dashboard_address="127.0.0.1:0")
        else:
            from dask_jobqueue import SLURMCluster

            s = self.slurm
            cluster = SLURMCluster(
                queue=s.partition or default_partition(), cores=s.cpus_per_task, processes=1,
                memory=f"{s.mem_per_cpu_gb * s.cpus_per_task}GB", walltime=s.time, job_name=self.job_name,
                log_directory=self.log_dir, job_script_prologue=[s.env_command] if s.env_command else [],
                job_extra_directives=[f"--{k}={v}" for k, v in s.sbatch_args.items()],
                scheduler_options={"dashboard_address": None},
            )
            cluster.scale(jobs=s.dask_workers)
        try:
            with Client(cluster) as client:
                if self.slurm is not None:
                    logger.info(f"dask: waiting for a SLURMCluster worker (logs in {self.log_dir})")
                    client.wait_for_workers(1, timeout=DASK_WORKER_TIMEOUT_S)
                yield client
        finally:
            cluster.close()


def _name_prefix(job: Job) -> str:
    return job.slurm.job_name_prefix or job.name


class JobStage(PipelineStep):
    """A stage of a job as a one-task datatrove pipeline on Slurm. `train` trains the classifier and
    readies the scores folder for it; `finish` records the scores summary (every rank is done by
    then), mixes with the dask cluster of the job, writes the card and `slurm/result.json`."""

    name = "🧩 curate stage"
    type = "🔗 - CHAIN"

    def __init__(self, job: Job, stage: Literal["train", "finish"]):
        super().__init__()
        self.job, self.stage = job, stage

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        from curate import run, score as score_stage

        job = self.job
        if self.stage == "train":
            model = run.run_train(job, run.RunResult())
            files = list_input_files(job.input.paths, job.input.glob)
            score_stage.prepare(files, str(model), job.out / SCORES_DIR, job.score)
        else:
            result = run.run_job(job)
            write_json({"ran": result.ran, "skipped": result.skipped, "errors": result.errors},
                       job.out / SLURM_DIR / RESULT_FILE)
            for error in result.errors:
                logger.error(error)
        self.stat_update(f"stage_{self.stage}")
        yield from ()


def _active_jobs(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """{job id or array element id: (state, reason)} of the given jobs still known to squeue."""
    if not job_ids:
        return {}
    out = _slurm("squeue", "-h", "-r", "-j", ",".join(job_ids), "-o", "%i|%T|%r")
    return {i: (state, reason) for i, state, reason in (line.split("|") for line in out.splitlines() if line)}


def _reset(logging_dir: Path) -> None:
    """Forget that a one-task stage finished, so that it runs again."""
    completion = logging_dir / "completions" / "00000"
    if completion.exists():
        completion.unlink()


def submit(job: Job) -> dict[str, str]:
    """Submit the job to Slurm and return: train (unless current) -> score array (its unfinished
    ranks) -> finish, each after the one before succeeded. Returns {stage: Slurm job id} of what was
    submitted ({} when every stage is current)."""
    from curate import run, score as score_stage

    slurm_dir = job.out / SLURM_DIR
    jobs_path = slurm_dir / JOBS_FILE
    if jobs_path.exists():
        earlier = read_json(jobs_path)
        active = _active_jobs([s["job_id"] for s in earlier.values()])
        if active:
            raise ClusterError(f"{job.out} has Slurm jobs still queued or running ({', '.join(sorted(active))}); "
                               f"see `curate status {job.out}`, or scancel them to start over")
    files = list_input_files(job.input.paths, job.input.glob)
    prefix, scores_dir = _name_prefix(job), job.out / SCORES_DIR
    model = str(job.out / "classifier" / "model.bin")
    train = None
    if run.train_current(job):
        tokens, fingerprint, score_done = score_stage.prepare(files, model, scores_dir, job.score)
        if score_done and run.mix_current(job, fingerprint):
            return {}
    else:  # a new model: scores of an old one no longer hold; the train task records the new fingerprint
        scores_dir.mkdir(parents=True, exist_ok=True)
        tokens = score_stage.token_settings(files, scores_dir, job.score)
        score_stage.claim_scores(scores_dir, "pending: the classifier is being trained")
        score_done = False
        _reset(slurm_dir / "train")
        train = build_executor([JobStage(job, "train")], tasks=1, workers=1, logging_dir=slurm_dir / "train",
                               slurm=job.slurm, job_name=f"{prefix}-train")
    score = None
    if not score_done:
        score = build_executor(score_stage.build_pipeline(files, model, scores_dir, job.score, tokens),
                               tasks=job.score.tasks, workers=job.score.workers,
                               logging_dir=scores_dir / score_stage.LOGS_DIR, slurm=job.slurm,
                               job_name=f"{prefix}-score", depends=train)
    _reset(slurm_dir / "finish")
    finish = build_executor([JobStage(job, "finish")], tasks=1, workers=1, logging_dir=slurm_dir / "finish",
                            slurm=job.slurm, job_name=f"{prefix}-finish", depends=score or train)
    stages = {name: ex for name, ex in (("train", train), ("score", score), ("finish", finish)) if ex is not None}
    finish.run()  # launches its dependencies first
    submitted = {
        name: {"job_id": str(ex.job_id), "tasks": ex.tasks, "logging_dir": str(ex.logging_dir.path),
               "slurm_logs": ex.slurm_logs_folder, "ranks": _ranks_to_run(Path(ex.logging_dir.path))}
        for name, ex in stages.items() if ex.job_id not in (None, -1)
    }
    write_json(submitted, jobs_path)
    return {name: s["job_id"] for name, s in submitted.items()}


def _ranks_to_run(logging_dir: Path) -> list[int]:
    path = logging_dir / "ranks_to_run.json"
    return json.loads(path.read_text()) if path.exists() else []


@dataclass
class StageStatus:
    """Progress of one submitted stage: ranks done, running, pending and failed, and its logs."""

    stage: str
    job_id: str
    tasks: int
    done: list[int]
    running: list[int]
    pending: list[int]
    failed: list[int]
    logs: str

    def line(self) -> str:
        failed = f"failed {len(self.failed)}" + (f" (ranks {','.join(map(str, self.failed))})" if self.failed else "")
        return (f"{self.stage:7s} job {self.job_id:>8s}  done {len(self.done)}/{self.tasks}  running {len(self.running)}"
                f"  pending {len(self.pending)}  {failed}  logs: {self.logs}")


def status(output_dir: str | Path) -> list[StageStatus]:
    """Per-stage progress of the Slurm chain last submitted for `output_dir`."""
    jobs_path = Path(output_dir) / SLURM_DIR / JOBS_FILE
    if not jobs_path.exists():
        raise ClusterError(f"{output_dir}: no Slurm jobs were submitted for this output folder ({jobs_path} is missing)")
    submitted = read_json(jobs_path)
    active = _active_jobs([s["job_id"] for s in submitted.values()])
    stages = []
    for stage, info in submitted.items():
        completions = Path(info["logging_dir"]) / "completions"
        done = sorted(int(p.name) for p in completions.iterdir()) if completions.is_dir() else []
        running, pending, failed = [], [], []
        for index, rank in enumerate(info["ranks"]):
            if rank in done:
                continue
            state = next((st for key, (st, _) in active.items()
                          if key in (f"{info['job_id']}_{index}", info["job_id"])
                          or (key.startswith(f"{info['job_id']}_[") and st == "PENDING")), None)
            (running if state in ("RUNNING", "COMPLETING") else pending if state in ACTIVE_STATES else failed).append(rank)
        stages.append(StageStatus(stage, info["job_id"], info["tasks"], done, running, pending, failed,
                                  info["slurm_logs"]))
    return stages
