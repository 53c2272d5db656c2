"""User errors in every subcommand: one line on stderr naming the problem, exit 2, no traceback
(the traceback only with -v)."""

from __future__ import annotations

import shutil

import pyarrow.parquet as pq
import pytest

from tests.conftest import BUNDLED_DOCS, BUNDLED_LABELS
from tests.helpers import run_curate, write_job

DOCS = BUNDLED_DOCS / "part-00.parquet"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Wrong-kind files: a job without a bootstrap section, text pretending to be a model, a plain file."""
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "not-a-model.bin").write_bytes(b"this is not a fastText model\n" * 20)
    (tmp / "plain-file").write_text("x")
    write_job(tmp / "no-bootstrap.yaml", name="x", output_dir=str(tmp / "out"), input={"paths": [str(DOCS)]})
    (tmp / "labels.parquet").write_bytes(b"PAR1 not parquet")
    scored = tmp / "scored"
    (scored / "scores").mkdir(parents=True)
    return tmp


CASES = {
    "run: missing job file": (["run", "{tmp}/missing.yaml"], "missing.yaml: cannot read job file"),
    "run: job file not text": (["run", str(DOCS)], "not a job file (not UTF-8 text)"),
    "status: missing folder": (["status", "{tmp}/nowhere"], "nowhere: no such output folder"),
    "sample: missing input": (["sample", "{tmp}/nope.parquet", "--out", "{tmp}/o"], "nope.parquet: no such file"),
    "sample: bad choice of value": (["sample", str(DOCS), "--out", "{tmp}/o", "--n", "many"], "--n"),
    "label: no model": (["label", "{tmp}/nope.parquet", "--out", "{tmp}/o", "--endpoint-url", "http://127.0.0.1:9"],
                        "--model is required"),
    "label: missing sample": (["label", "{tmp}/nope.parquet", "--out", "{tmp}/o", "--model", "m",
                               "--endpoint-url", "http://127.0.0.1:9"], "nope.parquet: no sample to label"),
    "eval-labels: missing file": (["eval-labels", "{tmp}/nope.parquet", "--reference", str(BUNDLED_LABELS)],
                                  "nope.parquet: not a readable labels file"),
    "eval-labels: not a labels file": (["eval-labels", str(DOCS), "--reference", str(BUNDLED_LABELS)],
                                       "labels file lacks column(s) id, verification"),
    "train: not a labels file": (["train", str(DOCS), "{tmp}/o"], "labels file lacks column"),
    "train: unreadable labels": (["train", "{tmp}/labels.parquet", "{tmp}/o"], "not a readable labels file"),
    "train: output folder cannot be made": (["train", str(BUNDLED_LABELS), "{tmp}/plain-file/o"], "plain-file"),
    "score: not a model": (["score", str(DOCS), "--out", "{tmp}/o", "--model", "{tmp}/not-a-model.bin"],
                           "not a fastText model file"),
    "score: missing model": (["score", str(DOCS), "--out", "{tmp}/o"], "cannot read the classifier model"),
    "mix: nothing scored": (["mix", str(DOCS), "--out", "{tmp}/scored", "--token-budget", "100"],
                            "were not scored"),
    "filter: eval set without the column": (["filter", str(DOCS), "--out", "{tmp}/o", "--eval", str(DOCS),
                                             "--eval-fields", "question"], "no column 'question'"),
    "report: missing folder": (["report", "{tmp}/nowhere"], "no such output folder"),
    "bootstrap: no bootstrap section": (["bootstrap", "{tmp}/no-bootstrap.yaml"], "no 'bootstrap' section"),
    "audit: nothing to audit": (["audit", "{tmp}"], "no finished stage to audit"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_user_error_is_one_line_without_traceback(files, case):
    args, expected = CASES[case]
    result = run_curate(*(a.format(tmp=files) for a in args), timeout=300)
    assert result.returncode == 2, (result.returncode, result.stdout[-1000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and expected in errors[0], result.stderr[-2000:]


def test_verbose_shows_the_traceback(files):
    result = run_curate("-v", "score", DOCS, "--out", files / "o", "--model", files / "not-a-model.bin")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_help_of_every_command_shows_choices_and_defaults():
    for command in ("run", "status", "sample", "label", "eval-labels", "train", "score", "mix", "filter", "report",
                    "bootstrap", "audit"):
        result = run_curate(command, "--help")
        assert result.returncode == 0 and "PydanticUndefined" not in result.stdout, command
    mix = run_curate("mix", "--help").stdout
    assert "{threshold,top_k,proportional}" in mix and "(default: top_k)" in mix
    label = run_curate("label", "--help").stdout
    assert "--model MODEL" in label and "(required)" in label
    train = run_curate("train", "--help").stdout
    assert "--labels" not in train  # the labels file is the positional argument, not also an option
    assert "--dedup, --no-dedup" in run_curate("filter", "--help").stdout


def test_a_folder_with_unscored_inputs_is_refused_by_mix(tmp_path):
    """Inputs that were not scored are named, not silently left out of the mix."""
    inputs = tmp_path / "inputs"
    shutil.copytree(BUNDLED_DOCS, inputs)

    result = run_curate("train", BUNDLED_LABELS, tmp_path / "out", "--epoch", "2", "--cv-folds", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    first = sorted(inputs.glob("*.parquet"))[0]
    scored = run_curate("score", first, "--out", tmp_path / "out")
    assert scored.returncode == 0, scored.stderr[-2000:]
    result = run_curate("mix", inputs, "--out", tmp_path / "out", "--token-budget", "1000")
    assert result.returncode == 2
    assert "3 of 4 input files were not scored" in result.stderr
    ok = run_curate("mix", first, "--out", tmp_path / "out", "--token-budget", "1000")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert pq.read_table(tmp_path / "out" / "mix" / "data").num_rows > 0
