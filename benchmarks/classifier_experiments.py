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
from curate.schema import BEHAVIORS, normalize_text
from curate.train import AUC_MARGIN, assign_folds, cross_validate, evaluate, read_evidence, read_labels

REPO = Path(__file__).resolve().parent.parent
WHOLE = dict(window_words=0, evidence=False, normalization="plain")
RECIPES = {  # name -> TrainConfig overrides, in the order they were tried
    "plain fastText (whole doc)": WHOLE,
    "+ length calibration": {**WHOLE, "calibrate_length": True},
    "math normalization": {**WHOLE, "normalization": "math"},
    "doc-trained, 50-word windows, max": {**WHOLE, "window_words": 50, "aggregate": "max"},
    "evidence windows 50, max": {"aggregate": "max", "normalization": "plain"},
    "evidence windows 50, noisy-or": {"normalization": "plain"},
    "evidence windows 30, noisy-or": {"normalization": "plain", "window_words": 30},
    "evidence windows 50, noisy-or, math": {},
    "evidence windows 50, noisy-or, math, epoch 50": {"epoch": 50},
    "evidence windows 50, noisy-or, math, dim 16": {"dim": 16},
    "evidence windows 50, noisy-or, math + length calibration": {"calibrate_length": True},
    "evidence windows 50, max, math + length calibration": {"aggregate": "max", "calibrate_length": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", default=str(REPO.parent / "shared" / "labels" / "gold.parquet"))
    parser.add_argument("--only", nargs="*", help="recipe names to run (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "classifier_experiments.json"))
    args = parser.parse_args()

    ids, texts, counts, _ = read_labels(args.labels)
    evidence = read_evidence(args.labels)
    positive = counts > 0
    n_chars = np.array([len(normalize_text(t)) for t in texts], dtype=np.float64)
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
