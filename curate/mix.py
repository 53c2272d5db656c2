"""Turn scores into a training mix for a token budget and write it as Parquet shards.

Pass 1 reads only the attribute shards (ids, scores, token counts) with dask and decides how many
copies of each document go into the mix. Pass 2 streams the input files, joins the text back by
id, and writes bounded, zstd-compressed shards with one fixed schema.

Methods:
- threshold: documents with `behavior_score >= threshold`; with a budget, fitted to it (top
  scores first when over, uniform repetition up to the cap when under).
- top_k: the highest-scoring documents until the budget is filled.
- proportional: copies proportional to `behavior_score ** (1 / temperature)`, at most
  `max_repeats` each, scaled to the budget (stochastic rounding, seeded per document).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.config import MixConfig
from curate.executors import DaskCluster
from curate.io import Dropped, atomic_path, iter_readable, read_json, write_json
from curate.layout import DATA_DIR, STATS_FILE, Layout
from curate.progress import Progress
from curate.score import STAGE as SCORE_STAGE, load_scores
from curate.schema import (
    BEHAVIOR_SCORE, ID, MIX_SCHEMA, N_TOKENS, PROB_COLUMNS, REPEATS, SCORE_COLUMNS, TEXT, URL, WEIGHT,
)

BUDGET_TOLERANCE = 0.001  # the fill stops once within 0.1% below the budget
MIN_WEIGHT = 1e-9  # weights below this count as zero (keeps the scale finite)
PROB_BUCKETS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
SHARD_PREFIX = "part-"


class MixError(ValueError):
    """A mix that cannot be made as configured."""


def seeded_uniform(ids: list[str], seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per id, fixed by the seed."""
    return np.array(
        [int.from_bytes(hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest(), "big") / 2**64 for i in ids]
    )


def _fill_proportional(weights, tokens, budget, cap, u) -> tuple[np.ndarray, float]:
    """Copies `min(cap, floor(alpha * w + u))` with alpha the largest scale under the budget, then
    one more copy for documents next in line while they still fit. Returns (repeats, alpha)."""
    weights = np.where(weights < MIN_WEIGHT, 0.0, weights)

    def repeats_at(alpha: float) -> np.ndarray:
        return np.minimum(cap, np.floor(np.minimum(alpha * weights, cap + 1) + u)).astype(np.int64)

    positive = weights > 0
    if not positive.any():
        return np.zeros(len(weights), dtype=np.int64), 0.0
    lo, hi = 0.0, (cap + 1) / weights[positive].min()
    if (repeats_at(hi) * tokens).sum() <= budget:
        return repeats_at(hi), hi
    for _ in range(100):
        mid = (lo + hi) / 2
        if (repeats_at(mid) * tokens).sum() <= budget:
            lo = mid
        else:
            hi = mid
    repeats = repeats_at(lo)
    total = int((repeats * tokens).sum())
    room = positive & (repeats < cap)
    next_alpha = np.full(len(weights), np.inf)
    next_alpha[room] = (repeats[room] + 1 - u[room]) / weights[room]
    for i in np.argsort(next_alpha, kind="stable"):
        if total >= budget * (1 - BUDGET_TOLERANCE) or not np.isfinite(next_alpha[i]):
            break
        if total + tokens[i] <= budget:
            repeats[i] += 1
            total += int(tokens[i])
    return repeats, lo


def _fill_top(scores, tokens, budget, eligible) -> np.ndarray:
    """One copy of the highest-scoring eligible documents while they fit in the budget."""
    repeats = np.zeros(len(scores), dtype=np.int64)
    total = 0
    for i in np.argsort(-scores, kind="stable"):
        if total >= budget * (1 - BUDGET_TOLERANCE):
            break
        if eligible[i] and total + tokens[i] <= budget:
            repeats[i] = 1
            total += int(tokens[i])
    return repeats


