"""The `curate` command line: parses arguments and calls the stages.

Every stage command writes into an output folder laid out like a job's (`curate.layout`), so
stages run by hand compose: `curate score ... --out OUT` then `curate mix ... --out OUT` reads
`OUT/scores`, and `curate report OUT` / `curate audit OUT` work on it. A user error (a missing
path, a file of the wrong kind, a wrong option) prints one line and exits 2 (`-v` shows the
traceback); input files that could not be read are named and make the command exit 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Literal, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined

from curate.config import (
    DedupConfig, ExportConfig, JobError, LabelConfig, MixConfig, RewriteConfig, SampleConfig, ScoreConfig, SlurmConfig,
    TrainConfig, load_job,
)
from curate import procs
from curate.errors import RunStopped
from curate.layout import Layout

USER_ERRORS = (ValueError, OSError, ValidationError)
"""Exceptions that mean the command cannot run as asked (JobError, InputError, LabelsError, ... are among them)."""


def _choices(annotation) -> list | None:
    """The values a Literal field (or Literal | None) allows."""
    if get_origin(annotation) is Literal:
        return list(get_args(annotation))
    for arg in get_args(annotation):
        if get_origin(arg) is Literal:
            return list(get_args(arg))
    return None


def add_model_options(parser: argparse.ArgumentParser, model: type[BaseModel], skip: tuple[str, ...] = (),
                      rename: dict[str, str] | None = None) -> None:
    """One `--option` per field of a config section, with its description, choices and default
    (fields in `skip` are left out: the command takes them another way)."""
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        flag = "--" + (rename or {}).get(name, name).replace("_", "-")
        required = info.default is PydanticUndefined and info.default_factory is None
        default = "required" if required else f"default: {info.get_default(call_default_factory=True)}"
        help_text = f"{info.description or name.replace('_', ' ')} ({default})"
        if info.annotation is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=name, default=None, choices=_choices(info.annotation), help=help_text)


def model_from_options(model: type[BaseModel], args: argparse.Namespace, **fixed) -> BaseModel:
    """A config section from the command's options (and `fixed` values); a wrong or missing value
    raises JobError naming the flag."""
    given = {k: getattr(args, k) for k in model.model_fields if getattr(args, k, None) is not None}
    try:
        return model.model_validate({**given, **fixed}, strict=False)
    except ValidationError as e:
        first = e.errors()[0]
        flag = "--" + str(first["loc"][0]).replace("_", "-") if first["loc"] else model.__name__
        if first["type"] == "missing":
            raise JobError(f"{flag} is required") from None
        raise JobError(f"{flag}: {first['msg']} (got {first.get('input')!r})") from None


def _report_errors(errors: list[str]) -> int:
    """Print each error on its own line to stderr; exit status 1 when there were any."""
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    return 1 if errors else 0


def _inputs(args):
    from curate.io import list_input_files

    return list_input_files(args.inputs, args.glob)


def _cmd_run(args) -> int:
    from curate.stages import run_job

    job = load_job(args.job)
    if args.executor:
        job.executor = args.executor
    if job.executor == "slurm":
        from curate.cluster import chain, submit

        if args.dry_run:
            from curate.executors import sbatch_script

            for task, executor in chain(job, ask_partition=False).items():
                print(f"# the sbatch script of the {task} task\n{sbatch_script(executor)}")
            return 0
        return _print_submitted(submit(job), job.out)
    start = time.monotonic()
    results = args.progress = []
    run_job(job, results=results)
    for result in results:
        if not result.ran:
            print(f"skipped {result.stage}: {result.why}")
    ran = [r.stage for r in results if r.ran]
    print(f"ran: {', '.join(ran) or 'nothing (all stages current)'}; output in {job.out} "
          f"({time.monotonic() - start:.1f}s)")
    return _report_errors([e for r in results for e in r.errors])


def _run_done(args) -> str:
    done = [r.stage for r in getattr(args, "progress", [])]
    return f"stages done: {', '.join(done)}" if done else "no stage finished"


def _print_submitted(submitted: dict[str, str], output_dir) -> int:
    if not submitted:
        print(f"nothing to submit: all stages are current in {output_dir}")
    for task, job_id in submitted.items():
        print(f"submitted {task}: Slurm job {job_id}")
    if submitted:
        print(f"follow it with: curate status {output_dir}")
    return 0


def _site_settings(args) -> SlurmConfig:
    """The `slurm` section of the job file given with --job (defaults without one)."""
    return load_job(args.job).slurm if args.job else SlurmConfig()


def _cmd_status(args) -> int:
    from curate.cluster import slurm_status
    from curate.io import read_json
    from curate.stages import STAGES

    layout = _existing_folder(args)
    for stage in STAGES:
        marker = stage.marker(layout)
        if marker.exists():
            stats = read_json(marker)
            out = stats.get("documents_out", stats.get("n_train"))
            print(f"{stage.name:8s} finished{f' ({out} documents out)' if out is not None else ''}: {marker}")
        else:
            print(f"{stage.name:8s} not finished")
    tasks = slurm_status(layout)
    for task in tasks:
        print(task.line())
    return 1 if any(task.failed for task in tasks) else 0


def _cmd_train(args) -> int:
    from curate.train import train

    layout = _layout(args)
    card = train(args.labels, layout.classifier_dir, model_from_options(TrainConfig, args), seed=args.seed)
    for behavior, m in card["metrics"].items():
        auc = "n/a" if m["roc_auc"] is None else f"{m['roc_auc']:.3f}"
        print(f"{behavior:18s} ROC-AUC {auc}  P {m['precision']:.3f}  R {m['recall']:.3f}  F1 {m['f1']:.3f}")
    print(f"model and card in {layout.classifier_dir}")
    return 0


def _cmd_score(args) -> int:
    from curate.score import check_model, score

    layout = _layout(args)
    files = _inputs(args)
    model = Path(args.model) if args.model else layout.model_file
    check_model(model)
    cfg = model_from_options(ScoreConfig, args)
    if args.executor == "slurm":
        from curate.cluster import submit_score

        return _print_submitted(submit_score(files, model, layout, cfg, _site_settings(args)), args.out)
    stats = score(files, model, layout, cfg)
    print(("skipped: scores are current in " if stats["skipped"] else "scores written to ") + str(layout.scores_dir))
    return _report_errors(stats["file_errors"])


def _score_done(args) -> str:
    from curate.score import datatrove_logs

    completions = datatrove_logs(_layout(args)) / "completions"
    done = len(list(completions.iterdir())) if completions.is_dir() else 0
    return f"{done} of {model_from_options(ScoreConfig, args).tasks} ranks scored"


def _cmd_mix(args) -> int:
    from curate.filters import current_drops
    from curate.mix import mix

    layout = _layout(args)
    exclude = None if args.no_filters else current_drops(layout)
    if exclude is not None:
        print(f"leaving out the {len(exclude)} documents dropped by the filters in {layout.drops_file}")
    files, cfg = _inputs(args), model_from_options(MixConfig, args)
    stats = mix(files, layout, cfg, seed=args.seed, exclude=exclude, name=args.name)
    print(f"{stats['documents_out']} documents, {stats['tokens_out']:,} tokens in {len(stats['shards'])} shards "
          f"in {layout.mix_dir()} (card: {layout.mix_dir() / 'README.md'})")
    errors = stats["input_file_errors"]
    if cfg.control:
        from curate.control import control

        matched = control(files, layout, cfg, seed=args.seed, exclude=exclude, name=args.name)
        print(f"control: {matched['documents_out']} documents, {matched['tokens_out']:,} tokens in "
              f"{layout.mix_dir('control')}; largest host share gap {matched['matching']['max_host_gap_pp']:.1f} pp, "
              f"length decile gap {100 * matched['matching']['max_decile_gap']:.1f}%")
    return _report_errors(errors)


def _cmd_export(args) -> int:
    from curate.export import export

    sources = {}
    for folder in args.mix_dirs:
        name = Path(folder).resolve().name
        if name in sources:
            raise JobError(f"{folder}: another mix folder given is also named '{name}' "
                           "(exports go to OUT/export/<name>)")
        sources[name] = Path(folder)
    cfg = model_from_options(ExportConfig, args, formats=args.formats or ["parquet"], mixes=list(sources),
                             seed=args.seed)
    stats = export(sources, _layout(args), cfg, name=args.name)
    for name, exported in stats["mixes"].items():
        for fmt, made in exported["formats"].items():
            print(f"{name} as {fmt}: {made['documents']:,} documents (copies), {made['tokens']:,} tokens "
                  f"in {made['folder']}")
    print(f"stats in {_layout(args).stats('export')}")
    return 0


def _cmd_filter(args) -> int:
    from curate.config import DecontaminationConfig, EvalSetConfig, FiltersConfig
    from curate.filters import run_filters

    eval_sets = [EvalSetConfig(path=path, fields=args.eval_fields.split(","), id_field=args.eval_id_field)
                 for path in args.eval]
    cfg = FiltersConfig(dedup=model_from_options(DedupConfig, args),
                        decontaminate=DecontaminationConfig(ngram=args.ngram, eval_sets=eval_sets))
    layout = _layout(args)
    report = run_filters(_inputs(args), layout, cfg, tasks=args.tasks, workers=args.workers)
    for match in report.get("contamination", {}).get("matches", []):
        print(f"contamination: {match['document']} <- {', '.join(match['items'])}")
    print(f"dropped {report['dropped']['near_duplicate']} near-duplicates and {report['dropped']['contamination']} "
          f"contaminated documents; decisions in {layout.drops_file}")
    return 0


def _existing_folder(args) -> Layout:
    """The layout of an output folder that exists (its data outputs in --data-dir when given)."""
    if not Path(args.output_dir).is_dir():
        raise FileNotFoundError(f"{args.output_dir}: no such output folder")
    return Layout(args.output_dir, args.data_dir)


def _cmd_report(args) -> int:
    from curate.report import write_report

    written = write_report(_existing_folder(args), name=args.name, labels=args.labels)
    if written["agreement"] and written["agreement"]["documents"]:
        for behavior, m in written["agreement"]["behaviors"].items():
            auc = "n/a" if m["roc_auc"] is None else f"{m['roc_auc']:.3f}"
            print(f"{behavior:18s} ROC-AUC {auc} ({m['positives']} positives of {written['agreement']['documents']})")
    for what in written["not_drawn"]:
        print(f"not drawn: {what}", file=sys.stderr)
    print(f"report: {written['index']}")
    return 0


def _cmd_audit(args) -> int:
    from curate.stages import audit

    results = audit(_existing_folder(args))
    for stage in results:
        dropped = ", ".join(f"{k} {v}" for k, v in stage.dropped.items() if v) or "none"
        counts = ", ".join(f"{k} {v}" for k, v in stage.counts.items())
        print(f"{stage.stage:7s} {'OK' if not stage.problems else 'MISMATCH'}: {counts}; dropped: {dropped}")
        for problem in stage.problems:
            print(f"  {problem}")
    return 1 if any(stage.problems for stage in results) else 0


def _cmd_sample(args) -> int:
    from curate.sample import sample

    layout = _layout(args)
    stats = sample(_inputs(args), layout, model_from_options(SampleConfig, args), seed=args.seed)
    print(f"{stats['documents_out']} of {stats['documents_in']} documents ({stats['near_duplicates_skipped']} "
          f"near-duplicates skipped) in {layout.sample_file}")
    return _report_errors(stats["file_errors"])


def _cmd_label(args) -> int:
    from curate.label import label

    layout = _layout(args)
    cfg = model_from_options(LabelConfig, args)
    sample = Path(args.sample) if args.sample else layout.sample_file
    if not sample.is_file():
        raise FileNotFoundError(f"{sample}: no sample to label (give a sample file, or run `curate sample --out {args.out}`)")
    if args.dry_run:
        from curate.label import dry_run

        print(dry_run(sample, layout, cfg))
        if args.executor == "slurm":
            from curate.cluster import label_executor
            from curate.executors import sbatch_script

            print("# the sbatch script of the label task\n"
                  + sbatch_script(label_executor(sample, layout, cfg, _site_settings(args), ask_partition=False)))
        return 0
    if args.executor == "slurm":
        from curate.cluster import submit_label

        return _print_submitted(submit_label(sample, layout, cfg, _site_settings(args)), args.out)
    stats = label(sample, layout, cfg)
    if stats["skipped"]:
        print(f"skipped: labels in {layout.labels_file} are current")
    run = stats["this_run"]
    print(f"{stats['documents']} documents, {stats['documents_labeled']} fully labeled, parse failures "
          f"{stats['parse_failure_rate']:.1%}, {stats['prompt_tokens_per_document']:.0f} prompt tokens/document; "
          f"this run {run['documents']} documents in {run['seconds']:.1f}s; labels in {layout.labels_file}")
    if stats["quotes"]["returned"]:
        print(f"quotes: {stats['quotes']['kept']} kept as evidence, {stats['quotes']['invented']} of "
              f"{stats['quotes']['returned']} invented (not in the document)")
    return 0


def _label_done(args) -> str:
    from curate.inference import documents_done
    from curate.io import count_rows
    from curate.label import STAGE, WORK_DIR

    layout = _layout(args)
    sample = args.sample or layout.sample_file
    return f"{documents_done(layout.logs(STAGE) / WORK_DIR)} of {count_rows(str(sample))} documents labeled"


def _cmd_rewrite(args) -> int:
    from curate.rewrite import dry_run, rewrite

    layout = _layout(args)
    if not layout.root.is_dir():
        raise FileNotFoundError(f"{args.out}: no such output folder")
    mixes = {"mixes": [m.strip() for m in args.mixes.split(",")]} if args.mixes else {}
    cfg = model_from_options(RewriteConfig, args, **mixes)
    if args.dry_run:
        print(dry_run(layout, cfg))
        return 0
    if args.executor == "slurm":
        from curate.cluster import submit_rewrite

        return _print_submitted(submit_rewrite(layout, cfg, _site_settings(args)), args.out)
    stats = rewrite(layout, cfg, name=args.name)
    if stats["skipped"]:
        print(f"skipped: the rewrites in {', '.join(m['folder'] for m in stats['mixes'].values())} are current")
    run = stats["this_run"]
    print(f"{stats['documents']} documents, {stats['documents_rewritten']} rewritten, parse failures "
          f"{stats['parse_failures']} ({stats['parse_failures_cut_short']} cut short by max_tokens), request errors "
          f"{stats['request_errors']}, {stats['prompt_tokens_per_document']:.0f} prompt / "
          f"{stats['completion_tokens_per_document']:.0f} completion tokens per document; this run "
          f"{run['documents']} documents in {run['seconds']:.1f}s")
    for mix, made in stats["mixes"].items():
        shares = ", ".join(f"{b} {_percent(s['original'])} -> {_percent(s['rewritten'])}"
                           for b, s in made["expected_behavior_share"].items())
        print(f"{mix} -> {made['folder']}: expected behavior share, original -> rewritten: {shares}")
    return 0


def _percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _cmd_bootstrap(args) -> int:
    from curate.bootstrap import bootstrap, metrics_table

    job = load_job(args.job)
    if job.bootstrap is None:
        raise JobError(f"{args.job}: no 'bootstrap' section")
    result = bootstrap(job)
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
    from curate.card import fmt_auc
    from curate.label import eval_labels

    result = eval_labels(args.labels, args.reference)
    print(f"{result['documents_in_both']} documents in both files")
    for behavior, m in result["behaviors"].items():
        rho = "n/a" if m["spearman"] is None else f"{m['spearman']:+.3f}"
        aucs = "  ".join(f"{name} {fmt_auc(m[key])}" for name, key in (
            ("ROC-AUC", "roc_auc"), ("length-matched", "length_matched_roc_auc"), ("length only", "length_only_roc_auc")))
        print(f"{behavior:18s} Spearman {rho}  F1(count>0) {m['f1']:.3f}  P {m['precision']:.3f}  R {m['recall']:.3f}"
              f"  {aucs}  (n={m['documents']})")
    if args.json:
        from curate.io import write_json

        write_json(result, args.json)
    return 0


def _add_executor(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--executor", choices=["local", "slurm"], default="local",
                        help="run here, or submit Slurm jobs and return (follow them with `curate status OUT`)")
    parser.add_argument("--job", default=None, help="with --executor slurm: a job file whose `slurm` section "
                                                    "holds the site settings (partition, per-stage resources, ...)")


def _add_inputs(parser: argparse.ArgumentParser, what: str = "Parquet/JSONL files or folders") -> None:
    parser.add_argument("inputs", nargs="+", help=what)
    parser.add_argument("--glob", default=None, help="glob inside input folders, e.g. '**/*.parquet'")


def _add_out(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (laid out like a job's output_dir; "
                                                     "the stages run by hand share it)")
    _add_data_dir(parser)


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None, help="where the data outputs are (scores, filter decisions, "
                                                         "mixes, exports): a folder or a URL (default: the output "
                                                         "folder); credentials come from the environment")


def _layout(args) -> Layout:
    """The output folder of a stage command (its data outputs in --data-dir when given)."""
    return Layout(args.out, getattr(args, "data_dir", None))


def _add_seed(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (default: 0)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="curate", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, and tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run a job file: (sample -> label ->) train -> score -> filters -> mix -> report, "
                                   "skipping stages whose output is current")
    p.add_argument("job", help="job YAML file, e.g. jobs/dryrun.yaml")
    p.add_argument("--executor", choices=["local", "slurm"], default=None,
                   help="run here, or submit the chain of Slurm array jobs and return (default: the job's `executor`)")
    p.add_argument("--dry-run", action="store_true", help="with the slurm executor: print the sbatch script of "
                                                          "each task of the chain instead of submitting")
    p.set_defaults(func=_cmd_run, done=_run_done)

    p = sub.add_parser("status", help="which stages of an output folder finished, and its Slurm jobs' progress")
    p.add_argument("output_dir", help="the job's output_dir (or a stage command's --out)")
    _add_data_dir(p)
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("sample", help="a seeded sample of documents to label, near-duplicates removed")
    _add_inputs(p)
    _add_out(p)
    _add_seed(p)
    add_model_options(p, SampleConfig)
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("label", help="label a sample with an LLM (datatrove inference: vllm or an endpoint)")
    p.add_argument("sample", nargs="?", default=None, help="sample Parquet file (default: OUT/sample/sample.parquet)")
    _add_out(p)
    add_model_options(p, LabelConfig)
    p.add_argument("--dry-run", action="store_true",
                   help="print the `vllm serve` command line and the first document's request; start nothing")
    _add_executor(p)
    p.set_defaults(func=_cmd_label, done=_label_done)

    p = sub.add_parser("rewrite", help="rewrite the documents of OUT's mixes with an LLM as question / thought / "
                                       "answer (OUT/rewrite: data/, stats.json, card)")
    _add_out(p)
    p.add_argument("--mixes", default=None, help="comma-separated mix folders of OUT to rewrite, e.g. mix,control "
                                                 "(default: mix)")
    p.add_argument("--name", default=None, help="the name in the cards (default: the output folder's name)")
    add_model_options(p, RewriteConfig, skip=("mixes",))
    p.add_argument("--dry-run", action="store_true",
                   help="print the `vllm serve` command line and the first document's request; start nothing")
    _add_executor(p)
    p.set_defaults(func=_cmd_rewrite)

    p = sub.add_parser("eval-labels", help="agreement of a labels file with reference labels, per behavior")
    p.add_argument("labels", help="labels Parquet file")
    p.add_argument("--reference", required=True, help="reference labels, e.g. ../shared/labels/gold.parquet")
    p.add_argument("--json", default=None, help="also write the agreement as JSON here")
    p.set_defaults(func=_cmd_eval_labels)

    p = sub.add_parser("train", help="distil a labels file into the fastText behavior classifier (OUT/classifier)")
    p.add_argument("labels", help="labels Parquet file")
    p.add_argument("out", help="output folder (the model and its card go to OUT/classifier/)")
    _add_seed(p)
    add_model_options(p, TrainConfig, skip=("labels",))
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("score", help="score input shards with a classifier (datatrove, local or Slurm executor)")
    _add_inputs(p)
    _add_out(p)
    p.add_argument("--model", default=None, help="classifier model.bin (default: OUT/classifier/model.bin)")
    add_model_options(p, ScoreConfig)
    _add_executor(p)
    p.set_defaults(func=_cmd_score, done=_score_done)

    p = sub.add_parser("mix", help="a token-budgeted mix of the scored inputs (OUT/mix: data/, stats.json, card)")
    _add_inputs(p, "the Parquet/JSONL files or folders that were scored into OUT/scores")
    _add_out(p)
    _add_seed(p)
    p.add_argument("--name", default=None, help="the mix's name in its card (default: the output folder's name)")
    p.add_argument("--no-filters", action="store_true",
                   help="ignore the decisions of `curate filter` in OUT/filters (used when made from these scores)")
    add_model_options(p, MixConfig)
    p.set_defaults(func=_cmd_mix)

    p = sub.add_parser("export", help="every copy of a mix as its own document, shuffled, in the formats trainers "
                                      "read (OUT/export/<mix>/<format>)")
    p.add_argument("mix_dirs", nargs="+", metavar="MIX_DIR", help="mix folders (e.g. OUT/mix)")
    _add_out(p)
    _add_seed(p)
    p.add_argument("--format", dest="formats", action="append", choices=["parquet", "jsonl", "tokens"],
                   help="parquet (datasets), jsonl (Megatron-LM), tokens (datatrove/nanotron); repeatable "
                        "(default: parquet)")
    p.add_argument("--name", default=None, help="the export's name in its card (default: the output folder's name)")
    add_model_options(p, ExportConfig, skip=("formats", "mixes", "seed"))
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("filter", help="decontaminate against evaluation sets and drop near-duplicates (decisions only)")
    _add_inputs(p, "the Parquet/JSONL files or folders that were scored into OUT/scores")
    _add_out(p)
    p.add_argument("--eval", action="append", default=[], help="evaluation set (Parquet/JSONL), repeatable")
    p.add_argument("--eval-fields", default="text", help="comma-separated text columns of the evaluation sets "
                                                         "(default: text)")
    p.add_argument("--eval-id-field", default=None, help="column naming an item (default: its row number)")
    p.add_argument("--ngram", type=int, default=13, help="shared n-gram length that marks contamination (default: 13)")
    p.add_argument("--tasks", type=int, default=2, help="ranks of the datatrove dedup backend (default: 2)")
    p.add_argument("--workers", type=int, default=2, help="ranks run at once by that backend (default: 2)")
    add_model_options(p, DedupConfig, rename={"enabled": "dedup"})
    p.set_defaults(func=_cmd_filter)

    p = sub.add_parser("report", help="plots and an HTML page of an output folder (OUT/report)")
    p.add_argument("output_dir", help="a job's output_dir (or a stage command's --out)")
    p.add_argument("--labels", default=None, help="labels file: plot the classifier's agreement with it")
    p.add_argument("--name", default=None, help="title (default: the folder's name)")
    _add_data_dir(p)
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("bootstrap", help="rounds of score the pool -> pick uncertain/top documents -> label -> retrain")
    p.add_argument("job", help="job YAML file with label, train.labels and bootstrap sections")
    p.set_defaults(func=_cmd_bootstrap, done=_bootstrap_done)

    p = sub.add_parser("audit", help="check that every document is accounted for in every stage of an output folder")
    p.add_argument("output_dir", help="a job's output_dir (or a stage command's --out)")
    _add_data_dir(p)
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
    except (*USER_ERRORS, RunStopped) as e:
        if args.verbose:
            raise
        message = (str(e).strip().splitlines() or [type(e).__name__])[0]
        print(f"error: {message}", file=sys.stderr)
        return 1 if isinstance(e, RunStopped) else 2


if __name__ == "__main__":
    sys.exit(main())
