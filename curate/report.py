"""`curate report OUTPUT_DIR`: plots and an HTML page of a job's output.

Reads what the stages wrote in the output folder (scores, filter stats, mix stats, classifier card)
and writes `report/` beside them: PNG plots (matplotlib, Agg) of each behavior's probability,
tokens by score bucket before and after mixing, and, given a labels file, the classifier's
agreement with those labels (ROC per behavior, documents joined by id); `report/index.html` shows
them with the stats, links `report/examples.html` (the top documents of each behavior with the window
that drove the score, `curate.explain`) and names what it could not draw.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from curate import explain
from curate.card import filter_lines, fmt_auc
from curate.io import atomic_path, read_json, write_json, write_text
from curate.layout import STATS_FILE, Layout
from curate.schema import BEHAVIORS, CONTAMINATION, PROB_COLUMNS, SCORE_COLUMNS
from curate.score import load_scores, scored_shards

INDEX_FILE = "index.html"
HISTOGRAMS, BUCKETS, AGREEMENT = "score_histograms.png", "tokens_by_bucket.png", "classifier_agreement.png"
OUT_OF_FOLD = "classifier_roc_out_of_fold.png"
RELIABILITY = "classifier_reliability_out_of_fold.png"
MAX_MATCHES_SHOWN = 50


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


def _roc_entry(y: np.ndarray, score: np.ndarray) -> dict:
    from curate.metrics import roc_auc

    fpr, tpr = _roc_curve(y, score)
    return {"positives": int(y.sum()), "roc_auc": roc_auc(y, score), "fpr": fpr.tolist(), "tpr": tpr.tolist()}


def classifier_agreement(table, labels_path: str | Path) -> dict:
    """Per behavior: documents in both the scores and the labels (count > 0 = positive), positives,
    ROC-AUC and the ROC curve of the probability against the label."""
    from curate.labels import read_labels

    labels = read_labels(labels_path)
    ids, counts = labels.ids, labels.counts
    row_of = {doc_id: i for i, doc_id in enumerate(table.column("id").to_pylist())}
    pairs = [(row_of[doc_id], k) for k, doc_id in enumerate(ids) if doc_id in row_of]
    rows = np.array([r for r, _ in pairs], dtype=np.int64)
    label_rows = np.array([k for _, k in pairs], dtype=np.int64)
    result = {"title": f"Agreement with {Path(labels_path).name}", "labels": str(labels_path),
              "documents": len(pairs), "behaviors": {}}
    for j, (behavior, col) in enumerate(zip(BEHAVIORS, PROB_COLUMNS)):
        y = counts[label_rows, j] > 0 if len(pairs) else np.zeros(0, dtype=bool)
        score = table.column(col).to_numpy()[rows] if len(pairs) else np.zeros(0)
        result["behaviors"][behavior] = _roc_entry(y, score)
    return result


def read_out_of_fold(oof_path: Path):
    """The classifier's cross-validation predictions (`classifier/oof.parquet`: each document scored
    by a model that did not see it): the table, and per behavior its labels and probabilities."""
    import pyarrow.parquet as pq

    table = pq.read_table(oof_path)
    return table, {b: (table.column(f"label_{b}").to_numpy(zero_copy_only=False).astype(bool),
                       table.column(f"p_{b}").to_numpy().astype(np.float64)) for b in BEHAVIORS}


def out_of_fold_agreement(oof_path: Path, out_of_fold=None) -> dict:
    """The same per-behavior ROC numbers from the classifier's cross-validation (`read_out_of_fold`,
    read from `oof_path` unless given)."""
    table, by_behavior = out_of_fold or read_out_of_fold(oof_path)
    folds = len(set(table.column("fold").to_pylist()))
    return {"title": f"Out-of-fold ROC ({folds}-fold cross-validation)", "labels": str(oof_path),
            "documents": table.num_rows, "behaviors": {b: _roc_entry(y, p) for b, (y, p) in by_behavior.items()}}


def out_of_fold_reliability(oof_path: Path, out_of_fold=None) -> dict:
    """Per behavior, the reliability bins of the calibrated out-of-fold probabilities
    (`curate.metrics.reliability_curve`), the actual positives and the expected ones (Σ p)."""
    from curate.metrics import reliability_curve

    table, by_behavior = out_of_fold or read_out_of_fold(oof_path)
    return {"documents": table.num_rows, "behaviors": {
        b: {"positives": int(y.sum()), "expected_positives": round(float(p.sum()), 2), "bins": reliability_curve(y, p)}
        for b, (y, p) in by_behavior.items()}}


def plot_reliability(reliability: dict, path: Path) -> None:
    """Reliability diagram: observed positive rate against mean predicted probability per bin (marker
    area ~ documents in the bin); on the diagonal a probability means what it says."""
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for behavior, m in reliability["behaviors"].items():
        bins = m["bins"]
        ax.plot([b["mean_predicted"] for b in bins], [b["observed"] for b in bins], "-", alpha=0.6)
        ax.scatter([b["mean_predicted"] for b in bins], [b["observed"] for b in bins],
                   s=[8 + 120 * np.sqrt(b["documents"] / reliability["documents"]) for b in bins],
                   color=ax.lines[-1].get_color(),
                   label=f"{behavior} (expected {m['expected_positives']:.0f} / actual {m['positives']} pos.)")
    ax.plot([0, 1], [0, 1], ":", color="gray", label="perfectly calibrated")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean calibrated probability in the bin")
    ax.set_ylabel("observed share of positives")
    ax.set_title(f"Out-of-fold reliability ({reliability['documents']:,} documents)")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_agreement(agreement: dict, path: Path) -> None:
    """ROC curves of each behavior's probability against the given labels."""
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for behavior, m in agreement["behaviors"].items():
        ax.plot(m["fpr"], m["tpr"], label=f"{behavior} (AUC {fmt_auc(m['roc_auc'])}, {m['positives']} pos.)")
    ax.plot([0, 1], [0, 1], ":", color="gray", label="constant predictor")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"{agreement['title']} ({agreement['documents']:,} documents)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _table(rows: list[tuple], head: tuple | None = None) -> str:
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    header = "<tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in head) + "</tr>" if head else ""
    return f"<table>{header}{cells}</table>"


