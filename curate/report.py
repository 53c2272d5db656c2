"""`curate report OUTPUT_DIR`: plots and an HTML page of a job's output, and the dataset card.

Reads what the stages wrote (scores, filters/report.json, mix/stats.json, classifier/card.json)
and writes `report/` beside them: PNG plots (matplotlib, Agg) of each behavior's probability,
tokens by score bucket before and after mixing, and, given a labels file, the classifier's
agreement with those labels (ROC per behavior, documents joined by id); `report/index.html` shows
them with the stats. The dataset card `mix/README.md` links the plots.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from curate.io import atomic_path, read_json, write_text
from curate.schema import BEHAVIORS, CONTAMINATION, MIX_SCHEMA, NEAR_DUPLICATE, PROB_COLUMNS, SCORE_COLUMNS

CARD_FILE = "README.md"
REPORT_DIR, INDEX_FILE = "report", "index.html"
HISTOGRAMS, BUCKETS, AGREEMENT = "score_histograms.png", "tokens_by_bucket.png", "classifier_agreement.png"
MAX_MATCHES_SHOWN = 50


def _fmt_auc(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _filter_lines(filters: dict | None) -> str:
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


def dataset_card(name: str, stats: dict, classifier_card: dict, tokens: dict, filters: dict | None = None,
                 plots: list[str] = ()) -> str:
    """Markdown card: what the mix is, how it was made, its numbers, its plots and how to load it."""
    plot_links = "\n\n".join(f"![{p}](../{REPORT_DIR}/{p})" for p in plots)
    report_link = f"\nPlots and the full report: [`../{REPORT_DIR}/{INDEX_FILE}`](../{REPORT_DIR}/{INDEX_FILE}).\n" \
        if plots else ""
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

Filters before mixing:

{_filter_lines(filters)}

Documents not in the mix, by reason:

| reason | documents |
|---|---|
{dropped}

Tokens by behavior-probability bucket, before → after mixing:

| score | {bucket_head} |
|---|{'---|' * len(stats['tokens_by_bucket'][next(iter(stats['tokens_by_bucket']))]['in'])}
{bucket_rows}

{report_link}
{plot_links}

## Classifier
One fastText model, one-vs-all over the four behaviors, trained on {classifier_card['n_train']} labeled
documents. Figures below: {classifier_card['metrics_on']}.

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


def _score_table(output_dir: Path):
    from curate.mix import load_scores
    from curate.score import scored_shards

    return load_scores(scored_shards(output_dir / "scores"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def plot_histograms(table, path: Path) -> None:
    """One histogram per behavior probability and of the combined behavior score (log counts)."""
    plt = _pyplot()

    fig, axes = plt.subplots(1, len(SCORE_COLUMNS), figsize=(4 * len(SCORE_COLUMNS), 3.4), sharey=True)
    for ax, col in zip(axes, SCORE_COLUMNS):
        ax.hist(table.column(col).to_numpy(), bins=40, range=(0, 1), color="#4c72b0")
        ax.set_title(col)
        ax.set_xlabel("probability")
        ax.set_yscale("log")
    axes[0].set_ylabel("documents")
    fig.suptitle(f"Classifier scores of {table.num_rows:,} documents")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_buckets(stats: dict, path: Path) -> None:
    """Tokens per score bucket before and after mixing, one panel per score column."""
    plt = _pyplot()

    columns = list(stats["tokens_by_bucket"])
    fig, axes = plt.subplots(1, len(columns), figsize=(4 * len(columns), 3.6), sharey=True)
    for ax, col in zip(np.atleast_1d(axes), columns):
        buckets = stats["tokens_by_bucket"][col]
        names = list(buckets["in"])
        x = np.arange(len(names))
        ax.bar(x - 0.2, [buckets["in"][b] for b in names], 0.4, label="scored", color="#8c8c8c")
        ax.bar(x + 0.2, [buckets["out"][b] for b in names], 0.4, label="in the mix", color="#dd8452")
        ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
        ax.set_title(col)
    np.atleast_1d(axes)[0].set_ylabel("tokens")
    np.atleast_1d(axes)[0].legend()
    fig.suptitle("Tokens by score bucket, before and after mixing")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _roc_curve(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-score, kind="stable")
    tp = np.concatenate([[0], np.cumsum(y[order])])
    fp = np.concatenate([[0], np.cumsum(~y[order])])
    return fp / max(fp[-1], 1), tp / max(tp[-1], 1)


def classifier_agreement(table, labels_path: str | Path) -> dict:
    """Per behavior: documents in both the scores and the labels (count > 0 = positive), positives,
    ROC-AUC and the ROC curve of the probability against the label."""
    from curate.labels import read_labels
    from curate.metrics import roc_auc

    ids, _, counts, _ = read_labels(labels_path)
    row_of = {doc_id: i for i, doc_id in enumerate(table.column("id").to_pylist())}
    pairs = [(row_of[doc_id], k) for k, doc_id in enumerate(ids) if doc_id in row_of]
    rows = np.array([r for r, _ in pairs], dtype=np.int64)
    label_rows = np.array([k for _, k in pairs], dtype=np.int64)
    result = {"labels": str(labels_path), "documents": len(pairs), "behaviors": {}}
    for j, (behavior, col) in enumerate(zip(BEHAVIORS, PROB_COLUMNS)):
        y = counts[label_rows, j] > 0 if len(pairs) else np.zeros(0, dtype=bool)
        score = table.column(col).to_numpy()[rows] if len(pairs) else np.zeros(0)
        fpr, tpr = _roc_curve(y, score)
        result["behaviors"][behavior] = {"positives": int(y.sum()), "roc_auc": roc_auc(y, score),
                                         "fpr": fpr.tolist(), "tpr": tpr.tolist()}
    return result


def plot_agreement(agreement: dict, path: Path) -> None:
    """ROC curves of each behavior's probability against the given labels."""
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for behavior, m in agreement["behaviors"].items():
        ax.plot(m["fpr"], m["tpr"], label=f"{behavior} (AUC {_fmt_auc(m['roc_auc'])}, {m['positives']} pos.)")
    ax.plot([0, 1], [0, 1], ":", color="gray", label="constant predictor")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"Agreement with {Path(agreement['labels']).name} ({agreement['documents']:,} documents)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _table(rows: list[tuple], head: tuple | None = None) -> str:
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    header = "<tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in head) + "</tr>" if head else ""
    return f"<table>{header}{cells}</table>"


