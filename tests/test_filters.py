"""Near-duplicate removal and benchmark decontamination on real text: StackExchange pages edited the
way copies on the web differ, and GSM8K problems pasted into real pages."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.config import DedupConfig, EvalSetConfig
from curate.decontaminate import EvalSetError, build_index, find_contamination
from curate.dedup import build_minhash_executors, keep_best, local_executor_factory, near_duplicate_clusters, read_clusters
from curate.schema import ID, TEXT, URL
from tests.conftest import BUNDLED_DOCS, BUNDLED_LABELS, REPO, SHARED
from tests.helpers import read_dir, write_job

EVAL_SAMPLE = REPO / "curate" / "data" / "evals" / "gsm8k-sample.parquet"
GSM8K_EVAL = EvalSetConfig(path=str(EVAL_SAMPLE), name="gsm8k", fields=["question", "answer"], id_field="id")


def words(text: str) -> int:
    return len(text.split())


def stackexchange_pages() -> list[dict]:
    return sorted(pq.read_table(SHARED / "data" / "mathweb" / "math.parquet").to_pylist(), key=lambda r: r[URL])


def edited_variants(page: dict, donor: dict) -> list[dict]:
    """The page, the page with one paragraph replaced by a paragraph of another real page, and the
    page re-flowed (whitespace and line breaks changed) as a mirror site might serve it."""
    paragraphs = page[TEXT].split("\n\n")
    k = next(i for i, p in enumerate(paragraphs) if i >= 2 and 15 <= words(p) <= 60)
    replacement = next(p for p in donor[TEXT].split("\n\n") if 15 <= words(p) <= 60)
    edited = "\n\n".join(paragraphs[:k] + [replacement] + paragraphs[k + 1:])
    reflowed = re.sub(r"\n\n", "\n  \n\n", re.sub(r"([.,]) ", r"\1  ", page[TEXT]))
    assert edited != page[TEXT] and reflowed != page[TEXT]
    return [
        {URL: page[URL], TEXT: page[TEXT]},
        {URL: page[URL] + "?edited", TEXT: edited},
        {URL: page[URL] + "?mirror", TEXT: reflowed},
    ]


@pytest.fixture(scope="module")
def corpus(shared_dir):
    """A long real page with two near-duplicate variants, and 80 other real pages."""
    pages = stackexchange_pages()
    page = next(p for p in pages if 700 <= words(p[TEXT]) <= 2000 and p[TEXT].count("\n\n") >= 8)
    variants = edited_variants(page, donor=pages[0])
    others = [p for p in pages if p[URL] != page[URL]][1:81]
    return {"variants": variants, "others": [{URL: p[URL], TEXT: p[TEXT]} for p in others]}


def as_pairs(docs: list[dict]) -> list[tuple[str, str]]:
    return [(d[URL], d[TEXT]) for d in docs]


def test_edited_and_reflowed_copies_form_one_cluster_and_other_pages_none(corpus):
    ids = {d[URL] for d in corpus["variants"]}
    clusters = near_duplicate_clusters(as_pairs(corpus["variants"] + corpus["others"]), DedupConfig())
    assert clusters == [sorted(ids)]


def test_a_stricter_threshold_separates_the_edited_copy(corpus):
    original, edited, mirror = corpus["variants"]
    clusters = near_duplicate_clusters(as_pairs(corpus["variants"]), DedupConfig(threshold=0.97))
    assert clusters == [sorted([original[URL], mirror[URL]])]


def test_the_best_scoring_member_is_kept(corpus):
    original, edited, mirror = (d[URL] for d in corpus["variants"])
    clusters = [sorted([original, edited, mirror])]
    assert keep_best(clusters, {original: 0.2, edited: 0.6, mirror: 0.3}) == {original: edited, mirror: edited}
    assert keep_best(clusters, {original: 0.7, edited: 0.6, mirror: 0.3}) == {edited: original, mirror: original}
    # a contaminated member is never the one kept; the others still collapse onto the best of the rest
    assert keep_best(clusters, {original: 0.7, edited: 0.6, mirror: 0.3}, exclude={original}) == {mirror: edited}


def test_datatrove_minhash_stages_find_the_same_cluster(corpus, tmp_path):
    from curate.score import OpenWebMathReader

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    docs = corpus["variants"] + corpus["others"]
    for part in range(2):  # two input files, so the variants are spread over two ranks
        pq.write_table(pa.Table.from_pylist(docs[part::2]), inputs / f"part-{part}.parquet")
    files = sorted(str(f) for f in inputs.glob("*.parquet"))
    work = tmp_path / "minhash"
    executors = build_minhash_executors(OpenWebMathReader(files, errors_folder=str(work / "errors")), work,
                                        DedupConfig(), tasks=2, make_executor=local_executor_factory(work / "logs", 2))
    assert [type(e).__name__ for e in executors] == ["LocalPipelineExecutor"] * 3
    executors[-1].run()
    assert read_clusters(work) == [sorted(d[URL] for d in corpus["variants"])]


def pasted_problem_page(page: dict, question: str) -> dict:
    """A real forum page quoting an evaluation problem, re-cased and re-flowed."""
    quoted = question.upper().replace(" ", "\n", 3)
    return {URL: page[URL] + "?homework", TEXT: f"{page[TEXT][:1500]}\n\nMy homework says:\n> {quoted}\n\nThanks!"}


def test_pasted_gsm8k_problem_is_flagged_with_its_item_and_unrelated_pages_are_not(corpus):
    evals = pq.read_table(EVAL_SAMPLE).to_pylist()
    item = evals[3]
    gsm8k = pq.read_table(SHARED / "data" / "mathweb" / "gsm8k-train.parquet").to_pylist()
    eval_ids = {r["id"] for r in evals}
    other_problems = [r for r in gsm8k if r[URL] not in eval_ids][:50]  # real GSM8K text, not in the set
    pasted = pasted_problem_page(corpus["others"][0], item["question"])
    docs = [pasted] + corpus["others"] + corpus["variants"] + [{URL: r[URL], TEXT: r[TEXT]} for r in other_problems]
    found = find_contamination(as_pairs(docs), build_index([GSM8K_EVAL], ngram=13))
    assert [(m["document"], m["items"]) for m in found] == [(pasted[URL], [f"gsm8k:{item['id']}"])]
    assert words(found[0]["ngram"]) == 13


def test_an_eval_copy_shorter_than_the_ngram_does_not_match_and_is_counted(tmp_path):
    path = tmp_path / "short.jsonl"
    path.write_text(json.dumps({"text": "What is two plus two?"}) + "\n"
                    + json.dumps({"text": "A farmer has 17 sheep and all but 9 run away; how many sheep are left now?"})
                    + "\n")
    index = build_index([EvalSetConfig(path=str(path))], ngram=13)
    assert index.sets[0]["too_short"] == 1 and index.sets[0]["items"] == 2
    found = find_contamination([("d", "Riddle: a farmer has 17 sheep and all but 9 run away; how many sheep are "
                                      "left now? What is two plus two?")], index)
    assert found[0]["items"] == ["short:1"]


def test_an_eval_set_without_the_named_column_is_a_one_line_error(tmp_path):
    with pytest.raises(EvalSetError, match=r"gsm8k-sample.parquet: no column 'problem'"):
        build_index([EvalSetConfig(path=str(EVAL_SAMPLE), fields=["problem"])], ngram=13)


@pytest.fixture(scope="module")
def filtered_run(corpus, tmp_path_factory):
    """`curate run` on the bundled documents plus an edited copy and a mirror of one bundled page
    and a real page with a pasted evaluation problem, both filters on."""
    tmp = tmp_path_factory.mktemp("filtered")
    inputs = tmp / "inputs"
    inputs.mkdir()
    for f in BUNDLED_DOCS.glob("*.parquet"):
        (inputs / f.name).write_bytes(f.read_bytes())
    bundled = sorted((r for f in sorted(BUNDLED_DOCS.glob("*.parquet")) for r in pq.read_table(f).to_pylist()
                      if "stackexchange" in (r[URL] or "")), key=lambda r: r[URL])
    page = next(p for p in bundled if 500 <= words(p[TEXT]) <= 2000 and p[TEXT].count("\n\n") >= 8)
    variants = edited_variants(page, donor=corpus["others"][1])[1:]
    item = pq.read_table(EVAL_SAMPLE).to_pylist()[-1]  # one of the 16 items not among the bundled documents
    extra = variants + [pasted_problem_page(corpus["others"][2], item["question"])]
    pq.write_table(pa.Table.from_pylist(extra), inputs / "part-99.parquet")
    job = write_job(tmp / "job.yaml", name="filtered", output_dir=str(tmp / "out"), input={"paths": [str(inputs)]},
                    train={"labels": str(BUNDLED_LABELS)}, score={"tasks": 2, "workers": 2},
                    filters={"dedup": {"threshold": 0.8},
                             "decontaminate": {"eval_sets": [GSM8K_EVAL.model_dump(exclude_none=True)]}},
                    mix={"method": "proportional", "token_budget": 150_000, "max_repeats": 3, "shard_rows": 200})
    result = subprocess.run([sys.executable, "-m", "curate", "run", str(job)], cwd=REPO, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"out": tmp / "out", "page": page, "variants": variants, "item": item, "pasted": extra[-1]}


def test_run_keeps_the_best_scoring_copy_and_drops_the_others(filtered_run):
    out = filtered_run["out"]
    cluster = [filtered_run["page"][URL]] + [v[URL] for v in filtered_run["variants"]]
    scores = {r[ID]: r["behavior_score"] for r in read_dir(out / "scores") if r[ID] in cluster}
    best = max(cluster, key=lambda i: (scores[i], -cluster.index(i)))
    drops = pq.read_table(out / "filters" / "drops.parquet").to_pylist()
    near = {r[ID]: r["detail"] for r in drops if r["reason"] == "near_duplicate"}
    assert near == {i: best for i in cluster if i != best}


def test_run_drops_contamination_naming_the_items(filtered_run):
    out = filtered_run["out"]
    drops = {r[ID]: r for r in pq.read_table(out / "filters" / "drops.parquet").to_pylist()}
    contaminated = {i: r["detail"] for i, r in drops.items() if r["reason"] == "contamination"}
    assert contaminated[filtered_run["pasted"][URL]] == f"gsm8k:{filtered_run['item']['id']}"
    assert len(contaminated) == 25  # 24 bundled GSM8K documents are in the evaluation sample, plus the pasted one
    assert all(i.startswith("gsm8k://") for i in contaminated if i != filtered_run["pasted"][URL])
    report = json.loads((out / "logs" / "filters" / "stats.json").read_text())
    assert report["contamination"]["eval_sets"][0]["items_matched"] == 25


def test_dropped_documents_never_enter_the_mix_and_are_counted(filtered_run):
    out = filtered_run["out"]
    drops = {r[ID] for r in pq.read_table(out / "filters" / "drops.parquet").to_pylist()}
    mixed = {r[ID] for r in read_dir(out / "mix" / "data", "part-*.parquet")}
    assert mixed and not mixed & drops
    stats = json.loads((out / "mix" / "stats.json").read_text())
    assert stats["dropped"]["near_duplicate"] == 2 and stats["dropped"]["contamination"] == 25
    assert stats["documents_out"] + sum(stats["dropped"].values()) == stats["documents_in"] == 603
    card = (out / "mix" / "README.md").read_text()
    assert "2 documents dropped as near-duplicates" in card and "25 documents dropped as contamination" in card
