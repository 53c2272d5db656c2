"""Deterministic benchmark corpora in the OpenWebMath schema, built from real math web text.

Every paragraph of ../shared/data/mathweb/*.parquet (Math/CS-theory/Proof-assistants StackExchange,
GSM8K) goes into a pool, with its exact token count in the target tokenizer (SmolLM2, through
`curate.tokens`). Each new document draws a target length from a log-normal distribution whose
mean is OpenWebMath's (14.7B tokens / 6.3M documents ≈ 2.3k tokens; heavy right tail), then
concatenates seeded random paragraphs until it reaches it. Documents are therefore new
combinations of real text (no two alike, so near-duplicate removal does not collapse them), with
unique urls and JSON metadata naming how they were made. The achieved mean is measured with the
real tokenizer on a sample and printed.

    python3 benchmarks/make_corpus.py --docs 10000 100000 --out /tmp/bench

writes /tmp/bench/corpus-10k/ and /tmp/bench/corpus-100k/ (Parquet shards of 2,500 rows, zstd, plus
corpus.json) and benchmarks/results/corpus.json. A corpus that already exists with the same
settings is kept.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
import record  # noqa: E402 (benchmarks/record.py, beside this script)
SOURCE = REPO.parent / "shared" / "data" / "mathweb"

OWM_DOCS, OWM_TOKENS = 6_300_000, 14_700_000_000
MEAN_TOKENS = OWM_TOKENS / OWM_DOCS  # ≈ 2333
SIGMA = 1.0  # log-normal shape: median ≈ 0.61 × mean, a tail of long pages as in web text
MIN_TOKENS, MAX_TOKENS = 64, 40_000
SHARD_ROWS = 2500
MEASURE_DOCS = 2000
SEPARATOR = "\n\n"


def corpus_name(n: int) -> str:
    return f"corpus-{n // 1000}k" if n % 1000 == 0 else f"corpus-{n}"


def paragraph_pool(tokenizer) -> tuple[list[str], np.ndarray]:
    """Every non-empty paragraph of the shared real text (blank-line separated; line separated when
    a page has no blank line), in file order, and its exact token count."""
    from curate.io import Dropped, iter_documents

    paragraphs: list[str] = []
    for path in sorted(SOURCE.glob("*.parquet")):
        for item in iter_documents(str(path)):
            if isinstance(item, Dropped):
                continue
            text = item["text"].strip()
            parts = text.split(SEPARATOR) if SEPARATOR in text else text.split("\n")
            paragraphs.extend(p.strip() for p in parts if p.strip())
    from curate.tokens import count_tokens

    return paragraphs, np.array(count_tokens(tokenizer, paragraphs), dtype=np.int64)


def documents(n: int, seed: int, paragraphs: list[str], lengths: np.ndarray):
    """Yield (text, target tokens) of `n` new documents; seeded, so the same arguments give the same corpus."""
    rng = np.random.default_rng(seed)
    mu = np.log(MEAN_TOKENS) - SIGMA**2 / 2  # so that the log-normal's mean is MEAN_TOKENS
    targets = np.clip(rng.lognormal(mu, SIGMA, size=n), MIN_TOKENS, MAX_TOKENS).astype(np.int64)
    mean_paragraph = lengths.mean()
    seen: set[bytes] = set()
    for target in targets:
        while True:
            draw = rng.integers(0, len(paragraphs), size=int(2 * target / mean_paragraph) + 8)
            total = np.cumsum(lengths[draw])
            k = int(np.searchsorted(total, target)) + 1  # paragraphs until the target is reached,
            if k > 1 and target - total[k - 2] < total[k - 1] - target:  # or one fewer when that is closer
                k -= 1
            text = SEPARATOR.join(paragraphs[i] for i in draw[:k])
            key = hashlib.blake2b(text.encode(), digest_size=16).digest()
            if key not in seen:  # a redraw for the rare short document that repeats an earlier one
                seen.add(key)
                break
        yield text, int(target)


def make_corpus(n: int, out_dir: Path, seed: int, pool) -> dict:
    """Write `n` documents as Parquet shards in `out_dir`; returns the corpus manifest."""
    from curate.tokens import count_tokens, load_tokenizer

    paragraphs, lengths = pool
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("part-*.parquet"):
        old.unlink()
    schema = pa.schema([("url", pa.string()), ("text", pa.string()), ("date", pa.string()), ("metadata", pa.string())])
    step = max(1, n // MEASURE_DOCS)
    measured_texts: list[str] = []
    n_chars, shard, rows = 0, 0, []
    start = time.monotonic()

    def flush():
        nonlocal rows, shard
        if rows:
            pq.write_table(pa.Table.from_pylist(rows, schema=schema), out_dir / f"part-{shard:05d}.parquet",
                           compression="zstd")
            shard, rows = shard + 1, []

    for i, (text, target) in enumerate(documents(n, seed, paragraphs, lengths)):
        rows.append({"url": f"https://bench.curate.invalid/{corpus_name(n)}/{i}", "text": text, "date": None,
                     "metadata": json.dumps({"source": "curate benchmark: recombined paragraphs of shared/data/mathweb",
                                             "seed": seed, "target_tokens": target})})
        n_chars += len(text)
        if i % step == 0:
            measured_texts.append(text)
        if len(rows) == SHARD_ROWS:
            flush()
    flush()
    tokens = count_tokens(load_tokenizer("smollm2"), measured_texts)
    manifest = {
        "documents": n, "seed": seed, "shards": shard, "shard_rows": SHARD_ROWS,
        "bytes_of_text": n_chars, "mean_chars_per_doc": round(n_chars / n, 1),
        "target_mean_tokens": round(MEAN_TOKENS, 1), "lognormal_sigma": SIGMA,
        "measured_docs": len(tokens), "mean_tokens_per_doc": round(float(np.mean(tokens)), 1),
        "median_tokens_per_doc": float(np.median(tokens)),
        "tokenizer": "smollm2 (curate.tokens, exact on every {}th document)".format(step),
        "chars_per_token": round(sum(len(t) for t in measured_texts) / sum(tokens), 3),
        "paragraph_pool": len(paragraphs), "seconds": round(time.monotonic() - start, 1),
    }
    (out_dir / "corpus.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--out", default="/tmp/bench", help="parent folder of the corpora (not the repository)")
    record.add_options(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild a corpus that already exists")
    args = parser.parse_args()
    from curate.tokens import load_tokenizer

    pool = None
    manifests = {}
    for n in args.docs:
        out_dir = Path(args.out) / corpus_name(n)
        manifest_path = out_dir / "corpus.json"
        if manifest_path.exists() and not args.force:
            old = json.loads(manifest_path.read_text())
            if old.get("documents") == n and old.get("seed") == args.seed:
                manifests[corpus_name(n)] = old
                continue
        pool = pool or paragraph_pool(load_tokenizer("smollm2"))
        manifests[corpus_name(n)] = make_corpus(n, out_dir, args.seed, pool)
    print(f"{'corpus':12s} {'docs':>8s} {'shards':>6s} {'MB text':>8s} {'mean tok/doc':>12s} {'median':>7s} {'target':>7s}")
    for name, m in manifests.items():
        print(f"{name:12s} {m['documents']:8d} {m['shards']:6d} {m['bytes_of_text'] / 1e6:8.1f} "
              f"{m['mean_tokens_per_doc']:12.1f} {m['median_tokens_per_doc']:7.0f} {m['target_mean_tokens']:7.0f}")
    record.save("corpus", {"out": args.out, **manifests}, args)


if __name__ == "__main__":
    main()
