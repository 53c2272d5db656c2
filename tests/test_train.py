"""The train stage on the real reference labels: real fastText model files (written by the linear
fit, or trained by fastText), the cross-validated card (baseline, length-matched ROC-AUC,
out-of-fold calibration), the scorer's arithmetic against fastText's own, divergence survival and
one-line errors for bad labels files."""

from __future__ import annotations

import json
import subprocess
import sys

import fasttext
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.classifier import CARD_FILE, MODEL_FILE, WINDOW_PREFIX, BehaviorClassifier
from curate.config import TrainConfig
from curate.labels import LabelsError, read_labels
from curate.linear import Corpus, featurize, fit_document_model, write_fasttext_model
from curate.evidence import evidence_lines
from curate.metrics import length_matched_auc, reliability_curve, roc_auc
from curate.schema import BEHAVIORS
from curate.train import MAX_ROW_LOGIT, _quotes, assign_folds, fasttext_line, fit_fasttext, recipe_of, train
from curate.views import LABEL_PREFIX, classifier_text, classifier_texts, classifier_tokens, token_starts, window_bounds
from curate.windowed import EOS, SHORT_TOKEN, distinct_sums, fnv1a, fnv1a_array
from tests.conftest import BUNDLED_LABELS
from tests.helpers import run_curate

SMALL = dict(bucket=50_000, c_grid=[3.0, 10.0], embedding_grid=[0.0, 1.0])  # a faster linear fit


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """A model trained (with 5-fold CV) on 4/5 of the reference labels, and the other 1/5."""
    table = pq.read_table(BUNDLED_LABELS)
    labels = read_labels(BUNDLED_LABELS)
    ids, counts = labels.ids, labels.counts
    is_test = assign_folds(ids, counts > 0, 5, seed=7) == 0
    folder = tmp_path_factory.mktemp("held_out")
    pq.write_table(table.filter(pa.array(~is_test)), folder / "train.parquet")
    pq.write_table(table.filter(pa.array(is_test)), folder / "test.parquet")
    card = train(folder / "train.parquet", folder / "model", TrainConfig(**SMALL), seed=3)
    return folder, card


def test_card_reports_cross_validated_metrics_beside_length_only_and_the_baseline(held_out):
    folder, card = held_out
    assert json.loads((folder / "model" / CARD_FILE).read_text()) == card
    assert (folder / "model" / MODEL_FILE).stat().st_size > 0
    assert card["n_train"] == 640 and "5-fold cross-validation" in card["metrics_on"]
    for b in BEHAVIORS:
        m = card["metrics"][b]
        for scorer in (m, m["length_only"], m["baseline"]):
            for key in ("roc_auc", "pr_auc", "f1", "precision", "recall", "length_matched_roc_auc"):
                assert 0 <= scorer[key] <= 1, (b, key, scorer)
        assert m["auc_over_length"] == pytest.approx(m["roc_auc"] - m["length_only"]["roc_auc"], abs=1e-3)
        assert m["auc_over_baseline"] == pytest.approx(m["roc_auc"] - m["baseline"]["roc_auc"], abs=1e-3)
        assert 0 < card["thresholds"][b] < 1
        warned = any(w.startswith(f"{b}:") for w in card["warnings"])
        assert warned == (m["auc_over_length"] < 0.05 or m["auc_over_baseline"] < 0), (b, m, card["warnings"])
        # the signal the recipe was chosen for, on the 640 training documents
        assert m["roc_auc"] > m["length_only"]["roc_auc"] and m["roc_auc"] > 0.78, (b, m["roc_auc"])
    assert card["recipe"]["fit"] == "linear" and card["n_trained_on_evidence_windows"] > 600
    assert set(card["fit"]["lambda_c"]) == set(BEHAVIORS)


