"""End to end: train -> score (datatrove, 2 tasks) -> mix on real documents and real labels."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from curate.io import iter_documents, list_input_files
from curate.schema import BEHAVIORS, ID, MIX_SCHEMA, N_TOKENS, REPEATS, SCORES_SCHEMA
from tests.conftest import BUNDLED_DOCS, BUNDLED_LABELS
from tests.helpers import read_dir, run_curate as curate, write_job

BUDGET = 150_000


def dryrun_job(tmp: Path, name: str, inputs: Path, seed: int = 0) -> Path:
    return write_job(
        tmp / f"{name}.yaml", name=name, output_dir=str(tmp / name), seed=seed,
        input={"paths": [str(inputs)]}, train={"labels": str(BUNDLED_LABELS)},
        score={"tasks": 2, "workers": 2},
        mix={"method": "proportional", "token_budget": BUDGET, "max_repeats": 3, "shard_rows": 30},
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same job run twice into two folders (same seed), plus a re-run of the first."""
    tmp = tmp_path_factory.mktemp("dryrun")
    inputs = tmp / "inputs"
    shutil.copytree(BUNDLED_DOCS, inputs)
    first = curate("run", dryrun_job(tmp, "a", inputs))
    assert first.returncode == 0, first.stderr[-3000:]
    again = curate("run", dryrun_job(tmp, "a", inputs))
    second = curate("run", dryrun_job(tmp, "b", inputs))
    assert second.returncode == 0, second.stderr[-3000:]
    return {"a": tmp / "a", "b": tmp / "b", "inputs": inputs, "first": first, "again": again}


def input_ids(inputs: Path) -> list[str]:
    return [d[ID] for f in list_input_files([str(inputs)]) for d in iter_documents(f)]


def test_every_input_document_is_scored_exactly_once(runs):
    scored = read_dir(runs["a"] / "scores")
    assert sorted(r[ID] for r in scored) == sorted(input_ids(runs["inputs"]))
    assert len({r[ID] for r in scored}) == len(scored) == 600
    for f in sorted((runs["a"] / "scores").glob("*.parquet")):
        assert pq.read_schema(f).equals(SCORES_SCHEMA, check_metadata=False)
    assert all(0.0 <= r["behavior_score"] <= 1.0 and r[N_TOKENS] > 0 for r in scored)


def test_mix_hits_the_token_budget_within_one_percent(runs):
    rows = read_dir(runs["a"] / "mix" / "data")
    tokens = sum(r[N_TOKENS] * r[REPEATS] for r in rows)
    assert abs(tokens / BUDGET - 1) <= 0.01, tokens
    assert all(1 <= r[REPEATS] <= 3 for r in rows)


def test_mix_shards_share_one_schema_and_load_with_pyarrow_and_dask(runs):
    import dask.dataframe as dd

    shards = sorted((runs["a"] / "mix" / "data").glob("part-*.parquet"))
    assert len(shards) >= 2
    for shard in shards:
        assert pq.read_schema(shard).equals(MIX_SCHEMA, check_metadata=False)
        assert pq.ParquetFile(shard).metadata.num_rows <= 30
        assert pq.ParquetFile(shard).metadata.row_group(0).column(0).compression == "ZSTD"
    table = ds.dataset([str(s) for s in shards], format="parquet").to_table()
    frame = dd.read_parquet([str(s) for s in shards]).compute()
    assert len(frame) == table.num_rows > 0
    assert set(frame.columns) == set(MIX_SCHEMA.names)


def test_same_seed_gives_identical_output(runs):
    a, b = runs["a"] / "mix" / "data", runs["b"] / "mix" / "data"
    names = sorted(p.name for p in a.glob("part-*.parquet"))
    assert names == sorted(p.name for p in b.glob("part-*.parquet"))
    for name in names:
        assert pq.read_table(a / name).equals(pq.read_table(b / name))


