"""`curate run JOB.yaml`: the stages of a job in order, each skipped when its output is current.

A stage's output records a fingerprint of what it was made from (input bytes, configuration,
seed); a second run with the same fingerprint redoes nothing and says what it skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from curate.cluster import DaskCluster
from curate.config import Job
from curate.io import file_sha256, list_input_files, read_json
from curate import mix as mix_stage
from curate import filters as filters_stage
from curate import classifier, report, score as score_stage, train as train_stage
from curate import label as label_stage, sample as sample_stage

log = logging.getLogger("curate")


@dataclass
class RunResult:
    """What a run did: stages run, stages skipped (with why), and errors that make it fail."""

    ran: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def fingerprint_of(*parts) -> str:
    """SHA-256 of the JSON of `parts`: what a stage's output was made from."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def is_current(path: Path, fingerprint: str) -> bool:
    """Whether the JSON file at `path` records this fingerprint."""
    return path.exists() and read_json(path).get("fingerprint") == fingerprint


def train_fingerprint(job: Job) -> str:
    """What the classifier depends on: the labels' bytes, the train settings and the seed."""
    if job.train.labels is None:
        raise ValueError("train.labels is not set and the job has no label stage")
    return fingerprint_of(file_sha256(job.train.labels), job.train.model_dump(), job.seed)


def train_current(job: Job) -> bool:
    """Whether the job's classifier was trained on the same labels and settings."""
    out = job.out / "classifier"
    return is_current(out / classifier.CARD_FILE, train_fingerprint(job)) and (out / classifier.MODEL_FILE).exists()


def filters_fingerprint(job: Job, scores_fingerprint: str) -> str | None:
    """What the filter decisions depend on: the scores, the filter settings and the evaluation sets'
    bytes; None when the job runs no filter."""
    cfg = job.filters
    if not cfg.dedup.enabled and not cfg.decontaminate.eval_sets:
        return None
    return fingerprint_of(scores_fingerprint, cfg.model_dump(), job.score.tasks,
                        [file_sha256(s.path) for s in cfg.decontaminate.eval_sets])


def mix_fingerprint(job: Job, scores_fingerprint: str) -> str:
    """What the mix depends on: the scores, the filter decisions, the mix settings, the seed and the job's name."""
    return fingerprint_of(scores_fingerprint, job.mix.model_dump(), job.seed, job.name,
                        filters_fingerprint(job, scores_fingerprint))


def mix_current(job: Job, scores_fingerprint: str) -> bool:
    """Whether the job's mix and card were made from the same scores and settings."""
    out = job.out / "mix"
    return is_current(out / mix_stage.STATS_FILE, mix_fingerprint(job, scores_fingerprint)) and (
        out / report.CARD_FILE).exists()


