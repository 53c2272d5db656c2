"""`curate bootstrap JOB.yaml`: grow the labels where the classifier needs them, round by round.

Round 0 trains the classifier on the initial labels (`train.labels`). Each round r >= 1 then
1. scores the unlabeled pool with round r-1's classifier (the score stage's datatrove pipeline);
2. picks `per_round` documents not labeled yet: a `uncertain_fraction` share whose probability
   is closest to its behavior's threshold (the card's F1-best one), the rest by highest
   `behavior_score`; a near-duplicate (MinHash, `curate.dedup.signature`) of a labeled or an
   already picked document is passed over;
3. labels them with the job's labeler (`curate.label`, checkpointed);
4. retrains on the initial labels plus every round's new ones, and records the card's
   cross-validated metrics.

Each round's folder OUT/bootstrap/round-NN/ is an output folder of its own (`curate.layout`):
scores/, labels/, classifier/ and logs/ as a job has them, plus selection.parquet,
train_labels.parquet and metrics.json; OUT/bootstrap/metrics.json holds all rounds. A
round whose metrics.json carries its fingerprint (chained from the previous round's) is skipped;
an interrupted round keeps its selection and resumes its labeling from the labeler's checkpoints.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate import label as label_stage, score as score_stage, train as train_stage
from curate.config import Job
from curate.dedup import NearDuplicateIndex
from curate.io import Dropped, file_sha256, iter_readable, list_input_files, read_json, write_json, write_parquet
from curate.labels import as_labels
from curate.layout import Layout, fingerprint_of, input_stamps, is_current
from curate.schema import (
    BEHAVIOR_SCORE, BEHAVIORS, ID, PROB_COLUMNS, SAMPLE_SCHEMA, SCORES_SCHEMA, TEXT,
)

log = logging.getLogger("curate")

BOOTSTRAP_DIR, METRICS_FILE = "bootstrap", "metrics.json"
SELECTION_FILE, SELECTION_STATS, TRAIN_LABELS = "selection.parquet", "selection.json", "train_labels.parquet"
TOP, UNCERTAIN = "top", "uncertain"


def round_layout(out: Path, r: int) -> Layout:
    """The output folder of round `r`."""
    return Layout(out / BOOTSTRAP_DIR / f"round-{r:02d}")


def rankings(ids: list[str], probs: np.ndarray, behavior_score: np.ndarray, thresholds: np.ndarray
             ) -> dict[str, list[str]]:
    """Candidate ids in order of preference: `uncertain` (smallest distance of a behavior's
    probability to its threshold first) and `top` (highest behavior_score first); ties by id."""
    key = np.array(ids, dtype=str)
    distance = np.abs(probs - thresholds[None, :]).min(axis=1)
    return {UNCERTAIN: key[np.lexsort((key, distance))].tolist(), TOP: key[np.lexsort((key, -behavior_score))].tolist()}


def choose(orders: dict[str, list[str]], quotas: dict[str, int], texts: dict[str, str],
           index: NearDuplicateIndex) -> tuple[list[tuple[str, str]], int]:
    """Walk each ranking (top first) taking its quota of ids whose text is in `texts`, skipping ids
    already taken and near-duplicates of the index (labeled texts and the picks so far). Returns
    [(id, reason)] and the number of near-duplicates passed over."""
    picked: list[tuple[str, str]] = []
    taken: set[str] = set()
    near_duplicates = 0
    for reason in (TOP, UNCERTAIN):
        n = 0
        for doc in orders[reason]:
            if n >= quotas[reason] or doc not in texts:
                break
            if doc in taken:
                continue
            if not index.add(doc, texts[doc]):
                near_duplicates += 1
                continue
            picked.append((doc, reason))
            taken.add(doc)
            n += 1
    return picked, near_duplicates


def _pool_documents(files: list[str], wanted: set[str]) -> dict[str, dict]:
    """The pool's documents with the wanted ids (unreadable files were reported by the scoring run)."""
    return {doc[ID]: doc for _, _, doc in iter_readable(files, on_error=lambda *_: None)
            if not isinstance(doc, Dropped) and doc[ID] in wanted}


