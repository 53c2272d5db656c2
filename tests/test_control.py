"""The matched control mix on the real math web corpus of ../shared (8.8k documents): the same
tokens as the main mix, from its lowest-scoring documents, matched on url host and length."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from curate.control import host_of
from curate.schema import PROB_COLUMNS
from tests.conftest import BUNDLED_LABELS, REPO
from tests.helpers import run_curate, write_job

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(shared_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("control")
    job = write_job(tmp / "job.yaml", name="control-test", output_dir=str(tmp / "out"),
                    input={"paths": [str(shared_dir / "data" / "mathweb")]},
                    train={"labels": str(BUNDLED_LABELS), "epoch": 10},
                    score={"tasks": 2, "workers": 2},
                    filters={"dedup": {"enabled": True}, "decontaminate": {"eval_sets": [
                        {"path": str(REPO / "curate" / "data" / "evals" / "gsm8k-sample.parquet"),
                         "fields": ["question", "answer"], "id_field": "id"}]}},
                    mix={"method": "proportional", "token_budget": 120_000, "max_repeats": 3, "control": True})
    result = run_curate("run", job, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp / "out"


def mix_rows(folder):
    return pq.read_table(folder / "data").to_pylist()


def test_control_has_the_main_mix_tokens_and_no_shared_document(run):
    main, control = mix_rows(run / "mix"), mix_rows(run / "control")
    tokens = lambda rows: sum(r["n_tokens"] * r["repeats"] for r in rows)  # noqa: E731
    assert abs(tokens(control) / tokens(main) - 1) <= 0.01, (tokens(control), tokens(main))
    assert not {r["id"] for r in main} & {r["id"] for r in control}
    assert max(r["repeats"] for r in control) <= 3


def test_control_matches_hosts_within_5_points_and_length_deciles_within_10_percent(run):
    main, control = mix_rows(run / "mix"), mix_rows(run / "control")

    def shares(rows):
        total = sum(r["n_tokens"] * r["repeats"] for r in rows)
        out: dict[str, float] = {}
        for r in rows:
            out[host_of(r["id"])] = out.get(host_of(r["id"]), 0) + 100 * r["n_tokens"] * r["repeats"] / total
        return out

    def deciles(rows):
        lengths = np.repeat([r["n_tokens"] for r in rows], [r["repeats"] for r in rows])
        return np.quantile(lengths, np.linspace(0.1, 0.9, 9))

    a, b = shares(main), shares(control)
    assert len(a) >= 3
    for host in set(a) | set(b):
        assert abs(a.get(host, 0) - b.get(host, 0)) <= 5, (host, a, b)
    assert np.all(np.abs(deciles(control) / deciles(main) - 1) <= 0.10), (deciles(main), deciles(control))
    stats = json.loads((run / "control" / "stats.json").read_text())["matching"]
    assert stats["hosts_within_5pp"] and stats["deciles_within_10pct"] and stats["shared_documents"] == 0


def test_control_shows_fewer_behaviors_and_both_cards_say_so_side_by_side(run):
    """Matched on host and length, the control keeps only what the classifier sees beyond them: it is
    leaner in every behavior, and the cards state both mixes' expected shares."""
    main, control = mix_rows(run / "mix"), mix_rows(run / "control")
    recorded = json.loads((run / "control" / "stats.json").read_text())["expected_behavior_share"]

    def share(rows, col):
        return sum(r[col] * r["n_tokens"] * r["repeats"] for r in rows) / sum(r["n_tokens"] * r["repeats"] for r in rows)

    for col in PROB_COLUMNS:
        assert share(control, col) < share(main, col), col
        assert recorded[col.removeprefix("p_")]["mix"] == pytest.approx(share(control, col), rel=1e-4)
    total = lambda rows: sum(share(rows, col) for col in PROB_COLUMNS)  # noqa: E731
    assert total(control) < 0.85 * total(main), (total(control), total(main))
    for folder in ("mix", "control"):
        card = (run / folder / "README.md").read_text()
        assert "| behavior | scored corpus | mix | control |" in card, folder
    dropped = json.loads((run / "control" / "stats.json").read_text())["dropped"]
    drops = set(pq.read_table(run / "filters" / "drops.parquet")["id"].to_pylist())
    assert dropped["contamination"] > 0 and not drops & {r["id"] for r in control}  # the filters apply to it too


def test_audit_covers_both_mixes(run):
    audit = run_curate("audit", run)
    assert audit.returncode == 0, audit.stdout
    assert "mix     OK" in audit.stdout and "control OK" in audit.stdout
