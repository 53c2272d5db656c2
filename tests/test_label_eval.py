"""`curate eval-labels`: per-behavior Spearman of counts and F1 of count > 0 against reference labels."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.label import eval_labels
from curate.schema import BEHAVIORS
from tests.helpers import run_curate


def _with_counts(gold: pa.Table, changes: dict, keep: int | None = None) -> pa.Table:
    table = gold.slice(0, keep) if keep else gold
    for behavior, values in changes.items():
        table = table.set_column(table.schema.get_field_index(behavior), behavior, pa.array(values, pa.int32()))
    return table


def test_reference_agrees_with_itself(shared_dir):
    gold = shared_dir / "labels" / "gold.parquet"
    result = eval_labels(gold, gold)
    assert result["documents_in_both"] == 800
    for m in result["behaviors"].values():
        assert m["spearman"] == pytest.approx(1.0) and m["f1"] == 1.0


def test_known_disagreement(shared_dir, tmp_path):
    gold = pq.read_table(shared_dir / "labels" / "gold.parquet").slice(0, 6)
    ref = _with_counts(gold, {b: [0, 0, 1, 2, 3, 0] for b in BEHAVIORS})
    # verification: one false positive, one false negative; backtracking: reversed ranks;
    # subgoal_setting: a null (unparseable) count is left out; backward_chaining: all zero (no correlation)
    ours = _with_counts(gold, {"verification": [1, 0, 1, 2, 0, 0], "backtracking": [3, 3, 2, 1, 0, 3],
                               "subgoal_setting": [None, 0, 1, 2, 3, 0], "backward_chaining": [0] * 6})
    pq.write_table(ref, tmp_path / "ref.parquet")
    pq.write_table(ours.slice(0, 6), tmp_path / "ours.parquet")
    r = eval_labels(tmp_path / "ours.parquet", tmp_path / "ref.parquet")["behaviors"]
    assert r["verification"]["f1"] == pytest.approx(2 * (2 / 3) * (2 / 3) / (4 / 3), abs=1e-4)
    assert r["backtracking"]["spearman"] < -0.9
    assert r["subgoal_setting"]["documents"] == 5 and r["subgoal_setting"]["spearman"] == pytest.approx(1.0)
    assert r["backward_chaining"]["spearman"] is None and r["backward_chaining"]["f1"] == 0.0
    x, y = np.array([1, 0, 1, 2, 0, 0]), np.array([0, 0, 1, 2, 3, 0])
    from scipy.stats import spearmanr
    assert r["verification"]["spearman"] == pytest.approx(spearmanr(x, y).statistic)


def test_only_documents_in_both_files_count(shared_dir, tmp_path):
    gold = pq.read_table(shared_dir / "labels" / "gold.parquet")
    pq.write_table(gold.slice(100, 50), tmp_path / "part.parquet")
    result = run_curate("eval-labels", tmp_path / "part.parquet", "--reference", shared_dir / "labels" / "gold.parquet",
                        "--json", tmp_path / "agreement.json")
    assert result.returncode == 0, result.stderr
    assert "50 documents in both files" in result.stdout and "Spearman" in result.stdout
    assert json.loads((tmp_path / "agreement.json").read_text())["documents_in_both"] == 50


def test_counts_that_only_follow_length_are_told_apart(shared_dir, tmp_path):
    """A labeler whose count is the length decile ranks documents about as well as length alone, and
    the length-matched ROC-AUC (pairs in one length quintile and url host) shows that it knows nothing
    else; the reference against itself is 1.0 on both."""
    gold = pq.read_table(shared_dir / "labels" / "gold.parquet")
    lengths = np.array([len(t) for t in gold.column("text").to_pylist()])
    decile = np.searchsorted(np.quantile(lengths, np.linspace(0, 1, 11)[1:-1]), lengths).tolist()
    pq.write_table(_with_counts(gold, {b: decile for b in BEHAVIORS}), tmp_path / "length.parquet")
    by_length = eval_labels(tmp_path / "length.parquet", shared_dir / "labels" / "gold.parquet")["behaviors"]
    itself = eval_labels(shared_dir / "labels" / "gold.parquet", shared_dir / "labels" / "gold.parquet")["behaviors"]
    for b in BEHAVIORS:
        m = by_length[b]
        assert m["roc_auc"] == pytest.approx(m["length_only_roc_auc"], abs=0.03)
        assert abs(m["length_matched_roc_auc"] - 0.5) < 0.12 < m["roc_auc"] - 0.5
        assert itself[b]["roc_auc"] == 1.0 and itself[b]["length_matched_roc_auc"] == 1.0