def html_page(name: str, stats: dict | None, filters: dict | None, plots: list[str], agreement: dict | None,
              not_drawn: list[str], pages: list[tuple[str, str]] = ()) -> str:
    """The report page: numbers, filter decisions, links to the other pages (file, title), plots,
    contamination matches, and what could not be drawn."""
    parts = [f"<h1>{html.escape(name)}</h1>"]
    if stats is not None:
        numbers = [
            ("documents scored", f"{stats['documents_in']:,}"),
            ("documents in the mix", f"{stats['documents_out']:,} ({stats['copies_out']:,} copies)"),
            ("tokens scored", f"{stats['tokens_in']:,}"),
            ("tokens in the mix", f"{stats['tokens_out']:,}"),
            ("token budget", f"{stats['token_budget']:,}" if stats["token_budget"] else "none"),
            ("method", stats["method"]["method"]),
            *((f"dropped: {reason}", f"{n:,}") for reason, n in stats["dropped"].items()),
        ]
        means = [(col, f"{stats['mean_scores_in'][col]:.4f}", f"{stats['mean_scores_out_token_weighted'][col]:.4f}")
                 for col in SCORE_COLUMNS if stats["mean_scores_out_token_weighted"][col] is not None]
        parts += ["<h2>Numbers</h2>", _table(numbers),
                  "<h2>Mean scores</h2>", _table(means, ("score", "scored documents", "mix (token-weighted)"))]
    parts += ["<h2>Filters</h2>", "<ul>" + "".join(
        f"<li>{html.escape(line.lstrip('- ').replace('**', ''))}</li>"
        for line in filter_lines(filters).splitlines()) + "</ul>"]
    if agreement and agreement["documents"]:
        parts += ["<h2>Classifier agreement</h2>", _table(
            [(b, m["positives"], fmt_auc(m["roc_auc"])) for b, m in agreement["behaviors"].items()],
            ("behavior", f"positives of {agreement['documents']} labeled documents", "ROC-AUC"))]
    if pages:
        parts += ["<h2>Pages</h2>", "<ul>" + "".join(f'<li><a href="{href}">{html.escape(title)}</a></li>'
                                                    for href, title in pages) + "</ul>"]
    parts += ["<h2>Plots</h2>"] + [f'<p><img src="{p}" alt="{p}" style="max-width:100%"></p>' for p in plots]
    if not_drawn:
        parts += ["<h2>Not drawn</h2>", "<ul>" + "".join(f"<li>{html.escape(m)}</li>" for m in not_drawn) + "</ul>"]
    matches = (filters or {}).get(CONTAMINATION, {}).get("matches", [])
    if matches:
        parts += [f"<h2>Contamination matches ({len(matches)} documents)</h2>", _table(
            [(m["document"], ", ".join(m["items"]), m["ngram"]) for m in matches[:MAX_MATCHES_SHOWN]],
            ("document", "benchmark items", "a shared n-gram"))]
    style = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #bbb;padding:4px 10px;text-align:left}th{background:#eee}")
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(name)} report</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")


