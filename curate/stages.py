"""The table of stages: every stage of a job declared once.

A `Stage` names its folder's marker (the file that records the fingerprint its output was made
from), computes that fingerprint from its inputs and settings, runs, and returns a `StageResult`
with the same counters for every stage. `curate run` (`run_job`), the Slurm chain
(`curate.cluster`), `curate status` and `curate audit` all iterate `STAGES`; a stage reads what the
stages before it wrote through the `Layout`, never through a changed job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from curate import audit as audit_stage
from curate import control as control_stage
from curate import export as export_stage
from curate import filters as filters_stage
from curate import label as label_stage
from curate import mix as mix_stage
from curate import report as report_stage
from curate import rewrite as rewrite_stage
from curate import sample as sample_stage
from curate import score as score_stage
from curate import train as train_stage
from curate.config import ExportConfig, Job
from curate.executors import DaskCluster
from curate.io import file_sha256, list_input_files
from curate.labels import combine_labels
from curate.layout import Layout, fingerprint_of, input_stamps, recorded_fingerprint

log = logging.getLogger("curate")


@dataclass
class StageResult:
    """What one stage did: ran or skipped (and why, in one line), its documents in and out, rows
    dropped by reason, one-line errors that make the command fail, and its full stats."""

    stage: str
    ran: bool
    why: str
    documents_in: int | None = None
    documents_out: int | None = None
    dropped: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)


@dataclass
class Context:
    """A job, its output layout and its input files, and the fingerprints computed so far."""

    job: Job
    layout: Layout
    files: list[str]
    fingerprints: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def for_job(cls, job: Job) -> Context:
        return cls(job, Layout(job.out, job.data_dir), list_input_files(job.input.paths, job.input.glob))

    def fingerprint(self, name: str) -> str | None:
        """The fingerprint of stage `name` from its current inputs (memoized; None when the stage
        does not apply to the job)."""
        if name not in self.fingerprints:
            stage = STAGE_BY_NAME[name]
            self.fingerprints[name] = stage.fingerprint(self) if stage.applies(self.job) else None
        return self.fingerprints[name]

    def forget(self, name: str) -> None:
        """Drop the memoized fingerprints of `name` and of every stage after it (its inputs changed)."""
        after = False
        for stage in STAGES:
            after = after or stage.name == name
            if after:
                self.fingerprints.pop(stage.name, None)


@dataclass(frozen=True)
class Stage:
    """One row of the table."""

    name: str
    slurm_task: str  # the job of the Slurm chain that runs it
    applies: Callable[[Job], bool]
    fingerprint: Callable[[Context], str]
    marker: Callable[[Layout], Path]  # the JSON file that records the fingerprint of the finished output
    outputs: Callable[[Layout], list[Path]]  # what must exist besides the marker
    run: Callable[[Context, str], StageResult]
    audit: Callable[[Layout, dict], audit_stage.StageAudit] | None = None

    def is_current(self, ctx: Context) -> bool:
        """Whether the stage's output was made from its current inputs and settings."""
        try:
            fingerprint = ctx.fingerprint(self.name)
        except (FileNotFoundError, ValueError):  # an input that does not exist yet
            return False
        return recorded_fingerprint(self.marker(ctx.layout)) == fingerprint and all(
            p.exists() for p in self.outputs(ctx.layout))

    def is_finished(self, layout: Layout) -> bool:
        """Whether the stage finished at some point in this output folder (whatever it was made from)."""
        return self.marker(layout).exists()


# --- sample ------------------------------------------------------------------------------------

def _has_labeling(job: Job) -> bool:
    return job.sample is not None and job.label is not None


def _sample_fingerprint(ctx: Context) -> str:
    return fingerprint_of(input_stamps(ctx.files), ctx.job.sample.model_dump(), ctx.job.seed)


def _run_sample(ctx: Context, fingerprint: str) -> StageResult:
    stats = sample_stage.sample(ctx.files, ctx.layout, ctx.job.sample, seed=ctx.job.seed, fingerprint=fingerprint)
    return StageResult("sample", True, f"{stats['documents_out']} documents in {ctx.layout.sample_file}",
                       stats["documents_in"], stats["documents_out"], stats["dropped"], stats["file_errors"], stats)


# --- label -------------------------------------------------------------------------------------

def _label_fingerprint(ctx: Context) -> str:
    return label_stage.label_fingerprint(ctx.layout.sample_file, ctx.job.label)


