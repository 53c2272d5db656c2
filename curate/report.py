"""The dataset card (README.md) written beside the mix shards."""

from __future__ import annotations

from pathlib import Path

from curate.io import write_text
from curate.schema import BEHAVIORS, MIX_SCHEMA

CARD_FILE = "README.md"


def _fmt_auc(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def dataset_card(name: str, stats: dict, classifier_card: dict, tokens: dict) -> str:
    """Markdown card: what the mix is, how it was made, its numbers and how to load it."""
    method = stats["method"]
    counting = (
        f"exact counts with tokenizer `{tokens['tokenizer']}`" if tokens["mode"] == "exact" else
        f"chars-per-token ratio {tokens['chars_per_token']:.3f} calibrated with tokenizer `{tokens['tokenizer']}` "
        f"on {tokens['calibration_docs']} documents"
    )
    dropped = "\n".join(f"| {reason} | {n} |" for reason, n in stats["docs_dropped"].items())
    auc_rows = "\n".join(
        f"| {b} | {_fmt_auc(classifier_card['metrics'][b]['roc_auc'])} | {classifier_card['metrics'][b]['f1']:.3f} "
        f"| {classifier_card['thresholds'][b]:.3f} |"
        for b in BEHAVIORS
    )
    bucket_rows = "\n".join(
        f"| {col} | " + " | ".join(f"{n_in:,} → {stats['tokens_by_bucket'][col]['out'][b]:,}"
                                  for b, n_in in stats["tokens_by_bucket"][col]["in"].items()) + " |"
        for col in stats["tokens_by_bucket"]
    )
    bucket_head = " | ".join(next(iter(stats["tokens_by_bucket"].values()))["in"])
    schema = "\n".join(f"| `{f.name}` | {f.type} |" for f in MIX_SCHEMA)
    budget = f"{stats['token_budget']:,}" if stats["token_budget"] else "none"
    budget_error = f"{100 * stats['budget_error']:+.2f}%" if stats["budget_error"] is not None else "n/a"
    return f"""# {name}: a reasoning-behavior mix made by curate

Continued-pretraining data reweighted towards documents that show four reasoning behaviors
(verification, backtracking, subgoal setting, backward chaining), scored by a distilled fastText
classifier.

## Numbers
| | |
|---|---|
| documents scored | {stats['docs_in']:,} |
| documents in the mix | {stats['docs_out']:,} ({stats['copies_out']:,} copies) |
| tokens scored | {stats['tokens_in']:,} |
| tokens in the mix | {stats['tokens_out']:,} |
| token budget | {budget} (off by {budget_error}) |
| method | `{method['method']}` (threshold {method['threshold']}, max repeats {method['max_repeats']}, temperature {method['temperature']}) |
| shards | {len(stats['shards'])}, at most {method['shard_rows']:,} rows each{', copies materialized and shuffled' if stats['materialized'] else ''} |
| token counts | {counting} |

Documents not in the mix, by reason:

| reason | documents |
|---|---|
{dropped}

Tokens by behavior-probability bucket, before → after mixing:

| score | {bucket_head} |
|---|{'---|' * len(stats['tokens_by_bucket'][next(iter(stats['tokens_by_bucket']))]['in'])}
{bucket_rows}

## Classifier
One fastText model, one-vs-all over the four behaviors, trained on {classifier_card['n_train']} labeled
documents; held-out split of {classifier_card['n_valid']} documents ({classifier_card['metrics_on']}):

| behavior | ROC-AUC | F1 | threshold |
|---|---|---|---|
{auc_rows}

## Schema
| column | type |
|---|---|
{schema}

`repeats` is the number of copies of the document in the mix; `weight` the expected copies before
rounding and the cap.

## Loading
```python
import pyarrow.dataset as ds
table = ds.dataset("{'{this folder}'}", format="parquet").to_table()
# or: datasets.load_dataset("parquet", data_files="{'{this folder}'}/part-*.parquet")
```

## Sources and licences
The text keeps each source's licence: OpenWebMath pages as published by their sites; in the
bundled sample, Stack Exchange posts (CC BY-SA 4.0) and GSM8K (MIT). Each row's `url` names its origin.
"""


def write_card(mix_dir: str | Path, name: str, stats: dict, classifier_card: dict, tokens: dict) -> Path:
    """Write the dataset card into the mix folder."""
    path = Path(mix_dir) / CARD_FILE
    write_text(dataset_card(name, stats, classifier_card, tokens), path)
    return path
