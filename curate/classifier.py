"""The behavior classifier as the scorer uses it: a fastText model, the recipe that made its
inputs (`curate.views`), its window logits (`curate.windowed`) and the length calibration."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from curate.io import read_json
from curate.layout import CARD_FILE, MODEL_FILE
from curate.schema import BEHAVIORS
from curate.views import LABEL_PREFIX, token_starts, window_bounds
from curate.windowed import WindowLogits

__all__ = ["BehaviorClassifier", "CARD_FILE", "MODEL_FILE"]


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-z), elementwise."""
    return np.exp(-np.logaddexp(0, -z))  # 1 / (1 + e^-z) without overflow for very negative z


def text_lengths(texts: list[str]) -> np.ndarray:
    """Characters per document: the length feature of the calibration and the length-only scorer."""
    return np.fromiter((len(t) for t in texts), dtype=np.float64, count=len(texts))


def calibration_features(probs: np.ndarray, n_chars: np.ndarray) -> np.ndarray:
    """[logit(p), log(characters)] per document, for one behavior's probabilities."""
    return np.column_stack([_logit(probs), np.log(np.maximum(n_chars, 1))])


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, iterations: int = 30) -> list[float]:
    """Logistic regression by Newton's method (L2 on the standardized slopes); returns
    [intercept, slope per column] on the original scale."""
    mean, std = x.mean(0), x.std(0) + 1e-9
    design = np.column_stack([np.ones(len(x)), (x - mean) / std])
    penalty = np.diag([0.0] + [l2] * x.shape[1])
    w = np.zeros(design.shape[1])
    for _ in range(iterations):
        p = sigmoid(design @ w)
        gradient = design.T @ (p - y) + penalty @ w
        hessian = (design * (p * (1 - p))[:, None]).T @ design + penalty
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    slopes = w[1:] / std
    return [float(w[0] - slopes @ mean), *map(float, slopes)]


class BehaviorClassifier:
    """A trained classifier: the fastText model, the recipe that made its inputs, and the length
    calibration. `predict` gives one probability per behavior per document."""

    def __init__(self, model, recipe: dict, calibration: dict | None = None):
        self.model, self.recipe, self.calibration = model, recipe, calibration
        self.window_logits = WindowLogits(model, [LABEL_PREFIX + b for b in BEHAVIORS])

    @classmethod
    def load(cls, model_path: str | Path) -> BehaviorClassifier:
        """The model file and the recipe/calibration of the card beside it (a model without a
        card is read as a plain whole-document model)."""
        import fasttext

        card_path = Path(model_path).parent / CARD_FILE
        card = read_json(card_path) if card_path.exists() else {}
        recipe = card.get("recipe", {"normalization": "plain", "window_words": 0, "aggregate": "max"})
        return cls(fasttext.load_model(str(model_path)), recipe, card.get("calibration"))

    def window_probabilities(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(windows, 4) probabilities of each window of the recipe, and the text index of each window."""
        data, starts, first_token = token_starts(texts, self.recipe["normalization"])
        bounds, owner = window_bounds(first_token, self.recipe["window_words"])
        return sigmoid(self.window_logits.logits(data, starts, bounds)), owner

    def raw_probabilities(self, texts: list[str]) -> np.ndarray:
        """(n, 4) window probabilities aggregated per document, before calibration."""
        probs, owner = self.window_probabilities(texts)
        out = np.zeros((len(texts), len(BEHAVIORS)))
        if self.recipe["aggregate"] == "max":
            np.maximum.at(out, owner, probs)
            return out
        np.add.at(out, owner, np.log1p(-np.clip(probs, 0, 1 - 1e-9)))  # noisy-or: 1 - prod(1 - p)
        return -np.expm1(out)

    def predict(self, texts: list[str]) -> np.ndarray:
        """(n, 4) float32 probabilities, one column per behavior."""
        probs = self.raw_probabilities(texts)
        if self.calibration:
            n_chars = text_lengths(texts)
            for j, b in enumerate(BEHAVIORS):
                w = np.asarray(self.calibration[b])
                probs[:, j] = sigmoid(w[0] + calibration_features(probs[:, j], n_chars) @ w[1:])
        return probs.astype(np.float32)

