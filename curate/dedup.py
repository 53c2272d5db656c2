"""Near-duplicate removal: MinHash over word shingles, LSH to find candidate pairs, and the
best-scoring document of each cluster kept.

Two backends find the clusters:
- datasketch (default, one process): `MinHashLSH` candidates, each confirmed by its estimated
  Jaccard similarity (>= threshold), joined into clusters by union-find.
- datatrove (the full corpus on a cluster): its MinHash stages signature -> buckets -> cluster as
  pipelines run by any executor (`make_executor`: local here, Slurm on a cluster); candidates are
  documents sharing a band, without the Jaccard check.
Either way `keep_best` keeps the member with the highest `behavior_score` and drops the others.

Defaults (job file `filters.dedup`): 128 permutations, threshold 0.8, bands chosen by datasketch
for the threshold (9 bands x 13 rows), 5-word shingles of lowercase word tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from datasketch import LeanMinHash, MinHash, MinHashLSH
from datatrove.data import Document
from datatrove.pipeline.dedup.minhash import (
    MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupSignature,
)
from datatrove.pipeline.writers.parquet import ParquetWriter
from datatrove.utils.hashing import HashConfig
from datatrove.utils.text import TextNormConfig
from datatrove.utils.word_tokenizers import WordTokenizer

from curate.config import DedupConfig
from curate.progress import Progress
from curate.schema import ID, word_tokens

def lsh_shape(cfg: DedupConfig) -> tuple[int, int]:
    """(bands, rows per band) of the LSH: the configured bands, else datasketch's choice for the threshold."""
    if cfg.bands:
        if cfg.bands > cfg.num_perm:
            raise ValueError(f"filters.dedup.bands ({cfg.bands}) is more than num_perm ({cfg.num_perm})")
        return cfg.bands, cfg.num_perm // cfg.bands
    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
    return lsh.b, lsh.r


def shingles(text: str, size: int) -> set[bytes]:
    """The distinct `size`-word shingles of a text (one shingle of all words when shorter)."""
    tokens = word_tokens(text)
    if not tokens:
        return set()
    return {" ".join(tokens[i:i + size]).encode() for i in range(max(1, len(tokens) - size + 1))}


def signature(text: str, num_perm: int = 128, shingle_size: int = 5, seed: int = 1) -> LeanMinHash | None:
    """MinHash of the text's `shingle_size`-word shingles, or None for a text without words."""
    grams = shingles(text, shingle_size)
    if not grams:
        return None
    minhash = MinHash(num_perm=num_perm, seed=seed)
    minhash.update_batch(list(grams))
    return LeanMinHash(minhash)


class NearDuplicateIndex:
    """MinHash LSH of the texts taken so far; `add` refuses a text that is a near-duplicate of one of
    them (the sample and the bootstrap rounds skip such documents)."""

    def __init__(self, threshold: float, num_perm: int = 128, shingle_size: int = 5):
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.num_perm, self.shingle_size = num_perm, shingle_size

    def add(self, key: str, text: str) -> bool:
        """Insert the text unless it is a near-duplicate of one in the index; whether it was taken
        (a text without words is taken and not indexed)."""
        sig = signature(text, self.num_perm, self.shingle_size)
        if sig is None:
            return True
        if self.lsh.query(sig):
            return False
        self.lsh.insert(key, sig)
        return True


class UnionFind:
    """Disjoint sets of ids."""

    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        self.parent[self.find(a)] = self.find(b)

    def groups(self) -> list[list[str]]:
        groups: dict[str, list[str]] = {}
        for x in self.parent:
            groups.setdefault(self.find(x), []).append(x)
        return [sorted(g) for g in groups.values() if len(g) > 1]


def near_duplicate_clusters(documents: Iterable[tuple[str, str]], cfg: DedupConfig, total: int | None = None
                            ) -> list[list[str]]:
    """Clusters (two or more ids) of documents whose estimated Jaccard similarity is >= threshold."""
    bands, rows = lsh_shape(cfg)
    lsh = MinHashLSH(num_perm=cfg.num_perm, params=(bands, rows))
    signatures: dict[str, LeanMinHash] = {}
    clusters = UnionFind()
    progress = Progress("dedup", total=total)
    for doc_id, text in documents:
        progress.update()
        sig = signature(text, cfg.num_perm, cfg.shingle_size, cfg.seed)
        if sig is None or doc_id in signatures:
            continue
        for other in lsh.query(sig):
            if sig.jaccard(signatures[other]) >= cfg.threshold:
                clusters.union(doc_id, other)
        lsh.insert(doc_id, sig)
        signatures[doc_id] = sig
    progress.finish()
    return clusters.groups()


