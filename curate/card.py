"""The dataset card (`README.md`) of a mix folder, in the Hugging Face dataset layout.

The card opens with a YAML metadata block (the `data/*.parquet` config, a licence note, the size
category), so the folder can be pushed to a hub as it is and `datasets.load_dataset(folder)` loads
it. It states how the mix was made from what the other stages recorded in the same output folder
(classifier card, token settings, filter decisions) and names what it could not find.
"""

from __future__ import annotations

import yaml

from curate.io import read_json, write_text
from curate.layout import DATA_DIR, DATASET_CARD, STATS_FILE, Layout
from curate.schema import BEHAVIORS, CONTAMINATION, MIX_SCHEMA, NEAR_DUPLICATE

SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]


def fmt_auc(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _classifier_row(behavior: str, card: dict) -> str:
    """One behavior's row of the classifier table of a dataset card (n/a where an older card lacks a figure)."""
    m = card["metrics"][behavior]
    expected = (f"{m['expected_positives']:.1f} / {m['positives']}" if "expected_positives" in m else "n/a")
    return (f"| {behavior} | {fmt_auc(m['roc_auc'])} | {fmt_auc(m.get('length_only', {}).get('roc_auc'))} "
            f"| {fmt_auc((m.get('baseline') or {}).get('roc_auc'))} | {fmt_auc(m.get('length_matched_roc_auc'))} "
            f"| {expected} | {m['f1']:.3f} | {card['thresholds'][behavior]:.3f} |")


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


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def shares_table(mixes: dict[str, dict]) -> str:
    """Expected share of tokens showing each behavior: corpus, then each mix (with its enrichment)."""
    first = next(iter(mixes.values()))["expected_behavior_share"]
    head = "| behavior | scored corpus | " + " | ".join(mixes) + " |\n|---|---|" + "---|" * len(mixes)
    rows = []
    for b in BEHAVIORS:
        cells = [f"{_pct(s['expected_behavior_share'][b]['mix'])} (×{s['expected_behavior_share'][b]['enrichment']:.2f})"
                 if s["expected_behavior_share"][b]["enrichment"] is not None else "n/a" for s in mixes.values()]
        rows.append(f"| {b} | {_pct(first[b]['corpus'])} | " + " | ".join(cells) + " |")
    return head + "\n" + "\n".join(rows)


def methods_table(methods: dict) -> str:
    """Expected enrichment of each mixing method at the same budget, on the run's scores."""
    if not methods:
        return "No token budget: methods were not compared."
    head = "| method | documents | tokens | " + " | ".join(BEHAVIORS) + " |\n|---|---|---|" + "---|" * len(BEHAVIORS)
    rows = [f"| {name} | {m['documents']:,} | {m['tokens']:,} | "
            + " | ".join("n/a" if m["enrichment"][b] is None else f"×{m['enrichment'][b]:.2f}" for b in BEHAVIORS)
            + " |" for name, m in methods.items()]
    return head + "\n" + "\n".join(rows)


def _control_section(stats: dict) -> str:
    match = stats["matching"]
    hosts = "\n".join(f"| {h} | {s['mix']:.1f}% | {s['control']:.1f}% |" for h, s in match["host_share_percent"].items())
    deciles = " / ".join(f"{m:,.0f}→{c:,.0f}" for m, c in zip(match["length_deciles"]["mix"],
                                                               match["length_deciles"]["control"]))
    return f"""## Matching
The lowest-scoring documents not in the main mix, matched to it per url host and token-length decile
(same token count). Host token shares within 5 percentage points: **{'yes' if match['hosts_within_5pp'] else 'no'}**
(largest gap {match['max_host_gap_pp']:.1f} pp); token-length deciles within 10%:
**{'yes' if match['deciles_within_10pct'] else 'no'}** (largest gap {100 * match['max_decile_gap']:.1f}%;
mix→control: {deciles}). Documents in both: {match['shared_documents']}.

| host | mix | control |
|---|---|---|
{hosts}
"""


def write_cards(layout: Layout) -> list[str]:
    """(Re)write the card of each mix of an output folder (the main mix and its control state both
    mixes' expected behavior shares side by side); return the cards written."""
    mixes = {kind: read_json(layout.mix_dir(kind) / STATS_FILE) for kind in ("mix", "control")
             if (layout.mix_dir(kind) / STATS_FILE).exists()}
    written = []
    for kind, stats in mixes.items():
        path = layout.mix_dir(kind) / DATASET_CARD
        write_text(dataset_card(stats.get("name") or layout.root.resolve().name, stats, layout, mixes), path)
        written.append(str(path))
    return written


def dataset_card(name: str, stats: dict, layout: Layout, mixes: dict[str, dict] | None = None) -> str:
    """Markdown card of a mix: metadata block, what it is, how it was made, its numbers, the expected
    behavior shares (of `mixes`, side by side), how to load it."""
    mixes = mixes or {stats.get("kind", "mix"): stats}
    control = stats.get("kind") == "control"
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
        auc_rows = "\n".join(_classifier_row(b, classifier_card) for b in BEHAVIORS)
        classifier = (f"One fastText model, one-vs-all over the four behaviors, trained on {classifier_card['n_train']} "
                      f"labeled documents. Figures below: {classifier_card['metrics_on']}; baseline: TF-IDF + "
                      "logistic regression on the same folds; length-matched: pairs in one length quintile and url "
                      "host.\n\n| behavior | ROC-AUC | length only | baseline | length-matched | expected / actual "
                      f"positives | F1 | threshold |\n|---|---|---|---|---|---|---|---|\n{auc_rows}")
    what = ("The matched control of a reasoning-behavior mix: documents the classifier scores lowest on four\n"
            "reasoning behaviors (verification, backtracking, subgoal setting, backward chaining), matched to\n"
            "the main mix on url host and length, with the same token count." if control else
            "Continued-pretraining data reweighted towards documents that show four reasoning behaviors\n"
            "(verification, backtracking, subgoal setting, backward chaining), scored by a distilled fastText\n"
            "classifier.")
    method_line = ("matched control (lowest behavior_score first, per host and length band; max repeats "
                   f"{method['max_repeats']})" if control else
                   f"`{method['method']}` (threshold {method['threshold']}, max repeats {method['max_repeats']}, "
                   f"temperature {method['temperature']})")
    shards = (f"{len(stats['shards'])} in `{DATA_DIR}/`, at most {method['shard_rows']:,} rows each"
              + (", copies materialized and shuffled" if stats["materialized"] else ""))
    extra = _control_section(stats) if control else f"""## Methods compared
Expected enrichment (expected share of tokens showing the behavior in the mix ÷ in the scored
corpus) of each method at this budget, on this run's scores:

{methods_table(stats.get("methods", {}))}
"""
    return f"""{metadata_block(name, stats)}
# {name}: {'a matched control' if control else 'a reasoning-behavior mix'} made by curate

{what}

## Expected behavior share
Share of tokens expected to show each behavior (Σ tokens × calibrated probability ÷ Σ tokens), and
the enrichment over the scored corpus:

{shares_table(mixes)}

{extra}
## Numbers
| | |
|---|---|
| documents scored | {stats['documents_in']:,} |
| documents in the mix | {stats['documents_out']:,} ({stats['copies_out']:,} copies) |
| tokens scored | {stats['tokens_in']:,} |
| tokens in the mix | {stats['tokens_out']:,} |
| token budget | {budget} (off by {budget_error}) |
| method | {method_line} |
| shards | {shards} |
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
# datasets 5.x caches a local folder under its name alone: to load two folders of the same name
# (two runs' `mix`), pass each its own cache_dir=..., or use the "parquet" builder with data_dir
# or: pyarrow.dataset.dataset("path/to/this/folder/{DATA_DIR}", format="parquet").to_table()
```

## Sources and licences
The text keeps each source's licence: OpenWebMath pages as published by their sites; in the
bundled sample, Stack Exchange posts (CC BY-SA 4.0) and GSM8K (MIT). Each row's `url` names its origin.
"""
