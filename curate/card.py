"""The dataset card (`README.md`) of a mix folder, in the Hugging Face dataset layout.

The card opens with a YAML metadata block (the `data/*.parquet` config, a licence note, the size
category), so the folder can be pushed to a hub as it is and `datasets.load_dataset(folder)` loads
it. It states how the mix was made from what the other stages recorded in the same output folder
(classifier card, token settings, filter decisions) and names what it could not find.
"""

from __future__ import annotations

import yaml

from curate.io import read_json
from curate.layout import DATA_DIR, Layout
from curate.schema import BEHAVIORS, CONTAMINATION, MIX_SCHEMA, NEAR_DUPLICATE

SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]


def fmt_auc(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def size_category(rows: int) -> str:
    """The Hugging Face size category of a dataset of `rows` rows."""
    return next((name for limit, name in SIZE_CATEGORIES if rows < limit), "n>1B")


def filter_lines(filters: dict | None) -> str:
    """Markdown bullets of what the filter stage dropped, and how."""
    if filters is None:
        return "Near-duplicate removal and decontamination were not run for this mix."
    dropped = filters["dropped"]
    dedup = filters.get(NEAR_DUPLICATE)
    decont = filters.get(CONTAMINATION)
    lines = [
        f"- **{dropped[NEAR_DUPLICATE]:,} documents dropped as near-duplicates**"
        + (f" (MinHash, {dedup['settings']['num_perm']} permutations, Jaccard >= {dedup['settings']['threshold']}, "
           f"{dedup['settings']['shingle_size']}-word shingles; {dedup['clusters']:,} clusters, best-scoring member kept)"
           if dedup else " (near-duplicate removal off)"),
        f"- **{dropped[CONTAMINATION]:,} documents dropped as contamination**"
        + (f" (sharing a {decont['ngram']}-gram with " + ", ".join(
            f"{s['name']}: {s['items_matched']} of {s['items']} items matched" for s in decont["eval_sets"]) + ")"
           if decont else " (no evaluation sets given)"),
    ]
    return "\n".join(lines)


def _optional_json(path):
    return read_json(path) if path.exists() else None


def metadata_block(name: str, stats: dict) -> str:
    """The card's YAML front matter: the data files config, licence note, size category, tags."""
    rows = stats["copies_out"] if stats["materialized"] else stats["documents_out"]
    meta = {
        "pretty_name": name,
        "license": "other",
        "license_name": "per-source",
        "license_details": "Each document keeps the licence of its source page (see `url`); "
                           "the bundled sample: Stack Exchange posts CC BY-SA 4.0, GSM8K MIT.",
        "language": ["en"],
        "task_categories": ["text-generation"],
        "tags": ["math", "reasoning", "continued-pretraining", "curate"],
        "size_categories": [size_category(rows)],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": f"{DATA_DIR}/*.parquet"}]}],
    }
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def dataset_card(name: str, stats: dict, layout: Layout) -> str:
    """Markdown card of a mix: metadata block, what it is, how it was made, its numbers, how to load it."""
    classifier_card = _optional_json(layout.card_file)
    tokens = _optional_json(layout.logs("score") / "tokens.json")
    filters = _optional_json(layout.stats("filters"))
    method = stats["method"]
    if tokens is None:
        counting = "unknown (no token settings found beside the scores)"
    elif tokens["mode"] == "exact":
        counting = f"exact counts with tokenizer `{tokens['tokenizer']}`"
    else:
        counting = (f"chars-per-token ratio {tokens['chars_per_token']:.3f} calibrated with tokenizer "
                    f"`{tokens['tokenizer']}` on {tokens['calibration_docs']} documents")
    dropped = "\n".join(f"| {reason} | {n} |" for reason, n in stats["dropped"].items())
    bucket_rows = "\n".join(
        f"| {col} | " + " | ".join(f"{n_in:,} → {stats['tokens_by_bucket'][col]['out'][b]:,}"
                                  for b, n_in in stats["tokens_by_bucket"][col]["in"].items()) + " |"
        for col in stats["tokens_by_bucket"]
    )
    first_bucket = next(iter(stats["tokens_by_bucket"].values()))["in"]
    schema = "\n".join(f"| `{f.name}` | {f.type} |" for f in MIX_SCHEMA)
    budget = f"{stats['token_budget']:,}" if stats["token_budget"] else "none"
    budget_error = f"{100 * stats['budget_error']:+.2f}%" if stats["budget_error"] is not None else "n/a"
    if classifier_card is None:
        classifier = f"No classifier card was found at `{layout.card_file}`."
    else:
        auc_rows = "\n".join(
            f"| {b} | {fmt_auc(classifier_card['metrics'][b]['roc_auc'])} | {classifier_card['metrics'][b]['f1']:.3f} "
            f"| {classifier_card['thresholds'][b]:.3f} |" for b in BEHAVIORS)
        classifier = (f"One fastText model, one-vs-all over the four behaviors, trained on {classifier_card['n_train']} "
                      f"labeled documents. Figures below: {classifier_card['metrics_on']}.\n\n"
                      f"| behavior | ROC-AUC | F1 | threshold |\n|---|---|---|---|\n{auc_rows}")
    return f"""{metadata_block(name, stats)}
# {name}: a reasoning-behavior mix made by curate

Continued-pretraining data reweighted towards documents that show four reasoning behaviors
(verification, backtracking, subgoal setting, backward chaining), scored by a distilled fastText
classifier.

## Numbers
| | |
|---|---|
| documents scored | {stats['documents_in']:,} |
| documents in the mix | {stats['documents_out']:,} ({stats['copies_out']:,} copies) |
| tokens scored | {stats['tokens_in']:,} |
| tokens in the mix | {stats['tokens_out']:,} |
| token budget | {budget} (off by {budget_error}) |
| method | `{method['method']}` (threshold {method['threshold']}, max repeats {method['max_repeats']}, temperature {method['temperature']}) |
| shards | {len(stats['shards'])} in `{DATA_DIR}/`, at most {method['shard_rows']:,} rows each{', copies materialized and shuffled' if stats['materialized'] else ''} |
| token counts | {counting} |

Filters before mixing:

{filter_lines(filters)}

Documents not in the mix, by reason:

| reason | documents |
|---|---|
{dropped}

Tokens by behavior-probability bucket, before → after mixing:

| score | {' | '.join(first_bucket)} |
|---|{'---|' * len(first_bucket)}
{bucket_rows}

Plots and the full report: `curate report` writes them to the `report/` folder beside this one.

## Classifier
{classifier}

## Schema
| column | type |
|---|---|
{schema}

`repeats` is the number of copies of the document in the mix; `weight` the expected copies before
rounding and the cap. Trainers that ignore `repeats` see each document once: `curate export` writes
every copy as its own row.

## Loading
```python
import datasets
mix = datasets.load_dataset("path/to/this/folder", split="train")
# or: pyarrow.dataset.dataset("path/to/this/folder/{DATA_DIR}", format="parquet").to_table()
```

## Sources and licences
The text keeps each source's licence: OpenWebMath pages as published by their sites; in the
bundled sample, Stack Exchange posts (CC BY-SA 4.0) and GSM8K (MIT). Each row's `url` names its origin.
"""
