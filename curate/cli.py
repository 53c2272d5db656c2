"""The `curate` command line: parses arguments and calls the stage modules."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from pydantic import BaseModel, ValidationError

from curate import procs
from curate.config import DedupConfig, JobError, LabelConfig, MixConfig, SampleConfig, ScoreConfig, TrainConfig, load_job


def add_model_options(parser: argparse.ArgumentParser, model: type[BaseModel]) -> None:
    """One `--option` per field of a config section, defaulting to the section's default."""
    for name, info in model.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if info.annotation is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None,
                                help=f"{info.description or name} (default: {info.default})")
        else:
            parser.add_argument(flag, dest=name, default=None, help=f"{info.description or name} (default: {info.default})")


def model_from_options(model: type[BaseModel], args: argparse.Namespace) -> BaseModel:
    given = {k: getattr(args, k) for k in model.model_fields if getattr(args, k, None) is not None}
    return model.model_validate(given, strict=False)


def _exit_status(errors: list[str]) -> int:
    """Print each error on its own line to stderr; 1 when there were any."""
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    return 1 if errors else 0


def _cmd_run(args) -> int:
    from curate.run import RunResult, run_job

    job = load_job(args.job)
    if args.executor:
        job.executor = args.executor
    if job.executor == "slurm":
        from curate.cluster import submit

        return _print_submitted(submit(job), job.out)
    start = time.monotonic()
    result = args.progress = RunResult()
    run_job(job, result)
    for stage, why in result.skipped.items():
        print(f"skipped {stage}: {why}")
    print(f"ran: {', '.join(result.ran) or 'nothing (all stages current)'}; output in {job.out} "
          f"({time.monotonic() - start:.1f}s)")
    return _exit_status(result.errors)


def _run_done(args) -> str:
    result = getattr(args, "progress", None)
    done = [*result.skipped, *result.ran] if result else []
    return f"stages done: {', '.join(done)}" if done else "no stage finished"


def _print_submitted(submitted: dict[str, str], output_dir) -> int:
    if not submitted:
        print(f"nothing to submit: all stages are current in {output_dir}")
    for stage, job_id in submitted.items():
        print(f"submitted {stage}: Slurm job {job_id}")
    if submitted:
        print(f"follow it with: curate status {output_dir}")
    return 0


def _site_settings(args):
    """The `slurm` section of the job file given with --job (defaults without one)."""
    from curate.config import SlurmConfig

    return load_job(args.job).slurm if args.job else SlurmConfig()


def _cmd_status(args) -> int:
    from curate.cluster import status

    stages = status(args.output_dir)
    for stage in stages:
        print(stage.line())
    return 1 if any(stage.failed for stage in stages) else 0


def _cmd_train(args) -> int:
    from curate.train import train

    card = train(args.labels, args.out, model_from_options(TrainConfig, args), seed=args.seed)
    for behavior, m in card["metrics"].items():
        auc = "n/a" if m["roc_auc"] is None else f"{m['roc_auc']:.3f}"
        print(f"{behavior:18s} ROC-AUC {auc}  P {m['precision']:.3f}  R {m['recall']:.3f}  F1 {m['f1']:.3f}")
    print(f"model and card in {args.out}")
    return 0


def _cmd_score(args) -> int:
    from curate.score import score_files

    if args.executor == "slurm":
        from curate.cluster import submit_score
        from curate.io import list_input_files

        return _print_submitted(submit_score(list_input_files(args.inputs, args.glob), args.model, args.out,
                                             model_from_options(ScoreConfig, args), _site_settings(args)), args.out)
    summary = score_files(args.inputs, args.glob, args.model, args.out, model_from_options(ScoreConfig, args))
    print(("skipped: scores are current in " if summary["skipped"] else "scores written to ") + str(args.out))
    return _exit_status(summary["file_errors"])


def _score_done(args) -> str:
    from curate.score import LOGS_DIR

    completions = Path(args.out) / LOGS_DIR / "completions"
    done = len(list(completions.iterdir())) if completions.is_dir() else 0
    return f"{done} of {model_from_options(ScoreConfig, args).tasks} ranks scored"