def keep_best(clusters: list[list[str]], scores: dict[str, float], exclude: set[str] = frozenset()
              ) -> dict[str, str]:
    """{dropped id: kept id}: in each cluster the highest-scoring member not in `exclude` is kept
    (ties: the smallest id); the cluster's other members not in `exclude` are dropped."""
    dropped = {}
    for cluster in clusters:
        members = [m for m in cluster if m not in exclude]
        if len(members) < 2:
            continue
        kept = min(members, key=lambda m: (-scores.get(m, -1.0), m))
        dropped.update({m: kept for m in members if m != kept})
    return dropped


# --- datatrove backend -------------------------------------------------------------------------

class WordTokenizerForMinhash(WordTokenizer):
    """datatrove word tokenizer splitting like `curate.schema.word_tokens` (no spaCy needed)."""

    def word_tokenize(self, text: str) -> list[str]:
        return word_tokens(text)

    def sent_tokenize(self, text: str) -> list[str]:
        return [text]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [(0, len(text))]


def minhash_config(cfg: DedupConfig) -> MinhashConfig:
    """datatrove's MinHash configuration for the job's dedup settings (lowercase, punctuation
    removed, whitespace normalized; numbers kept). Shingles hash with SHA-1: datatrove 0.10.1 hands
    `str` to xxhash, which current xxhash releases refuse."""
    bands, rows = lsh_shape(cfg)
    return MinhashConfig(n_grams=cfg.shingle_size, num_buckets=bands, hashes_per_bucket=rows, seed=cfg.seed,
                         norm_config=TextNormConfig(norm_numbers=False), hash_config=HashConfig(hash_fc="sha1"))


def _id_row(self, document: Document) -> dict:
    return {ID: document.id}


class DocumentIdWriter(ParquetWriter):
    """Writes each rank's document ids in stream order to `ids/<rank>.parquet`: row k is the
    document datatrove's MinHash stages call (rank, k)."""

    name = "📒 document ids"

    def __init__(self, output_folder: str):
        super().__init__(output_folder, output_filename="${rank}.parquet", adapter=_id_row, max_file_size=-1)


ExecutorFactory = Callable[[str, list, int, object], object]
"""(stage name, pipeline steps, tasks, executor it depends on or None) -> a datatrove executor."""


def local_executor_factory(logs_dir: str | Path, workers: int) -> ExecutorFactory:
    """Executors that run each stage on this machine, logging under `logs_dir/<stage>`."""
    from datatrove.executor import LocalPipelineExecutor

    def make(stage: str, pipeline: list, tasks: int, depends):
        return LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=min(workers, tasks),
                                     logging_dir=str(Path(logs_dir) / stage), depends=depends)
    return make


def build_minhash_executors(reader, work_dir: str | Path, cfg: DedupConfig, tasks: int,
                            make_executor: ExecutorFactory) -> list:
    """datatrove's MinHash stages as executors, each depending on the one before: ids + signatures
    (`tasks` ranks) -> buckets (one task per band) -> clusters (one task, cluster ids saved).
    Launching the last one runs them all; `read_clusters(work_dir)` then gives the clusters.

    datatrove's own last stage (MinhashDedupFilter) keeps an arbitrary member of each cluster; the
    cluster ids are read instead so that `keep_best` can keep the best-scoring one."""
    work = Path(work_dir)
    config = minhash_config(cfg)
    stages = [
        ("signatures", [reader, DocumentIdWriter(str(work / "ids")),
                        MinhashDedupSignature(str(work / "signatures"), config=config,
                                              language=WordTokenizerForMinhash())], tasks),
        ("buckets", [MinhashDedupBuckets(str(work / "signatures"), str(work / "buckets"), config=config)],
         config.num_buckets),
        ("clusters", [MinhashDedupCluster(str(work / "buckets"), str(work / "clusters"), config=config,
                                          save_cluster_id=True)], 1),
    ]
    executors: list = []
    for name, pipeline, n_tasks in stages:
        executors.append(make_executor(name, pipeline, n_tasks, executors[-1] if executors else None))
    return executors


def read_clusters(work_dir: str | Path) -> list[list[str]]:
    """The clusters datatrove's MinHash stages found, as lists of document ids."""
    import pyarrow.parquet as pq
    from datatrove.utils.binaryio import read_tuples_from_file

    work = Path(work_dir)
    groups: dict[int, set[str]] = {}
    for path in sorted((work / "clusters").glob("*.clusters")):
        rank = int(path.name.split(".")[0])
        ids = pq.read_table(work / "ids" / f"{rank:05d}.parquet", columns=[ID]).column(ID).to_pylist()
        with open(path, "rb") as f:
            for doc_idx, cluster in read_tuples_from_file(f, "2I"):
                groups.setdefault(cluster, set()).add(ids[doc_idx])
    return [sorted(g) for g in groups.values() if len(g) > 1]


def cluster_sizes(clusters: list[list[str]]) -> dict:
    """Number of clusters and their size distribution, for the report."""
    sizes = np.array([len(c) for c in clusters]) if clusters else np.zeros(0, dtype=int)
    return {"clusters": len(clusters), "documents_in_clusters": int(sizes.sum()),
            "largest_cluster": int(sizes.max()) if len(sizes) else 0}