def _run_label(ctx: Context, fingerprint: str) -> StageResult:
    stats = label_stage.label(ctx.layout.sample_file, ctx.layout, ctx.job.label, fingerprint=fingerprint)
    dropped = {"parse_failures": stats["parse_failures"], "request_errors": stats["request_errors"]}
    return StageResult("label", True, f"{stats['documents']} documents labeled by {stats['labeler']}, parse failures "
                       f"{100 * (stats['parse_failure_rate'] or 0):.1f}%", stats["documents"],
                       stats["documents_labeled"], dropped, [], stats)


# --- train -------------------------------------------------------------------------------------

def train_labels(job: Job, layout: Layout) -> list[Path]:
    """The labels files the classifier is trained on: the label stage's and/or `train.labels`."""
    sources = ([layout.labels_file] if _has_labeling(job) else []) + ([Path(job.train.labels)] if job.train.labels
                                                                        else [])
    if not sources:
        raise ValueError("train.labels is not set and the job has no sample/label stages")
    return sources


def _train_fingerprint(ctx: Context) -> str:
    sources = train_labels(ctx.job, ctx.layout)
    return fingerprint_of([file_sha256(p) for p in sources], ctx.job.train.model_dump(exclude={"labels"}), ctx.job.seed)


def _run_train(ctx: Context, fingerprint: str) -> StageResult:
    sources = train_labels(ctx.job, ctx.layout)
    labels = sources[0] if len(sources) == 1 else combine_labels(sources, ctx.layout.logs("train") / "labels.parquet")
    card = train_stage.train(labels, ctx.layout.classifier_dir, ctx.job.train, seed=ctx.job.seed,
                             fingerprint=fingerprint)
    aucs = ", ".join(f"{b} {m['roc_auc']}" for b, m in card["metrics"].items())
    return StageResult("train", True, f"cross-validated ROC-AUC {aucs}", card["n_train"] + card["n_skipped_unparsed"],
                       card["n_train"], {"unparsed": card["n_skipped_unparsed"]}, [], card)


# --- score -------------------------------------------------------------------------------------

def _score_fingerprint(ctx: Context) -> str:
    model = ctx.layout.model_file
    if not model.exists():
        raise FileNotFoundError(model)
    tokens = score_stage.token_settings(ctx.files, ctx.layout, ctx.job.score)
    return score_stage.scores_fingerprint(model, ctx.files, ctx.job.score, tokens.get("chars_per_token"))


def _run_score(ctx: Context, fingerprint: str) -> StageResult:
    stats = score_stage.score(ctx.files, ctx.layout.model_file, ctx.layout, ctx.job.score)
    return StageResult("score", True, f"{stats['documents_out']} documents scored in {ctx.layout.scores_dir}",
                       None, stats["documents_out"], {}, stats["file_errors"], stats)


def _audit_score(layout: Layout, done: dict) -> audit_stage.StageAudit:
    return audit_stage.audit_score(layout)


# --- filters -----------------------------------------------------------------------------------

def _has_filters(job: Job) -> bool:
    return job.filters.dedup.enabled or bool(job.filters.decontaminate.eval_sets)


def _filters_fingerprint(ctx: Context) -> str:
    cfg = ctx.job.filters
    return fingerprint_of(ctx.fingerprint("score"), cfg.model_dump(), ctx.job.score.tasks,
                          [file_sha256(s.path) for s in cfg.decontaminate.eval_sets])


def _run_filters(ctx: Context, fingerprint: str) -> StageResult:
    report = filters_stage.run_filters(ctx.files, ctx.layout, ctx.job.filters, tasks=ctx.job.score.tasks,
                                       workers=ctx.job.score.workers, fingerprint=fingerprint)
    return StageResult("filters", True, f"dropped {report['dropped']}", report["documents"],
                       report["documents"] - sum(report["dropped"].values()), report["dropped"], [], report)


# --- mix ---------------------------------------------------------------------------------------

def _mix_fingerprint(ctx: Context) -> str:
    return fingerprint_of(ctx.fingerprint("score"), ctx.job.mix.model_dump(exclude={"control"}), ctx.job.seed,
                          ctx.job.name, ctx.fingerprint("filters"))