def _optional_json(path: Path):
    return read_json(path) if path.exists() else None


def write_report(layout: Layout, name: str | None = None, labels: str | Path | None = None,
                 fingerprint: str | None = None) -> dict:
    """Write `report/` (plots, index.html) of an output folder from whatever its stages wrote; what
    cannot be drawn (no scores, no mix, no labeled document among the scored ones) is named on the
    page and in the result. Returns the paths written, the agreement numbers and `not_drawn`."""
    name = name or layout.root.resolve().name
    stats = _optional_json(layout.mix_dir() / STATS_FILE)
    filters = _optional_json(layout.stats("filters"))
    report_dir = layout.report_dir
    report_dir.mkdir(parents=True, exist_ok=True)
    plots, not_drawn, agreement, pages = [], [], None, []
    table = load_scores(layout.scores_dir) if scored_shards(layout.scores_dir) else None
    if table is not None:
        plot_histograms(table, report_dir / HISTOGRAMS)
        plots.append(HISTOGRAMS)
    else:
        not_drawn.append(f"score histograms: no scores in {layout.scores_dir}")
    if stats is not None:
        plot_buckets(stats, report_dir / BUCKETS)
        plots.append(BUCKETS)
    else:
        not_drawn.append(f"tokens by score bucket: no mix in {layout.mix_dir()}")
    if layout.oof_file.exists():
        out_of_fold = read_out_of_fold(layout.oof_file)
        plot_agreement(out_of_fold_agreement(layout.oof_file, out_of_fold), report_dir / OUT_OF_FOLD)
        plot_reliability(out_of_fold_reliability(layout.oof_file, out_of_fold), report_dir / RELIABILITY)
        plots += [OUT_OF_FOLD, RELIABILITY]
    else:
        not_drawn.append(f"out-of-fold ROC curves and reliability: no {layout.oof_file} beside the classifier")
    if labels is not None:
        agreement = classifier_agreement(table, labels) if table is not None else None
        if agreement and agreement["documents"]:
            plot_agreement(agreement, report_dir / AGREEMENT)
            plots.append(AGREEMENT)
        else:
            not_drawn.append(f"agreement with {labels}: none of its documents is among the scored ones")
    if (missing := explain.missing(layout, table)) is None:
        explain.write_examples(layout, report_dir / explain.EXAMPLES_FILE, table, name)
        pages.append((explain.EXAMPLES_FILE, "Top documents per behavior, with the window that drove each score"))
    else:
        not_drawn.append(f"top documents per behavior: {missing}")
    write_text(html_page(name, stats, filters, plots, agreement, not_drawn, pages), report_dir / INDEX_FILE)
    result = {"index": str(report_dir / INDEX_FILE), "plots": [str(report_dir / p) for p in plots],
              "pages": [str(report_dir / href) for href, _ in pages], "agreement": agreement, "not_drawn": not_drawn}
    write_json({"fingerprint": fingerprint, **{k: v for k, v in result.items() if k != "agreement"}},
               layout.stats("report"))
    return result
