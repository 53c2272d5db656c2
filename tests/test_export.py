"""Exports of a mix, each read back with its consumer's reader: `datasets` for parquet, a plain JSONL
reader as Megatron-LM's preprocess_data.py reads (one JSON object per line, `text`), and datatrove's
reader of its tokenized files for `tokens`. Every copy is there, shuffled, and the tokens equal the
mix's under the tokenizer."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curate.export import EXPORT_SCHEMA, TOKENIZER_FILE
from curate.schema import ID, REPEATS, TEXT, URL
from curate.tokens import load_tokenizer
from tests.conftest import BUNDLED_DOCS, BUNDLED_LABELS
from tests.helpers import read_dir, run_curate as curate, write_job

FORMATS = ["parquet", "jsonl", "tokens"]
EOS = "<|endoftext|>"
SHARD_ROWS = 40
BUDGET = 300_000  # of the bundled sample's ~380k: the best documents get 2 or 3 copies


def export_job(tmp: Path, inputs: Path) -> Path:
    return write_job(
        tmp / "job.yaml", name="exp", output_dir=str(tmp / "out"), seed=0, input={"paths": [str(inputs)]},
        train={"labels": str(BUNDLED_LABELS), "epoch": 5, "cv_folds": 2},
        score={"tasks": 1, "workers": 1}, filters={"dedup": {"enabled": False}},
        mix={"method": "proportional", "token_budget": BUDGET, "max_repeats": 3, "shard_rows": 50},
        export={"formats": FORMATS, "shard_rows": SHARD_ROWS, "tasks": 2},
    )


@pytest.fixture(scope="module")
def job_run(tmp_path_factory):
    """A job with an export section run twice (the second run skips every stage)."""
    tmp = tmp_path_factory.mktemp("export")
    inputs = tmp / "inputs"
    shutil.copytree(BUNDLED_DOCS, inputs)
    job = export_job(tmp, inputs)
    first = curate("run", job)
    assert first.returncode == 0, first.stderr[-3000:]
    again = curate("run", job)
    assert again.returncode == 0, again.stderr[-3000:]
    out = tmp / "out"
    return {"out": out, "inputs": inputs, "first": first, "again": again, "mix": read_dir(out / "mix" / "data"),
            "export": out / "export" / "mix"}


def expected_copies(mix_rows: list[dict]) -> Counter:
    return Counter({row[ID]: row[REPEATS] for row in mix_rows})


def test_run_exports_then_skips(job_run):
    assert "export" in job_run["first"].stdout.splitlines()[-1]
    assert "skipped export:" in job_run["again"].stdout
    assert "nothing (all stages current)" in job_run["again"].stdout
    stats = json.loads((job_run["out"] / "logs" / "export" / "stats.json").read_text())
    copies = sum(expected_copies(job_run["mix"]).values())
    assert max(r[REPEATS] for r in job_run["mix"]) >= 2  # the test means something only with repeats
    assert stats["documents_out"] == stats["mixes"]["mix"]["copies"] == copies > len(job_run["mix"])
    assert stats["seed"] == 0 and stats["fingerprint"]
    assert set(stats["mixes"]["mix"]["formats"]) == set(FORMATS)
    assert all(f["documents"] == copies for f in stats["mixes"]["mix"]["formats"].values())


def test_parquet_loads_with_datasets_every_copy_once(job_run, tmp_path):
    import datasets

    folder = job_run["export"] / "parquet"
    rows = datasets.load_dataset("parquet", data_dir=str(folder / "data"), split="train")
    assert rows.column_names == EXPORT_SCHEMA.names  # weight and repeats left out: each row is one copy
    assert Counter(rows[ID]) == expected_copies(job_run["mix"])
    text_of = {r[ID]: r[TEXT] for r in job_run["mix"]}
    assert all(text_of[i] == t for i, t in zip(rows[ID], rows[TEXT]))
    # the README's configs block; its own cache: datasets 5.x keys a local folder's cache by its name
    # alone, so another run's `parquet` folder would be read back instead (seen with 5.1 and 5.2)
    by_card = datasets.load_dataset(str(folder), split="train", cache_dir=str(tmp_path / "hf-cache"))
    assert list(by_card[ID]) == list(rows[ID])
    shards = sorted((folder / "data").glob("part-*.parquet"))
    assert [pq.ParquetFile(s).metadata.num_rows for s in shards[:-1]] == [SHARD_ROWS] * (len(shards) - 1)
    assert all(pq.read_schema(s).equals(EXPORT_SCHEMA, check_metadata=False) for s in shards)
    card = (folder / "README.md").read_text()
    assert card.startswith("---\n") and "data/*.parquet" in card and f"{len(rows):,} rows" in card


def test_parquet_copies_are_shuffled_not_grouped(job_run):
    ids = [r[ID] for r in read_dir(job_run["export"] / "parquet" / "data")]
    mix_order = [r[ID] for r in job_run["mix"] for _ in range(r[REPEATS])]
    assert ids != mix_order and sorted(ids) == sorted(mix_order)
    adjacent = sum(a == b for a, b in zip(ids, ids[1:]))
    assert adjacent < sum(r[REPEATS] - 1 for r in job_run["mix"]) / 4  # copies of a document are spread out


def read_megatron_jsonl(path: Path) -> list[dict]:
    """As Megatron-LM's preprocess_data.py reads its input: text mode, UTF-8, json.loads per line."""
    with open(path, "r", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_jsonl_is_megatron_input_in_parquet_order(job_run):
    files = sorted((job_run["export"] / "jsonl" / "data").glob("*.jsonl"))
    records = [r for f in files for r in read_megatron_jsonl(f)]
    assert all(isinstance(r, dict) and set(r) == {TEXT, ID, URL} and isinstance(r[TEXT], str) for r in records)
    assert all(f.read_bytes().count(b"\n") == len(read_megatron_jsonl(f)) for f in files)  # one object per line
    parquet = read_dir(job_run["export"] / "parquet" / "data")
    assert [(r[ID], r[TEXT], r[URL]) for r in records] == [(r[ID], r[TEXT], r[URL]) for r in parquet]
    assert Counter(r[ID] for r in records) == expected_copies(job_run["mix"])


def read_tokenized(folder: Path) -> list[list[int]]:
    """Every document of datatrove's tokenized files in `folder`, in file order, through datatrove's own
    reader of them (the one DocumentTokenizerMerger uses: .ds.index document ends, then the .ds tokens)."""
    import numpy as np
    from datatrove.pipeline.tokens.merger import get_data_reader, load_doc_ends

    docs = []
    for ds_file in sorted(folder.glob("*.ds")):
        ends = load_doc_ends(open(f"{ds_file}.index", "rb"))
        docs += [np.frombuffer(b, dtype=np.uint16).tolist() for b in get_data_reader(open(ds_file, "rb"), ends, 2)]
    return docs


def test_tokens_hold_every_copy_and_the_mix_token_count(job_run):
    folder = job_run["export"] / "tokens"
    tokenizer = load_tokenizer("smollm2")
    eos = tokenizer.token_to_id(EOS)
    docs = read_tokenized(folder)
    mix = job_run["mix"]
    texts = [r[TEXT] for r in mix]
    lengths = [len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    assert len(docs) == sum(r[REPEATS] for r in mix)
    expected_tokens = sum((n + 1) * r[REPEATS] for n, r in zip(lengths, mix))  # + one EOS per copy
    assert sum(len(d) for d in docs) == expected_tokens
    assert all(d[-1] == eos for d in docs)
    assert Counter(tokenizer.decode(d[:-1], skip_special_tokens=False) for d in docs) == Counter(
        {r[TEXT]: r[REPEATS] for r in mix})
    stats = json.loads((job_run["out"] / "logs" / "export" / "stats.json").read_text())["mixes"]["mix"]["formats"]
    assert stats["tokens"]["tokens"] == expected_tokens and stats["tokens"]["token_size"] == 2
    assert load_tokenizer(str(folder / TOKENIZER_FILE)).to_str() == tokenizer.to_str()
    assert len(list(folder.glob("*.ds"))) == 2  # tasks: 2, each its own file


def test_tokens_read_by_datatrove_folder_dataset(job_run):
    pytest.importorskip("torch")  # DatatroveFolderDataset (what nanotron reads) is defined only with torch
    from datatrove.utils.dataset import DatatroveFolderDataset

    folder = job_run["export"] / "tokens"
    seq_len = 63
    dataset = DatatroveFolderDataset(str(folder), seq_len=seq_len, token_size=2)
    flat = [t for ds_file in sorted(folder.glob("*.ds")) for t in _file_tokens(ds_file, seq_len)]
    got = [t for i in range(len(dataset)) for t in dataset[i]["input_ids"].tolist()]
    assert len(dataset) > 0 and got == flat


def _file_tokens(ds_file: Path, seq_len: int) -> list[int]:
    import numpy as np

    tokens = np.fromfile(ds_file, dtype=np.uint16).tolist()
    return tokens[: len(tokens) // (seq_len + 1) * (seq_len + 1)]


def test_same_seed_same_files_other_seed_other_order(job_run, tmp_path):
    mix = job_run["out"] / "mix"
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        done = curate("export", mix, "--out", tmp_path / name, "--seed", seed, "--shard-rows", SHARD_ROWS,
                      "--tasks", 2, *[x for f in FORMATS for x in ("--format", f)])
        assert done.returncode == 0, done.stderr[-3000:]
        runs[name] = tmp_path / name / "export" / "mix"

    def data_files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
                if p.is_file() and p.suffix in (".parquet", ".jsonl", ".ds", ".index")}

    a, b, c = (data_files(runs[n]) for n in "abc")
    assert a == b and len(a) > 3
    assert a == data_files(job_run["export"])  # the job's export (its seed 0) is the same export
    ids = {n: [r[ID] for r in read_dir(runs[n] / "parquet" / "data")] for n in "ac"}
    assert ids["a"] != ids["c"] and sorted(ids["a"]) == sorted(ids["c"])
    tokens = {n: read_tokenized(runs[n] / "tokens") for n in "ac"}
    assert tokens["a"] != tokens["c"] and sorted(tokens["a"]) == sorted(tokens["c"])


def test_materialized_mix_exports_the_same_copies(job_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(job_run["out"], out)
    made = curate("mix", job_run["inputs"], "--out", out, "--method", "proportional", "--token-budget", BUDGET,
                  "--max-repeats", 3, "--shard-rows", 50, "--materialize")
    assert made.returncode == 0, made.stderr[-3000:]
    rows = read_dir(out / "mix" / "data")
    assert len(rows) == sum(r[REPEATS] for r in job_run["mix"])  # each copy already its own row
    done = curate("export", out / "mix", "--out", out, "--format", "jsonl")
    assert done.returncode == 0, done.stderr[-3000:]
    records = [r for f in sorted((out / "export" / "mix" / "jsonl" / "data").glob("*.jsonl"))
               for r in read_megatron_jsonl(f)]
    assert Counter(r[ID] for r in records) == expected_copies(job_run["mix"])
    assert not (out / "export" / "mix" / "parquet").exists()  # formats not asked for are removed


def test_bad_inputs_are_one_line_errors(job_run, tmp_path):
    (tmp_path / "empty").mkdir()
    done = curate("export", tmp_path / "empty", "--out", tmp_path / "o")
    assert done.returncode == 2 and "empty: not a finished mix" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    done = curate("export", job_run["out"] / "mix", "--out", tmp_path / "o", "--format", "tokens",
                  "--eos", "<|no such token|>")
    assert done.returncode == 2 and "has no token '<|no such token|>'" in done.stderr


def test_export_section_is_validated(tmp_path):
    job = write_job(tmp_path / "j.yaml", name="j", output_dir=str(tmp_path / "o"), input={"paths": ["x"]},
                    export={"formats": ["xml"]})
    done = curate("run", job)
    assert done.returncode == 2 and "export.formats.0" in done.stderr
    job = write_job(tmp_path / "j.yaml", name="j", output_dir=str(tmp_path / "o"), input={"paths": ["x"]},
                    export={"formats": ["jsonl", "jsonl"]})
    done = curate("run", job)
    assert done.returncode == 2 and "lists a value twice" in done.stderr


def test_tokens_split_by_shard_tokens_and_without_eos(job_run, tmp_path):
    done = curate("export", job_run["out"] / "mix", "--out", tmp_path, "--format", "tokens", "--shard-tokens", 20_000,
                  "--eos", "")
    assert done.returncode == 0, done.stderr[-3000:]
    folder = tmp_path / "export" / "mix" / "tokens"
    files = sorted(folder.glob("*.ds"))
    docs = read_tokenized(folder)
    assert len(files) > 2 and len(docs) == sum(r[REPEATS] for r in job_run["mix"])
    assert all(f.stat().st_size // 2 <= 20_000 + max(map(len, docs)) for f in files)  # cut after the file passes it
    tokenizer = load_tokenizer("smollm2")
    expected = Counter({tuple(e.ids): r[REPEATS] for e, r in zip(
        tokenizer.encode_batch([r[TEXT] for r in job_run["mix"]], add_special_tokens=False), job_run["mix"])})
    assert Counter(map(tuple, docs)) == expected  # no EOS: each document is its text's tokens alone


def test_help_shows_choices_and_defaults():
    shown = curate("export", "--help").stdout
    assert "{parquet,jsonl,tokens}" in shown and "(default: smollm2)" in shown and "PydanticUndefined" not in shown