def test_calibration_is_fitted_out_of_fold(held_out):
    """Out-of-fold calibrated probabilities expect as many positives as there are (within 15%),
    and the reliability bins hold every document with means inside their bins."""
    _, card = held_out
    for b in BEHAVIORS:
        m = card["metrics"][b]
        assert m["expected_over_actual"] == pytest.approx(m["expected_positives"] / m["positives"], abs=1e-3)
        assert 0.85 <= m["expected_over_actual"] <= 1.15, (b, m["expected_positives"], m["positives"])
        bins = m["reliability"]
        assert sum(x["documents"] for x in bins) == card["n_train"]
        assert all(x["bin"][0] <= x["mean_predicted"] <= x["bin"][1] and 0 <= x["observed"] <= 1 for x in bins)
        assert sum(x["positives"] for x in bins) == m["positives"]
        assert all(x["observed"] == pytest.approx(x["positives"] / x["documents"], abs=1e-4) for x in bins)
    assert card["calibration"]["inputs"] == ["document", "window_" + card["recipe"]["aggregate"]]
    assert all(len(w) == 3 for w in card["calibration"]["weights"].values())


def test_classifier_beats_a_constant_predictor_on_held_out_documents(held_out):
    folder, _ = held_out
    test = read_labels(folder / "test.parquet")
    texts, counts = test.texts, test.counts
    probs = BehaviorClassifier.load(folder / "model" / MODEL_FILE).predict(texts)
    assert probs.shape == (160, 4) and np.all((probs >= 0) & (probs <= 1))
    for j, b in enumerate(BEHAVIORS):
        # a constant predictor has ROC-AUC 0.5
        assert roc_auc(counts[:, j] > 0, probs[:, j]) > 0.7, b


def test_the_model_file_is_a_fasttext_model(held_out):
    """fastText loads the written file and predicts with it; its labels are the four behaviors
    (document model) and their window models."""
    folder, _ = held_out
    model = fasttext.load_model(str(folder / "model" / MODEL_FILE))
    assert model.get_labels() == [LABEL_PREFIX + b for b in BEHAVIORS] + [LABEL_PREFIX + WINDOW_PREFIX + b for b in BEHAVIORS]
    assert model.f.getArgs().maxn == 0 and "ova" in str(model.f.getArgs().loss) and EOS in model.get_words()
    labels, probs = model.predict("to show that x = 0 it suffices to check that", k=-1, threshold=0.0)
    assert len(labels) == 8 and np.all((probs > 0) & (probs <= 1 + 1e-4))  # fastText adds 1e-5 to its sigmoid


EDGE_TEXTS = ["", "   \n\t ", "x", "Check: x=2, so $\\frac{a}{b}$ works.\nWait -- that's wrong!",
              "Ünïcödé ＭＡＴＨ\u00a0x\u2003y ∑ ≤ 3", "__label__verification is not a label here", "a\rb\vc\fd\0e"]


def _assert_window_scores_match_fasttext(classifier: BehaviorClassifier, texts: list[str], labels: list[str]) -> None:
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
    output = model.get_output_matrix()[[model.get_labels().index(label) for label in labels]]
    logits = np.stack([model.get_sentence_vector(line) for line in lines]) @ output.T
    data, starts, first_token = token_starts(texts, normalization)
    ours = classifier.window_logits.logits(data, starts, window_bounds(first_token, words)[0])
    np.testing.assert_allclose(ours, logits, rtol=1e-4, atol=1e-4)
    predicted_labels, predicted = model.predict(lines, k=-1, threshold=0.0)
    fasttext_probs = np.array([[dict(zip(names, p))[label] for label in labels]
                               for names, p in zip(predicted_labels, predicted)])
    np.testing.assert_allclose(probs, fasttext_probs, atol=0.02)


@pytest.mark.parametrize("normalization, words", [("math", 50), ("math", 7), ("plain", 0), ("words", 20)])
def test_window_probabilities_are_fasttexts_own_arithmetic(held_out, normalization, words):
    folder, _ = held_out
    texts = read_labels(folder / "test.parquet").texts
    classifier = BehaviorClassifier.load(folder / "model" / MODEL_FILE)
    classifier.recipe = {**classifier.recipe, "normalization": normalization, "window_words": words}
    labels = [LABEL_PREFIX + b for b in BEHAVIORS] + [LABEL_PREFIX + WINDOW_PREFIX + b for b in BEHAVIORS]
    _assert_window_scores_match_fasttext(classifier, texts[:60] + EDGE_TEXTS, labels)