def select(files: list[str], scores_dir: Path, card: dict, labeled: pa.Table, job: Job) -> tuple[pa.Table, dict]:
    """The round's picks from the scored pool (SAMPLE_SCHEMA rows plus `reason`), and their stats."""
    cfg = job.bootstrap
    shards = score_stage.scored_shards(scores_dir)
    scores = pa.concat_tables(pq.read_table(p) for p in shards) if shards else SCORES_SCHEMA.empty_table()
    labeled_ids = set(labeled[ID].to_pylist())
    keep = np.array([i not in labeled_ids for i in scores[ID].to_pylist()], dtype=bool)
    scores = scores.filter(pa.array(keep))
    ids = scores[ID].to_pylist()
    probs = np.column_stack([scores[c].to_numpy() for c in PROB_COLUMNS]) if ids else np.zeros((0, len(BEHAVIORS)))
    thresholds = np.array([card["thresholds"][b] for b in BEHAVIORS])
    orders = rankings(ids, probs, scores[BEHAVIOR_SCORE].to_numpy(), thresholds)
    n_uncertain = round(cfg.per_round * cfg.uncertain_fraction)
    quotas = {UNCERTAIN: n_uncertain, TOP: cfg.per_round - n_uncertain}
    depth = 4 * cfg.per_round + 8
    while True:  # fetch the texts of the best `depth` candidates; deeper when near-duplicates ate them
        docs = _pool_documents(files, {i for order in orders.values() for i in order[:depth]})
        index = NearDuplicateIndex(cfg.near_dup_threshold)
        for k, text in enumerate(labeled[TEXT].to_pylist()):
            index.add(f"labeled:{k}", text)
        picked, near_duplicates = choose(orders, quotas, {i: d[TEXT] for i, d in docs.items()}, index)
        if len(picked) >= cfg.per_round or depth >= len(ids):
            break
        depth *= 4
    rows = [{**{c: docs[i].get(c) for c in SAMPLE_SCHEMA.names}, "reason": reason} for i, reason in picked]
    table = pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA.append(pa.field("reason", pa.string())))
    stats = {"pool_unlabeled": len(ids), "selected": {r: sum(1 for _, x in picked if x == r) for r in (TOP, UNCERTAIN)},
             "near_duplicates_skipped": near_duplicates, "thresholds": card["thresholds"]}
    return table, stats


def _train_round(labels_path: Path, layout: Layout, job: Job, fingerprint: str) -> dict:
    return train_stage.train(labels_path, layout.classifier_dir, job.train, seed=job.seed, fingerprint=fingerprint)


def _round_metrics(r: int, fingerprint: str, card: dict, n_labeled: int, new: pa.Table | None, extra: dict) -> dict:
    new_counts = {b: new[b].to_pylist() if new is not None else [] for b in BEHAVIORS}
    return {
        "round": r,
        "fingerprint": fingerprint,
        "labeled_documents": n_labeled,
        "usable_documents": card["n_train"],
        "new_documents": 0 if new is None else new.num_rows,
        "new_unparsed": sum(1 for c in new_counts[BEHAVIORS[0]] if c is None),
        "new_positives": {b: sum(1 for c in new_counts[b] if c) for b in BEHAVIORS},
        **extra,
        "cv": card["metrics_on"],
        "metrics": {b: {k: m[k] for k in ("roc_auc", "pr_auc", "f1", "auc_over_length", "positives")}
                    for b, m in card["metrics"].items()},
        "warnings": card["warnings"],
    }


def bootstrap_fingerprints(job: Job, files: list[str]) -> list[str]:
    """Fingerprint of rounds 0..rounds: round 0 of the initial labels and train settings; each later
    one chains the previous with the pool, the selection, labeler, scoring and train settings."""
    stamps = input_stamps(files)
    labeler = label_stage.label_settings(job.label)
    selection = job.bootstrap.model_dump(exclude={"rounds"})
    fingerprints = [fingerprint_of("bootstrap", file_sha256(job.train.labels), job.train.model_dump(),
                                 job.seed)]
    for _ in range(job.bootstrap.rounds):
        fingerprints.append(fingerprint_of(fingerprints[-1], stamps, selection, labeler,
                                         job.score.model_dump(include={"tokenizer", "token_count"}),
                                         job.train.model_dump(), job.seed))
    return fingerprints


def pool_files(job: Job) -> list[str]:
    """The files of the unlabeled pool."""
    return list_input_files(job.bootstrap.pool or job.input.paths, job.input.glob)


def finished_rounds(job: Job) -> list[int]:
    """The rounds whose results are current (a re-run skips them)."""
    fingerprints = bootstrap_fingerprints(job, pool_files(job))
    return [r for r, fingerprint in enumerate(fingerprints)
            if is_current(round_layout(job.out, r).root / METRICS_FILE, fingerprint)]


