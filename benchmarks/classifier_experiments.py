"""Reproduce the classifier recipe comparison of classifiers/README.md.

Each recipe is cross-validated with `curate.train.cross_validate` on the reference labels (5 folds
by document, `curate.train.assign_folds` with the seed; linear fits choose their regularization
inside each training fold; fastText fits each run in a fresh process) and printed as per-behavior
ROC-AUC beside the length-only scorer's and the TF-IDF + logistic regression baseline's on the
same folds (`curate.train.baseline_scores`: the bar of issue 12), with the length-matched ROC-AUC
and the calibration check (expected / actual positives). Results go to
benchmarks/results/classifier_experiments.json (one entry per recipe, kept across runs).

    python3 benchmarks/classifier_experiments.py [--labels PATH] [--only NAME ...] [--list]
    python3 benchmarks/classifier_experiments.py --cost [--corpus /tmp/bench/corpus-10k]  # vs plain fastText passes
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from curate.classifier import text_lengths
from curate.config import TrainConfig
from curate.io import write_json
from curate.labels import read_labels
from curate.metrics import length_matched_auc, roc_auc, url_host
from curate.schema import BEHAVIORS
from curate.train import assign_folds, baseline_scores, cross_validate, evaluate

REPO = Path(__file__).resolve().parent.parent
BATCH = 256  # documents per predict call, as curate.score.BehaviorScorer
FASTTEXT = dict(fit="fasttext", window_words=100, aggregate="noisy_or", calibrate_length=True)  # the previous default
RECIPES = {  # name -> TrainConfig overrides of the default, in the order they were tried
    "fastText trainer: 100-token evidence windows, noisy-or, length calibration (previous default)": FASTTEXT,
    "fastText trainer: same, epoch 50, lr 0.1": {**FASTTEXT, "epoch": 50, "lr": 0.1},
    "linear: document model only": {"window_words": 0},
    "linear: document + 30-token evidence windows, max (default)": {},
    "linear: no word vectors": {"embeddings": "none"},
    "linear: presence power 0.5 (L2-like)": {"presence_power": 0.5},
    "linear: presence power 0.25": {"presence_power": 0.25},
    "linear: windows aggregated by noisy-or": {"aggregate": "noisy_or"},
    "linear: 50-token windows": {"window_words": 50},
    "linear: 100-token windows": {"window_words": 100},
    "linear: window C 0.3": {"window_c": 0.3},
    "linear: window C 3": {"window_c": 3.0},
    "linear: words view (letters only)": {"normalization": "words"},
    "linear: alnum view (letters and digits)": {"normalization": "alnum"},
    "linear: + log length in the calibration": {"calibrate_length": True},
    "linear: word trigrams": {"word_ngrams": 3},
    "linear: no evidence (windows labeled by their document)": {"evidence": False},
    "linear: 100k buckets": {"bucket": 100_000},
}


def scoring_cost(labels: str, model_dir: Path, corpus: str | None = None, repeats: int = 5) -> dict:
    """CPU seconds (best of `repeats`) to score the labeled texts (or the texts of a `corpus` folder of
    Parquet files) with the full recipe (view, windows, presence sums, aggregation, calibration), vs one
    plain whole-document fastText pass of the same model file (the text's whitespace made spaces
    inside the timing), and vs the previous default (fastText's
    trainer, dim 32: what a plain fastText classifier costs) read plainly and by its own recipe."""
    import pyarrow.dataset as ds

    from curate.classifier import MODEL_FILE, BehaviorClassifier
    from curate.train import train
    from curate.views import classifier_texts

    train(labels, model_dir / "linear", TrainConfig())
    train(labels, model_dir / "fasttext", TrainConfig(**FASTTEXT))
    texts = (ds.dataset(sorted(map(str, Path(corpus).glob("*.parquet"))), format="parquet")
             .to_table(columns=["text"]).column("text").to_pylist() if corpus else read_labels(labels).texts)
    linear = BehaviorClassifier.load(model_dir / "linear" / MODEL_FILE)
    fasttext_model = BehaviorClassifier.load(model_dir / "fasttext" / MODEL_FILE)

    def best_of(fn) -> float:
        times = []
        for _ in range(repeats):
            start = time.process_time()
            fn()
            times.append(time.process_time() - start)
        return min(times)

    def batched(predict, items):  # in the scorer's batches
        return lambda: [predict(items[i:i + BATCH]) for i in range(0, len(items), BATCH)]

    def plain_pass(model):
        return batched(lambda batch: model.predict(classifier_texts(batch, "plain"), k=-1, threshold=0.0), texts)

    runs = {"recipe": batched(linear.predict, texts), "same_file_plain": plain_pass(linear.model),
            "fasttext_dim32_plain": plain_pass(fasttext_model.model),
            "fasttext_dim32_recipe": batched(fasttext_model.predict, texts)}
    cpu = {name: round(best_of(fn), 4) for name, fn in runs.items()}
    return {"documents": len(texts), "corpus": corpus or labels, "cpu_s": cpu,
            "recipe_over_same_file_plain": round(cpu["recipe"] / cpu["same_file_plain"], 3),
            "recipe_over_fasttext_dim32_plain": round(cpu["recipe"] / cpu["fasttext_dim32_plain"], 3),
            "fasttext_dim32_recipe_over_its_plain": round(cpu["fasttext_dim32_recipe"] / cpu["fasttext_dim32_plain"], 3)}


def _row(name: str, values: list[float | None], extra: str = "") -> str:
    cells = " ".join("    n/a" if v is None else f"{v:7.3f}" for v in values)
    return f"{name[:70]:70s} {cells} {np.mean([v for v in values if v is not None]):7.3f} {extra}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", default=str(REPO / "curate" / "data" / "labels" / "gold.parquet"))
    parser.add_argument("--only", nargs="*", help="recipe names (or unique prefixes) to run (default: all)")
    parser.add_argument("--set", default="{}", help="JSON TrainConfig overrides: run one extra recipe named by them")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cost", action="store_true", help="only measure the scoring cost ratio")
    parser.add_argument("--corpus", help="with --cost: a folder of Parquet documents to score (default: the labels)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "classifier_experiments.json"))
    args = parser.parse_args()

    if args.cost:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            cost = scoring_cost(args.labels, Path(tmp), args.corpus)
        print(f"scoring {cost['documents']} documents, CPU s (best of 5): {cost['cpu_s']}")
        print(f"recipe / plain pass of the same file {cost['recipe_over_same_file_plain']}x; recipe / plain pass of "
              f"a fastText-trained dim-32 model {cost['recipe_over_fasttext_dim32_plain']}x")
        write_json(cost, Path(args.out).with_name("scoring_cost.json"))
        return
    labels = read_labels(args.labels)
    ids, texts, evidence, positive = labels.ids, labels.texts, labels.evidence, labels.counts > 0
    hosts = [url_host(u) for u in labels.urls]
    n_chars = text_lengths(texts)
    folds = assign_folds(ids, positive, 5, args.seed)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    results.update(labels=args.labels, documents=len(ids), seed=args.seed)
    recipes = dict(RECIPES)
    if json.loads(args.set):
        recipes = {f"linear: {args.set}": json.loads(args.set)}
    elif args.only:
        recipes = {n: o for n, o in RECIPES.items() if any(n.startswith(p) for p in args.only)}
    print(f"{'ROC-AUC, 5-fold CV (seed ' + str(args.seed) + ')':70s} " + " ".join(f"{b[:7]:>7s}" for b in BEHAVIORS)
          + "    mean")
    length_score = np.log(n_chars)
    base = baseline_scores(texts, positive, folds)
    for name, score in (("length only (log characters)", np.repeat(length_score[:, None], 4, axis=1)),
                        ("baseline: TF-IDF (1,2) + logistic regression C=10, same folds", base)):
        aucs = [roc_auc(positive[:, j], score[:, j]) for j in range(4)]
        matched = [length_matched_auc(positive[:, j], score[:, j], n_chars, hosts) for j in range(4)]
        print(_row(name, aucs, "length-matched " + " ".join(f"{m:.3f}" for m in matched)))
        results.setdefault("references", {})[name] = {"roc_auc": dict(zip(BEHAVIORS, aucs)),
                                                      "length_matched_roc_auc": dict(zip(BEHAVIORS, matched))}
    for name, overrides in recipes.items():
        cfg = TrainConfig(**overrides)
        start = time.perf_counter()
        cv = cross_validate(texts, positive, evidence, folds, cfg, ids=ids, seed=args.seed, with_baseline=False)
        seconds = time.perf_counter() - start
        metrics, _ = evaluate(positive, cv["oof_calibrated"], n_chars, folds, base, hosts)
        aucs = [metrics[b]["roc_auc"] for b in BEHAVIORS]
        inputs = {n: [roc_auc(positive[:, j], cv["inputs"][:, j, i]) for j in range(4)]
                  for i, n in enumerate(cv["input_names"])}
        print(_row(name, aucs, f"{seconds:4.0f}s  vs baseline " + " ".join(f"{metrics[b]['auc_over_baseline']:+.3f}"
                                                                            for b in BEHAVIORS)), flush=True)
        print(_row("    length-matched", [metrics[b]["length_matched_roc_auc"] for b in BEHAVIORS],
                   "expected/actual " + " ".join(f"{metrics[b]['expected_over_actual']:.3f}" for b in BEHAVIORS)))
        for input_name, values in inputs.items():
            print(_row(f"    input {input_name} alone", values))
        results.setdefault("recipes", {})[name] = {
            "overrides": overrides, "seconds": round(seconds, 1), "inputs_roc_auc": inputs,
            "metrics": {b: {k: metrics[b][k] for k in ("roc_auc", "pr_auc", "f1", "length_matched_roc_auc",
                                                        "expected_over_actual", "auc_over_baseline")}
                        for b in BEHAVIORS}}
        write_json(results, out)
    print(f"Results in {out}")


if __name__ == "__main__":
    main()