def _fasttext_rows(model, tokens: list[str]) -> list[int]:
    """fastText's input rows of a line, as its dictionary's getLine makes them (no subwords), in
    plain Python: known words and the end-of-line token, then every 2..wordNgrams-gram's bucket."""
    args, n_words = model.f.getArgs(), len(model.get_words())
    tokens = tokens + [EOS]
    hashes = [fnv1a(t) & 0xFFFFFFFFFFFFFFFF for t in tokens]  # sign-extended to 64 bits
    rows = [model.get_word_id(t) for t in tokens if model.get_word_id(t) >= 0]
    for i in range(len(tokens)):
        h = hashes[i]
        for j in range(i + 1, min(len(tokens), i + args.wordNgrams)):
            h = (h * 116049371 + hashes[j]) & 0xFFFFFFFFFFFFFFFF
            rows.append(n_words + h % args.bucket)
    return rows


def test_document_presence_is_fasttexts_rows_counted_once(held_out):
    """A document's presence logit is the sum over the distinct input rows of its windows (each
    read as a fastText line) of their logits, divided by their number ** power."""
    folder, _ = held_out
    classifier = BehaviorClassifier.load(folder / "model" / MODEL_FILE)
    model, words, power = classifier.model, classifier.recipe["window_words"], classifier.recipe["presence_power"]
    texts = read_labels(folder / "test.parquet").texts
    texts = texts[:40] + EDGE_TEXTS
    table = model.get_input_matrix() @ model.get_output_matrix()[: len(BEHAVIORS)].T
    expected = []
    for text in texts:
        tokens = classifier_tokens(classifier_texts([text], "math")[0])
        windows = [tokens[k: k + words] for k in range(0, len(tokens), words)] or [[]]
        for window in windows[:3]:  # the oracle's rows are fastText's: their mean is its sentence vector
            np.testing.assert_allclose(table[_fasttext_rows(model, window)].mean(axis=0),
                                       model.get_sentence_vector(" ".join(window)) @ model.get_output_matrix()[:4].T,
                                       rtol=1e-4, atol=1e-5)
        distinct = sorted({r for window in windows for r in _fasttext_rows(model, window)})
        expected.append(table[distinct].sum(axis=0) / len(distinct) ** power)
    data, starts, first_token = token_starts(texts, "math")
    bounds, owner = window_bounds(first_token, words)
    rows, line_starts = classifier.window_logits.line_rows(data, starts, bounds)
    first_window = np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=len(texts)))])
    ours = classifier.window_logits.presence(rows, line_starts, first_window, power, columns=slice(0, len(BEHAVIORS)))
    np.testing.assert_allclose(ours, np.array(expected), rtol=1e-4, atol=1e-4)


def test_distinct_sums_count_each_row_once():
    table = np.arange(12, dtype=np.float32).reshape(6, 2)
    table[5] = 0  # the scorer's `nothing` row
    rows = np.array([[0, 1, 1, 5, 2, 2, 3], [1, 5, 4, 5, 2, 5, 5]])  # 5: nothing
    sums, counts = distinct_sums(table, rows, np.array([0, 3, 3 + 4]), nothing=5)
    # group 0: rows {0, 1, 4} (1 twice); group 1: rows {5 -> none, 2, 3}
    np.testing.assert_array_equal(counts, [3, 2])
    np.testing.assert_allclose(sums, [table[[0, 1, 4]].sum(0), table[[2, 3]].sum(0)])


@pytest.mark.parametrize("word_ngrams", [1, 2, 3])
def test_window_scorer_follows_the_models_word_ngrams(tmp_path, word_ngrams):
    """A fastText file written with seeded weights (deterministic and well-conditioned: nothing to
    diverge) and 1, 2 or 3-word n-grams: the scorer reads it as fastText does."""
    texts = read_labels(BUNDLED_LABELS).texts
    words = sorted({t for text in texts[:200] for t in classifier_text(text, "math").split()}) + [EOS]
    labels = [LABEL_PREFIX + b for b in BEHAVIORS]
    rng = np.random.default_rng(word_ngrams)
    bucket = 5000
    write_fasttext_model(tmp_path / "m.bin", words, np.ones(len(words)), labels, np.ones(4),
                         rng.normal(size=(len(words) + bucket, 8)), rng.normal(size=(4, 8)),
                         word_ngrams=word_ngrams, bucket=bucket)
    recipe = {"normalization": "math", "window_words": 30, "aggregate": "noisy_or"}
    classifier = BehaviorClassifier(fasttext.load_model(str(tmp_path / "m.bin")), recipe)
    _assert_window_scores_match_fasttext(classifier, texts[200:230] + EDGE_TEXTS, labels)


