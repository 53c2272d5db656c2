"""The matched control mix: the experiment's comparison set.

The paper's claim rests on continued pretraining on behavior-rich data versus a matched set with
minimal behaviors and the same token count. The control takes the lowest-scoring documents that
are not in the main mix, matched to it copy for copy on url host and length: for every copy in
the main mix the control takes a copy of a document from the same host in the same 5%-wide length
band (log scale), lowest `behavior_score` first, repeating a document up to `max_repeats` times
when a band runs short; a shortfall moves to the nearest bands of the host (shorter and longer in
turn), then to the same bands of any host. Matched documents run a little shorter than the ones
they match, so more copies are matched the same way (to the main mix's longest copies first)
until the tokens are within 0.1% of the main mix's. The stats record how well the two match: per-host
token shares (goal: within 5 percentage
points) and the token-length deciles over copies (goal: within 10%).
"""

from __future__ import annotations

import numpy as np

from curate.config import MixConfig
from curate.executors import DaskCluster
from curate.io import read_tables
from curate.layout import Layout, dataset_files
from curate.mix import BUDGET_TOLERANCE, Eligible, check_inputs_scored, seeded_uniform, write_dataset
from curate.sample import host
from curate.schema import BEHAVIOR_SCORE, ID, N_TOKENS, REPEATS
from curate.score import load_scores

KIND = "control"
HOST_GAP_PP, DECILE_GAP = 5.0, 0.10
LENGTH_BAND = 0.05  # width of a length band: 5% more tokens than the band below
MAX_BAND_OFFSET = 40  # how far (in bands, ~ x7 in length) a shortfall may move


def host_of(doc_id: str) -> str:
    """The url host of a document id (ids are urls when the document has one)."""
    return host(None if doc_id.startswith("sha1:") else doc_id)


class _Cells:
    """Candidate documents grouped by a key (host and length band, or band alone), lowest score
    first; `take` hands out copies round by round (every document once before any twice), at most
    `cap` copies of a document in all."""

    def __init__(self, rows: np.ndarray, keys: list, cap: int):
        grouped: dict = {}
        for i, key in zip(rows.tolist(), keys):
            grouped.setdefault(key, []).append(i)
        self.rows, self.cap = grouped, cap
        self.position = dict.fromkeys(grouped, 0)

    def take(self, key, n: int, repeats: np.ndarray) -> list[int]:
        """Up to `n` copies from the documents under `key`; the rows that got one."""
        rows, taken = self.rows.get(key), []
        while rows and len(taken) < n and self.position[key] < len(rows) * self.cap:
            i = rows[self.position[key] % len(rows)]
            self.position[key] += 1
            if repeats[i] < self.cap:
                repeats[i] += 1
                taken.append(i)
        return taken


def _nearest_first(limit: int) -> list[int]:
    """Band offsets 0, -1, +1, -2, +2, ... up to `limit`."""
    return [0] + [sign * k for k in range(1, limit + 1) for sign in (-1, 1)]


def length_deciles(tokens: np.ndarray, repeats: np.ndarray) -> list[float]:
    """Token-length deciles (10%..90%) over the copies of a mix."""
    lengths = np.repeat(tokens, repeats)
    return np.quantile(lengths, np.linspace(0.1, 0.9, 9)).tolist() if len(lengths) else []


def host_shares(hosts: np.ndarray, tokens: np.ndarray, repeats: np.ndarray) -> dict[str, float]:
    """Share of a mix's tokens from each host, in percent."""
    mass = tokens * repeats
    total = mass.sum()
    return {h: 100 * float(mass[hosts == h].sum() / total) for h in np.unique(hosts[repeats > 0])} if total else {}