def choose_repeats(ids: list[str], scores: np.ndarray, tokens: np.ndarray, cfg: MixConfig, seed: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Copies of each document in the mix and its weight (expected copies before rounding and cap)."""
    scores = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    tokens = np.asarray(tokens, dtype=np.int64)
    budget = cfg.token_budget
    if cfg.method in ("top_k", "proportional") and budget is None:
        raise MixError(f"mix method '{cfg.method}' needs mix.token_budget")
    if cfg.method == "top_k":
        repeats = _fill_top(scores, tokens, budget, np.ones(len(scores), dtype=bool))
        return repeats, repeats.astype(np.float64)
    if cfg.method == "threshold":
        eligible = scores >= cfg.threshold
        if budget is None:
            repeats = eligible.astype(np.int64)
            return repeats, repeats.astype(np.float64)
        if (tokens * eligible).sum() >= budget:
            repeats = _fill_top(scores, tokens, budget, eligible)
            return repeats, repeats.astype(np.float64)
        weights = eligible.astype(np.float64)
    else:
        weights = scores ** (1.0 / cfg.temperature)
    repeats, alpha = _fill_proportional(weights, tokens, budget, cfg.max_repeats, seeded_uniform(ids, seed))
    return repeats, alpha * weights


def _bucket_tokens(probs: np.ndarray, tokens: np.ndarray) -> dict:
    edges = np.array(PROB_BUCKETS)
    which = np.clip(np.searchsorted(edges, probs, side="right") - 1, 0, len(edges) - 2)
    return {f"{edges[k]:.2f}-{edges[k + 1]:.2f}": int(tokens[which == k].sum()) for k in range(len(edges) - 1)}


def mix_stats(table: pa.Table, repeats: np.ndarray, cfg: MixConfig, dropped: dict) -> dict:
    """Documents in/out, tokens per behavior-probability bucket before and after, mean scores."""
    tokens = table.column(N_TOKENS).to_numpy()
    out_tokens = tokens * repeats
    kept = repeats > 0
    stats = {
        "method": cfg.model_dump(),
        "documents_in": table.num_rows,
        "documents_out": int(kept.sum()),
        "copies_out": int(repeats.sum()),
        "dropped": dropped,
        "tokens_in": int(tokens.sum()),
        "tokens_out": int(out_tokens.sum()),
        "token_budget": cfg.token_budget,
        "budget_error": (float(out_tokens.sum() / cfg.token_budget - 1) if cfg.token_budget else None),
        "max_repeats_used": int(repeats.max()) if len(repeats) else 0,
        "tokens_by_bucket": {},
        "mean_scores_in": {},
        "mean_scores_out_token_weighted": {},
    }
    for col in SCORE_COLUMNS:
        values = table.column(col).to_numpy().astype(np.float64)
        stats["mean_scores_in"][col] = float(values.mean()) if len(values) else None
        stats["mean_scores_out_token_weighted"][col] = (
            float((values * out_tokens).sum() / out_tokens.sum()) if out_tokens.sum() else None
        )
        stats["tokens_by_bucket"][col] = {"in": _bucket_tokens(values, tokens), "out": _bucket_tokens(values, out_tokens)}
    return stats


class ShardWriter:
    """Writes rows of MIX_SCHEMA into `part-NNNNN.parquet` files of at most `shard_rows` rows each,
    each written atomically."""

    def __init__(self, out_dir: Path, shard_rows: int):
        self.out_dir, self.shard_rows = out_dir, shard_rows
        self.rows: list[dict] = []
        self.paths: list[str] = []

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.shard_rows:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        path = self.out_dir / f"{SHARD_PREFIX}{len(self.paths):05d}.parquet"
        with atomic_path(path) as tmp:
            pq.write_table(pa.Table.from_pylist(self.rows, schema=MIX_SCHEMA), tmp, compression="zstd")
        self.paths.append(str(path))
        self.rows = []


def _shuffled_copies(rows_by_shard: list[list[dict]], seed: int):
    rng = np.random.default_rng(seed)
    for rows in rows_by_shard:
        for k in rng.permutation(len(rows)):
            yield rows[k]


def write_mix(input_files: list[str], selected: dict[str, dict], data_dir: Path, cfg: MixConfig, seed: int) -> dict:
    """Pass 2: stream the input, join selected documents by id, write shards. Returns counts."""
    for old in data_dir.glob(f"{SHARD_PREFIX}*.parquet"):
        old.unlink()
    writer = ShardWriter(data_dir, cfg.shard_rows)
    n_copies = sum(r[REPEATS] for r in selected.values())
    n_shards = max(1, math.ceil(n_copies / cfg.shard_rows))
    buckets: list[list[dict]] = [[] for _ in range(n_shards)] if cfg.materialize else []
    progress = Progress("mix write", total=len(selected))
    file_errors: list[str] = []
    for _, _, doc in iter_readable(input_files, on_error=lambda _, error, __: file_errors.append(error)):
        if isinstance(doc, Dropped) or doc[ID] not in selected:
            continue
        row = {TEXT: doc[TEXT], URL: doc[URL], **selected.pop(doc[ID])}
        progress.update()
        if not cfg.materialize:
            writer.add(row)
            continue
        for copy in range(row[REPEATS]):
            key = seeded_uniform([f"{row[ID]}#{copy}"], seed)[0]
            buckets[int(key * n_shards)].append(row)
    for row in _shuffled_copies(buckets, seed):
        writer.add(row)
    writer.flush()
    progress.finish()
    return {"shards": [Path(p).name for p in writer.paths], "missing_from_input": len(selected),
            "input_file_errors": file_errors}


def unscored_inputs(files: list[str], layout: Layout) -> list[str]:
    """Input files the score stage of `layout` did not score (all of them when it has not run)."""
    stats_path = layout.stats(SCORE_STAGE)
    scored = set(read_json(stats_path)["input_files"]) if stats_path.exists() else set()
    return [f for f in files if f not in scored]


class Eligible:
    """The scored documents a mix may take: the first row of each id, minus those the filters exclude
    (counted by reason)."""

    def __init__(self, table: pa.Table, exclude: dict[str, str] | None):
        self.table = table
        self.ids = table.column(ID).to_pylist()
        first: dict[str, int] = {}
        for i, doc_id in enumerate(self.ids):
            first.setdefault(doc_id, i)
        self.unique = np.zeros(len(self.ids), dtype=bool)
        self.unique[list(first.values())] = True
        exclude = exclude or {}
        self.excluded = np.array([doc_id in exclude for doc_id in self.ids], dtype=bool)
        self.rows = np.flatnonzero(self.unique & ~self.excluded)
        self.dropped = {"duplicate_id": int((~self.unique).sum()), **{r: 0 for r in sorted(set(exclude.values()))}}
        for i in np.flatnonzero(self.unique & self.excluded):
            self.dropped[exclude[self.ids[i]]] += 1

    def column(self, name: str) -> np.ndarray:
        return self.table.column(name).to_numpy()

    def dropped_with(self, repeats: np.ndarray) -> dict[str, int]:
        """Documents left out, by reason, for a choice of copies."""
        return {**self.dropped, "not_selected": int(((repeats == 0) & self.unique & ~self.excluded).sum())}


def write_dataset(files: list[str], eligible: Eligible, repeats: np.ndarray, weights: np.ndarray, out_dir: Path,
                  cfg: MixConfig, seed: int, extra: dict) -> dict:
    """Write a mix folder (`data/` shards joined with the text, `stats.json`) for a choice of copies;
    return its stats."""
    chosen = np.flatnonzero(repeats)
    selected = {
        row[ID]: {**row, WEIGHT: float(weights[i]), REPEATS: int(repeats[i])}
        for i, row in zip(chosen, eligible.table.select([ID, *SCORE_COLUMNS, N_TOKENS]).take(chosen).to_pylist())
    }
    written = write_mix(files, selected, out_dir / DATA_DIR, cfg, seed)
    stats = mix_stats(eligible.table, repeats, cfg, eligible.dropped_with(repeats))
    stats.update(written)
    stats["materialized"] = cfg.materialize
    stats["expected_behavior_share"] = expected_shares(eligible, repeats)
    stats.update(extra)
    write_json(stats, out_dir / STATS_FILE)
    return stats


def expected_shares(eligible: Eligible, repeats: np.ndarray) -> dict:
    """Per behavior, the share of tokens expected to show it (sum of tokens x probability over sum of
    tokens, from the classifier's calibrated probabilities), in the eligible corpus and in the mix,
    and their ratio (the enrichment)."""
    tokens = eligible.column(N_TOKENS).astype(np.float64)
    corpus = np.zeros(len(tokens))
    corpus[eligible.rows] = tokens[eligible.rows]
    mixed = tokens * repeats
    shares = {}
    for col in PROB_COLUMNS:
        p = eligible.column(col).astype(np.float64)
        before = float((corpus * p).sum() / corpus.sum()) if corpus.sum() else None
        after = float((mixed * p).sum() / mixed.sum()) if mixed.sum() else None
        shares[col.removeprefix("p_")] = {"corpus": before, "mix": after,
                                          "enrichment": after / before if before and after is not None else None}
    return shares


def check_inputs_scored(files: list[str], layout: Layout) -> None:
    """Refuse inputs the score stage of `layout` did not score (naming how many and one of them)."""
    unscored = unscored_inputs(files, layout)
    if unscored:
        raise MixError(f"{len(unscored)} of {len(files)} input files were not scored in {layout.scores_dir} "
                       f"(e.g. {unscored[0]}): score them first, or give the inputs that were scored")


def method_comparison(eligible: Eligible, cfg: MixConfig, seed: int) -> dict:
    """Expected enrichment per behavior of each mixing method at this mix's token budget, on the
    run's own scores (what the card shows to choose a method by)."""
    if cfg.token_budget is None:
        return {}
    ids = [eligible.ids[i] for i in eligible.rows]
    scores, tokens = eligible.column(BEHAVIOR_SCORE)[eligible.rows], eligible.column(N_TOKENS)[eligible.rows]
    variants = {"top_k": {"method": "top_k"}, "threshold": {"method": "threshold"},
                "proportional (temperature 1)": {"method": "proportional", "temperature": 1.0},
                "proportional (temperature 0.25)": {"method": "proportional", "temperature": 0.25}}
    result = {}
    for name, change in variants.items():
        repeats = np.zeros(len(eligible.ids), dtype=np.int64)
        repeats[eligible.rows], _ = choose_repeats(ids, scores, tokens, cfg.model_copy(update=change), seed)
        shares = expected_shares(eligible, repeats)
        result[name] = {"tokens": int((repeats * eligible.column(N_TOKENS)).sum()),
                        "documents": int((repeats > 0).sum()),
                        "enrichment": {b: s["enrichment"] for b, s in shares.items()}}
    return result


def mix(files: list[str], layout: Layout, cfg: MixConfig, seed: int = 0, fingerprint: str | None = None,
        dask_cluster: DaskCluster | None = None, exclude: dict[str, str] | None = None, name: str | None = None
        ) -> dict:
    """Make the mix of `layout` from its scores: choose copies, write `mix/data/` shards, `mix/stats.json`
    and the dataset card `mix/README.md`; return the stats.

    `files` must be the inputs the score stage scored (text is joined back from them by id).
    `exclude` maps ids to keep out of the mix to a reason (e.g. the filter stage's `near_duplicate`,
    `contamination`); they take no budget and are counted under `dropped[reason]`."""
    from curate.card import write_cards

    check_inputs_scored(files, layout)
    eligible = Eligible(load_scores(layout.scores_dir, dask_cluster), exclude)
    repeats, weights = np.zeros(len(eligible.ids), dtype=np.int64), np.zeros(len(eligible.ids))
    rows = eligible.rows
    repeats[rows], weights[rows] = choose_repeats([eligible.ids[i] for i in rows], eligible.column(BEHAVIOR_SCORE)[rows],
                                                  eligible.column(N_TOKENS)[rows], cfg, seed)
    stats = write_dataset(files, eligible, repeats, weights, layout.mix_dir(), cfg, seed,
                          {"kind": "mix", "name": name or layout.root.resolve().name, "fingerprint": fingerprint,
                           "methods": method_comparison(eligible, cfg, seed)})
    write_cards(layout)
    return stats