def _cmd_mix(args) -> int:
    from curate.io import list_input_files
    from curate.mix import mix
    from curate.score import scored_shards

    exclude = None
    if args.filters:
        from curate.filters import read_drops

        exclude = read_drops(args.filters)
    stats = mix(list_input_files(args.inputs, args.glob), scored_shards(args.scores), args.out,
                model_from_options(MixConfig, args), seed=args.seed, exclude=exclude)
    print(f"{stats['docs_out']} documents, {stats['tokens_out']:,} tokens in {len(stats['shards'])} shards in {args.out}")
    return _exit_status(stats["input_file_errors"])


def _cmd_filter(args) -> int:
    from curate.config import DecontaminationConfig, EvalSetConfig, FiltersConfig
    from curate.filters import run_filters
    from curate.io import list_input_files
    from curate.score import scored_shards

    eval_sets = [EvalSetConfig(path=path, fields=args.eval_fields.split(","), id_field=args.eval_id_field)
                 for path in args.eval]
    cfg = FiltersConfig(dedup=model_from_options(DedupConfig, args),
                        decontaminate=DecontaminationConfig(ngram=args.ngram, eval_sets=eval_sets))
    report = run_filters(list_input_files(args.inputs, args.glob), scored_shards(args.scores), args.out, cfg,
                         tasks=args.tasks, workers=args.workers)
    for match in report.get("contamination", {}).get("matches", []):
        print(f"contamination: {match['document']} <- {', '.join(match['items'])}")
    print(f"dropped {report['dropped']['near_duplicate']} near-duplicates and {report['dropped']['contamination']} "
          f"contaminated documents; decisions in {args.out}")
    return 0


def _cmd_report(args) -> int:
    from curate.report import write_report

    written = write_report(args.output_dir, name=args.name, labels=args.labels)
    if written["agreement"] and not written["agreement"]["documents"]:
        print(f"warning: no document of {args.labels} is among the scored documents; no agreement plot",
              file=sys.stderr)
    elif written["agreement"]:
        for behavior, m in written["agreement"]["behaviors"].items():
            auc = "n/a" if m["roc_auc"] is None else f"{m['roc_auc']:.3f}"
            print(f"{behavior:18s} ROC-AUC {auc} ({m['positives']} positives of {written['agreement']['documents']})")
    print(f"report: {written['index']}; card: {written['card']}")
    return 0


def _cmd_audit(args) -> int:
    from curate.audit import audit

    results = audit(args.output_dir)
    for stage in results:
        dropped = ", ".join(f"{k} {v}" for k, v in stage.dropped.items() if v) or "none"
        counts = ", ".join(f"{k} {v}" for k, v in stage.counts.items())
        print(f"{stage.stage:6s} {'OK' if not stage.problems else 'MISMATCH'}: {counts}; dropped: {dropped}")
        for problem in stage.problems:
            print(f"  {problem}")
    return 1 if any(stage.problems for stage in results) else 0


def _cmd_sample(args) -> int:
    from curate.sample import sample

    stats = sample(args.inputs, args.out, model_from_options(SampleConfig, args), seed=args.seed, glob=args.glob)
    print(f"{stats['documents_out']} of {stats['documents_in']} documents ({stats['near_duplicates_skipped']} "
          f"near-duplicates skipped) in {args.out}")
    return _exit_status(stats["file_errors"])


def _cmd_label(args) -> int:
    from curate.label import LabelingStopped, label

    if args.executor == "slurm":
        from curate.cluster import submit_label

        return _print_submitted(submit_label(args.sample, args.out, model_from_options(LabelConfig, args),
                                             _site_settings(args)), args.out)
    try:
        stats = label(args.sample, args.out, model_from_options(LabelConfig, args))
    except LabelingStopped as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if stats["skipped"]:
        print(f"skipped: labels in {args.out} are current")
    run = stats["this_run"]
    print(f"{stats['documents']} documents, {stats['documents_labeled']} fully labeled, parse failures "
          f"{stats['parse_failure_rate']:.1%}, {stats['prompt_tokens_per_document']:.0f} prompt tokens/document; "
          f"this run {run['documents']} documents in {run['seconds']:.1f}s; labels in {args.out}")
    return 0


