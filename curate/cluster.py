"""Where stages run: datatrove executors built from the job file, the Slurm chain of a job, its
status, and the dask cluster of the mix's global pass.

Locally a stage runs on datatrove's LocalPipelineExecutor. On Slurm every stage is a datatrove
SlurmPipelineExecutor (an sbatch array job): `sample`, `label` (with the site's GPUs per task),
`train` and `finish` (scores summary, mix, card) are one-task pipelines around the stage functions,
`score` is one array task per rank, and each waits for the one before with an `afterok` dependency. Every stage keeps datatrove's completions in its
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

from curate.config import Job, LabelConfig, ScoreConfig, SlurmConfig
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
                   slurm: SlurmConfig | None = None, job_name: str = "curate", depends=None, gpus: bool = False):
    """A LocalPipelineExecutor, or with `slurm` site settings a SlurmPipelineExecutor (whose `run()`
    submits an array job of `tasks` ranks, at most `workers` at a time, after `depends` succeeded;
    with `gpus`, each task gets the site's `gpus_per_task`)."""
    if slurm is None:
        from datatrove.executor import LocalPipelineExecutor

        return LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=min(workers, tasks),
                                     logging_dir=str(logging_dir))
    from datatrove.executor import SlurmPipelineExecutor

    return SlurmPipelineExecutor(
        pipeline=pipeline, tasks=tasks, workers=workers, logging_dir=str(Path(logging_dir).resolve()),
        partition=slurm.partition or default_partition(), time=slurm.time, cpus_per_task=slurm.cpus_per_task,
        mem_per_cpu_gb=slurm.mem_per_cpu_gb, gpus_per_task=slurm.gpus_per_task if gpus else 0, job_name=job_name,
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
    """A stage of a job as a one-task datatrove pipeline on Slurm. `sample` draws the label sample,
    `label` labels it (starting `vllm serve` on the task's GPUs with `server_type: vllm`), `train`
    trains the classifier and readies the scores folder for it; `finish` records the scores summary
    (every rank is done by then), mixes with the dask cluster of the job, writes the card and
    `slurm/result.json`."""

    name = "🧩 curate stage"
    type = "🔗 - CHAIN"

    def __init__(self, job: Job, stage: Literal["sample", "label", "train", "finish"]):
        super().__init__()
        self.job, self.stage = job, stage

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        from curate import run, score as score_stage

        job, result = self.job, run.RunResult()
        files = list_input_files(job.input.paths, job.input.glob)
        if self.stage == "sample":
            run.run_sample(job, files, result)
        elif self.stage == "label":
            run.run_label(job, result)
        elif self.stage == "train":
            run.use_label_output(job)
            model = run.run_train(job, result)
            score_stage.prepare(files, str(model), job.out / SCORES_DIR, job.score)
        else:
            result = run.run_job(job)
            write_json({"ran": result.ran, "skipped": result.skipped, "errors": result.errors},
                       job.out / SLURM_DIR / RESULT_FILE)
        for error in result.errors:
            logger.error(error)
        self.stat_update(f"stage_{self.stage}")
        yield from ()


class StageCall(PipelineStep):
    """A stage function called once as a one-task datatrove pipeline on Slurm (`curate label` and
    the scores summary of `curate score` with `--executor slurm`)."""

    name = "🧩 curate stage"
    type = "🔗 - CHAIN"

    def __init__(self, stage: str, function, *args):
        super().__init__()
        self.stage, self.function, self.args = stage, function, args

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        self.function(*self.args)
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


def _refuse_if_active(output_dir: Path) -> None:
    """Stop when Slurm jobs submitted earlier for `output_dir` are still queued or running."""
    jobs_path = output_dir / SLURM_DIR / JOBS_FILE
    if jobs_path.exists():
        active = _active_jobs([s["job_id"] for s in read_json(jobs_path).values()])
        if active:
            raise ClusterError(f"{output_dir} has Slurm jobs still queued or running ({', '.join(sorted(active))}); "
                               f"see `curate status {output_dir}`, or scancel them to start over")


def _launch(stages: dict, output_dir: Path) -> dict[str, str]:
    """Submit the last of `stages` ({name: executor or None}, each depending on ones before it),
    which submits its dependencies first; record them in `slurm/jobs.json` for `curate status`.
    Returns {stage: Slurm job id}."""
    stages = {name: ex for name, ex in stages.items() if ex is not None}
    list(stages.values())[-1].run()
    submitted = {
        name: {"job_id": str(ex.job_id), "tasks": ex.tasks, "logging_dir": str(ex.logging_dir.path),
               "slurm_logs": ex.slurm_logs_folder, "ranks": _ranks_to_run(Path(ex.logging_dir.path))}
        for name, ex in stages.items() if ex.job_id not in (None, -1)
    }
    write_json(submitted, output_dir / SLURM_DIR / JOBS_FILE)
    return {name: s["job_id"] for name, s in submitted.items()}


def _one_task(step: PipelineStep, logging_dir: Path, slurm: SlurmConfig, job_name: str, depends=None,
              gpus: bool = False):
    """A one-task Slurm stage that runs again when submitted (its completion is forgotten)."""
    _reset(logging_dir)
    return build_executor([step], tasks=1, workers=1, logging_dir=logging_dir, slurm=slurm, job_name=job_name,
                          depends=depends, gpus=gpus)


def submit(job: Job) -> dict[str, str]:
    """Submit the job to Slurm and return: (sample -> label ->) train -> score array (its unfinished
    ranks) -> finish, each after the one before succeeded and each left out when current. Returns
    {stage: Slurm job id} of what was submitted ({} when every stage is current)."""
    from curate import run, score as score_stage

    _refuse_if_active(job.out)
    slurm_dir = job.out / SLURM_DIR
    files = list_input_files(job.input.paths, job.input.glob)
    prefix, scores_dir = _name_prefix(job), job.out / SCORES_DIR
    model = str(job.out / "classifier" / "model.bin")
    sample = label = train = None
    if job.sample is not None and job.label is not None:
        if not run.sample_current(job, files):
            sample = _one_task(JobStage(job, "sample"), slurm_dir / "sample", job.slurm, f"{prefix}-sample")
        if sample is not None or not run.label_current(job):
            label = _one_task(JobStage(job, "label"), slurm_dir / "label", job.slurm, f"{prefix}-label",
                              depends=sample, gpus=True)
        run.use_label_output(job)
    if label is None and run.train_current(job):
        tokens, fingerprint, score_done = score_stage.prepare(files, model, scores_dir, job.score)
        if score_done and run.mix_current(job, fingerprint):
            return {}
    else:  # a new model: scores of an old one no longer hold; the train task records the new fingerprint
        scores_dir.mkdir(parents=True, exist_ok=True)
        tokens = score_stage.token_settings(files, scores_dir, job.score)
        score_stage.claim_scores(scores_dir, "pending: the classifier is being trained")
        score_done = False
        train = _one_task(JobStage(job, "train"), slurm_dir / "train", job.slurm, f"{prefix}-train", depends=label)
    score = None
    if not score_done:
        score = build_executor(score_stage.build_pipeline(files, model, scores_dir, job.score, tokens),
                               tasks=job.score.tasks, workers=job.score.workers,
                               logging_dir=scores_dir / score_stage.LOGS_DIR, slurm=job.slurm,
                               job_name=f"{prefix}-score", depends=train)
    finish = _one_task(JobStage(job, "finish"), slurm_dir / "finish", job.slurm, f"{prefix}-finish",
                       depends=score or train)
    return _launch({"sample": sample, "label": label, "train": train, "score": score, "finish": finish}, job.out)


def submit_label(sample_path: str | Path, out_dir: str | Path, cfg: LabelConfig, slurm: SlurmConfig) -> dict[str, str]:
    """`curate label --executor slurm`: one Slurm task (with the site's GPUs per task) labels the
    sample into `out_dir`. Returns {"label": Slurm job id}."""
    from curate import label as label_stage

    out_dir = Path(out_dir).resolve()
    _refuse_if_active(out_dir)
    step = StageCall("label", label_stage.label, str(Path(sample_path).resolve()), out_dir, cfg)
    label = _one_task(step, out_dir / SLURM_DIR / "label", slurm, f"{slurm.job_name_prefix or 'curate'}-label",
                      gpus=True)
    return _launch({"label": label}, out_dir)


def submit_score(files: list[str], model_path: str, out_dir: str | Path, cfg: ScoreConfig,
                 slurm: SlurmConfig) -> dict[str, str]:
    """`curate score --executor slurm`: the scoring array (its unfinished ranks), then one task that
    writes the scores summary. Returns {stage: Slurm job id}; {} when the scores are current."""
    from curate import score as score_stage

    out_dir = Path(out_dir).resolve()
    _refuse_if_active(out_dir)
    files, model_path = [str(Path(f).resolve()) for f in files], str(Path(model_path).resolve())
    tokens, _, done = score_stage.prepare(files, model_path, out_dir, cfg)
    if done:
        return {}
    prefix = slurm.job_name_prefix or "curate"
    score = build_executor(score_stage.build_pipeline(files, model_path, out_dir, cfg, tokens), tasks=cfg.tasks,
                           workers=cfg.workers, logging_dir=out_dir / score_stage.LOGS_DIR, slurm=slurm,
                           job_name=f"{prefix}-score")
    summary = _one_task(StageCall("summary", score_stage.score, files, model_path, out_dir, cfg),
                        out_dir / SLURM_DIR / "summary", slurm, f"{prefix}-summary", depends=score)
    return _launch({"score": score, "summary": summary}, out_dir)


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