def _run_mix(ctx: Context, fingerprint: str) -> StageResult:
    job = ctx.job
    exclude = filters_stage.read_drops(ctx.layout) if _has_filters(job) else None
    stats = mix_stage.mix(ctx.files, ctx.layout, job.mix, seed=job.seed, fingerprint=fingerprint,
                          dask_cluster=dask_cluster(job), exclude=exclude, name=job.name)
    return StageResult("mix", True, f"{stats['documents_out']} documents, {stats['tokens_out']:,} tokens in "
                       f"{ctx.layout.mix_dir()}", stats["documents_in"], stats["documents_out"], stats["dropped"],
                       stats["input_file_errors"], stats)


def _run_control(ctx: Context, fingerprint: str) -> StageResult:
    job = ctx.job
    exclude = filters_stage.read_drops(ctx.layout) if _has_filters(job) else None
    stats = control_stage.control(ctx.files, ctx.layout, job.mix, seed=job.seed, fingerprint=fingerprint,
                                  dask_cluster=dask_cluster(job), exclude=exclude, name=job.name)
    match = stats["matching"]
    return StageResult("control", True, f"{stats['documents_out']} documents, {stats['tokens_out']:,} tokens in "
                       f"{ctx.layout.mix_dir('control')} (host gap {match['max_host_gap_pp']:.1f} pp, length decile gap "
                       f"{100 * match['max_decile_gap']:.1f}%)", stats["documents_in"], stats["documents_out"],
                       stats["dropped"], stats["input_file_errors"], stats)


def _audit_control(layout: Layout, done: dict) -> audit_stage.StageAudit:
    score = done.get("score")
    return audit_stage.audit_mix(layout.mix_dir("control"), score.counts["out"] if score else None)


def dask_cluster(job: Job) -> DaskCluster:
    """The dask cluster of the mix's global pass: in-process, or SLURMCluster workers on Slurm."""
    if job.executor != "slurm" or job.slurm.dask_workers == 0:
        return DaskCluster()
    return DaskCluster(job.slurm, str(Layout(job.out).slurm_dir.resolve() / "dask"), f"{job_name_prefix(job)}-dask")


def job_name_prefix(job: Job) -> str:
    """The prefix of the job's Slurm job names."""
    return job.slurm.job_name_prefix or job.name


def _audit_mix(layout: Layout, done: dict) -> audit_stage.StageAudit:
    score = done.get("score")
    return audit_stage.audit_mix(layout.mix_dir(), score.counts["out"] if score else None)


# --- rewrite -----------------------------------------------------------------------------------

def _rewrite_fingerprint(ctx: Context) -> str:
    cfg = ctx.job.rewrite
    return rewrite_stage.rewrite_fingerprint({mix: ctx.fingerprint(mix) for mix in cfg.mixes}, cfg,
                                             ctx.layout.model_file)


def _run_rewrite(ctx: Context, fingerprint: str) -> StageResult:
    stats = rewrite_stage.rewrite(ctx.layout, ctx.job.rewrite, fingerprint=fingerprint, name=ctx.job.name)
    folders = ", ".join(m["folder"] for m in stats["mixes"].values())
    return StageResult("rewrite", True, f"{stats['documents_rewritten']} of {stats['documents']} documents rewritten "
                       f"by {stats['model']} into {folders}", stats["documents"], stats["documents_rewritten"],
                       {"parse_failures": stats["parse_failures"], "request_errors": stats["request_errors"]}, [], stats)


# --- report ------------------------------------------------------------------------------------

def _report_fingerprint(ctx: Context) -> str:
    return fingerprint_of(ctx.fingerprint("mix"), ctx.fingerprint("control"), ctx.fingerprint("train"))


def _run_report(ctx: Context, fingerprint: str) -> StageResult:
    written = report_stage.write_report(ctx.layout, ctx.job.name, fingerprint=fingerprint)
    return StageResult("report", True, f"{len(written['plots'])} plots in {written['index']}", stats=written)


# --- export ------------------------------------------------------------------------------------

def _has_export(job: Job) -> bool:
    return job.export is not None


def export_settings(job: Job) -> ExportConfig:
    """The job's export section, with the job's seed when it sets none."""
    cfg = job.export
    return cfg if cfg.seed is not None else cfg.model_copy(update={"seed": job.seed})


def _export_fingerprint(ctx: Context) -> str:
    cfg = export_settings(ctx.job)
    sources = {name: ctx.fingerprint(name) if name in STAGE_BY_NAME
               else export_stage.source_fingerprint(ctx.layout.mix_dir(name)) for name in cfg.mixes}
    return export_stage.export_fingerprint(sources, cfg)


