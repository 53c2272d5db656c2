"""`curate sample`: seeded, reproducible, near-duplicates removed, stratified by host on request."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq

from curate.config import SampleConfig
from curate.layout import Layout
from curate.sample import host, quotas, sample
from tests.helpers import run_curate


def _docs(shared_dir, name, n):
    return pq.read_table(shared_dir / "data" / "mathweb" / f"{name}.parquet").slice(0, n)


def test_same_seed_same_sample_any_file_order(shared_dir, tmp_path):
    files = [str(shared_dir / "data" / "mathweb" / f) for f in ("math.parquet", "cstheory.parquet")]
    a = sample(files, Layout(tmp_path / "a"), SampleConfig(n=50), seed=7)
    b = sample(files[::-1], Layout(tmp_path / "b"), SampleConfig(n=50), seed=7)
    sample(files, Layout(tmp_path / "c"), SampleConfig(n=50), seed=8)
    ids = {k: pq.read_table(Layout(tmp_path / k).sample_file)["id"].to_pylist() for k in "abc"}
    assert a["documents_out"] == b["documents_out"] == 50 and a["documents_in"] == 988 + 213
    assert ids["a"] == ids["b"] and len(set(ids["a"])) == 50
    assert ids["a"] != ids["c"]
    assert Layout(tmp_path / "a").stats("sample").exists()


def test_near_duplicates_are_not_both_sampled(shared_dir, tmp_path):
    originals = _docs(shared_dir, "math", 30)
    # each original again with a different url and one word changed: a near-duplicate, not an exact copy
    copies = pa.table({
        "url": [u + "?copy" for u in originals["url"].to_pylist()],
        "text": [t.replace(" the ", " a ", 1) for t in originals["text"].to_pylist()],
        "date": originals["date"], "metadata": originals["metadata"],
    })
    pq.write_table(originals, tmp_path / "orig.parquet")
    pq.write_table(copies, tmp_path / "copies.parquet")
    stats = sample([str(tmp_path / "orig.parquet"), str(tmp_path / "copies.parquet")], Layout(tmp_path / "s"),
                   SampleConfig(n=60), seed=0)
    urls = pq.read_table(Layout(tmp_path / "s").sample_file)["url"].to_pylist()
    assert stats["near_duplicates_skipped"] == 30 and stats["documents_out"] == 30
    assert len({u.removesuffix("?copy") for u in urls}) == 30  # one of each pair


def test_stratified_sample_follows_host_shares(shared_dir, tmp_path):
    folder = shared_dir / "data" / "mathweb"
    stats = sample([str(folder / "math.parquet"), str(folder / "cstheory.parquet"),
                    str(folder / "proofassistants.parquet")], Layout(tmp_path / "s"),
                   SampleConfig(n=100, stratify="domain"), seed=1)
    hosts = Counter(host(u) for u in pq.read_table(Layout(tmp_path / "s").sample_file)["url"].to_pylist())
    total = 988 + 213 + 143
    assert sum(hosts.values()) == 100 == stats["documents_out"]
    for name, rows in (("math.stackexchange.com", 988), ("cstheory.stackexchange.com", 213),
                       ("proofassistants.stackexchange.com", 143)):
        assert abs(hosts[name] - 100 * rows / total) <= 1
    assert stats["per_stratum"] == dict(sorted(hosts.items()))


def test_quotas_sum_to_n_and_never_exceed_a_stratum():
    share = quotas(Counter(a=5, b=3, c=1, d=1), 7)
    assert sum(share.values()) == 7 and all(share[s] <= n for s, n in Counter(a=5, b=3, c=1, d=1).items())
    assert quotas(Counter(a=2, b=1), 10) == {"a": 2, "b": 1}


def test_cli_reports_bad_files_and_keeps_going(shared_dir, tmp_path):
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"PAR1 not really parquet")
    out = tmp_path / "s"
    result = run_curate("sample", shared_dir / "data" / "mathweb" / "cstheory.parquet", bad, "--out", out,
                        "--n", "20", "--seed", "3")
    assert result.returncode == 1
    assert "broken.parquet" in result.stderr and "not a readable Parquet file" in result.stderr
    assert pq.read_table(Layout(out).sample_file).num_rows == 20
    assert "20 of 213 documents" in result.stdout
