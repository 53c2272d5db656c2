"""`curate report`: plots, the HTML page (rendered by headless Chromium) and the card's links."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from curate.schema import BEHAVIORS
from tests.conftest import BUNDLED_LABELS, REPO
from tests.helpers import write_job

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


def pixel_stats(path: Path) -> tuple[tuple[int, int], int, float]:
    """(size, distinct colours, fraction of pixels that are not near-white) of a PNG."""
    from PIL import Image

    image = Image.open(path).convert("RGB")
    pixels = np.asarray(image).reshape(-1, 3)
    colours = len(np.unique(pixels, axis=0))
    return image.size, colours, float((pixels.min(axis=1) < 235).mean())


def test_run_writes_the_report_and_the_card_links_existing_plots(output):
    index = output / "report" / "index.html"
    assert index.exists()
    card = (output / "mix" / "README.md").read_text()
    links = re.findall(r"\]\((\.\./report/[^)]+)\)", card)
    assert {Path(link).name for link in links} >= {"score_histograms.png", "tokens_by_bucket.png", "index.html"}
    for link in links:
        assert (output / "mix" / link).resolve().is_file(), link
    stats = json.loads((output / "mix" / "stats.json").read_text())
    page = index.read_text()
    assert f"{stats['docs_in']:,}" in page and f"{stats['tokens_out']:,}" in page
    for src in re.findall(r'<img src="([^"]+)"', page):
        assert (index.parent / src).is_file(), src


def test_plots_are_real_pictures(output):
    for name in ("score_histograms.png", "tokens_by_bucket.png"):
        size, colours, inked = pixel_stats(output / "report" / name)
        assert size[0] >= 800 and size[1] >= 300, (name, size)
        assert colours > 20 and inked > 0.02, (name, colours, inked)


def test_report_with_labels_plots_agreement_per_behavior(output):
    result = curate("report", output, "--labels", BUNDLED_LABELS, "--name", "report-test")
    assert result.returncode == 0, result.stderr[-2000:]
    for behavior in BEHAVIORS:
        line = next(line for line in result.stdout.splitlines() if line.startswith(behavior))
        auc = float(re.search(r"ROC-AUC ([0-9.]+)", line).group(1))
        assert auc > 0.6 and "of 800" in line, line  # 80% of these documents trained the classifier
    size, colours, inked = pixel_stats(output / "report" / "classifier_agreement.png")
    assert colours > 20 and inked > 0.02
    assert "classifier_agreement.png" in (output / "report" / "index.html").read_text()
    assert "../report/classifier_agreement.png" in (output / "mix" / "README.md").read_text()


def test_page_renders_in_headless_chromium(output, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed (tests/run.sh installs the Debian package)")
    shot = tmp_path / "page.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,1600",
                    (output / "report" / "index.html").resolve().as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 10_000
    size, colours, inked = pixel_stats(shot)
    assert size == (1200, 1600)
    assert colours > 100 and inked > 0.05, (colours, inked)  # a blank page has one colour and no ink