def choose_control(eligible: Eligible, main_repeats: np.ndarray, cap: int, seed: int = 0) -> np.ndarray:
    """Copies of each scored row in the control (see the module docstring)."""
    tokens = eligible.column(N_TOKENS).astype(np.int64)
    scores = eligible.column(BEHAVIOR_SCORE).astype(np.float64)
    hosts = np.array([host_of(i) for i in eligible.ids])
    bands = np.floor(np.log(np.maximum(tokens, 1)) / np.log(1 + LENGTH_BAND)).astype(np.int64)
    candidate = np.zeros(len(tokens), dtype=bool)
    candidate[eligible.rows] = True
    candidate &= main_repeats == 0
    lowest_first = np.lexsort((np.arange(len(scores)), scores))
    lowest_first = lowest_first[candidate[lowest_first]]
    same_host = _Cells(lowest_first, list(zip(hosts[lowest_first].tolist(), bands[lowest_first].tolist())), cap)
    any_host = _Cells(lowest_first, bands[lowest_first].tolist(), cap)
    repeats = np.zeros(len(tokens), dtype=np.int64)

    def match(h: str, band: int, n: int) -> list[int]:
        taken: list[int] = []
        for cells, key in ((same_host, lambda off: (h, band + off)), (any_host, lambda off: band + off)):
            for offset in _nearest_first(MAX_BAND_OFFSET):
                taken += cells.take(key(offset), n - len(taken), repeats)
                if len(taken) == n:
                    return taken
        return taken

    main_rows = np.flatnonzero(main_repeats)
    for h, band in sorted({(hosts[i], int(bands[i])) for i in main_rows}):
        cell = main_rows[(hosts[main_rows] == h) & (bands[main_rows] == band)]
        match(h, band, int(main_repeats[cell].sum()))
    # matched documents run a little shorter (a band is 5% wide; long bands run short of candidates):
    # more copies, matched to the main mix's longest copies first, until the tokens meet the main mix's
    budget, total = int((tokens * main_repeats).sum()), int((tokens * repeats).sum())
    copies = np.repeat(main_rows, main_repeats[main_rows])
    copies = copies[np.lexsort((seeded_uniform([f"{eligible.ids[i]}#{k}" for k, i in enumerate(copies)], seed),
                                -tokens[copies]))]
    while total < budget * (1 - BUDGET_TOLERANCE):
        added = 0
        for i in copies:
            if total >= budget * (1 - BUDGET_TOLERANCE):
                break
            for row in match(hosts[i], int(bands[i]), 1):
                if total + tokens[row] > budget:
                    repeats[row] -= 1
                else:
                    total += int(tokens[row])
                    added += 1
        if not added:
            break
    return repeats


def matching(eligible: Eligible, main_repeats: np.ndarray, repeats: np.ndarray) -> dict:
    """How well the control matches the main mix: host token shares and length deciles."""
    tokens = eligible.column(N_TOKENS).astype(np.int64)
    hosts = np.array([host_of(i) for i in eligible.ids])
    main_hosts, control_hosts = host_shares(hosts, tokens, main_repeats), host_shares(hosts, tokens, repeats)
    gaps = {h: abs(main_hosts.get(h, 0.0) - control_hosts.get(h, 0.0)) for h in set(main_hosts) | set(control_hosts)}
    main_deciles, control_deciles = length_deciles(tokens, main_repeats), length_deciles(tokens, repeats)
    decile_gaps = [abs(c / m - 1) for m, c in zip(main_deciles, control_deciles) if m > 0]
    return {
        "host_share_percent": {h: {"mix": main_hosts.get(h, 0.0), KIND: control_hosts.get(h, 0.0)}
                               for h in sorted(gaps, key=lambda h: -main_hosts.get(h, 0.0))},
        "max_host_gap_pp": max(gaps.values(), default=0.0),
        "hosts_within_5pp": max(gaps.values(), default=0.0) <= HOST_GAP_PP,
        "length_deciles": {"mix": main_deciles, KIND: control_deciles},
        "max_decile_gap": max(decile_gaps, default=0.0),
        "deciles_within_10pct": bool(decile_gaps) and max(decile_gaps) <= DECILE_GAP,
        "shared_documents": int(((main_repeats > 0) & (repeats > 0)).sum()),
    }


def main_mix_copies(layout: Layout, eligible: Eligible) -> np.ndarray:
    """Copies of each scored row in the main mix of `layout` (which must exist)."""
    shards = dataset_files(layout.mix_dir())
    if not shards:
        raise FileNotFoundError(f"{layout.mix_dir()}: no main mix to match (run the mix first)")
    table = read_tables(shards, columns=[ID, REPEATS])
    copies = dict(zip(table.column(ID).to_pylist(), table.column(REPEATS).to_pylist()))
    repeats = np.zeros(len(eligible.ids), dtype=np.int64)
    for i in eligible.rows:
        repeats[i] = copies.get(eligible.ids[i], 0)
    return repeats


def control(files: list[str], layout: Layout, cfg: MixConfig, seed: int = 0, fingerprint: str | None = None,
            dask_cluster: DaskCluster | None = None, exclude: dict[str, str] | None = None,
            name: str | None = None) -> dict:
    """Write the matched control of the main mix of `layout` into `OUT/control` (same layout, stats
    and card as the mix) and return its stats."""
    from curate.card import write_cards

    check_inputs_scored(files, layout)
    eligible = Eligible(load_scores(layout.scores_dir, dask_cluster), exclude)
    main_repeats = main_mix_copies(layout, eligible)
    repeats = choose_control(eligible, main_repeats, cfg.max_repeats, seed)
    budget = int((eligible.column(N_TOKENS) * main_repeats).sum())
    stats = write_dataset(files, eligible, repeats, repeats.astype(np.float64), layout.mix_dir(KIND),
                          cfg.model_copy(update={"token_budget": budget}), seed,
                          {"kind": KIND, "name": f"{name or layout.root.resolve().name} (matched control)",
                           "fingerprint": fingerprint, "matching": matching(eligible, main_repeats, repeats)})
    write_cards(layout)
    return stats