def test_writer_reproduces_a_fasttext_trained_model_byte_for_byte(tmp_path):
    reference = read_labels(BUNDLED_LABELS)
    texts, counts = reference.texts, reference.counts
    lines = [fasttext_line(classifier_text(t, "math"), [b for b, c in zip(BEHAVIORS, row) if c])
             for t, row in zip(texts[:100], counts[:100])]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    params = dict(epoch=2, lr=0.1, dim=8, wordNgrams=2, minCount=2, bucket=3000, loss="ova", thread=1, seed=0)
    fit_fasttext(str(tmp_path / "train.txt"), params, str(tmp_path / "trained.bin"))
    model = fasttext.load_model(str(tmp_path / "trained.bin"))
    args = model.f.getArgs()
    words, word_counts = model.get_words(include_freq=True)
    labels, label_counts = model.get_labels(include_freq=True)
    original = (tmp_path / "trained.bin").read_bytes()
    ntokens = int(np.frombuffer(original[76:84], dtype="<i8")[0])  # the dictionary's token count (not exposed)
    write_fasttext_model(tmp_path / "written.bin", words, word_counts, labels, label_counts, model.get_input_matrix(),
                         model.get_output_matrix(), word_ngrams=args.wordNgrams, bucket=args.bucket, epoch=args.epoch,
                         min_count=args.minCount, ntokens=ntokens, ws=args.ws, neg=args.neg,
                         lr_update_rate=args.lrUpdateRate, t=args.t)
    assert (tmp_path / "written.bin").read_bytes() == original


def test_the_document_model_never_reads_test_labels():
    """Regularization is chosen inside the training documents: flipping every label of the test
    documents changes neither the model nor its test logits."""
    labels = read_labels(BUNDLED_LABELS)
    ids, texts, counts = labels.ids, labels.texts, labels.counts
    ids, texts, positive = ids[:300], texts[:300], counts[:300] > 0
    cfg = TrainConfig(**SMALL, window_words=0)
    quote_texts, quotes = _quotes(texts, [{}] * len(texts))
    corpus = Corpus.of(texts + quote_texts, cfg.normalization)
    feat = featurize(corpus, len(texts), evidence_lines(corpus, len(texts), positive, quotes, 0, False), recipe_of(cfg))
    folds = assign_folds(ids, positive, 5, 0)
    train_docs, test_docs = np.flatnonzero(folds != 0), np.flatnonzero(folds == 0)
    inner = assign_folds([ids[i] for i in train_docs], positive[train_docs], 5, 0)
    flipped = positive.copy()
    flipped[test_docs] = ~flipped[test_docs]
    fits = [fit_document_model(feat, train_docs, test_docs, p, inner, cfg.c_grid, cfg.embedding_grid, cfg.min_count,
                               cfg.presence_power) for p in (positive, flipped)]
    np.testing.assert_array_equal(fits[0][1], fits[1][1])
    np.testing.assert_array_equal(fits[0][0].weights, fits[1][0].weights)


