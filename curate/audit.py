"""`curate audit OUTPUT_DIR`: every document accounted for, in every stage.

Input rows are counted independently of the stages (Parquet footers, JSONL lines) and checked
against what the stages report and what their output files hold:

- sample: rows of the input files = documents the sampler saw + rows dropped by reason (checked
  when no input file failed); the sample file holds `documents_out` distinct ids, at most `requested`.
- label: the labels file holds exactly the sampled ids, once each, and labeled + parse failures +
  request errors = documents.
- score: rows of the readable input files (plus rows read from files that failed midway) =
  rows the readers saw = attribute rows written + rows dropped by reason; every rank finished.
- mix: scored rows = documents in the mix + documents dropped by reason, and the mix shards hold
  exactly the documents (or copies, when materialized) that stats.json says.
- rewrite: every selected document of each source mix has exactly one row, rewritten or recorded as
  failed (its error kept); rewritten + parse failures + request errors = documents; the copies are the mix's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from curate.io import count_rows, read_json, read_tables
from curate.layout import STATS_FILE, Layout, dataset_files, location
from curate.schema import ID, REPEATS


@dataclass
class StageAudit:
    """One stage's counts and the checks that failed on them."""

    stage: str
    counts: dict = field(default_factory=dict)
    dropped: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def check(self, what: str, left: int, right: int) -> None:
        if left != right:
            self.problems.append(f"{what}: {left} != {right}")


def parquet_rows(files) -> int:
    """Rows of Parquet files (local or in a store), from their footers."""
    return sum(count_rows(str(f)) for f in files)


def _stat_total(value) -> int:
    return int(value["total"] if isinstance(value, dict) else value)


def _reader_stats(logs: Path) -> tuple[dict, int]:
    """Summed reader counters over the ranks' datatrove stats, and how many ranks reported."""
    totals: dict[str, int] = {}
    ranks = 0
    for f in sorted((logs / "stats").glob("*.json")):
        ranks += 1
        for step in json.loads(f.read_text()):
            if "READER" in step["name"]:
                for key, value in step["stats"].items():
                    totals[key] = totals.get(key, 0) + _stat_total(value)
    return totals, ranks


def audit_score(layout: Layout) -> StageAudit:
    """Input rows = rows the readers saw = attribute rows written + dropped by reason; every rank finished."""
    from curate.score import STAGE, datatrove_logs, file_errors, scored_shards

    result = StageAudit("score")
    stats = read_json(layout.stats(STAGE))
    failed = {e["path"]: e.get("rows_read", 0) for e in file_errors(layout)}
    rows_in = sum(count_rows(f) for f in stats["input_files"] if f not in failed) + sum(failed.values())
    logs = datatrove_logs(layout)
    reader, ranks = _reader_stats(logs)
    written = parquet_rows(scored_shards(layout.scores_dir))
    result.dropped = {k.removeprefix("dropped_"): v for k, v in reader.items() if k.startswith("dropped_")}
    result.counts = {"input_files": len(stats["input_files"]), "failed_files": len(failed), "rows_in": rows_in,
                     "rows_seen": reader.get("rows_seen", 0), "out": written, "ranks_reported": ranks}
    result.check("rows in input files vs rows the readers saw", rows_in, reader.get("rows_seen", 0))
    result.check("rows seen vs written + dropped", reader.get("rows_seen", 0), written + sum(result.dropped.values()))
    result.check("documents read vs attribute rows written", reader.get("documents_in", 0), written)
    completions = len(list((logs / "completions").glob("*")))
    tasks = json.loads((logs / "executor.json").read_text()).get("tasks", completions)
    result.check("ranks completed vs tasks", completions, tasks)
    return result


def _ids(path: Path) -> list[str]:
    return pq.read_table(path, columns=[ID]).column(ID).to_pylist()


def audit_sample(layout: Layout) -> StageAudit:
    """Input rows = seen + dropped by reason (when no file failed); the sample holds distinct ids, as many as stats say."""
    result = StageAudit("sample")
    stats = read_json(layout.stats("sample"))
    ids = _ids(layout.sample_file)
    result.dropped = dict(stats["dropped"])
    result.counts = {"input_files": len(stats["input_files"]), "failed_files": len(stats["file_errors"]),
                     "seen": stats["documents_in"], "out": len(ids), "requested": stats["requested"]}
    if not stats["file_errors"]:  # a file that failed midway was partly read: its row count says nothing
        rows_in = sum(count_rows(f) for f in stats["input_files"])
        result.check("rows in input files vs seen + dropped", rows_in, stats["documents_in"] + sum(result.dropped.values()))
    result.check("sample rows vs documents_out", len(ids), stats["documents_out"])
    result.check("distinct ids vs sample rows", len(set(ids)), len(ids))
    result.check("sample rows over requested", min(len(ids), stats["requested"]), len(ids))
    return result