def html_page(name: str, stats: dict, filters: dict | None, plots: list[str], agreement: dict | None) -> str:
    """The report page: numbers, filter decisions, plots and contamination matches."""
    numbers = [
        ("documents scored", f"{stats['docs_in']:,}"),
        ("documents in the mix", f"{stats['docs_out']:,} ({stats['copies_out']:,} copies)"),
        ("tokens scored", f"{stats['tokens_in']:,}"),
        ("tokens in the mix", f"{stats['tokens_out']:,}"),
        ("token budget", f"{stats['token_budget']:,}" if stats["token_budget"] else "none"),
        ("method", stats["method"]["method"]),
        *((f"dropped: {reason}", f"{n:,}") for reason, n in stats["docs_dropped"].items()),
    ]
    means = [(col, f"{stats['mean_scores_in'][col]:.4f}", f"{stats['mean_scores_out_token_weighted'][col]:.4f}")
             for col in SCORE_COLUMNS if stats["mean_scores_out_token_weighted"][col] is not None]
    parts = [f"<h1>{html.escape(name)}</h1>", "<h2>Numbers</h2>", _table(numbers),
             "<h2>Mean scores</h2>", _table(means, ("score", "scored documents", "mix (token-weighted)")),
             "<h2>Filters</h2>", "<ul>" + "".join(
                 f"<li>{html.escape(line.lstrip('- ').replace('**', ''))}</li>"
                 for line in _filter_lines(filters).splitlines()) + "</ul>"]
    if agreement and agreement["documents"]:
        parts += ["<h2>Classifier agreement</h2>", _table(
            [(b, m["positives"], _fmt_auc(m["roc_auc"])) for b, m in agreement["behaviors"].items()],
            ("behavior", f"positives of {agreement['documents']} labeled documents", "ROC-AUC"))]
    parts += ["<h2>Plots</h2>"] + [f'<p><img src="{p}" alt="{p}" style="max-width:100%"></p>' for p in plots]
    matches = (filters or {}).get(CONTAMINATION, {}).get("matches", [])
    if matches:
        parts += [f"<h2>Contamination matches ({len(matches)} documents)</h2>", _table(
            [(m["document"], ", ".join(m["items"]), m["ngram"]) for m in matches[:MAX_MATCHES_SHOWN]],
            ("document", "benchmark items", "a shared n-gram"))]
    style = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #bbb;padding:4px 10px;text-align:left}th{background:#eee}")
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(name)} report</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")


def write_report(output_dir: str | Path, name: str | None = None, labels: str | Path | None = None) -> dict:
    """Write `report/` (plots, index.html) and the dataset card `mix/README.md` of a job's output folder.
    Returns the paths written and, with labels, the agreement numbers."""
    from curate.score import TOKENS_FILE

    output_dir = Path(output_dir)
    name = name or output_dir.name
    stats = read_json(output_dir / "mix" / "stats.json")
    filters_path = output_dir / "filters" / "report.json"
    filters = read_json(filters_path) if filters_path.exists() else None
    report_dir = output_dir / REPORT_DIR
    report_dir.mkdir(parents=True, exist_ok=True)
    table = _score_table(output_dir)
    plot_histograms(table, report_dir / HISTOGRAMS)
    plot_buckets(stats, report_dir / BUCKETS)
    plots = [HISTOGRAMS, BUCKETS]
    agreement = None
    if labels is not None:
        agreement = classifier_agreement(table, labels)
        if agreement["documents"]:
            plot_agreement(agreement, report_dir / AGREEMENT)
            plots.append(AGREEMENT)
    write_text(html_page(name, stats, filters, plots, agreement), report_dir / INDEX_FILE)
    card = dataset_card(name, stats, read_json(output_dir / "classifier" / "card.json"),
                        read_json(output_dir / "scores" / TOKENS_FILE), filters, plots)
    write_text(card, output_dir / "mix" / CARD_FILE)
    return {"index": str(report_dir / INDEX_FILE), "plots": [str(report_dir / p) for p in plots],
            "card": str(output_dir / "mix" / CARD_FILE), "agreement": agreement}
