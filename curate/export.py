"""Exports of a mix that trainers read: every copy of a document is its own document, shuffled.

A mix folder holds each chosen document once, with the copies it gets in a `repeats` column that most
trainers ignore: they would see each document once, not the mix's token budget. `export` writes every
copy out, in one seeded random order, in the formats pretraining stacks read:

- `parquet`: `data/part-NNNNN.parquet` (zstd) with the mix's columns less `weight` and `repeats` (each
  row is one copy: a trainer that honoured `repeats` would count the copies twice), and a dataset card
  `README.md` in the Hugging Face layout; `datasets.load_dataset("parquet", data_dir=FOLDER/data)` or
  `datasets.load_dataset(FOLDER)` load it.
- `jsonl`: `data/part-NNNNN.jsonl`, one JSON object per line with `text`, `id` and `url`, plain UTF-8:
  the input of Megatron-LM's `tools/preprocess_data.py --json-keys text` (and of datasets' "json").
- `tokens`: datatrove's tokenized files, the format nanotron reads (`DatatroveFolderDataset`), written
  by datatrove's `DocumentTokenizer` in a datatrove pipeline (the copies' Parquet shards -> tokenizer):
  `<mix>_RRRRR_SSSSS_doc_shuffled.ds` (uint16 tokens, uint32 for vocabularies over 65,536),
  `.ds.index` (uint64 document ends), `.ds.metadata`, and the `tokenizer.json` they were made with
  (read from curate's tokenizer: nothing is fetched from a hub). `eos` is appended after every
  document (datatrove replaces the tokenizer's post-processor with it); with `eos: null` the
  tokenizer's own post-processor, if any, applies.

What is shuffled: whole documents (copies), never token windows. The copies are put in one seeded random
order across all shards, by an external shuffle (each mix shard's copies are spread over bucket files,
one per output shard, and each bucket is sorted by the copies' random positions; memory holds one shard
at a time and the random positions, 8 bytes a copy). `parquet` and `jsonl` keep that order. For
`tokens`, DocumentTokenizer shuffles the documents of each file it writes again, with the same seed
(`shuffle_documents`; no `shuffle_chunk_size`): a document's tokens stay contiguous, and a trainer's
fixed-length windows cut across document boundaries as in any datatrove dataset.

Output: `OUT/export/<mix>/<format>/`; the stats (copies and tokens per format, seed, fingerprint) in
`OUT/logs/export/stats.json`; bucket files and datatrove's logs under `OUT/logs/export/`.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from curate.card import metadata_block
from curate.config import ExportConfig
from curate.io import atomic_path, count_rows, read_json, read_table, write_json, write_parquet, write_text
from curate.layout import (
    DATA_DIR, DATASET_CARD, STATS_FILE, Layout, dataset_files, fingerprint_of, input_stamps, location,
)
from curate.storage import upload
from curate.schema import ID, MIX_SCHEMA, N_TOKENS, REPEATS, TEXT, URL, WEIGHT

STAGE = "export"
SHARD_PREFIX = "part-"
EXPORT_SCHEMA = pa.schema([f for f in MIX_SCHEMA if f.name not in (WEIGHT, REPEATS)])
JSONL_FIELDS = (TEXT, ID, URL)
TOKENIZER_FILE = "tokenizer.json"
TOKENIZE_BATCH = 200  # documents per tokenizer call: encodings take ~100 bytes a token (datatrove's 10,000: GBs)
POSITION, BUCKET = "_position", "_bucket"
BUCKET_PARTITIONING = ds.partitioning(pa.schema([(BUCKET, pa.int64())]))  # bucket k: the files of buckets/k/


class ExportError(ValueError):
    """A mix that cannot be exported as asked (one-line message)."""


def export_dir(layout: Layout, source: str) -> Path:
    """The folder of one mix's exports: `OUT/export/<mix>/` (under the data outputs), one subfolder per format."""
    return layout.export_dir / source


def read_mix(mix_dir: Path) -> tuple[dict, list[Path]]:
    """A finished mix's stats and shards; ExportError when the folder is not one."""
    mix_dir = location(mix_dir)
    shards = dataset_files(mix_dir)
    if not (mix_dir / STATS_FILE).is_file() or not shards:
        raise ExportError(f"{mix_dir}: not a finished mix (needs {STATS_FILE} and {DATA_DIR}/*.parquet): "
                          "make the mix first")
    for shard in shards:
        missing = [name for name in MIX_SCHEMA.names if name not in read_table(shard).schema.names]
        if missing:
            raise ExportError(f"{shard}: not a mix shard (no column {', '.join(missing)})")
    return read_json(mix_dir / STATS_FILE), shards


