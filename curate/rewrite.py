"""`curate rewrite`: the selected documents of a mix rewritten by an LLM as question / thought / answer.

Before continued pretraining, the seed paper had its 32B model rewrite the selected documents as a
question, the worked reasoning and the answer. This stage does it for the documents of mix folders
(`OUT/mix`, `OUT/control`), through the inference path of `label` (`curate.inference`: datatrove's
InferenceRunner, vLLM or any endpoint, retries, checkpoints, failure accounting): one request per distinct
document, cut at a line boundary to `max_doc_tokens`, the instruction of `curate.prompts` first and the
document last, the answer a JSON object `{"question", "thought", "answer"}` constrained by a schema.

Each source mix gets a dataset folder in the mix's Hugging Face layout: `OUT/rewrite` for `mix`,
`OUT/rewrite-<name>` for another (`OUT/rewrite-control`), each with `README.md` (card), `stats.json` and
`data/part-NNNNN.parquet` (schema.REWRITE_SCHEMA), one row per selected document. `text` is

    Question: <question>

    Thought: <thought>

    Answer: <answer>

with the rewrite's classifier scores and token count (`tokenizer`, exact), the mix's `weight` and, in
`repeats`, the mix's copies, so that `curate export OUT/rewrite` writes the rewritten mix copy for copy.

Failures (as in `label`): an answer that does not parse keeps null question/thought/answer/text, its error
and the raw answer; a request that failed keeps its error. Either way the row is there with `repeats` 0
(exports leave it out) and counted in the stats; a run with more failed requests than `max_error_rate`
exits non-zero and asks them again when re-run. A killed run resumes from its checkpoints.

After rewriting, the rewritten texts are scored with the output folder's classifier: the stats and the card
give per behavior the expected share of tokens showing it (Σ tokens × copies × probability ÷ Σ tokens ×
copies, as `mix.expected_shares`) of the original documents and of their rewrites, over the documents
rewritten, so that one sees whether rewriting kept the behaviors. Stage statistics (prompt and completion
tokens, parse rate, throughput) go to `OUT/logs/rewrite/stats.json`, checkpoints to `OUT/logs/rewrite/work/`.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa

from curate import inference
from curate.config import RewriteConfig
from curate.errors import RunStopped
from curate.export import read_mix, source_fingerprint
from curate.inference import Answer, Rollout, rollout_of
from curate.io import file_sha256, read_json, read_table, read_tables, write_json, write_parquet, write_text
from curate.layout import (
    DATA_DIR, DATASET_CARD, STATS_FILE, Layout, dataset_files, fingerprint_of, is_current, location,
)
from curate.prompts import (
    REWRITE_FIELDS, REWRITE_INSTRUCTION, build_rewrite_request, parse_rewrite, rewrite_prompt_version,
)
from curate.schema import (
    BEHAVIOR_SCORE, ERROR, ID, MIX_SCHEMA, N_TOKENS, PROB_COLUMNS, PROMPT_VERSION, RAW_RESPONSE,
    REPEATS, REWRITE_SCHEMA, SCORE_COLUMNS, TEXT, URL, WEIGHT,
)

STAGE, WORK_DIR, DOCUMENTS_FILE = "rewrite", "work", "documents.parquet"
TEXT_FORMAT = "Question: {question}\n\nThought: {thought}\n\nAnswer: {answer}"
SHARD_PREFIX = "part-"
SCORE_BATCH = 1000  # rewritten texts per classifier and tokenizer call
DEFAULT_SHARD_ROWS = 50_000
MIX_SUMMARY = ("source_folder", "documents_in", "documents_rewritten", "parse_failures", "request_errors", "copies_in",
               "copies_out", "tokens_in", "tokens_out", "expected_behavior_share")


class RewriteError(ValueError):
    """A rewrite that cannot be made as asked (one-line message)."""


class RewriteStopped(RunStopped):
    """A rewriting run that stopped before the end or was refused for its failures; a re-run goes on."""


def format_text(fields: dict) -> str:
    """A rewrite as one plain text: `Question: ...`, `Thought: ...`, `Answer: ...`, blank lines between."""
    return TEXT_FORMAT.format(**fields)


def rewrite_dir(layout: Layout, mix: str) -> Path:
    """The dataset folder of the rewrite of mix `mix`: `OUT/rewrite` for `mix`, else `OUT/rewrite-<mix>`."""
    return layout.mix_dir(STAGE if mix == "mix" else f"{STAGE}-{mix}")


# ---------------------------------------------------------------------------------------------
# Settings and fingerprints


def request_settings(cfg: RewriteConfig) -> dict:
    return inference.request_settings(cfg, inference.structured_output(cfg))


def prompt_version(cfg: RewriteConfig) -> str:
    return rewrite_prompt_version(request_settings(cfg))


def rewrite_settings(cfg: RewriteConfig) -> dict:
    """What the answers depend on besides the documents (server_args are left out, so that tuning memory
    flags keeps the checkpoints; tasks and records_per_chunk shape the checkpoints)."""
    settings = cfg.model_dump(include={"model", "max_doc_tokens", "tokenizer", "tasks", "records_per_chunk"})
    settings.update(prompt_version=prompt_version(cfg), engine=inference.engine(cfg))
    return settings


def rewrite_fingerprint(sources: dict[str, str | list | None], cfg: RewriteConfig, model_path: Path) -> str:
    """What the rewrite folders are made from: the source mixes (their fingerprints), the settings, and the
    classifier that scores the rewrites."""
    return fingerprint_of(sources, rewrite_settings(cfg), file_sha256(model_path))


def source_fingerprints(layout: Layout, mixes: list[str]) -> dict[str, str | list]:
    """The fingerprint each source mix records (its shards' stamps when it records none)."""
    return {mix: source_fingerprint(layout.mix_dir(mix)) for mix in mixes}


# ---------------------------------------------------------------------------------------------
# Source mixes


def selected_documents(mix_dir: Path) -> pa.Table:
    """The distinct documents of a finished mix, in shard order, without text: id, url, the scores, n_tokens,
    weight and their copies in `repeats` (rows per id when the mix wrote each copy as a row)."""
    stats, shards = read_mix(mix_dir)
    table = read_tables(shards, columns=[n for n in MIX_SCHEMA.names if n != TEXT])
    if not stats.get("materialized"):
        return table
    ids = table.column(ID).to_pylist()
    first: dict[str, int] = {}
    copies: dict[str, int] = {}
    for i, doc in enumerate(ids):
        first.setdefault(doc, i)
        copies[doc] = copies.get(doc, 0) + 1
    table = table.take(list(first.values()))
    return table.set_column(table.schema.get_field_index(REPEATS), REPEATS,
                            pa.array([copies[d] for d in first], pa.int32()))


def write_documents(sources: dict[str, Path], path: Path) -> int:
    """The distinct documents of the source mixes (id, url, text), in order, as the file the inference reads;
    returns how many."""
    seen: set[str] = set()
    parts = []
    for mix_dir in sources.values():
        for shard in dataset_files(mix_dir):
            table = read_table(shard, columns=[ID, URL, TEXT])
            keep = []
            for i, doc in enumerate(table.column(ID).to_pylist()):
                if doc not in seen:
                    seen.add(doc)
                    keep.append(i)
            parts.append(table.take(keep))
    write_parquet(pa.concat_tables(parts), path)
    return len(seen)


# ---------------------------------------------------------------------------------------------
# The rollout


class RewriteRollout(Rollout):
    """One request per document; keeps the parsed question/thought/answer (all None when the answer does not
    parse), the raw answer, the parse error and whether the answer was cut short by max_tokens."""

    what = "rewrite"

    def __init__(self, cfg: RewriteConfig, run_id: str, total: int | None = None, backoff_s: float = 1.0):
        super().__init__(cfg, run_id, total, backoff_s)
        self.structured_output, self.max_tokens = inference.structured_output(cfg), cfg.max_tokens

    def requests(self, text: str) -> list[dict]:
        return [build_rewrite_request(text, self.structured_output)]

    def result(self, text: str, answers: list[Answer]) -> dict:
        [answer] = answers
        if answer.text is None:
            return {"fields": dict.fromkeys(REWRITE_FIELDS), "raw_response": None, "error": None, "cut_short": False}
        parsed = parse_rewrite(answer.text)
        cut_short = parsed.error is not None and answer.usage.get("completion_tokens", 0) >= self.max_tokens
        error = f"{parsed.error} (cut short at max_tokens {self.max_tokens})" if cut_short else parsed.error
        return {"fields": parsed.fields, "raw_response": answer.text, "error": error, "cut_short": cut_short}


def rewrite_stats(results: list[dict], run_id: str, seconds: float) -> dict:
    """`inference.run_stats` and: documents rewritten, parse failures (an answer came back but did not parse;
    how many of them were cut short by max_tokens) and the parse rate (rewritten ÷ answers that came back)."""
    answers = [rollout_of(doc) for doc in results]
    rewritten = sum(1 for a in answers if not a["error"])
    parse_failures = sum(1 for a in answers if a["error"] and not a["request_failed"])
    came_back = rewritten + parse_failures
    return {
        **inference.run_stats(results, run_id, seconds),
        "documents_rewritten": rewritten,
        "parse_failures": parse_failures,
        "parse_failures_cut_short": sum(1 for a in answers if a["cut_short"]),
        "parse_failure_rate": parse_failures / len(answers) if answers else None,
        "parse_rate": rewritten / came_back if came_back else None,
    }


# ---------------------------------------------------------------------------------------------
# Scoring the rewrites and writing the dataset folders


def expected_shares(original: pa.Table, rewritten: pa.Table, copies: np.ndarray) -> dict:
    """Per behavior, the expected share of tokens showing it (Σ tokens × copies × probability ÷ Σ tokens ×
    copies) of the original documents and of their rewrites, and the ratio rewritten ÷ original."""
    shares = {}
    for col in PROB_COLUMNS:
        values = []
        for table in (original, rewritten):
            mass = table.column(N_TOKENS).to_numpy(zero_copy_only=False).astype(np.float64) * copies
            p = table.column(col).to_numpy(zero_copy_only=False).astype(np.float64)
            values.append(float((mass * p).sum() / mass.sum()) if mass.sum() else None)
        before, after = values
        shares[col.removeprefix("p_")] = {"original": before, "rewritten": after,
                                          "ratio": after / before if before and after is not None else None}
    return shares


def score_rewrites(results: list[dict], tokenizer_name: str, model_path: Path) -> dict[str, dict]:
    """Per document id: the parsed fields, the formatted text, its classifier scores and exact token count
    (None where the rewrite failed), the raw answer and the error."""
    from curate.classifier import BehaviorClassifier
    from curate.tokens import count_tokens, load_tokenizer

    tokenizer, classifier = load_tokenizer(tokenizer_name), BehaviorClassifier.load(model_path)
    by_id = {}
    for doc in results:
        answer = rollout_of(doc)
        by_id[doc["id"]] = {"fields": answer["fields"], "text": None, "scores": dict.fromkeys(SCORE_COLUMNS),
                            N_TOKENS: None, "raw_response": answer["raw_response"], "error": answer["error"]}
    ok = [doc for doc, done in by_id.items() if done["error"] is None]
    for start in range(0, len(ok), SCORE_BATCH):
        batch = ok[start:start + SCORE_BATCH]
        texts = [format_text(by_id[doc]["fields"]) for doc in batch]
        probs = classifier.predict(texts)
        for doc, text, p, n in zip(batch, texts, probs, count_tokens(tokenizer, texts)):
            scores = {col: float(v) for col, v in zip(PROB_COLUMNS, p)}
            by_id[doc].update({"text": text, "scores": {**scores, BEHAVIOR_SCORE: float(p.mean())}, N_TOKENS: n})
    return by_id


def rewrite_table(selected: pa.Table, by_id: dict[str, dict], version: str) -> pa.Table:
    """REWRITE_SCHEMA rows of one source mix (its order): the rewrite, its scores and tokens, the mix's weight,
    its copies (0 where the rewrite failed) and what the LLM answered."""
    rows = []
    for doc in selected.select([ID, URL, WEIGHT, REPEATS]).to_pylist():
        done = by_id[doc[ID]]
        ok = done["text"] is not None
        rows.append({TEXT: done["text"], ID: doc[ID], URL: doc[URL], **done["scores"], N_TOKENS: done[N_TOKENS],
                     WEIGHT: doc[WEIGHT], REPEATS: doc[REPEATS] if ok else 0, **done["fields"],
                     PROMPT_VERSION: version, RAW_RESPONSE: done["raw_response"], ERROR: done["error"]})
    return pa.Table.from_pylist(rows, schema=REWRITE_SCHEMA)


def write_dataset(table: pa.Table, out_dir: Path, shard_rows: int) -> list[str]:
    """`out_dir/data/part-NNNNN.parquet`, at most `shard_rows` rows each (earlier shards removed)."""
    data = out_dir / DATA_DIR
    for old in data.glob(f"{SHARD_PREFIX}*.parquet"):
        old.unlink()
    names = []
    for k, start in enumerate(range(0, max(table.num_rows, 1), shard_rows)):
        names.append(f"{SHARD_PREFIX}{k:05d}.parquet")
        write_parquet(table.slice(start, shard_rows), data / names[-1])
    return names


def dataset_stats(mix: str, mix_dir: Path, selected: pa.Table, table: pa.Table) -> dict:
    """The numbers of one rewrite folder: documents, rewritten and failed, copies and tokens before and after,
    the expected behavior shares of the originals and of the rewrites (over the documents rewritten)."""
    ok = np.array([e is None for e in table.column(ERROR).to_pylist()], dtype=bool)
    request_failed = np.array([raw is None for raw in table.column(RAW_RESPONSE).to_pylist()], dtype=bool)
    copies_in = selected.column(REPEATS).to_numpy().astype(np.int64)
    tokens_in = selected.column(N_TOKENS).to_numpy().astype(np.int64)
    tokens_out = np.nan_to_num(table.column(N_TOKENS).to_numpy(zero_copy_only=False).astype(np.float64))
    rows = np.flatnonzero(ok)
    return {
        "source": mix,
        "source_folder": str(mix_dir),
        "documents_in": selected.num_rows,
        "documents_out": table.num_rows,
        "documents_rewritten": int(ok.sum()),
        "parse_failures": int((~ok & ~request_failed).sum()),
        "request_errors": int(request_failed.sum()),
        "copies_in": int(copies_in.sum()),
        "copies_out": int(copies_in[ok].sum()),
        "tokens_in": int((tokens_in * copies_in).sum()),
        "tokens_out": int((tokens_out * copies_in * ok).sum()),
        "tokens_in_rewritten_documents": int((tokens_in * copies_in)[ok].sum()),
        "materialized": False,
        "expected_behavior_share": expected_shares(selected.take(rows), table.take(rows), copies_in[rows]),
    }


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _share_rows(shares: dict) -> str:
    return "\n".join(f"| {b} | {_pct(s['original'])} | {_pct(s['rewritten'])} | "
                     + ("n/a" if s["ratio"] is None else f"×{s['ratio']:.2f}") + " |" for b, s in shares.items())


def rewrite_card(stats: dict) -> str:
    """The dataset card of a rewrite folder: metadata block, what the rows are, the numbers, the behavior
    shares before and after, the prompt, the schema, how to load it."""
    from curate.card import metadata_block

    schema = "\n".join(f"| `{f.name}` | {f.type} |" for f in REWRITE_SCHEMA)
    instruction = REWRITE_INSTRUCTION.rstrip()
    return f"""{metadata_block(stats['name'], stats)}
# {stats['name']}: rewritten by curate as question / thought / answer

The documents of the mix `{stats['source_folder']}` rewritten by `{stats['model']}`, one row per document:
a self-contained question, the worked reasoning (the document's own checks, retractions, subgoals and
backward steps, none added) and the answer. `text` holds them as

```
{TEXT_FORMAT}
```

## Expected behavior share
Share of tokens expected to show each behavior (Σ tokens × copies × calibrated probability ÷ Σ tokens ×
copies, from the classifier of the output folder), of the original documents and of their rewrites, over
the {stats['documents_rewritten']:,} documents rewritten:

| behavior | original | rewritten | ratio |
|---|---|---|---|
{_share_rows(stats['expected_behavior_share'])}

## Numbers
| | |
|---|---|
| documents of the mix | {stats['documents_in']:,} ({stats['copies_in']:,} copies, {stats['tokens_in']:,} tokens) |
| rewritten | {stats['documents_rewritten']:,} ({stats['copies_out']:,} copies, {stats['tokens_out']:,} tokens) |
| the originals of those | {stats['tokens_in_rewritten_documents']:,} tokens |
| answers that did not parse | {stats['parse_failures']:,} |
| requests that failed | {stats['request_errors']:,} |
| model | `{stats['model']}`, prompt `{stats['prompt_version']}` |
| token counts | exact, tokenizer `{stats['tokenizer']}` |
| shards | {len(stats['shards'])} in `{DATA_DIR}/` |

A document whose rewrite failed keeps its row, with null `text`, `question`, `thought` and `answer`, the
`error`, the raw answer in `raw_response`, and `repeats` 0: `curate export` leaves it out.

## Prompt
The instruction (system message); the document, cut at a line boundary to {stats['max_doc_tokens']:,}
tokens, is the user message, and the answer is constrained to a JSON object of three non-empty strings.

```
{instruction}
```

## Schema
| column | type |
|---|---|
{schema}

`repeats` is the copies of the document in the mix (0 where the rewrite failed); `weight` is the mix's.
The scores and `n_tokens` are the rewrite's. `curate export` writes every copy as its own row.

## Loading
```python
import datasets
rows = datasets.load_dataset("path/to/this/folder", split="train")
# datasets 5.x caches a local folder under its name alone: to load two folders of the same name
# (two runs' `mix`), pass each its own cache_dir=..., or use the "parquet" builder with data_dir
```

## Sources and licences
Each rewrite derives from the document at its `url`, under that source's licence.
"""


# ---------------------------------------------------------------------------------------------
# The stage


def outputs(layout: Layout) -> list[Path]:
    """The cards of the rewrite folders of the last finished run (what must exist beside its stats)."""
    stats_path = layout.stats(STAGE)
    if not stats_path.exists():
        return [stats_path]
    return [location(info["folder"]) / DATASET_CARD for info in read_json(stats_path)["mixes"].values()]


def check_classifier(layout: Layout) -> Path:
    """The output folder's classifier, which scores the rewrites; RewriteError when there is none."""
    if not layout.model_file.exists():
        raise RewriteError(f"{layout.model_file}: no classifier to score the rewrites with (train one into "
                           f"{layout.classifier_dir} first)")
    return layout.model_file


def write_rewrite(mix: str, mix_dir: Path, selected: pa.Table, by_id: dict[str, dict], out: Path,
                  common: dict) -> dict:
    """One rewrite folder (shards, stats.json, card) for the documents of one source mix; returns its stats."""
    table = rewrite_table(selected, by_id, common["prompt_version"])
    shard_rows = read_json(mix_dir / STATS_FILE).get("method", {}).get("shard_rows", DEFAULT_SHARD_ROWS)
    stats = {"kind": STAGE, **common, "name": f"{common['name']}-{out.name}",
             **dataset_stats(mix, mix_dir, selected, table), "shards": write_dataset(table, out, shard_rows)}
    write_json(stats, out / STATS_FILE)
    write_text(rewrite_card(stats), out / DATASET_CARD)
    return stats


def rewrite(layout: Layout, cfg: RewriteConfig, fingerprint: str | None = None, name: str | None = None) -> dict:
    """Rewrite the documents of the mixes `cfg.mixes` of an output folder; write one rewrite folder per mix
    (`rewrite_dir`) and the stage's stats (`logs/rewrite/stats.json`); return the stats. Re-running an
    interrupted or refused run goes on from where it stopped; re-running a finished one with the same inputs
    and settings does nothing. `name` titles the cards (default: the output folder's). Raises RewriteStopped
    (one line) when the run stops."""
    sources = {mix: layout.mix_dir(mix) for mix in cfg.mixes}
    selected = {mix: selected_documents(folder) for mix, folder in sources.items()}
    model = check_classifier(layout)
    fingerprint = fingerprint or rewrite_fingerprint(source_fingerprints(layout, cfg.mixes), cfg, model)
    stats_path = layout.stats(STAGE)
    if is_current(stats_path, fingerprint) and all(p.exists() for p in outputs(layout)):
        return {**read_json(stats_path), "skipped": True}
    stats_path.unlink(missing_ok=True)  # folders being replaced are no finished rewrite of any settings
    documents = layout.logs(STAGE) / DOCUMENTS_FILE
    total = write_documents(sources, documents)
    run_id = uuid.uuid4().hex
    start = time.monotonic()
    try:
        results = inference.run_rollouts(documents, layout.logs(STAGE) / WORK_DIR, cfg,
                                         RewriteRollout(cfg, run_id, total=total),
                                         fingerprint_of(file_sha256(documents), rewrite_settings(cfg)))
    except RunStopped as e:
        raise RewriteStopped(f"rewriting: {e}") from e.__cause__
    seconds = time.monotonic() - start
    by_id = score_rewrites(results, cfg.tokenizer, model)
    common = {"name": name or layout.root.resolve().name, "fingerprint": fingerprint, "model": cfg.model,
              "prompt_version": prompt_version(cfg), "tokenizer": cfg.tokenizer, "max_doc_tokens": cfg.max_doc_tokens}
    made = {mix: write_rewrite(mix, sources[mix], selected[mix], by_id, rewrite_dir(layout, mix), common)
            for mix in cfg.mixes}
    run = rewrite_stats(results, run_id, seconds)
    summaries = {mix: {"folder": str(rewrite_dir(layout, mix)), **{k: s[k] for k in MIX_SUMMARY}}
                 for mix, s in made.items()}
    stats = {"fingerprint": fingerprint, "model": cfg.model, "prompt_version": common["prompt_version"],
             "structured_output": inference.structured_output(cfg), "mixes": summaries, **run,
             "documents_out": run["documents_rewritten"], "skipped": False}
    write_json(stats, stats_path)
    return stats


def dry_run(layout: Layout, cfg: RewriteConfig) -> str:
    """The `vllm serve` command line (server_type vllm) or the endpoint's URLs, and the request for the first
    document of the first mix, as a run would send it; starts nothing, writes nothing."""
    _, shards = read_mix(layout.mix_dir(cfg.mixes[0]))
    first = read_table(shards[0], columns=[ID, TEXT]).slice(0, 1).to_pylist()[0]
    rollout = RewriteRollout(cfg, run_id="dry-run")
    return inference.dry_run_text(cfg, layout.logs(STAGE) / WORK_DIR, first[ID],
                                  rollout.requests(rollout.cut(first[TEXT])))