def bootstrap(job: Job) -> dict:
    """Run round 0 (train on the initial labels) and `bootstrap.rounds` labeling rounds, skipping
    finished ones; write OUT/bootstrap/metrics.json and return {"rounds": [...], "ran": [...], "skipped": [...]}.
    Raises label.LabelingStopped when the labeler stops (a re-run resumes the round)."""
    files = pool_files(job)
    fingerprints = bootstrap_fingerprints(job, files)
    rounds, ran, skipped = [], [], []
    labels_path = Path(job.train.labels)
    for r, fingerprint in enumerate(fingerprints):
        layout = round_layout(job.out, r)
        metrics_path = layout.root / METRICS_FILE
        if is_current(metrics_path, fingerprint):
            skipped.append(r)
            rounds.append(read_json(metrics_path))
            labels_path = layout.root / TRAIN_LABELS if r else labels_path
            continue
        if r == 0:
            card = _train_round(labels_path, layout, job, fingerprint)
            metrics = _round_metrics(0, fingerprint, card, pq.read_metadata(labels_path).num_rows, None, {})
        else:
            previous = round_layout(job.out, r - 1)
            labeled = as_labels(pq.read_table(labels_path))
            selection_path = layout.root / SELECTION_FILE
            if is_current(layout.root / SELECTION_STATS, fingerprint) and selection_path.exists():
                selection_stats = read_json(layout.root / SELECTION_STATS)  # an interrupted round: same picks
            else:
                log.info("bootstrap round %d: scoring the pool (%d files) with %s", r, len(files), previous.model_file)
                summary = score_stage.score(files, previous.model_file, layout, job.score)
                for error in summary["file_errors"]:
                    log.error(error)
                selection, selection_stats = select(files, layout.scores_dir, read_json(previous.card_file),
                                                    labeled, job)
                if not selection.num_rows:
                    raise ValueError(f"bootstrap round {r}: no unlabeled document left in the pool {files}")
                write_parquet(selection, selection_path)
                write_json({"fingerprint": fingerprint, **selection_stats}, layout.root / SELECTION_STATS)
            log.info("bootstrap round %d: labeling %s", r, selection_stats["selected"])
            label_stats = label_stage.label(selection_path, layout, job.label)
            new = as_labels(pq.read_table(layout.labels_file))
            accumulated = pa.concat_tables([labeled, new])
            write_parquet(accumulated, layout.root / TRAIN_LABELS)
            labels_path = layout.root / TRAIN_LABELS
            card = _train_round(labels_path, layout, job, fingerprint)
            extra = {k: selection_stats[k] for k in ("pool_unlabeled", "selected", "near_duplicates_skipped")}
            extra["label_requests"] = label_stats["this_run"]["requests"]
            metrics = _round_metrics(r, fingerprint, card, accumulated.num_rows, new, extra)
        write_json(metrics, metrics_path)
        ran.append(r)
        rounds.append(metrics)
        log.info("bootstrap round %d: %d labeled documents, ROC-AUC %s", r, metrics["labeled_documents"],
                 {b: m["roc_auc"] for b, m in metrics["metrics"].items()})
    write_json({"rounds": rounds}, job.out / BOOTSTRAP_DIR / METRICS_FILE)
    return {"rounds": rounds, "ran": ran, "skipped": skipped}


def metrics_table(rounds: list[dict]) -> str:
    """One line per round: labeled documents, new ones and their positives, cross-validated ROC-AUC per behavior."""
    short = {b: b.split("_")[0][:6] for b in BEHAVIORS}
    head = (f"{'round':>5} {'labeled':>7} {'new':>4} {'new positives':>15}  "
            + " ".join(f"{'AUC ' + short[b]:>11}" for b in BEHAVIORS))
    lines = [head]
    for m in rounds:
        positives = "/".join(str(m["new_positives"][b]) for b in BEHAVIORS)
        aucs = " ".join(f"{'n/a' if m['metrics'][b]['roc_auc'] is None else format(m['metrics'][b]['roc_auc'], '.3f'):>11}"
                        for b in BEHAVIORS)
        lines.append(f"{m['round']:>5} {m['labeled_documents']:>7} {m['new_documents']:>4} {positives:>15}  {aucs}")
    return "\n".join(lines)