def test_length_matched_auc_compares_pairs_of_like_length_and_host():
    n_chars = np.array([100, 110, 120, 130, 1000, 1100, 1200, 1300], dtype=float)
    hosts = ["a", "a", "b", "b", "a", "a", "b", "b"]
    y = np.array([1, 0, 1, 0, 1, 0, 0, 1], dtype=bool)
    score = np.array([0.9, 0.1, 0.2, 0.8, 0.6, 0.6, 0.3, 0.7])
    # two length bins (first four, last four); a pair per bin and host: (0,1) won, (2,3) lost, (4,5) tied, (7,6) won
    assert length_matched_auc(y, score, n_chars, hosts, quantiles=2) == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    assert length_matched_auc(y, score, n_chars, ["x"] * 4 + ["y"] * 4, quantiles=1) == pytest.approx(
        (roc_auc(y[:4], score[:4]) * 4 + roc_auc(y[4:], score[4:]) * 4) / 8)
    assert reliability_curve(y, score, bins=2) == [
        {"bin": [0.0, 0.5], "documents": 3, "positives": 1, "mean_predicted": 0.2, "observed": 0.3333},  # 0.1, 0.2, 0.3
        {"bin": [0.5, 1.0], "documents": 5, "positives": 3, "mean_predicted": 0.72, "observed": 0.6}]


def test_math_view_splits_formulas_into_shared_tokens():
    assert classifier_text("Check: x=12, so $\\frac{a}{B}$", "math").split() == [
        "check", ":", "x", "=", "00", ",", "so", "$", "\\frac", "{", "a", "}", "{", "b", "}", "$"]
    assert classifier_text("Ünï\u00a0x  Y\tZ", "plain") == "Ünï\u00a0x Y Z"  # fastText splits on ASCII whitespace only
    assert LABEL_PREFIX not in classifier_text("__label__none", "plain")
    assert classifier_text("a\ud800b", "plain") == "a?b"  # a lone surrogate (JSON escape) is replaced, not fatal
    assert classifier_text("Wait, that's WRONG: x=2 $\\frac{a}{b}$", "words") == "wait that s wrong x frac a b"


def test_a_behavior_with_one_positive_trains_and_scores(tmp_path):
    """With one positive document the fold that holds it trains a model that never saw the label:
    its documents get a low probability for it, and training goes on."""
    table = pq.read_table(BUNDLED_LABELS)
    counts = np.array(table.column("backtracking").to_pylist())
    keep = np.flatnonzero(counts == 0)[:39].tolist() + [int(np.flatnonzero(counts > 0)[0])]
    pq.write_table(table.take(sorted(keep)), tmp_path / "one.parquet")
    card = train(tmp_path / "one.parquet", tmp_path / "model", TrainConfig(**SMALL, cv_folds=2))
    assert card["metrics"]["backtracking"]["positives"] == 1
    texts = read_labels(tmp_path / "one.parquet").texts
    probs = BehaviorClassifier.load(tmp_path / "model" / MODEL_FILE).predict(texts)
    assert np.isfinite(probs).all() and ((probs >= 0) & (probs <= 1)).all()


def test_the_fasttext_trainer_recipe_trains_and_is_calibrated(tmp_path):
    card = train(BUNDLED_LABELS, tmp_path, TrainConfig(fit="fasttext", epoch=5, dim=16, bucket=20_000,
                                                       aggregate="noisy_or", calibrate_length=True, cv_folds=3))
    assert card["calibration"]["inputs"] == ["window_noisy_or"] and card["calibration"]["length"]
    texts = read_labels(BUNDLED_LABELS).texts
    model = BehaviorClassifier.load(tmp_path / MODEL_FILE)
    calibrated, raw = model.predict(texts[:50]), model.raw_probabilities(texts[:50])
    assert not np.allclose(calibrated, raw, atol=1e-3)
    for b in BEHAVIORS:
        assert 0.85 <= card["metrics"][b]["expected_over_actual"] <= 1.15, b


def _fasttext_lines(tmp_path, n: int = 300, normalization: str = "plain") -> str:
    labels = read_labels(BUNDLED_LABELS)
    texts, counts = labels.texts, labels.counts
    lines = [fasttext_line(classifier_text(t, normalization), [b for b, c in zip(BEHAVIORS, row) if c])
             for t, row in zip(texts[:n], counts[:n])]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    return str(tmp_path / "train.txt")


def test_training_survives_nan_divergence(tmp_path):
    train_file = _fasttext_lines(tmp_path)
    params = dict(epoch=5, lr=50.0, dim=16, wordNgrams=1, minCount=1, bucket=1000, loss="ova", thread=1, seed=0)
    used = fit_fasttext(train_file, params, str(tmp_path / "m.bin"))
    assert used["lr"] < 50.0 and (tmp_path / "m.bin").stat().st_size > 0  # lr 50 and 25 diverge with NaN
    with pytest.raises(RuntimeError, match="NaN"):
        fit_fasttext(train_file, {**params, "lr": 1e5}, str(tmp_path / "m2.bin"))


