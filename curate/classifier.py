"""The behavior classifier as the scorer uses it: a fastText model, the recipe that made its
inputs (`curate.views`), its window and document logits (`curate.windowed`) and the calibration
that turns them into one probability per behavior."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from curate.io import read_json
from curate.layout import CARD_FILE, MODEL_FILE
from curate.schema import BEHAVIORS
from curate.views import LABEL_PREFIX, token_starts, window_bounds
from curate.windowed import WindowLogits, aggregate_windows

__all__ = ["BehaviorClassifier", "CARD_FILE", "MODEL_FILE"]
WINDOW_PREFIX = "window_"  # labels of the window model of a `linear` recipe: __label__window_<behavior>
INPUT_CLIP = 20.0  # calibration inputs are logits clipped to +-20 (a label a fold model never saw is -inf)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-z), elementwise."""
    return np.exp(-np.logaddexp(0, -z))  # 1 / (1 + e^-z) without overflow for very negative z


def text_lengths(texts: list[str]) -> np.ndarray:
    """Characters per document: the length feature of the calibration and the length-only scorer."""
    return np.fromiter((len(t) for t in texts), dtype=np.float64, count=len(texts))


def calibration_design(inputs: np.ndarray, n_chars: np.ndarray | None) -> np.ndarray:
    """The calibration's features of one behavior: its (n, k) input logits (clipped), then
    log(characters) when `n_chars` is given."""
    design = np.clip(inputs, -INPUT_CLIP, INPUT_CLIP)
    return design if n_chars is None else np.column_stack([design, np.log(np.maximum(n_chars, 1))])


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
    """A trained classifier: the fastText model, the recipe that made its inputs, and the
    calibration. `predict` gives one probability per behavior per document.

    Recipes: `fit: fasttext` (a model trained by fastText on windows; input: the aggregated window
    logit) and `fit: linear` (`curate.linear`; inputs: the document model's presence logit and, with
    windows, the aggregated logit of the window model). The calibration (card) is
    {"inputs": [names], "length": bool, "weights": {behavior: [intercept, slope per input, (slope of
    log characters)]}}; without one a probability is the sigmoid of the first input."""

    def __init__(self, model, recipe: dict, calibration: dict | None = None):
        self.model, self.recipe, self.calibration = model, recipe, calibration
        self.linear = recipe.get("fit") == "linear"
        labels = [LABEL_PREFIX + b for b in BEHAVIORS]
        if self.linear and recipe["window_words"]:
            labels += [LABEL_PREFIX + WINDOW_PREFIX + b for b in BEHAVIORS]
        self.window_logits = WindowLogits(model, labels)

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
        """(windows, labels) probabilities of each window of the recipe, and the text index of each window."""
        data, starts, first_token = token_starts(texts, self.recipe["normalization"])
        bounds, owner = window_bounds(first_token, self.recipe["window_words"])
        return sigmoid(self.window_logits.logits(data, starts, bounds)), owner

    @property
    def window_model_columns(self) -> slice:
        """The columns of `window_probabilities` of the model that reads windows, one per behavior:
        a linear recipe's window model, else the only model."""
        n = len(BEHAVIORS)
        return slice(n, 2 * n) if self.linear and self.recipe["window_words"] else slice(0, n)

    def inputs(self, texts: list[str]) -> np.ndarray:
        """(n, behaviors, inputs) logits the calibration reads."""
        data, starts, first_token = token_starts(texts, self.recipe["normalization"])
        bounds, owner = window_bounds(first_token, self.recipe["window_words"])
        first_window = np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=len(texts)))])
        rows, line_starts = self.window_logits.line_rows(data, starts, bounds)
        n = len(BEHAVIORS)
        if not self.linear:
            return aggregate_windows(self.window_logits.window_logits(rows, line_starts), first_window,
                                     self.recipe["aggregate"])[:, :, None]
        inputs = [self.window_logits.presence(rows, line_starts, first_window, self.recipe["presence_power"],
                                              columns=slice(0, n))]
        if self.recipe["window_words"]:
            windows = self.window_logits.window_logits(rows, line_starts, columns=slice(n, 2 * n))
            inputs.append(aggregate_windows(windows, first_window, self.recipe["aggregate"]))
        return np.stack(inputs, axis=2)

    def raw_probabilities(self, texts: list[str]) -> np.ndarray:
        """(n, behaviors) probabilities of the first input (before calibration)."""
        return sigmoid(self.inputs(texts)[:, :, 0])

    def predict(self, texts: list[str]) -> np.ndarray:
        """(n, 4) float32 probabilities, one column per behavior."""
        inputs = self.inputs(texts)
        if not self.calibration:
            return sigmoid(inputs[:, :, 0]).astype(np.float32)
        n_chars = text_lengths(texts) if self.calibration["length"] else None
        probs = np.empty((len(texts), len(BEHAVIORS)))
        for j, b in enumerate(BEHAVIORS):
            w = np.asarray(self.calibration["weights"][b])
            probs[:, j] = sigmoid(w[0] + calibration_design(inputs[:, j], n_chars) @ w[1:])
        return probs.astype(np.float32)