def audit_labels(layout: Layout) -> StageAudit:
    """Every sampled id labeled exactly once; labeled + parse failures + request errors = documents."""
    result = StageAudit("label")
    stats = read_json(layout.stats("label"))
    labeled = _ids(layout.labels_file)
    sampled = set(_ids(layout.sample_file)) if layout.sample_file.exists() else None
    result.counts = {"documents": len(labeled), "labeled": stats["documents_labeled"]}
    result.dropped = {"parse_failures": stats["parse_failures"], "request_errors": stats["request_errors"]}
    result.check("label rows vs stats documents", len(labeled), stats["documents"])
    result.check("distinct ids vs label rows", len(set(labeled)), len(labeled))
    result.check("documents vs labeled + failed", stats["documents"],
                 stats["documents_labeled"] + stats["parse_failures"] + stats["request_errors"])
    if sampled is not None:
        result.check("sampled ids missing from the labels", len(sampled - set(labeled)), 0)
        result.check("labeled ids not in the sample", len(set(labeled) - sampled), 0)
    return result


def audit_mix(mix_dir: Path, scored_rows: int | None) -> StageAudit:
    """Scored rows = mix input = out + dropped; the shards hold the documents (or copies) stats say."""
    mix_dir = location(mix_dir)
    result = StageAudit(mix_dir.name)
    stats = read_json(mix_dir / STATS_FILE)
    shards = dataset_files(mix_dir)
    rows = parquet_rows(shards)
    copies = sum(read_tables(shards, columns=[REPEATS]).column(REPEATS).to_pylist()) if shards else 0
    result.dropped = dict(stats["dropped"])
    result.counts = {"in": stats["documents_in"], "out": stats["documents_out"], "copies": stats["copies_out"],
                     "rows": rows}
    if scored_rows is not None:
        result.check("scored rows vs mix input", scored_rows, stats["documents_in"])
    result.check("mix input vs out + dropped", stats["documents_in"], stats["documents_out"] + sum(result.dropped.values()))
    if stats["materialized"]:
        result.check("shard rows vs copies", rows, stats["copies_out"])
    else:
        result.check("shard rows vs documents out", rows, stats["documents_out"])
        result.check("repeats in shards vs copies", copies, stats["copies_out"])
    return result


def audit_export(layout: Layout) -> StageAudit:
    """Every export holds each copy of its mix once: rows (Parquet, JSONL) or documents (tokens) =
    the mix's copies, counted from the files themselves."""
    from curate.export import tokenized_files

    result = StageAudit("export")
    stats = read_json(layout.stats("export"))
    for name, made in stats["mixes"].items():
        copies = read_json(location(made["folder"]) / STATS_FILE)["copies_out"]
        result.counts[f"{name} copies"] = copies
        for fmt, info in made["formats"].items():
            folder = location(info["folder"])
            if fmt == "parquet":
                found = parquet_rows(sorted((folder / "data").glob("*.parquet"), key=str))
            elif fmt == "jsonl":
                found = sum(count_rows(str(f)) for f in sorted((folder / "data").glob("*.jsonl"), key=str))
            else:
                found = tokenized_files(folder)["documents"]
            result.check(f"{name} {fmt} documents vs the mix's copies", found, copies)
    return result


def audit_rewrite(layout: Layout) -> StageAudit:
    """Each source mix's selected documents are the rows of its rewrite folder, once each, every row rewritten
    or carrying its error; rewritten + failed = documents; a rewritten row keeps the mix's copies, a failed one
    none, and the copies add up to the folder's stats."""
    from curate.rewrite import STAGE, selected_documents
    from curate.schema import ERROR, QUESTION

    result = StageAudit(STAGE)
    stats = read_json(layout.stats(STAGE))
    result.dropped = {"parse_failures": stats["parse_failures"], "request_errors": stats["request_errors"]}
    result.counts = {"documents": stats["documents"], "rewritten": stats["documents_rewritten"]}
    result.check("documents vs rewritten + failed", stats["documents"],
                 stats["documents_rewritten"] + stats["parse_failures"] + stats["request_errors"])
    for mix, made in stats["mixes"].items():
        selected = selected_documents(Path(made["source_folder"]))
        copies = dict(zip(selected.column(ID).to_pylist(), selected.column(REPEATS).to_pylist()))
        rows = pq.read_table(dataset_files(made["folder"]), columns=[ID, QUESTION, ERROR, REPEATS]).to_pylist()
        ids = [r[ID] for r in rows]
        result.counts[f"{mix} rows"] = len(rows)
        result.check(f"{mix}: rows vs selected documents of {made['source_folder']}", len(rows), len(copies))
        result.check(f"{mix}: distinct ids vs rows", len(set(ids)), len(rows))
        result.check(f"{mix}: selected documents without a row", len(set(copies) - set(ids)), 0)
        result.check(f"{mix}: rows neither rewritten nor with an error",
                     sum(1 for r in rows if (r[ERROR] is None) != (r[QUESTION] is not None)), 0)
        result.check(f"{mix}: rows whose copies are not the mix's (0 when failed)",
                     sum(1 for r in rows if r[REPEATS] != (copies.get(r[ID], 0) if r[ERROR] is None else 0)), 0)
        result.check(f"{mix}: copies in shards vs stats copies_out", sum(r[REPEATS] for r in rows),
                     read_json(Path(made["folder"]) / STATS_FILE)["copies_out"])
    return result