def _run_export(ctx: Context, fingerprint: str) -> StageResult:
    cfg = export_settings(ctx.job)
    stats = export_stage.export({name: ctx.layout.mix_dir(name) for name in cfg.mixes}, ctx.layout, cfg,
                                fingerprint, name=ctx.job.name)
    return StageResult("export", True, f"{stats['documents_out']:,} copies of {', '.join(cfg.mixes)} as "
                       f"{', '.join(cfg.formats)} in {ctx.layout.export_dir}", stats["documents_in"],
                       stats["documents_out"], {}, [], stats)


def _always(job: Job) -> bool:
    return True


STAGES: list[Stage] = [
    Stage("sample", "sample", _has_labeling, _sample_fingerprint, lambda lay: lay.stats("sample"),
          lambda lay: [lay.sample_file], _run_sample, lambda lay, done: audit_stage.audit_sample(lay)),
    Stage("label", "label", _has_labeling, _label_fingerprint, lambda lay: lay.stats("label"),
          lambda lay: [lay.labels_file], _run_label, lambda lay, done: audit_stage.audit_labels(lay)),
    Stage("train", "train", _always, _train_fingerprint, lambda lay: lay.card_file,
          lambda lay: [lay.model_file], _run_train),
    Stage("score", "score", _always, _score_fingerprint, lambda lay: lay.stats("score"),
          lambda lay: [lay.scores_dir], _run_score, _audit_score),
    Stage("filters", "finish", _has_filters, _filters_fingerprint, lambda lay: lay.stats("filters"),
          lambda lay: [lay.drops_file], _run_filters),
    Stage("mix", "finish", _always, _mix_fingerprint, lambda lay: lay.mix_dir() / "stats.json",
          lambda lay: [lay.mix_dir() / "README.md"], _run_mix, _audit_mix),
    Stage("control", "finish", lambda job: job.mix.control,
          lambda ctx: fingerprint_of(ctx.fingerprint("mix"), "control"), lambda lay: lay.mix_dir("control") / "stats.json",
          lambda lay: [lay.mix_dir("control") / "README.md"], _run_control, _audit_control),
    Stage("rewrite", "rewrite", lambda job: job.rewrite is not None, _rewrite_fingerprint,
          lambda lay: lay.stats("rewrite"), rewrite_stage.outputs, _run_rewrite,
          lambda lay, done: audit_stage.audit_rewrite(lay)),
    Stage("report", "finish", _always, _report_fingerprint, lambda lay: lay.stats("report"),
          lambda lay: [lay.report_dir / report_stage.INDEX_FILE], _run_report),
    Stage("export", "export", _has_export, _export_fingerprint, lambda lay: lay.stats("export"),
          lambda lay: [lay.export_dir], _run_export, lambda lay, done: audit_stage.audit_export(lay)),
]
STAGE_BY_NAME = {stage.name: stage for stage in STAGES}


def run_job(job: Job, only: set[str] | None = None, results: list[StageResult] | None = None) -> list[StageResult]:
    """Run the job's stages in order (those in `only`, when given), each skipped when its output is
    current; return one result per stage of the job (appended to `results` as each stage ends, when
    given: what a stopped run finished)."""
    ctx = Context.for_job(job)
    results = [] if results is None else results
    for stage in STAGES:
        if not stage.applies(job) or (only is not None and stage.name not in only):
            continue
        if stage.is_current(ctx):
            results.append(StageResult(stage.name, False, f"{stage.marker(ctx.layout)} records the same inputs and "
                                                          "settings"))
            continue
        ctx.forget(stage.name)
        result = stage.run(ctx, ctx.fingerprint(stage.name))
        ctx.forget(stage.name)  # later stages read what it wrote
        log.info("%s: %s", stage.name, result.why)
        results.append(result)
    return results


def audit(layout: Layout) -> list[audit_stage.StageAudit]:
    """Audit every finished stage of an output folder that has an audit."""
    done: dict[str, audit_stage.StageAudit] = {}
    for stage in STAGES:
        if stage.audit is not None and stage.is_finished(layout):
            done[stage.name] = stage.audit(layout, done)
    if not done:
        raise FileNotFoundError(f"{layout.root}: no finished stage to audit (no stats of sample, label, score or mix)")
    return list(done.values())