def test_a_fit_whose_weights_explode_is_refitted(tmp_path):
    """A real fastText fit whose weights explode without a NaN: word vectors that start at ~1e6
    grow the output rows in proportion to the learning rate, to row logits of ~2.4e4 at lr 1e-8
    (deterministic, unlike fastText's chaotic high-lr regime). The fit is detected as diverged and
    refitted at half the rate until it is sane: 5e-9 (~1.2e4, again) and 2.5e-9 (~6.5e3, kept)."""
    train_file = _fasttext_lines(tmp_path, n=200, normalization="math")
    vocabulary = sorted({w for w in open(train_file).read().split() if not w.startswith(LABEL_PREFIX)})
    rng = np.random.default_rng(0)
    with open(tmp_path / "huge.vec", "w") as vectors:
        vectors.write(f"{len(vocabulary)} 16\n")
        for word in vocabulary:
            vectors.write(word + " " + " ".join(f"{x:.3e}" for x in rng.normal(size=16) * 1e6) + "\n")
    params = dict(epoch=1, lr=1e-8, dim=16, wordNgrams=2, minCount=1, bucket=5000, loss="ova", thread=1, seed=0,
                  pretrainedVectors=str(tmp_path / "huge.vec"))
    used = fit_fasttext(train_file, params, str(tmp_path / "m.bin"))
    assert used["lr"] == pytest.approx(2.5e-9)
    model = fasttext.load_model(str(tmp_path / "m.bin"))
    assert 1e3 < np.abs(model.get_input_matrix() @ model.get_output_matrix().T).max() < MAX_ROW_LOGIT
    with pytest.raises(RuntimeError, match="diverged"):  # never sane within MAX_FITS halvings
        fit_fasttext(train_file, {**params, "lr": 1e-5}, str(tmp_path / "m2.bin"))


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


def test_fnv1a_array_is_fasttexts_hash_of_every_string():
    """The vectorized hash equals the per-string one (fastText's, bytes sign-extended) for empty, ASCII,
    multi-byte, and longer-than-SHORT_TOKEN strings, also on a slice of an array."""
    rng = np.random.default_rng(0)
    alphabet = list("ab\\$0") + ["é", "中", "𝛼"]
    strings = ["", "a", "</s>", "x" * SHORT_TOKEN, "y" * (SHORT_TOKEN + 1), "é" * 100] + [
        "".join(rng.choice(alphabet, size=int(rng.integers(0, 70)))) for _ in range(3000)]
    array = pa.array(strings, pa.large_string())
    assert fnv1a_array(array).tolist() == [fnv1a(s) for s in strings]
    assert fnv1a_array(array.slice(4, 500)).tolist() == [fnv1a(s) for s in strings[4:504]]
    assert fnv1a_array(array.slice(0, 0)).tolist() == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_loading_a_classifier_keeps_freed_batch_memory_for_reuse():
    """After `keep_freed_memory` (which loading a classifier calls) a freed array of a scoring batch's
    size is reused by the next one: filling it again costs (almost) no page faults, where glibc's
    defaults map and zero it afresh. Checked in a fresh process, before and after."""
    script = (
        "import resource, numpy as np\n"
        "from curate.windowed import keep_freed_memory\n"
        "def batch():\n"  # a batch's arrays alive together (6 x 12 MB, filled), then all freed
        "    arrays = [np.ones(12 << 20, dtype=np.uint8) for _ in range(6)]\n"
        "def faults():\n"
        "    for _ in range(3): batch()\n"
        "    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "    for _ in range(5): batch()\n"
        "    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before\n"
        "default = faults()\n"
        "assert keep_freed_memory()\n"
        "print(default, faults())\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    default, tuned = map(int, result.stdout.split())
    assert default > 5_000 and tuned < 500, (default, tuned)  # a batch is 18,432 pages of 4 KiB