def _label_done(args) -> str:
    import pyarrow.parquet as pq

    from curate.label import documents_done

    return f"{documents_done(args.out)} of {pq.read_metadata(args.sample).num_rows} documents labeled"


def _cmd_bootstrap(args) -> int:
    from curate.bootstrap import bootstrap, metrics_table
    from curate.label import LabelingStopped

    job = load_job(args.job)
    if job.bootstrap is None:
        raise JobError(f"{args.job}: no 'bootstrap' section")
    try:
        result = bootstrap(job)
    except LabelingStopped as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if result["skipped"]:
        print(f"skipped rounds {', '.join(map(str, result['skipped']))}: finished with the same settings")
    print(metrics_table(result["rounds"]))
    print(f"per-round metrics in {job.out / 'bootstrap' / 'metrics.json'}")
    return 0


def _bootstrap_done(args) -> str:
    from curate.bootstrap import finished_rounds

    rounds = finished_rounds(load_job(args.job))
    return f"rounds finished: {', '.join(map(str, rounds))}" if rounds else "no round finished"


def _stopped_line(args, stop: procs.Stopped) -> str:
    """What a stopped command says: what it finished (kept on disk) and that the same command resumes."""
    if not hasattr(args, "done"):
        return f"curate {args.command} stopped by {stop.signal_name} before it finished; run the same command again"
    return (f"curate {args.command} stopped by {stop.signal_name}: {args.done(args)}; "
            f"run the same command again to resume")


def _cmd_eval_labels(args) -> int:
    from curate.label import eval_labels

    result = eval_labels(args.labels, args.reference)
    print(f"{result['documents_in_both']} documents in both files")
    for behavior, m in result["behaviors"].items():
        rho = "n/a" if m["spearman"] is None else f"{m['spearman']:+.3f}"
        print(f"{behavior:18s} Spearman {rho}  F1(count>0) {m['f1']:.3f}  P {m['precision']:.3f}  R {m['recall']:.3f}"
              f"  (n={m['documents']})")
    if args.json:
        from curate.io import write_json

        write_json(result, args.json)
    return 0


def _add_executor(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--executor", choices=["local", "slurm"], default="local",
                        help="run here, or submit Slurm jobs and return (follow them with `curate status OUT`)")
    parser.add_argument("--job", default=None, help="with --executor slurm: a job file whose `slurm` section "
                                                    "holds the site settings (partition, gpus_per_task, ...)")


