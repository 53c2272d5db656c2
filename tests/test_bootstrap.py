"""`curate bootstrap` end to end against the real llama.cpp server (SmolLM2-135M-Instruct), through a
recording proxy that counts the requests; plus the selection rules on their own.

The initial labels are the reference labels minus the pool; the pool is the 8 shortest GSM8K
documents of the reference labels (and a near-copy of a labeled one), so each prompt is short.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from curate.bootstrap import TOP, UNCERTAIN, NearDuplicateIndex, choose, rankings
from curate.schema import BEHAVIORS
from tests.conftest import BUNDLED_LABELS
from tests.helpers import REPO, run_curate, write_job
from tests.llm_server import RecordingProxy

POOL_SIZE = 8


def test_choose_takes_top_then_uncertain_skipping_labeled_and_picked_near_duplicates():
    words = " ".join(f"w{i}" for i in range(40))
    texts = {"a": words, "b": words + " end", "c": "a different text about apples and pears " * 3,
             "d": "yet another text about trains and their timetables " * 3, "e": "short one"}
    index = NearDuplicateIndex(0.8)
    assert index.add("labeled:0", "yet another text about trains and their timetables " * 3)
    probs = np.array([[0.9] * 4, [0.9] * 4, [0.52, 0, 0, 0], [0.5, 0, 0, 0], [0.1] * 4])
    orders = rankings(list(texts), probs, probs.mean(1), np.full(4, 0.5))
    assert orders[TOP][:2] == ["a", "b"] and orders[UNCERTAIN][:2] == ["d", "c"]
    picked, near_duplicates = choose(orders, {TOP: 2, UNCERTAIN: 2}, texts, index)
    # b is a near-copy of the picked a; d one of a labeled text; a counts once
    assert picked == [("a", TOP), ("c", TOP), ("e", UNCERTAIN)]
    assert near_duplicates == 3  # b (top), d (uncertain), b (uncertain)


@pytest.fixture()
def bootstrap_data(tmp_path):
    gold = pq.read_table(BUNDLED_LABELS)
    gsm = gold.filter(pc.starts_with(gold["url"], "gsm8k"))
    gsm = gsm.take(pc.sort_indices(pc.utf8_length(gsm["text"])))
    pool_ids = set(gsm["id"].slice(0, POOL_SIZE).to_pylist())
    initial = gold.filter(pc.invert(pc.is_in(gold["id"], pa.array(sorted(pool_ids)))))
    pq.write_table(initial, tmp_path / "initial.parquet")
    copy_of_labeled = gsm.slice(POOL_SIZE, 1).to_pylist()[0]
    pool = gsm.slice(0, POOL_SIZE).select(["url", "text"]).to_pylist()
    pool.append({"url": "copy:" + copy_of_labeled["url"], "text": copy_of_labeled["text"] + " Done."})
    pq.write_table(pa.Table.from_pylist(pool), tmp_path / "pool.parquet")
    return tmp_path / "initial.parquet", tmp_path / "pool.parquet", pool_ids


def _job(tmp_path, initial, pool, endpoint, rounds):
    return write_job(
        tmp_path / f"job-{rounds}.yaml", name="bootstrap-test", output_dir=str(tmp_path / "out"),
        input={"paths": [str(pool)]},
        train={"labels": str(initial), "epoch": 5, "cv_folds": 2, "dim": 16, "bucket": 20000, "workers": 2},
        score={"tasks": 1, "workers": 1, "calibration_docs": 20},
        label={"endpoint_url": endpoint, "model": "smollm2", "structured_output": "json_object",
               "max_doc_tokens": 40, "max_tokens": 48, "concurrency": 1, "records_per_chunk": 1},
        bootstrap={"rounds": rounds, "per_round": 2, "uncertain_fraction": 0.5})


@pytest.mark.slow
def test_bootstrap_two_rounds_against_the_server_resumes_and_skips_finished_rounds(llama_server, bootstrap_data,
                                                                                 tmp_path):
    initial, pool, pool_ids = bootstrap_data
    proxy = RecordingProxy(llama_server.url).start()
    out = tmp_path / "out" / "bootstrap"
    # round 1 is killed (SIGKILL, a preempted job) once its first document's answer is checkpointed:
    # datatrove counts a chunk (here one document) done when it has written the rank's last_chunk marker
    job_one = _job(tmp_path, initial, pool, proxy.url, rounds=1)
    first = subprocess.Popen([sys.executable, "-m", "curate", "bootstrap", str(job_one)], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = out / "round-01" / "logs" / "label" / "work" / "checkpoints" / "last_chunk" / "00000.txt"
    deadline = time.monotonic() + 300
    while first.poll() is None and time.monotonic() < deadline and not (
            marker.exists() and marker.read_text().strip()):
        time.sleep(0.05)
    first.kill()
    first.wait()
    assert first.returncode == -signal.SIGKILL, "bootstrap ended before its first answer was checkpointed"
    selection = out / "round-01" / "selection.parquet"
    picked_before, picked_at = pq.read_table(selection)["id"].to_pylist(), selection.stat().st_mtime_ns
    # one request at a time, one document per chunk: the chunks done are the first documents answered
    # (a later answer may have arrived after the marker; it was not checkpointed)
    done = int(marker.read_text()) + 1
    answered_before, n_before = set(list(dict.fromkeys(proxy.answered()))[:done]), len(proxy.records)
    assert answered_before and not (out / "round-01" / "metrics.json").exists()
    try:
        one = run_curate("bootstrap", job_one)
        assert one.returncode == 0, one.stderr[-3000:]
        assert "skipped rounds 0:" in one.stdout and selection.stat().st_mtime_ns == picked_at  # same picks resumed
        resumed = {r["doc"] for r in proxy.records[n_before:]}
        assert resumed and not resumed & answered_before  # a checkpointed answer is not asked again
        assert sorted(pq.read_table(out / "round-01" / "labels" / "labels.parquet")["id"].to_pylist()) == sorted(picked_before)
        assert len(set(proxy.answered())) == 2
        two = run_curate("bootstrap", _job(tmp_path, initial, pool, proxy.url, rounds=2))
        assert two.returncode == 0, two.stderr[-3000:]
        assert "skipped rounds 0, 1" in two.stdout  # round 1 is not redone when the job asks for a second
        assert len(set(proxy.answered())) == 4 and len(proxy.records) == len(proxy.answered())
        asked = list(proxy.records)
        again = run_curate("bootstrap", _job(tmp_path, initial, pool, proxy.url, rounds=2))
        assert again.returncode == 0, again.stderr[-3000:]
        assert "skipped rounds 0, 1, 2" in again.stdout and proxy.records == asked  # nothing asked again
    finally:
        proxy.stop()
    print(two.stdout)

    rounds = json.loads((out / "metrics.json").read_text())["rounds"]
    assert [m["round"] for m in rounds] == [0, 1, 2]
    n_initial = pq.read_metadata(initial).num_rows
    assert [m["labeled_documents"] for m in rounds] == [n_initial, n_initial + 2, n_initial + 4]
    for m in rounds:
        for b in BEHAVIORS:
            assert 0 <= m["metrics"][b]["roc_auc"] <= 1 and m["metrics"][b]["positives"] > 0
    picked = []
    for r, m in enumerate(rounds[1:], start=1):
        folder = out / f"round-{r:02d}"
        assert m["new_documents"] == 2 and m["selected"] == {TOP: 1, UNCERTAIN: 1}
        assert m["label_requests"] == (2 if r == 2 else len(resumed))  # requests of the run that finished it
        selection = pq.read_table(folder / "selection.parquet")
        labels = pq.read_table(folder / "labels" / "labels.parquet")
        assert sorted(labels["id"].to_pylist()) == sorted(selection["id"].to_pylist())
        assert sum(1 for c in labels["verification"].to_pylist() if c) == m["new_positives"]["verification"]
        assert json.loads((folder / "classifier" / "card.json").read_text())["fingerprint"] == m["fingerprint"]
        assert pq.read_metadata(folder / "train_labels.parquet").num_rows == m["labeled_documents"]
        picked += selection["id"].to_pylist()
    # picks come from the unlabeled pool, never twice, never the near-copy of a labeled document
    assert len(set(picked)) == 4 and set(picked) <= pool_ids
    assert "labeled" in two.stdout.splitlines()[1] and len(two.stdout.splitlines()) >= 5  # the table


def test_bootstrap_job_validates(tmp_path):
    import yaml

    from curate.config import JobError, load_job

    job = load_job(REPO / "jobs" / "bootstrap-local.yaml")
    assert job.bootstrap is not None and job.label is not None and job.train.labels is not None
    raw = yaml.safe_load((REPO / "jobs" / "bootstrap-local.yaml").read_text())
    del raw["label"]
    with pytest.raises(JobError, match="bootstrap needs a label section"):
        load_job(write_job(tmp_path / "bad.yaml", **raw))


@pytest.mark.slow
def test_bootstrap_stops_with_one_line_error_when_the_pool_is_all_labeled(tmp_path):
    initial = tmp_path / "initial.parquet"
    pq.write_table(pq.read_table(BUNDLED_LABELS), initial)
    pool = tmp_path / "pool.parquet"
    pq.write_table(pq.read_table(BUNDLED_LABELS, columns=["url", "text"]).slice(0, 5), pool)
    result = run_curate("bootstrap", _job(tmp_path, initial, pool, "http://127.0.0.1:9", rounds=1))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: bootstrap round 1: no unlabeled document left")
    assert (tmp_path / "out" / "bootstrap" / "round-00" / "metrics.json").exists()
