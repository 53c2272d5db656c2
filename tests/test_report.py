"""`curate report`: plots, the HTML page (rendered by headless Chromium) and the card's links."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from curate.schema import BEHAVIORS
from tests.conftest import BUNDLED_LABELS, REPO
from tests.helpers import chromium, pixel_stats, write_job

EVAL_SAMPLE = REPO / "curate" / "data" / "evals" / "gsm8k-sample.parquet"


def curate(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "curate", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    """A job over the 800 labeled reference documents (so that labels join scores by id), filters on."""
    tmp = tmp_path_factory.mktemp("report")
    job = write_job(tmp / "job.yaml", name="report-test", output_dir=str(tmp / "out"),
                    input={"paths": [str(BUNDLED_LABELS)]}, train={"labels": str(BUNDLED_LABELS)},
                    score={"tasks": 2, "workers": 2},
                    filters={"decontaminate": {"eval_sets": [{"path": str(EVAL_SAMPLE), "name": "gsm8k",
                                                              "fields": ["question", "answer"], "id_field": "id"}]}},
                    mix={"method": "proportional", "token_budget": 150_000, "max_repeats": 3})
    result = curate("run", job)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp / "out"


def test_run_writes_the_report_with_existing_plots_and_the_card(output):
    index = output / "report" / "index.html"
    assert index.exists()
    stats = json.loads((output / "mix" / "stats.json").read_text())
    page = index.read_text()
    assert f"{stats['documents_in']:,}" in page and f"{stats['tokens_out']:,}" in page
    images = re.findall(r'<img src="([^"]+)"', page)
    assert set(images) == {"score_histograms.png", "tokens_by_bucket.png", "classifier_roc_out_of_fold.png",
                           "classifier_reliability_out_of_fold.png"}
    for src in images:
        assert (index.parent / src).is_file(), src
    card = (output / "mix" / "README.md").read_text()
    assert f"{stats['tokens_out']:,}" in card and "curate report" in card


def test_plots_are_real_pictures(output):
    for name in ("score_histograms.png", "tokens_by_bucket.png", "classifier_roc_out_of_fold.png",
                 "classifier_reliability_out_of_fold.png"):
        size, colours, inked = pixel_stats(output / "report" / name)
        assert size[0] >= 500 and size[1] >= 300, (name, size)
        assert colours > 20 and inked > 0.02, (name, colours, inked)


def test_roc_curves_are_drawn_from_out_of_fold_predictions(output):
    """The report's ROC numbers are the cross-validation's: each document scored by a model that never saw it."""
    import pyarrow.parquet as pq
    from sklearn.metrics import roc_auc_score

    from curate.report import out_of_fold_agreement

    card = json.loads((output / "classifier" / "card.json").read_text())
    oof = pq.read_table(output / "classifier" / "oof.parquet")
    assert oof.num_rows == card["n_train"] == 800
    assert sorted(set(oof.column("fold").to_pylist())) == list(range(card_folds(card)))
    agreement = out_of_fold_agreement(output / "classifier" / "oof.parquet")
    for behavior in BEHAVIORS:
        y = oof.column(f"label_{behavior}").to_numpy(zero_copy_only=False)
        expected = roc_auc_score(y, oof.column(f"p_{behavior}").to_numpy())
        assert agreement["behaviors"][behavior]["roc_auc"] == pytest.approx(expected, abs=1e-9)
        assert agreement["behaviors"][behavior]["roc_auc"] == pytest.approx(card["metrics"][behavior]["roc_auc"],
                                                                            abs=1e-4)
        assert agreement["behaviors"][behavior]["positives"] == card["metrics"][behavior]["positives"]


def test_reliability_is_drawn_from_out_of_fold_predictions(output):
    """The reliability diagram's bins are the card's (both from the out-of-fold probabilities), each
    bin's observed rate is its positives over its documents, and expected positives are Σ p."""
    import pyarrow.parquet as pq

    from curate.report import out_of_fold_reliability

    card = json.loads((output / "classifier" / "card.json").read_text())
    oof = pq.read_table(output / "classifier" / "oof.parquet")
    reliability = out_of_fold_reliability(output / "classifier" / "oof.parquet")
    for behavior in BEHAVIORS:
        m, metrics = reliability["behaviors"][behavior], card["metrics"][behavior]
        assert m["bins"] == metrics["reliability"]
        assert m["expected_positives"] == pytest.approx(sum(oof.column(f"p_{behavior}").to_pylist()), abs=0.01)
        assert m["expected_positives"] == pytest.approx(metrics["expected_positives"], abs=0.05)
        assert sum(b["documents"] for b in m["bins"]) == oof.num_rows


def card_folds(card: dict) -> int:
    return int(re.match(r"(\d+)-fold", card["metrics_on"]).group(1))


def test_report_with_labels_plots_agreement_per_behavior(output):
    """`--labels`: the scored documents joined with a labels file by id (the numbers are checked
    against scikit-learn on the same join; these documents trained the classifier, so they say
    nothing about its quality)."""
    import pyarrow.parquet as pq
    from sklearn.metrics import roc_auc_score

    result = curate("report", output, "--labels", BUNDLED_LABELS, "--name", "report-test")
    assert result.returncode == 0, result.stderr[-2000:]
    scores = pq.read_table(output / "scores")
    labels = pq.read_table(BUNDLED_LABELS)
    p = dict(zip(scores["id"].to_pylist(), zip(*(scores[f"p_{b}"].to_pylist() for b in BEHAVIORS))))
    for j, behavior in enumerate(BEHAVIORS):
        line = next(line for line in result.stdout.splitlines() if line.startswith(behavior))
        pairs = [(c > 0, p[i][j]) for i, c in zip(labels["id"].to_pylist(), labels[behavior].to_pylist()) if i in p]
        expected = roc_auc_score([y for y, _ in pairs], [s for _, s in pairs])
        assert f"ROC-AUC {expected:.3f}" in line and "of 800" in line, line
    size, colours, inked = pixel_stats(output / "report" / "classifier_agreement.png")
    assert colours > 20 and inked > 0.02
    assert "classifier_agreement.png" in (output / "report" / "index.html").read_text()


def test_report_of_a_folder_without_a_mix_names_what_it_could_not_draw(tmp_path):
    result = curate("report", tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "not drawn: score histograms: no scores" in result.stderr
    assert "not drawn: tokens by score bucket: no mix" in result.stderr
    assert "Traceback" not in result.stderr


def test_page_renders_in_headless_chromium(output, tmp_path):
    shot = tmp_path / "page.png"
    chromium(output / "report" / "index.html", tmp_path, f"--screenshot={shot}", "--window-size=1200,1600")
    assert shot.stat().st_size > 10_000
    size, colours, inked = pixel_stats(shot)
    assert size == (1200, 1600)
    assert colours > 100 and inked > 0.05, (colours, inked)  # a blank page has one colour and no ink
