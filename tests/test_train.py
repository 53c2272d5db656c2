"""The train stage on the real reference labels: real fastText models, cross-validated card,
held-out agreement, NaN-divergence survival and one-line errors for bad labels files."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.config import TrainConfig
from curate.schema import BEHAVIORS
from curate.classifier import CARD_FILE, MODEL_FILE, BehaviorClassifier
from curate.labels import LabelsError, read_labels
from curate.metrics import roc_auc
from curate.train import assign_folds, fasttext_line, fit_fasttext, train
from curate.views import LABEL_PREFIX, classifier_text, classifier_texts, classifier_tokens, token_starts, window_bounds
from tests.conftest import BUNDLED_LABELS
from tests.helpers import run_curate

SMALL = dict(epoch=10, dim=16, bucket=20_000)


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """A model trained (with 5-fold CV) on 4/5 of the reference labels, and the other 1/5."""
    table = pq.read_table(BUNDLED_LABELS)
    ids, _, counts, _ = read_labels(BUNDLED_LABELS)
    is_test = assign_folds(ids, counts > 0, 5, seed=7) == 0
    folder = tmp_path_factory.mktemp("held_out")
    pq.write_table(table.filter(pa.array(~is_test)), folder / "train.parquet")
    pq.write_table(table.filter(pa.array(is_test)), folder / "test.parquet")
    card = train(folder / "train.parquet", folder / "model", TrainConfig(**SMALL), seed=3)
    return folder, card


def test_card_reports_cross_validated_metrics_beside_length_only(held_out):
    folder, card = held_out
    assert json.loads((folder / "model" / CARD_FILE).read_text()) == card
    assert (folder / "model" / MODEL_FILE).stat().st_size > 0
    assert card["n_train"] == 640 and "5-fold cross-validation" in card["metrics_on"]
    for b in BEHAVIORS:
        m = card["metrics"][b]
        for key in ("roc_auc", "pr_auc", "f1", "precision", "recall"):
            assert 0 <= m[key] <= 1, (b, key, m)
            assert 0 <= m["length_only"][key] <= 1, (b, key, m)
        assert m["auc_over_length"] == pytest.approx(m["roc_auc"] - m["length_only"]["roc_auc"], abs=1e-3)
        assert 0 < card["thresholds"][b] < 1
        warned = any(w.startswith(f"{b}:") for w in card["warnings"])
        assert warned == (m["auc_over_length"] < 0.05), (b, m, card["warnings"])
    assert card["recipe"]["window_words"] == 100 and card["n_trained_on_evidence_windows"] > 600


def test_classifier_beats_a_constant_predictor_on_held_out_documents(held_out):
    folder, _ = held_out
    _, texts, counts, _ = read_labels(folder / "test.parquet")
    probs = BehaviorClassifier.load(folder / "model" / MODEL_FILE).predict(texts)
    assert probs.shape == (160, 4) and np.all((probs >= 0) & (probs <= 1))
    for j, b in enumerate(BEHAVIORS):
        # a constant predictor has ROC-AUC 0.5
        assert roc_auc(counts[:, j] > 0, probs[:, j]) > 0.65, b


EDGE_TEXTS = ["", "   \n\t ", "x", "Check: x=2, so $\\frac{a}{b}$ works.\nWait -- that's wrong!",
              "Ünïcödé ＭＡＴＨ\u00a0x\u2003y ∑ ≤ 3", "__label__verification is not a label here", "a\rb\vc\fd\0e"]


def _assert_window_scores_match_fasttext(classifier: BehaviorClassifier, texts: list[str]) -> None:
    """The numpy window scorer gives, for every window, the logits fastText computes for that
    window's text as a line (sentence vector x output rows), and fastText's predict agrees up to
    its 512-step sigmoid table."""
    normalization, words = classifier.recipe["normalization"], classifier.recipe["window_words"]
    probs, owner = classifier.window_probabilities(texts)
    lines, line_owner = [], []
    for i, text in enumerate(texts):
        tokens = classifier_tokens(classifier_texts([text], normalization)[0])
        chunks = [tokens[k: k + words] for k in range(0, len(tokens), words)] if words and tokens else [tokens]
        lines += [" ".join(chunk) for chunk in chunks]
        line_owner += [i] * len(chunks)
    assert owner.tolist() == line_owner
    model = classifier.model
    output = model.get_output_matrix()[[model.get_labels().index(LABEL_PREFIX + b) for b in BEHAVIORS]]
    logits = np.stack([model.get_sentence_vector(line) for line in lines]) @ output.T
    data, starts, first_token = token_starts(texts, normalization)
    ours = classifier.window_logits.logits(data, starts, window_bounds(first_token, words)[0])
    np.testing.assert_allclose(ours, logits, rtol=1e-4, atol=1e-4)
    labels, predicted = model.predict(lines, k=-1, threshold=0.0)
    fasttext_probs = np.array([[dict(zip(names, p))[LABEL_PREFIX + b] for b in BEHAVIORS]
                               for names, p in zip(labels, predicted)])
    np.testing.assert_allclose(probs, fasttext_probs, atol=0.02)


@pytest.mark.parametrize("normalization, words", [("math", 100), ("math", 7), ("plain", 0)])
def test_window_probabilities_are_fasttexts_own_arithmetic(held_out, normalization, words):
    folder, _ = held_out
    _, texts, _, _ = read_labels(folder / "test.parquet")
    classifier = BehaviorClassifier.load(folder / "model" / MODEL_FILE)
    classifier.recipe = {**classifier.recipe, "normalization": normalization, "window_words": words}
    _assert_window_scores_match_fasttext(classifier, texts[:60] + EDGE_TEXTS)


@pytest.mark.parametrize("word_ngrams", [1, 3])
def test_window_scorer_follows_the_models_word_ngrams(tmp_path, word_ngrams):
    _, texts, counts, _ = read_labels(BUNDLED_LABELS)
    lines = [fasttext_line(classifier_text(t, "math"), [b for b, c in zip(BEHAVIORS, row) if c])
             for t, row in zip(texts[:200], counts[:200])]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    params = dict(epoch=5, lr=0.05, dim=8, wordNgrams=word_ngrams, minCount=1, bucket=5000, loss="ova", thread=1, seed=0)
    fit_fasttext(str(tmp_path / "train.txt"), params, str(tmp_path / "m.bin"))
    import fasttext

    recipe = {"normalization": "math", "window_words": 30, "aggregate": "noisy_or", "evidence": True}
    classifier = BehaviorClassifier(fasttext.load_model(str(tmp_path / "m.bin")), recipe)
    _assert_window_scores_match_fasttext(classifier, texts[200:230] + EDGE_TEXTS)


def test_math_view_splits_formulas_into_shared_tokens():
    assert classifier_text("Check: x=12, so $\\frac{a}{B}$", "math").split() == [
        "check", ":", "x", "=", "00", ",", "so", "$", "\\frac", "{", "a", "}", "{", "b", "}", "$"]
    assert classifier_text("Ünï\u00a0x  Y\tZ", "plain") == "Ünï\u00a0x Y Z"  # fastText splits on ASCII whitespace only
    assert LABEL_PREFIX not in classifier_text("__label__none", "plain")
    assert classifier_text("a\ud800b", "plain") == "a?b"  # a lone surrogate (JSON escape) is replaced, not fatal


def test_a_behavior_with_one_positive_trains_and_scores(tmp_path):
    """With one positive document the fold that holds it trains a model that never saw the label:
    its documents get probability 0 for it, and training goes on."""
    table = pq.read_table(BUNDLED_LABELS)
    counts = np.array(table.column("backtracking").to_pylist())
    keep = np.flatnonzero(counts == 0)[:39].tolist() + [int(np.flatnonzero(counts > 0)[0])]
    pq.write_table(table.take(sorted(keep)), tmp_path / "one.parquet")
    card = train(tmp_path / "one.parquet", tmp_path / "model", TrainConfig(**SMALL, cv_folds=2))
    assert card["metrics"]["backtracking"]["positives"] == 1
    _, texts, _, _ = read_labels(tmp_path / "one.parquet")
    probs = BehaviorClassifier.load(tmp_path / "model" / MODEL_FILE).predict(texts)
    assert np.isfinite(probs).all() and ((probs >= 0) & (probs <= 1)).all()


def test_length_calibration_is_fitted_and_applied(tmp_path):
    card = train(BUNDLED_LABELS, tmp_path, TrainConfig(**SMALL, calibrate_length=True, cv_folds=3))
    assert set(card["calibration"]) == set(BEHAVIORS) and all(len(w) == 3 for w in card["calibration"].values())
    _, texts, _, _ = read_labels(BUNDLED_LABELS)
    model = BehaviorClassifier.load(tmp_path / MODEL_FILE)
    calibrated, raw = model.predict(texts[:50]), model.raw_probabilities(texts[:50])
    assert not np.allclose(calibrated, raw, atol=1e-3)


def test_training_survives_nan_divergence(tmp_path):
    _, texts, counts, _ = read_labels(BUNDLED_LABELS)
    lines = [fasttext_line(t, [b for b, c in zip(BEHAVIORS, row) if c]) for t, row in zip(texts[:300], counts[:300])]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    params = dict(epoch=5, lr=50.0, dim=16, wordNgrams=1, minCount=1, bucket=1000, loss="ova", thread=1, seed=0)
    used = fit_fasttext(str(tmp_path / "train.txt"), params, str(tmp_path / "m.bin"))
    assert used["lr"] < 50.0 and (tmp_path / "m.bin").stat().st_size > 0  # lr 50 and 25 diverge with NaN
    with pytest.raises(RuntimeError, match="NaN"):
        fit_fasttext(str(tmp_path / "train.txt"), {**params, "lr": 1e5}, str(tmp_path / "m2.bin"))


def _bad_labels(tmp_path, **columns):
    table = pq.read_table(BUNDLED_LABELS).slice(0, 20)
    for name, values in columns.items():
        i = table.column_names.index(name)
        table = table.drop_columns([name]) if values is None else table.set_column(i, name, pa.array(values))
    pq.write_table(table, tmp_path / "bad.parquet")
    return tmp_path / "bad.parquet"


@pytest.mark.parametrize("columns, message", [
    ({"backtracking": [0] * 7 + [-1] + [0] * 12}, "row 7: 'backtracking' is a negative count (-1)"),
    ({"verification": [0.0] * 3 + [1.5] + [0.0] * 16}, "row 3: 'verification' must be a whole-number count, found 1.5"),
    ({"subgoal_setting": ["0"] * 5 + ["two"] + ["0"] * 14}, "row 0: 'subgoal_setting' must be a whole-number count"),
    ({"backward_chaining": None}, "lacks column(s) backward_chaining"),
])
def test_bad_labels_files_give_one_line_errors(tmp_path, columns, message):
    path = _bad_labels(tmp_path, **columns)
    with pytest.raises(LabelsError) as err:
        read_labels(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value) and "\n" not in str(err.value)
    cli = run_curate("train", path, tmp_path / "out")
    assert cli.returncode != 0 and message in cli.stderr and len(cli.stderr.strip().splitlines()) == 1, cli.stderr
