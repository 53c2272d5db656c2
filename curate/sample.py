"""`curate sample`: a reproducible sample of documents to label, near-duplicates removed.

Each document gets a seeded pseudo-random key from its id; the sample is the documents with the
smallest keys (per url host when stratified), so it does not depend on file order or on how many
times it is run. Candidates are checked in key order against a MinHash LSH index of those already
taken: a near-duplicate of a taken document is skipped, so train and test splits of the labels
don't share near-copies. Memory holds only the candidates, about twice the sample size.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import math
from collections import Counter
from urllib.parse import urlparse

import pyarrow as pa

from curate.config import SampleConfig
from curate.dedup import NearDuplicateIndex
from curate.io import Dropped, iter_readable, write_json, write_parquet
from curate.layout import Layout
from curate.progress import Progress
from curate.schema import ID, SAMPLE_SCHEMA, TEXT, URL

log = logging.getLogger("curate")

STAGE = "sample"
NO_HOST = "(no url)"
MAX_OVERSAMPLE_ROUNDS = 5


def sample_key(seed: int, document_id: str) -> int:
    """The document's seeded pseudo-random rank (smaller is taken first)."""
    return int.from_bytes(hashlib.sha256(f"{seed}\x00{document_id}".encode()).digest()[:8], "big")


def host(url: str | None) -> str:
    """The stratum of a document: its url's host without `www.`."""
    name = (urlparse(url).hostname or "") if url else ""
    return name.removeprefix("www.") or NO_HOST


def quotas(counts: Counter, n: int) -> dict[str, int]:
    """Split `n` over strata in proportion to their sizes (largest remainder; ties by name)."""
    total = sum(counts.values())
    exact = {s: n * c / total for s, c in counts.items()}
    share = {s: min(int(v), counts[s]) for s, v in exact.items()}
    for s in sorted(exact, key=lambda s: (-(exact[s] - int(exact[s])), s)):
        if sum(share.values()) >= min(n, total):
            break
        if share[s] < counts[s]:
            share[s] += 1
    return share


class _Reader:
    """Iterates the readable documents of the input files, remembering dropped rows and bad files."""

    def __init__(self, files: list[str]):
        self.files = files
        self.file_errors: list[str] = []
        self.dropped: Counter = Counter()

    def documents(self, only_files: set[int] | None = None):
        self.file_errors, self.dropped = [], Counter()
        index_of = {path: i for i, path in enumerate(self.files)}
        files = self.files if only_files is None else [f for i, f in enumerate(self.files) if i in only_files]
        for path, row, item in iter_readable(files, on_error=lambda _, error, __: self.file_errors.append(error)):
            if isinstance(item, Dropped):
                self.dropped[item.reason] += 1
                continue
            yield index_of[path], row, item


def _candidates(reader: _Reader, share: dict[str, int], stratify: bool, seed: int, oversample: float):
    """The smallest-key documents of each stratum, `oversample` times its quota (plus a few)."""
    caps = {s: math.ceil(q * oversample) + 2 for s, q in share.items()}
    heaps: dict[str, list] = {s: [] for s in share}
    seen: Counter = Counter()
    progress = Progress("sample: scan")
    for file_index, row, doc in reader.documents():
        stratum = host(doc[URL]) if stratify else "all"
        if stratum not in heaps:
            continue
        seen[stratum] += 1
        item = (-sample_key(seed, doc[ID]), file_index, row)
        heap = heaps[stratum]
        if len(heap) < caps[stratum]:
            heapq.heappush(heap, item)
        elif item > heap[0]:
            heapq.heapreplace(heap, item)
        progress.update()
    progress.finish()
    saturated = any(seen[s] > len(h) for s, h in heaps.items())
    chosen = {(f, r): (s, -k) for s, h in heaps.items() for k, f, r in h}
    return chosen, saturated


def _select(reader: _Reader, chosen: dict, share: dict[str, int], cfg: SampleConfig):
    """Fetch the candidates and take them in key order, skipping near-duplicates of taken ones."""
    docs = []
    files = {f for f, _ in chosen}
    for file_index, row, doc in reader.documents(files):
        if (file_index, row) in chosen:
            stratum, key = chosen[(file_index, row)]
            docs.append((key, stratum, doc))
    docs.sort(key=lambda d: d[0])
    index = NearDuplicateIndex(cfg.near_dup_threshold, cfg.num_perm, cfg.shingle_words)
    taken, taken_per_stratum, near_duplicates = [], Counter(), 0
    for _key, stratum, doc in docs:
        if taken_per_stratum[stratum] >= share[stratum]:
            continue
        if not index.add(doc[ID], doc[TEXT]):
            near_duplicates += 1
            continue
        taken.append(doc)
        taken_per_stratum[stratum] += 1
    return taken, near_duplicates, taken_per_stratum


def sample(files: list[str], layout: Layout, cfg: SampleConfig, seed: int = 0, fingerprint: str | None = None) -> dict:
    """Write a sample of `cfg.n` documents (`layout.sample_file`: id, url, text, date, metadata) and
    its stats (`logs/sample/stats.json`); return the stats. Unreadable files and rows are reported
    in the stats, not fatal."""
    reader = _Reader(files)
    stratify = cfg.stratify == "domain"
    if stratify:
        strata = Counter(host(doc[URL]) for _, _, doc in reader.documents())
    else:
        strata = Counter(all=sum(1 for _ in reader.documents()))
    share = quotas(strata, cfg.n) if sum(strata.values()) else {}
    file_errors, dropped = reader.file_errors, dict(reader.dropped)  # of the full pass
    oversample = 2.0
    for _round in range(MAX_OVERSAMPLE_ROUNDS):
        chosen, saturated = _candidates(reader, share, stratify, seed, oversample)
        taken, near_duplicates, per_stratum = _select(reader, chosen, share, cfg)
        if len(taken) >= min(cfg.n, sum(strata.values())) or not saturated:
            break
        oversample *= 2
    table = pa.Table.from_pylist([{c: d.get(c) for c in SAMPLE_SCHEMA.names} for d in taken], schema=SAMPLE_SCHEMA)
    write_parquet(table, layout.sample_file)
    stats = {
        "fingerprint": fingerprint,
        "input_files": files,
        "documents_in": sum(strata.values()),
        "documents_out": len(taken),
        "requested": cfg.n,
        "near_duplicates_skipped": near_duplicates,
        "dropped": dropped,
        "file_errors": file_errors,
        "seed": seed,
        "config": cfg.model_dump(),
        "per_stratum": dict(sorted(per_stratum.items())) if stratify else None,
    }
    write_json(stats, layout.stats(STAGE))
    log.info("sample: %d of %d documents (%d near-duplicates skipped) -> %s", len(taken), stats["documents_in"],
             near_duplicates, layout.sample_file)
    return stats
