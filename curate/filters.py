"""The filter stage between score and mix: decontamination, then near-duplicate removal.

Writes its decisions, never a copy of the corpus: `OUT/filters/drops.parquet` (id, reason, detail;
one row per document kept out of the mix) and `OUT/logs/filters/stats.json` (counts, clusters,
which benchmark items matched which documents). Reasons: `contamination` (detail: the matched items) and `near_duplicate`
(detail: the id of the cluster member kept). A contaminated document is never the kept member.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pyarrow as pa

from curate import decontaminate, dedup
from curate.config import FiltersConfig
from curate.io import Dropped, iter_readable, read_json, read_table, write_json, write_parquet
from curate.layout import Layout, recorded_fingerprint
from curate.readers import OpenWebMathReader
from curate.schema import BEHAVIOR_SCORE, CONTAMINATION, DETAIL, DROPS_SCHEMA, ID, NEAR_DUPLICATE, REASON, TEXT
from curate.score import STAGE as SCORE_STAGE, load_scores

STAGE, DATATROVE_DIR = "filters", "minhash"


def iter_texts(files: list[str]) -> Iterator[tuple[str, str]]:
    """(id, text) of every readable document, first occurrence of each id only. Unreadable rows and
    files are skipped here: the score stage reports them."""
    seen: set[str] = set()
    for _, _, doc in iter_readable(files, on_error=lambda *_: None):
        if not isinstance(doc, Dropped) and doc[ID] not in seen:
            seen.add(doc[ID])
            yield doc[ID], doc[TEXT]


def _datatrove_clusters(files: list[str], work: Path, cfg: FiltersConfig, tasks: int, workers: int,
                        make_executor) -> list[list[str]]:
    if work.exists():
        import shutil

        shutil.rmtree(work)
    make_executor = make_executor or dedup.local_executor_factory(work / "logs", workers)
    reader = OpenWebMathReader(files, errors_folder=str(work / "errors"))
    executors = dedup.build_minhash_executors(reader, work, cfg.dedup, tasks, make_executor)
    executors[-1].run()
    return dedup.read_clusters(work)


def run_filters(files: list[str], layout: Layout, cfg: FiltersConfig, tasks: int = 1, workers: int = 1,
                fingerprint: str | None = None, make_executor=None) -> dict:
    """Decide which documents of the scored input stay out of the mix; write the drops file and the
    stats (the report); return the report.

    `tasks`/`workers`/`make_executor` apply to the datatrove dedup backend (default: local executors)."""
    decont = cfg.decontaminate
    index = decontaminate.build_index(decont.eval_sets, decont.ngram) if decont.eval_sets else None
    scores_table = load_scores(layout.scores_dir)
    scores = dict(zip(scores_table.column(ID).to_pylist(), scores_table.column(BEHAVIOR_SCORE).to_pylist()))
    drops: dict[str, tuple[str, str]] = {}
    report: dict = {"documents": len(scores), "dropped": {CONTAMINATION: 0, NEAR_DUPLICATE: 0}}

    if index is not None:
        found = decontaminate.find_contamination(iter_texts(files), index, total=len(scores))
        for match in found:
            drops[match["document"]] = (CONTAMINATION, decontaminate.describe(match["items"]))
        report[CONTAMINATION] = decontaminate.contamination_report(index, found)

    if cfg.dedup.enabled:
        if cfg.dedup.backend == "datatrove":
            clusters = _datatrove_clusters(files, layout.logs(STAGE) / DATATROVE_DIR, cfg, tasks, workers, make_executor)
        else:
            clusters = dedup.near_duplicate_clusters(iter_texts(files), cfg.dedup, total=len(scores))
        kept_by_dropped = dedup.keep_best(clusters, scores, exclude=set(drops))
        for doc_id, kept in kept_by_dropped.items():
            drops[doc_id] = (NEAR_DUPLICATE, kept)
        bands, rows = dedup.lsh_shape(cfg.dedup)
        report[NEAR_DUPLICATE] = {"settings": {**cfg.dedup.model_dump(), "lsh_bands": bands, "lsh_rows": rows},
                                  **dedup.cluster_sizes(clusters)}

    for reason, _ in drops.values():
        report["dropped"][reason] += 1
    rows = [{ID: doc_id, REASON: reason, DETAIL: detail} for doc_id, (reason, detail) in sorted(drops.items())]
    write_parquet(pa.Table.from_pylist(rows, schema=DROPS_SCHEMA), layout.drops_file)
    report["fingerprint"] = fingerprint
    report["scores_fingerprint"] = recorded_fingerprint(layout.stats(SCORE_STAGE))
    write_json(report, layout.stats(STAGE))
    return report


def read_drops(layout: Layout) -> dict[str, str]:
    """{id: reason} of the documents a filter run kept out of the mix."""
    table = read_table(layout.drops_file, columns=[ID, REASON])
    return dict(zip(table.column(ID).to_pylist(), table.column(REASON).to_pylist()))


def current_drops(layout: Layout) -> dict[str, str] | None:
    """The filter decisions of an output folder when they were made from its current scores, else None."""
    stats = layout.stats(STAGE)
    if not layout.drops_file.exists() or not stats.exists():
        return None
    made_from = read_json(stats).get("scores_fingerprint")
    return read_drops(layout) if made_from and made_from == recorded_fingerprint(layout.stats(SCORE_STAGE)) else None
