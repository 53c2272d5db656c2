"""A job on Slurm: the chain of array jobs built from the table of stages, and its status.

Each stage of `curate.stages.STAGES` names the Slurm job that runs it: `sample`, `label` (with its
own resources, e.g. GPUs), `train`, the `score` array (one task per rank), `finish` (the scores
summary, filters, mix, control, report), `rewrite` (GPUs, like label) and `export`. Every Slurm job
is a datatrove SlurmPipelineExecutor that waits for the one before (`afterok`); a one-task job runs
`stages.run_job` for its own stages only. Every job keeps datatrove's completions in its logging
folder, so relaunching a partly failed chain submits only the ranks that did not finish, and stages
that are current are left out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from datatrove.pipeline.base import PipelineStep
from datatrove.utils.logging import logger

from curate import score as score_stage
from curate import stages as stage_table
from curate.config import Job, LabelConfig, RewriteConfig, ScoreConfig, SlurmConfig
from curate.executors import ClusterError, build_executor, slurm_command
from curate.io import read_json, write_json
from curate.layout import Layout

JOBS_FILE, RESULT_FILE = "jobs.json", "result.json"
ACTIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED"}


class JobStages(PipelineStep):
    """Some stages of a job as a one-task datatrove pipeline on Slurm: runs `stages.run_job` for
    them (each skipped when current) and records the results in `logs/slurm/<task>.json`. After
    `train`, readies the scores folder for the new classifier."""

    name = "🧩 curate stages"
    type = "🔗 - CHAIN"

    def __init__(self, job: Job, task: str, stages: list[str]):
        super().__init__()
        self.job, self.task, self.stages = job, task, stages

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        results = stage_table.run_job(self.job, only=set(self.stages))
        if self.task == "train":
            ctx = stage_table.Context.for_job(self.job)
            score_stage.prepare(ctx.files, ctx.layout.model_file, ctx.layout, self.job.score)
        layout = Layout(self.job.out, self.job.data_dir)
        write_json({r.stage: {"ran": r.ran, "why": r.why, "errors": r.errors} for r in results},
                   layout.slurm_dir / f"{self.task}.json")
        for result in results:
            for error in result.errors:
                logger.error(error)
        self.stat_update(f"task_{self.task}")
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
    out = slurm_command("squeue", "-h", "-r", "-j", ",".join(job_ids), "-o", "%i|%T|%r")
    return {i: (state, reason) for i, state, reason in (line.split("|") for line in out.splitlines() if line)}


def _refuse_if_active(layout: Layout) -> None:
    """Stop when Slurm jobs submitted earlier for this output folder are still queued or running."""
    jobs_path = layout.slurm_dir / JOBS_FILE
    if jobs_path.exists():
        active = _active_jobs([s["job_id"] for s in read_json(jobs_path).values()])
        if active:
            raise ClusterError(f"{layout.root} has Slurm jobs still queued or running ({', '.join(sorted(active))}); "
                               f"see `curate status {layout.root}`, or scancel them to start over")


def _ranks_to_run(logging_dir: Path) -> list[int]:
    path = logging_dir / "ranks_to_run.json"
    return json.loads(path.read_text()) if path.exists() else []


def _launch(executors: dict, layout: Layout) -> dict[str, str]:
    """Submit the last of `executors` ({task: executor}, each depending on the one before), which
    submits its dependencies first; record them in `logs/slurm/jobs.json` for `curate status`.
    Returns {task: Slurm job id}."""
    list(executors.values())[-1].run()
    submitted = {
        task: {"job_id": str(ex.job_id), "tasks": ex.tasks, "logging_dir": str(ex.logging_dir.path),
               "slurm_logs": ex.slurm_logs_folder, "ranks": _ranks_to_run(Path(ex.logging_dir.path))}
        for task, ex in executors.items() if ex.job_id not in (None, -1)
    }
    write_json(submitted, layout.slurm_dir / JOBS_FILE)
    return {task: s["job_id"] for task, s in submitted.items()}


def _one_task(step: PipelineStep, logging_dir: Path, slurm: SlurmConfig, task: str, job_name: str, depends=None,
              ask_partition: bool = True):
    """A one-task Slurm job that runs again when submitted (its completion is forgotten)."""
    (logging_dir / "completions" / "00000").unlink(missing_ok=True)
    return build_executor([step], tasks=1, workers=1, logging_dir=logging_dir, slurm=slurm, task=task,
                          job_name=job_name, depends=depends, ask_partition=ask_partition)


def plan(ctx: stage_table.Context) -> dict[str, list[str]]:
    """{Slurm task: its stages to run}, in chain order: every stage from the first one that is not
    current on (a stage after one that runs reads its new output)."""
    tasks: dict[str, list[str]] = {}
    running = False
    for stage in stage_table.STAGES:
        if not stage.applies(ctx.job):
            continue
        running = running or not stage.is_current(ctx)
        if running:
            tasks.setdefault(stage.slurm_task, []).append(stage.name)
    if "score" in tasks:  # the finish task also writes the scores summary once every rank is done
        tasks.setdefault("finish", []).insert(0, "score")
    return tasks


def chain(job: Job, ask_partition: bool = True, tasks: dict[str, list[str]] | None = None) -> dict:
    """{Slurm task: its executor} of the job's chain, each depending on the one before, for the
    stages that are not current (`plan`, unless given); nothing is submitted."""
    ctx = stage_table.Context.for_job(job)
    layout, slurm, prefix = ctx.layout, job.slurm, stage_table.job_name_prefix(job)
    tasks = plan(ctx) if tasks is None else tasks
    executors: dict = {}
    previous = None
    for task, names in tasks.items():
        if task == "score":
            if "train" in tasks:  # the train task readies the scores folder for the new model
                tokens = score_stage.token_settings(ctx.files, layout, job.score)
                score_stage.claim_scores(layout, "pending: the classifier is being trained")
            else:
                tokens, _, _ = score_stage.prepare(ctx.files, layout.model_file, layout, job.score)
            pipeline = score_stage.build_pipeline(ctx.files, layout.model_file, layout, job.score, tokens)
            executor = build_executor(pipeline, tasks=job.score.tasks, workers=job.score.workers,
                                      logging_dir=score_stage.datatrove_logs(layout), slurm=slurm, task="score",
                                      job_name=f"{prefix}-score", depends=previous, ask_partition=ask_partition)
        else:
            executor = _one_task(JobStages(job, task, names), layout.slurm_dir / task, slurm, task,
                                 f"{prefix}-{task}", depends=previous, ask_partition=ask_partition)
        executors[task] = previous = executor
    return executors


def submit(job: Job) -> dict[str, str]:
    """Submit the job's chain to Slurm and return {task: Slurm job id} ({} when every stage is current,
    decided from the recorded fingerprints alone: no Slurm command runs then)."""
    ctx = stage_table.Context.for_job(job)
    tasks = plan(ctx)
    if not tasks:
        return {}
    _refuse_if_active(ctx.layout)
    return _launch(chain(job, tasks=tasks), ctx.layout)


def label_executor(sample_path: str | Path, layout: Layout, cfg: LabelConfig, slurm: SlurmConfig,
                   ask_partition: bool = True):
    """The one-task Slurm executor of `curate label --executor slurm` (the `label` resources, e.g. GPUs)."""
    from curate import label as label_stage

    layout = Layout(layout.root.resolve(), layout.data if layout.data != layout.root else None)
    step = StageCall("label", label_stage.label, str(Path(sample_path).resolve()), layout, cfg)
    return build_executor([step], tasks=1, workers=1, logging_dir=layout.slurm_dir / "label", slurm=slurm,
                          task="label", job_name=f"{slurm.job_name_prefix or 'curate'}-label",
                          ask_partition=ask_partition)


def submit_label(sample_path: str | Path, layout: Layout, cfg: LabelConfig, slurm: SlurmConfig) -> dict[str, str]:
    """`curate label --executor slurm`: one Slurm task labels the sample into the output folder.
    Returns {"label": Slurm job id}."""
    _refuse_if_active(layout)
    (layout.slurm_dir / "label" / "completions" / "00000").unlink(missing_ok=True)
    return _launch({"label": label_executor(sample_path, layout, cfg, slurm)}, layout)


def submit_score(files: list[str], model_path: str | Path, layout: Layout, cfg: ScoreConfig,
                 slurm: SlurmConfig) -> dict[str, str]:
    """`curate score --executor slurm`: the scoring array (its unfinished ranks), then one task that
    writes the scores summary. Returns {task: Slurm job id}; {} when the scores are current."""
    layout = Layout(layout.root.resolve(), layout.data if layout.data != layout.root else None)
    _refuse_if_active(layout)
    files, model_path = [str(Path(f).resolve()) for f in files], Path(model_path).resolve()
    tokens, _, done = score_stage.prepare(files, model_path, layout, cfg)
    if done:
        return {}
    prefix = slurm.job_name_prefix or "curate"
    score = build_executor(score_stage.build_pipeline(files, model_path, layout, cfg, tokens), tasks=cfg.tasks,
                           workers=cfg.workers, logging_dir=score_stage.datatrove_logs(layout), slurm=slurm,
                           task="score", job_name=f"{prefix}-score")
    summary = _one_task(StageCall("summary", score_stage.score, files, model_path, layout, cfg),
                        layout.slurm_dir / "summary", slurm, "finish", f"{prefix}-summary", depends=score)
    return _launch({"score": score, "summary": summary}, layout)


def submit_rewrite(layout: Layout, cfg: RewriteConfig, slurm: SlurmConfig) -> dict[str, str]:
    """`curate rewrite --executor slurm`: one Slurm task (with the `rewrite` resources, e.g. GPUs) rewrites
    the mixes of the output folder. Returns {"rewrite": Slurm job id}."""
    from curate import rewrite as rewrite_stage

    layout = Layout(layout.root.resolve(), layout.data if layout.data != layout.root else None)
    _refuse_if_active(layout)
    step = StageCall("rewrite", rewrite_stage.rewrite, layout, cfg)
    rewrite = _one_task(step, layout.slurm_dir / "rewrite", slurm, "rewrite",
                        f"{slurm.job_name_prefix or 'curate'}-rewrite")
    return _launch({"rewrite": rewrite}, layout)


@dataclass
class TaskStatus:
    """Progress of one submitted Slurm job: ranks done, running, pending and failed, and its logs."""

    task: str
    job_id: str
    tasks: int
    done: list[int]
    running: list[int]
    pending: list[int]
    failed: list[int]
    logs: str
    queue_known: bool = True

    def line(self) -> str:
        if not self.queue_known:
            return (f"{self.task:7s} job {self.job_id:>8s}  done {len(self.done)}/{self.tasks}  (queue state unknown: "
                    f"no Slurm client configured)  logs: {self.logs}")
        failed = f"failed {len(self.failed)}" + (f" (ranks {','.join(map(str, self.failed))})" if self.failed else "")
        return (f"{self.task:7s} job {self.job_id:>8s}  done {len(self.done)}/{self.tasks}  running {len(self.running)}"
                f"  pending {len(self.pending)}  {failed}  logs: {self.logs}")


def slurm_status(layout: Layout) -> list[TaskStatus]:
    """Per-task progress of the Slurm chain last submitted for an output folder ([] when none was).
    Without a working Slurm client, ranks done come from the recorded completions alone."""
    jobs_path = layout.slurm_dir / JOBS_FILE
    if not jobs_path.exists():
        return []
    submitted = read_json(jobs_path)
    try:
        active, queue_known = _active_jobs([s["job_id"] for s in submitted.values()]), True
    except ClusterError:
        active, queue_known = {}, False
    result = []
    for task, info in submitted.items():
        completions = Path(info["logging_dir"]) / "completions"
        done = sorted(int(p.name) for p in completions.iterdir()) if completions.is_dir() else []
        running, pending, failed = [], [], []
        for index, rank in enumerate(info["ranks"]):
            if rank in done or not queue_known:
                continue
            state = next((st for key, (st, _) in active.items()
                          if key in (f"{info['job_id']}_{index}", info["job_id"])
                          or (key.startswith(f"{info['job_id']}_[") and st == "PENDING")), None)
            (running if state in ("RUNNING", "COMPLETING") else pending if state in ACTIVE_STATES else failed).append(rank)
        result.append(TaskStatus(task, info["job_id"], info["tasks"], done, running, pending, failed,
                                 info["slurm_logs"], queue_known))
    return result
