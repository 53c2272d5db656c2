"""Reproduce the classifier recipe comparison of classifiers/README.md.

Each recipe is cross-validated with `curate.train.cross_validate` on the reference labels (5 folds
by document, seeded; every fold fitted in a fresh process) and printed as a table of per-behavior
ROC-AUC beside the length-only scorer's. Results go to benchmarks/results/classifier_experiments.json.

    python3 benchmarks/classifier_experiments.py [--labels PATH] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from curate.config import TrainConfig
from curate.io import write_json
from curate.schema import BEHAVIORS
from curate.classifier import text_lengths
from curate.labels import read_evidence, read_labels
from curate.train import AUC_MARGIN, assign_folds, cross_validate, evaluate

REPO = Path(__file__).resolve().parent.parent
WHOLE = dict(window_words=0, evidence=False, normalization="plain", calibrate_length=False)
WINDOWS = dict(calibrate_length=False, window_words=50)
RECIPES = {  # name -> TrainConfig overrides, in the order they were tried
    "plain fastText (whole doc)": WHOLE,
    "+ length calibration": {**WHOLE, "calibrate_length": True},
    "math normalization": {**WHOLE, "normalization": "math"},
    "doc-trained, 50-word windows, max": {**WHOLE, "window_words": 50, "aggregate": "max"},
    "evidence windows 50, max": {**WINDOWS, "aggregate": "max", "normalization": "plain"},
    "evidence windows 50, noisy-or": {**WINDOWS, "normalization": "plain"},
    "evidence windows 50, noisy-or, math": WINDOWS,
    "evidence windows 50, noisy-or, math, epoch 50": {**WINDOWS, "epoch": 50},
    "evidence windows 100 tokens, noisy-or, math + length calibration (default)": {},
    "default, epoch 50": {"epoch": 50},
    "default, epoch 50, lr 0.1": {"epoch": 50, "lr": 0.1},
    "default, minCount 1": {"min_count": 1},
    "default, dim 64": {"dim": 64},
    "default, bucket 400k": {"bucket": 400_000},
    "default, wordNgrams 3": {"word_ngrams": 3},
}


def scoring_cost(labels: str, model_dir: Path, repeats: int = 5) -> dict:
    """Seconds to score the labeled texts with the full recipe (windows, math normalization,
    aggregation, calibration) vs one plain whole-document fastText pass of the same model."""
    from curate.classifier import MODEL_FILE, BehaviorClassifier
    from curate.train import train
    from curate.views import classifier_texts

    train(labels, model_dir, TrainConfig())
    _, texts, _, _ = read_labels(labels)
    classifier = BehaviorClassifier.load(model_dir / MODEL_FILE)

    def best_of(fn) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    whole = best_of(lambda: classifier.model.predict(classifier_texts(texts, "plain"), k=-1, threshold=0.0))
    recipe = best_of(lambda: classifier.predict(texts))
    return {"documents": len(texts), "whole_document_fasttext_s": round(whole, 4), "recipe_s": round(recipe, 4),
            "ratio": round(recipe / whole, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", default=str(REPO.parent / "shared" / "labels" / "gold.parquet"))
    parser.add_argument("--only", nargs="*", help="recipe names to run (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cost", action="store_true", help="only measure the scoring cost ratio")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "classifier_experiments.json"))
    args = parser.parse_args()

    if args.cost:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            cost = scoring_cost(args.labels, Path(tmp))
        print(f"scoring {cost['documents']} documents: whole-document fastText {cost['whole_document_fasttext_s']} s, "
              f"recipe {cost['recipe_s']} s, ratio {cost['ratio']}")
        write_json(cost, Path(args.out).with_name("scoring_cost.json"))
        return
    ids, texts, counts, _ = read_labels(args.labels)
    evidence = read_evidence(args.labels)
    positive = counts > 0
    n_chars = text_lengths(texts)
    results = {"labels": args.labels, "documents": len(ids), "seed": args.seed, "recipes": {}}
    header = f"{'recipe':58s} " + " ".join(f"{b[:12]:>12s}" for b in BEHAVIORS) + "   mean   secs"
    print(header)
    for name, overrides in RECIPES.items():
        if args.only and name not in args.only:
            continue
        cfg = TrainConfig(**overrides)
        folds = assign_folds(ids, positive, cfg.cv_folds, args.seed)
        start = time.perf_counter()
        cv = cross_validate(texts, positive, evidence, folds, cfg)
        seconds = time.perf_counter() - start
        metrics, _ = evaluate(positive, cv["oof_calibrated"], n_chars, folds)
        if not results["recipes"]:
            length = [metrics[b]["length_only"]["roc_auc"] for b in BEHAVIORS]
            results["length_only"] = dict(zip(BEHAVIORS, length))
            print(f"{'length only (log characters)':58s} " + " ".join(f"{a:12.3f}" for a in length)
                  + f" {np.mean(length):6.3f}")
        aucs = [metrics[b]["roc_auc"] for b in BEHAVIORS]
        flags = ["" if metrics[b]["auc_over_length"] >= AUC_MARGIN else "*" for b in BEHAVIORS]
        print(f"{name:58s} " + " ".join(f"{a:11.3f}{f or ' '}" for a, f in zip(aucs, flags))
              + f" {np.mean(aucs):6.3f} {seconds:6.0f}", flush=True)
        results["recipes"][name] = {"overrides": overrides, "seconds": round(seconds, 1), "metrics": metrics}
        write_json(results, args.out)
    print(f"* = not {AUC_MARGIN} above length-only. Results in {args.out}")


if __name__ == "__main__":
    main()