def test_second_run_redoes_nothing_and_says_so(runs):
    out = runs["again"].stdout
    assert runs["again"].returncode == 0
    for stage in ("train", "score", "mix", "report"):
        assert f"skipped {stage}:" in out
    assert "ran: nothing" in out


def test_classifier_beats_a_constant_predictor_on_held_out_documents(runs):
    import json

    card = json.loads((runs["a"] / "classifier" / "card.json").read_text())
    for behavior in BEHAVIORS:
        assert card["metrics"][behavior]["roc_auc"] > 0.6, (behavior, card["metrics"][behavior])


def test_output_folder_has_stats_and_card(runs):
    import json

    stats = json.loads((runs["a"] / "mix" / "stats.json").read_text())
    assert stats["documents_in"] == 600
    assert stats["documents_out"] + sum(stats["dropped"].values()) == stats["documents_in"]
    card = (runs["a"] / "mix" / "README.md").read_text()
    assert f"{stats['tokens_out']:,}" in card and "ROC-AUC" in card
    classifier = json.loads((runs["a"] / "classifier" / "card.json").read_text())
    for behavior, m in classifier["metrics"].items():  # the classifier's CV figures, beside its baselines
        row = next(line for line in card.splitlines() if line.startswith(f"| {behavior} | {m['roc_auc']:.3f} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[2:6] == [f"{m['length_only']['roc_auc']:.3f}", f"{m['baseline']['roc_auc']:.3f}",
                              f"{m['length_matched_roc_auc']:.3f}", f"{m['expected_positives']:.1f} / {m['positives']}"]


def test_bad_files_are_named_and_skipped_without_losing_the_others(tmp_path):
    inputs = tmp_path / "inputs"
    shutil.copytree(BUNDLED_DOCS, inputs)
    good = pq.read_table(inputs / "part-00.parquet")
    pq.write_table(good.drop(["text"]), inputs / "no-text.parquet")
    (inputs / "corrupt.parquet").write_bytes(b"PAR1 this is not parquet at all")
    rows = good.slice(0, 4).to_pylist()
    rows[1]["text"], rows[2]["text"] = None, "   "
    pq.write_table(pa.Table.from_pylist(rows, schema=good.schema), inputs / "some-empty.parquet")
    result = curate("run", dryrun_job(tmp_path, "bad", inputs))
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert any("no-text.parquet: no 'text' column" in e for e in errors), result.stderr[-2000:]
    assert any("corrupt.parquet: not a readable Parquet file" in e for e in errors)
    scored = read_dir(tmp_path / "bad" / "scores")
    assert len(scored) == 600 + 2  # every good document, and the two usable rows of some-empty
    stats_files = sorted((tmp_path / "bad" / "logs" / "score" / "datatrove" / "stats").glob("*.json"))
    stats_text = "".join(f.read_text() for f in stats_files)
    assert "dropped_null_text" in stats_text and "dropped_empty_text" in stats_text


def test_data_folders_load_directly_with_pyarrow_dask_polars_and_datasets(runs):
    """The scores folder and the mix's data folder hold only data; the mix folder is a Hugging Face
    dataset (card with a YAML block + data/) that `datasets.load_dataset` loads without warnings."""
    import warnings

    import dask.dataframe as dd
    import datasets
    import polars as pl

    scores, mix = runs["a"] / "scores", runs["a"] / "mix"
    for folder, rows in ((scores, 600), (mix / "data", len(read_dir(mix / "data")))):
        assert pq.read_table(folder).num_rows == rows
        assert len(dd.read_parquet(str(folder)).compute()) == rows
        assert pl.read_parquet(str(folder / "*.parquet")).height == rows
    card = (mix / "README.md").read_text()
    assert card.startswith("---\n") and "data_files" in card.split("---")[1]
    datasets.disable_progress_bars()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = datasets.load_dataset(str(mix), split="train", cache_dir=str(runs["a"].parent / "hf-cache"))
    assert loaded.num_rows == pq.read_table(mix / "data").num_rows
    assert set(loaded.column_names) == set(MIX_SCHEMA.names)