def _add_inputs(parser: argparse.ArgumentParser, what: str = "Parquet/JSONL files or folders") -> None:
    parser.add_argument("inputs", nargs="+", help=what)
    parser.add_argument("--glob", default=None, help="glob inside input folders, e.g. '**/*.parquet'")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="curate", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a job file (train -> score -> mix), skipping finished stages")
    p.add_argument("job", help="job YAML file, e.g. jobs/dryrun.yaml")
    p.add_argument("--executor", choices=["local", "slurm"], default=None,
                   help="run here, or submit the chain of Slurm array jobs and return (default: the job's `executor`)")
    p.set_defaults(func=_cmd_run, done=_run_done)

    p = sub.add_parser("status", help="per-stage progress of the Slurm jobs of an output folder, and their logs")
    p.add_argument("output_dir", help="the job's output_dir")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("sample", help="a seeded sample of documents to label, near-duplicates removed")
    _add_inputs(p, "Parquet/JSONL files or folders")
    p.add_argument("--out", required=True, help="sample Parquet file (stats JSON beside it)")
    p.add_argument("--seed", type=int, default=0)
    add_model_options(p, SampleConfig)
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("label", help="label a sample with an LLM (datatrove inference: vllm or an endpoint)")
    p.add_argument("sample", help="sample Parquet file (from `curate sample`)")
    p.add_argument("--out", required=True, help="output folder for labels.parquet, label_stats.json, checkpoints")
    add_model_options(p, LabelConfig)
    _add_executor(p)
    p.set_defaults(func=_cmd_label, done=_label_done)

    p = sub.add_parser("eval-labels", help="agreement of a labels file with reference labels, per behavior")
    p.add_argument("labels", help="labels Parquet file")
    p.add_argument("--reference", required=True, help="reference labels, e.g. ../shared/labels/gold.parquet")
    p.add_argument("--json", default=None, help="also write the agreement as JSON here")
    p.set_defaults(func=_cmd_eval_labels)

    p = sub.add_parser("train", help="distil a labels file into the fastText behavior classifier")
    p.add_argument("labels", help="labels Parquet file")
    p.add_argument("out", help="output folder for model.bin and card.json")
    p.add_argument("--seed", type=int, default=0)
    add_model_options(p, TrainConfig)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("score", help="score input shards with a classifier (datatrove, local or Slurm executor)")
    _add_inputs(p, "Parquet/JSONL files or folders")
    p.add_argument("--model", required=True, help="classifier model.bin")
    p.add_argument("--out", required=True, help="scores folder")
    add_model_options(p, ScoreConfig)
    _add_executor(p)
    p.set_defaults(func=_cmd_score, done=_score_done)

    p = sub.add_parser("mix", help="make a token-budgeted mix from input shards and their scores")
    _add_inputs(p, "the Parquet/JSONL files or folders that were scored")
    p.add_argument("--scores", required=True, help="scores folder")
    p.add_argument("--out", required=True, help="output folder for shards, stats.json and README.md")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--filters", default=None, help="a filters folder (curate filter): leave its drops out")
    add_model_options(p, MixConfig)
    p.set_defaults(func=_cmd_mix)

    p = sub.add_parser("filter", help="decontaminate against evaluation sets and drop near-duplicates (decisions only)")
    _add_inputs(p, "the Parquet/JSONL files or folders that were scored")
    p.add_argument("--scores", required=True, help="scores folder (near-duplicates: the best-scoring one is kept)")
    p.add_argument("--out", required=True, help="output folder for drops.parquet and report.json")
    p.add_argument("--eval", action="append", default=[], help="evaluation set (Parquet/JSONL), repeatable")
    p.add_argument("--eval-fields", default="text", help="comma-separated text columns of the evaluation sets")
    p.add_argument("--eval-id-field", default=None, help="column naming an item (default: row number)")
    p.add_argument("--ngram", type=int, default=13, help="shared n-gram length that marks contamination")
    p.add_argument("--tasks", type=int, default=2, help="ranks of the datatrove backend")
    p.add_argument("--workers", type=int, default=2)
    add_model_options(p, DedupConfig)
    p.set_defaults(func=_cmd_filter)

    p = sub.add_parser("report", help="plots, an HTML page and the dataset card of a job's output folder")
    p.add_argument("output_dir", help="a job's output_dir")
    p.add_argument("--labels", default=None, help="labels file: plot the classifier's agreement with it")
    p.add_argument("--name", default=None, help="title (default: the folder's name)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("bootstrap", help="rounds of score the pool -> pick uncertain/top documents -> label -> retrain")
    p.add_argument("job", help="job YAML file with label, train.labels and bootstrap sections")
    p.set_defaults(func=_cmd_bootstrap, done=_bootstrap_done)

    p = sub.add_parser("audit", help="check that every document is accounted for in every stage of an output folder")
    p.add_argument("output_dir", help="a job's output_dir")
    p.set_defaults(func=_cmd_audit)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not args.verbose:  # dask's scheduler and workers narrate every start and stop at INFO
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    procs.tie_children()  # the processes this command starts end with it, even when it is killed
    procs.stop_on_signals()
    try:
        return args.func(args)
    except procs.Stopped as stop:
        print(_stopped_line(args, stop), file=sys.stderr)
        return stop.status
    except (JobError, ValidationError) as e:
        print(f"error: {str(e).splitlines()[0] if isinstance(e, JobError) else e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