def sample_fingerprint(job: Job, files: list[str]) -> str:
    """What the label sample depends on: the input files (path, size, mtime), the sample settings, the seed."""
    stamps = [(os.path.abspath(f), os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
    return fingerprint_of(stamps, job.sample.model_dump(), job.seed)


def sample_file(output_dir: Path) -> Path:
    """The label sample in a job's output folder."""
    return output_dir / "sample" / "sample.parquet"


def labels_dir(output_dir: Path) -> Path:
    """The label stage's folder (labels file, stats, checkpoints) in a job's output folder."""
    return output_dir / "labels"


def sample_current(job: Job, files: list[str]) -> bool:
    """Whether the job's sample was drawn from the same inputs and settings."""
    path = sample_file(job.out)
    return is_current(sample_stage.stats_path(path), sample_fingerprint(job, files)) and path.exists()


def label_current(job: Job) -> bool:
    """Whether the job's labels are of the current sample, model and prompt."""
    sample, out = sample_file(job.out), labels_dir(job.out)
    return sample.exists() and (out / label_stage.LABELS_FILE).exists() and is_current(
        out / label_stage.STATS_FILE, label_stage.label_fingerprint(sample, job.label))


def use_label_output(job: Job) -> None:
    """Point train at the label stage's labels file, when the job has a sample -> label stage."""
    if job.sample is not None and job.label is not None:
        job.train.labels = str(labels_dir(job.out) / label_stage.LABELS_FILE)


def run_sample(job: Job, files: list[str], result: RunResult) -> None:
    """Draw the label sample unless it is current."""
    sample_path = sample_file(job.out)
    if sample_current(job, files):
        result.skipped["sample"] = f"{sample_path} was drawn from the same inputs and settings"
        return
    stats = sample_stage.sample(files, sample_path, job.sample, seed=job.seed,
                                fingerprint=sample_fingerprint(job, files))
    result.errors.extend(stats["file_errors"])
    result.ran.append("sample")


def run_label(job: Job, result: RunResult) -> None:
    """Label the sample (the label stage skips itself when its labels are current); train reads them."""
    out = labels_dir(job.out)
    stats = label_stage.label(sample_file(job.out), out, job.label)
    if stats["skipped"]:
        result.skipped["label"] = f"{out} holds labels of the same sample, model and prompt"
    else:
        result.ran.append("label")
        log.info("label: %d documents, parse-failure rate %.1f%%", stats["documents"],
                 100 * (stats["parse_failure_rate"] or 0))
    use_label_output(job)


def run_labels(job: Job, files: list[str], result: RunResult) -> None:
    """sample -> label, when the job has both sections; their labels file becomes train's input."""
    if job.sample is None or job.label is None:
        return
    run_sample(job, files, result)
    run_label(job, result)


def run_train(job: Job, result: RunResult) -> Path:
    out = job.out / "classifier"
    if train_current(job):
        result.skipped["train"] = f"{out / classifier.CARD_FILE} was trained on the same labels and settings"
    else:
        card = train_stage.train(job.train.labels, out, job.train, seed=job.seed, fingerprint=train_fingerprint(job))
        result.ran.append("train")
        log.info("train: held-out ROC-AUC %s", {b: m["roc_auc"] for b, m in card["metrics"].items()})
    return out / classifier.MODEL_FILE


def run_score(job: Job, files: list[str], model: Path, result: RunResult) -> dict:
    summary = score_stage.score(files, str(model), job.out / "scores", job.score)
    if summary["skipped"]:
        result.skipped["score"] = f"{job.out / 'scores'} holds scores of the same model, inputs and token settings"
    else:
        result.ran.append("score")
    result.errors.extend(summary["file_errors"])
    return summary


def run_filters(job: Job, files: list[str], scores: dict, result: RunResult) -> dict[str, str] | None:
    """Decontamination and near-duplicate removal, when the job asks for either; returns the
    {id: reason} of the documents the mix leaves out."""
    fingerprint = filters_fingerprint(job, scores["fingerprint"])
    if fingerprint is None:
        return None
    out = job.out / "filters"
    if is_current(out / filters_stage.REPORT_FILE, fingerprint) and (out / filters_stage.DROPS_FILE).exists():
        result.skipped["filters"] = f"{out} holds filter decisions for the same scores, settings and evaluation sets"
    else:
        report_json = filters_stage.run_filters(files, score_stage.scored_shards(job.out / "scores"), out,
                                                job.filters, tasks=job.score.tasks, workers=job.score.workers,
                                                fingerprint=fingerprint)
        result.ran.append("filters")
        log.info("filters: dropped %s", report_json["dropped"])
    return filters_stage.read_drops(out)


def run_mix(job: Job, files: list[str], scores: dict, result: RunResult,
            exclude: dict[str, str] | None = None) -> dict:
    out = job.out / "mix"
    fingerprint = mix_fingerprint(job, scores["fingerprint"])
    if mix_current(job, scores["fingerprint"]):
        result.skipped["mix"] = f"{out} was mixed from the same scores and settings"
        return read_json(out / mix_stage.STATS_FILE)
    stats = mix_stage.mix(files, score_stage.scored_shards(job.out / "scores"), out, job.mix, seed=job.seed,
                          fingerprint=fingerprint, dask_cluster=DaskCluster.for_job(job), exclude=exclude)
    report.write_report(job.out, job.name)
    result.ran.append("mix")
    return stats


def run_job(job: Job, result: RunResult | None = None) -> RunResult:
    """Run (sample -> label ->) train -> score -> filters -> mix (+ report) for a job; return what ran, what was
    skipped and any errors (recorded into `result` as the stages finish, when given)."""
    result = RunResult() if result is None else result
    files = list_input_files(job.input.paths, job.input.glob)
    run_labels(job, files, result)
    model = run_train(job, result)
    scores = run_score(job, files, model, result)
    run_mix(job, files, scores, result, run_filters(job, files, scores, result))
    return result