def source_fingerprint(mix_dir: Path) -> str | list:
    """What identifies a mix: the fingerprint its stats record, else its shards' stamps."""
    recorded = read_mix(mix_dir)[0].get("fingerprint")
    return recorded or input_stamps([str(s) for s in dataset_files(mix_dir)])


def export_fingerprint(sources: dict[str, str | list | None], cfg: ExportConfig) -> str:
    """What an export is made from: its mixes' fingerprints, its settings and (for `tokens`) the tokenizer."""
    tokenizer = None
    if "tokens" in cfg.formats:
        from curate.tokens import load_tokenizer

        tokenizer = fingerprint_of(load_tokenizer(cfg.tokenizer).to_str())
    return fingerprint_of(sources, cfg.model_dump(), tokenizer)


def _copies_per_row(shard: Path, materialized: bool) -> np.ndarray:
    """Copies of each row of a mix shard: its `repeats`, or 1 where the mix already wrote each copy as a row."""
    if materialized:
        return np.ones(count_rows(str(shard)), dtype=np.int64)
    return read_table(shard, columns=[REPEATS]).column(REPEATS).to_numpy().astype(np.int64)


def write_shuffled_copies(shards: list[Path], materialized: bool, out_dir: Path, work_dir: Path, seed: int,
                          shard_rows: int) -> dict:
    """Write every copy of the mix's documents as its own row into `out_dir/part-NNNNN.parquet`
    (EXPORT_SCHEMA, `shard_rows` rows each but the last), in one seeded random order across all shards.
    Returns the shards written, the copies and their tokens as the mix counted them."""
    counts = [_copies_per_row(shard, materialized) for shard in shards]
    total = int(sum(c.sum() for c in counts))
    if total == 0:
        raise ExportError(f"{location(shards[0]).parent.parent}: the mix has no copies to export")
    positions = np.random.default_rng(seed).permutation(total)
    buckets = work_dir / "buckets"
    shutil.rmtree(buckets, ignore_errors=True)
    start, tokens = 0, 0
    for i, (shard, copies) in enumerate(zip(shards, counts)):
        table = read_table(shard, columns=EXPORT_SCHEMA.names).take(np.repeat(np.arange(len(copies)), copies))
        position = positions[start:start + table.num_rows]
        start += table.num_rows
        tokens += int(pc.sum(table.column(N_TOKENS)).as_py() or 0)
        table = table.append_column(POSITION, pa.array(position))
        table = table.append_column(BUCKET, pa.array(position // shard_rows))
        ds.write_dataset(table, buckets, format="parquet", partitioning=BUCKET_PARTITIONING,
                         basename_template=f"{i:05d}-{{i}}.parquet", existing_data_behavior="overwrite_or_ignore")
    for old in out_dir.glob(f"{SHARD_PREFIX}*.parquet"):
        old.unlink()
    written = []
    for k in range(math.ceil(total / shard_rows)):
        table = ds.dataset(buckets / str(k), format="parquet").to_table().sort_by(POSITION).drop_columns([POSITION])
        written.append(out_dir / f"{SHARD_PREFIX}{k:05d}.parquet")
        write_parquet(table.cast(EXPORT_SCHEMA), written[-1])
    shutil.rmtree(buckets)
    return {"shards": written, "copies": total, "tokens": tokens}


def write_jsonl(shards: list[Path], out_dir: Path) -> list[Path]:
    """One `.jsonl` file per copies shard, same order: a JSON object per line with text, id and url."""
    for old in out_dir.glob(f"{SHARD_PREFIX}*.jsonl"):
        old.unlink()
    written = []
    for shard in shards:
        written.append(out_dir / f"{shard.stem}.jsonl")
        with atomic_path(written[-1]) as tmp, open(tmp, "wb") as f:
            for batch in pq.ParquetFile(shard).iter_batches(columns=list(JSONL_FIELDS)):
                f.writelines(orjson.dumps(row) + b"\n" for row in batch.to_pylist())
    return written


def tokenized_files(folder: Path) -> dict:
    """Documents and tokens of datatrove's tokenized files in `folder` (read back from their `.ds.index`),
    and the token size their `.ds.metadata` records."""
    from datatrove.pipeline.tokens.merger import load_doc_ends

    folder = location(folder)
    files = sorted(folder.glob("*.ds"), key=str)
    ends = []
    for f in files:
        with location(f"{f}.index").open("rb") as index:
            ends.append(load_doc_ends(index))
    sizes = {int(location(f"{f}.metadata").read_text().splitlines()[0].rsplit("|", 1)[1]) for f in files}
    return {"files": [f.name for f in files], "documents": int(sum(len(e) for e in ends)),
            "tokens": int(sum(e[-1] for e in ends if len(e))), "token_size": sizes.pop() if len(sizes) == 1 else None}


def load_export_tokenizer(cfg: ExportConfig):
    """The tokenizer of `tokens`; ExportError when it lacks the `eos` token."""
    from curate.tokens import load_tokenizer

    tokenizer = load_tokenizer(cfg.tokenizer)
    if cfg.eos is not None and tokenizer.token_to_id(cfg.eos) is None:
        raise ExportError(f"tokenizer '{cfg.tokenizer}' has no token {cfg.eos!r}: set export.eos to its "
                          "end-of-document token, or null for none")
    return tokenizer


def write_tokens(name: str, copies_dir: Path, n_shards: int, out_dir: Path, work_dir: Path, cfg: ExportConfig,
                 seed: int) -> dict:
    """Tokenize the copies' shards with datatrove (ParquetReader -> DocumentTokenizer, LocalPipelineExecutor)
    into `out_dir`, with the tokenizer saved there as `tokenizer.json` (the file datatrove loads)."""
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.tokens import DocumentTokenizer

    from curate.executors import build_executor

    tokenizer = load_export_tokenizer(cfg)
    tokenizer_file = out_dir / TOKENIZER_FILE
    with atomic_path(tokenizer_file) as tmp:
        tokenizer.save(str(tmp))
    staging, logs = work_dir / "tokens", work_dir / "datatrove"
    for folder in (staging, logs, work_dir / "unshuffled"):
        shutil.rmtree(folder, ignore_errors=True)
    tasks = min(cfg.tasks, n_shards)
    pipeline = [
        ParquetReader(str(copies_dir), glob_pattern=f"{SHARD_PREFIX}*.parquet", text_key=TEXT, id_key=ID),
        DocumentTokenizer(str(staging), tokenizer_name_or_path=str(tokenizer_file.resolve()), save_filename=name,
                          local_working_dir=str(work_dir / "unshuffled"), eos_token=cfg.eos, seed=seed,
                          shuffle_documents=True, max_tokens_per_file=cfg.shard_tokens, batch_size=TOKENIZE_BATCH),
    ]
    build_executor(pipeline, tasks=tasks, workers=tasks, logging_dir=logs).run()
    for old in out_dir.glob("*.ds*"):
        old.unlink()
    for made in sorted(staging.iterdir()):
        os.replace(made, out_dir / made.name)
    made = tokenized_files(out_dir)
    eos_tokens = 0 if cfg.eos is None else made["documents"]
    return {**made, "text_tokens": made["tokens"] - eos_tokens, "eos_tokens": eos_tokens, "tokenizer": cfg.tokenizer,
            "eos": cfg.eos, "eos_id": None if cfg.eos is None else tokenizer.token_to_id(cfg.eos), "tasks": tasks}


def export_card(title: str, mix_dir: Path, mix_stats: dict, made: dict, seed: int) -> str:
    """The dataset card of a `parquet` export: the mix card's metadata block, what the rows are, how to load them."""
    schema = "\n".join(f"| `{f.name}` | {f.type} |" for f in EXPORT_SCHEMA)
    return f"""{metadata_block(title, {**mix_stats, "materialized": True})}
# {title}: every copy of a curate mix, shuffled

The mix in `{mix_dir}` (its card: `{mix_dir / DATASET_CARD}`) with each document written once per copy
it gets: {made['copies']:,} rows, {made['tokens']:,} tokens as the mix counted them, in {len(made['shards'])}
shards of at most {made['shard_rows']:,} rows, in one random order (seed {seed}). A trainer that reads
the rows once each sees the mix's token budget. `weight` and `repeats` are left out: each row is one copy.

## Schema
| column | type |
|---|---|
{schema}

## Loading
```python
import datasets
rows = datasets.load_dataset("path/to/this/folder", split="train")
# datasets 5.x caches a local folder under its name alone: to load two folders of the same name
# (two runs' `mix`), pass each its own cache_dir=..., or use the "parquet" builder with data_dir
# or: datasets.load_dataset("parquet", data_dir="path/to/this/folder/{DATA_DIR}", split="train")
```
"""


def export_mix(name: str, mix_dir: Path, layout: Layout, cfg: ExportConfig, seed: int, title: str) -> dict:
    """Export one mix folder in every format of `cfg` into `OUT/export/<name>/` (a format not asked for
    any more is removed there); returns its stats."""
    mix_stats, shards = read_mix(mix_dir)
    target, work = export_dir(layout, name), layout.logs(STAGE) / "work" / name
    # exports to a store are made in the work folder, then uploaded file by file (each object appears whole)
    out = target if isinstance(target, Path) else work / "staged"
    for stale in ({"parquet", "jsonl", "tokens"} - set(cfg.formats)):
        shutil.rmtree(out / stale, ignore_errors=True)
    copies_dir = out / "parquet" / DATA_DIR if "parquet" in cfg.formats else work / "copies"
    made = write_shuffled_copies(shards, bool(mix_stats.get("materialized")), copies_dir, work, seed, cfg.shard_rows)
    made["shard_rows"] = cfg.shard_rows
    formats = {}
    if "parquet" in cfg.formats:
        write_text(export_card(title, location(mix_dir), mix_stats, made, seed), out / "parquet" / DATASET_CARD)
        formats["parquet"] = {"folder": str(target / "parquet"), "files": len(made["shards"]),
                              "documents": made["copies"], "tokens": made["tokens"]}
    if "jsonl" in cfg.formats:
        written = write_jsonl(made["shards"], out / "jsonl" / DATA_DIR)
        formats["jsonl"] = {"folder": str(target / "jsonl"), "files": len(written), "documents": made["copies"],
                            "tokens": made["tokens"]}
    if "tokens" in cfg.formats:
        tokens = write_tokens(name, copies_dir, len(made["shards"]), out / "tokens", work, cfg, seed)
        if tokens["documents"] != made["copies"]:
            raise ExportError(f"{out / 'tokens'}: {tokens['documents']} documents tokenized, {made['copies']} copies")
        formats["tokens"] = {"folder": str(target / "tokens"), **tokens}
    if out is not target:
        publish(out, target, cfg.formats)
    shutil.rmtree(work, ignore_errors=True)
    return {"folder": str(mix_dir), "documents_in": int(mix_stats.get("documents_out", 0)),
            "copies": made["copies"], "mix_tokens_out": mix_stats.get("tokens_out"), "formats": formats}


def publish(staged: Path, target, formats: list[str]) -> None:
    """Upload a staged export to its folder in a store, replacing what each format held there."""
    for fmt in formats:
        if (target / fmt).exists():
            (target / fmt).fs.rm((target / fmt).path, recursive=True)
    for path in sorted(p for p in staged.rglob("*") if p.is_file()):
        upload(path, str(target / str(path.relative_to(staged))))


def export(sources: dict[str, Path], layout: Layout, cfg: ExportConfig, fingerprint: str | None = None,
           name: str | None = None) -> dict:
    """Export each mix of `sources` ({name: mix folder}) in the formats of `cfg` under `OUT/export/<name>/`
    and write the stats to `OUT/logs/export/stats.json`; return them. `documents` of every format are
    copies (a document with repeats 3 counts 3); `tokens` are the mix's counts for parquet and jsonl,
    the tokens written (EOS included) for `tokens`. `name` titles the cards (default: the output folder's)."""
    seed = 0 if cfg.seed is None else cfg.seed
    name = name or layout.root.resolve().name
    layout.stats(STAGE).unlink(missing_ok=True)  # files being replaced are no finished export of any settings
    for mix_dir in sources.values():
        read_mix(mix_dir)
    if "tokens" in cfg.formats:
        load_export_tokenizer(cfg)
    exported = {source: export_mix(source, mix_dir, layout, cfg, seed, f"{name}-{source}")
                for source, mix_dir in sources.items()}
    stats = {
        "settings": cfg.model_dump(),
        "seed": seed,
        "documents_in": sum(s["documents_in"] for s in exported.values()),
        "documents_out": sum(s["copies"] for s in exported.values()),
        "mixes": exported,
        "fingerprint": fingerprint,
    }
    write_json(stats, layout.stats(STAGE))
    return stats
