"""Prompt and completion cost of the labeler's layouts, measured against a real LLM server in one run.

Labels the same StackExchange documents (../shared/data/mathweb/math.parquet, seeded sample) with the
one-request JSON layout without quotes (`counts`, max_quotes 0), with evidence quotes (`counts+quotes`,
max_quotes 3) and the paper's four-request layout (`paper`), and prints per layout: prompt and
completion tokens per document from the server's `usage`, parse-failure rate, quotes kept/invented and
documents/hour. Starts llama.cpp's server with SmolLM2-135M-Instruct unless --endpoint-url is given.

It also estimates what a labeler that agrees with the reference labels would write: the compact JSON
answer (what vLLM writes with disable_any_whitespace) of each of the 800 reference documents, with and
without its reference quotes, counted in the SmolLM2 tokenizer.

    python3 benchmarks/label_prompt_cost.py --docs 8 --max-doc-tokens 512
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
import record  # noqa: E402 (benchmarks/record.py, beside this script)

LAYOUTS = {"counts": dict(prompt="counts", max_quotes=0, max_tokens=96),
           "counts+quotes": dict(prompt="counts", max_quotes=3, max_tokens=512),
           "paper": dict(prompt="paper", max_tokens=24)}


def reference_answer_tokens(labels_path: Path) -> dict:
    """Tokens of the compact JSON answer to each reference document, counts only and with its quotes."""
    import pyarrow.parquet as pq

    from curate.schema import BEHAVIORS
    from curate.tokens import load_tokenizer

    tokenizer = load_tokenizer("smollm2")
    table = pq.read_table(labels_path).to_pylist()
    n = {"counts": [], "counts+quotes": []}
    for row in table:
        evidence = json.loads(row["raw_response"])["evidence"]
        counts = {b: row[b] for b in BEHAVIORS}
        quoted = {**counts, "quotes": {b: evidence[b][:3] for b in BEHAVIORS if evidence.get(b) and row[b]}}
        for name, answer in (("counts", counts), ("counts+quotes", quoted)):
            text = json.dumps(answer, separators=(",", ":"))
            n[name].append(len(tokenizer.encode(text, add_special_tokens=False).ids))
    return {"documents": len(table), **{name: float(np.mean(v)) for name, v in n.items()},
            "ratio": float(np.mean(n["counts+quotes"]) / np.mean(n["counts"]))}


def main() -> None:
    from curate.config import LabelConfig, SampleConfig
    from curate.label import label
    from curate.sample import sample
    from tests.llm_server import LlamaServer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=8)
    parser.add_argument("--max-doc-tokens", type=int, default=512)
    parser.add_argument("--endpoint-url", default=None)
    parser.add_argument("--seed", type=int, default=0)
    record.add_options(parser)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="label-bench-"))
    server = None
    if args.endpoint_url is None:
        server = LlamaServer(work / "server.log").start()
    url = args.endpoint_url or server.url
    try:
        sample([str(REPO.parent / "shared" / "data" / "mathweb" / "math.parquet")], work / "sample.parquet",
               SampleConfig(n=args.docs), seed=args.seed)
        results = {}
        for name, settings in LAYOUTS.items():
            cfg = LabelConfig(model="smollm2", endpoint_url=url, max_doc_tokens=args.max_doc_tokens, concurrency=1,
                              **settings)
            results[name] = label(work / "sample.parquet", work / name, cfg)
    finally:
        if server:
            server.stop()
    for name, s in results.items():
        quotes = s["quotes"]
        print(f"{name:13s}: {s['documents']} documents, {s['prompt_tokens_per_document']:.0f} prompt tokens/doc, "
              f"{s['completion_tokens_per_document']:.1f} completion tokens/doc, {s['requests_per_document']:.0f} "
              f"requests/doc, parse-failure rate {s['parse_failure_rate']:.0%}, quotes kept {quotes['kept']} / "
              f"invented {quotes['invented']} of {quotes['returned']}, {s['this_run']['documents_per_hour']:.0f} "
              f"documents/hour")
    ratio = results["counts"]["prompt_tokens_per_document"] / results["paper"]["prompt_tokens_per_document"]
    print(f"prompt tokens per document, counts / paper: {ratio:.3f} (goal <= 0.35)")
    reference = reference_answer_tokens(REPO.parent / "shared" / "labels" / "gold.parquet")
    print(f"reference answers (compact JSON, SmolLM2 tokens, {reference['documents']} documents): counts "
          f"{reference['counts']:.1f}, with quotes {reference['counts+quotes']:.1f} tokens/document "
          f"(x{reference['ratio']:.2f})")
    keep = ("prompt_tokens_per_document", "completion_tokens_per_document", "parse_failure_rate", "quotes",
            "invented_quote_rate", "this_run")
    report = {"docs": args.docs, "max_doc_tokens": args.max_doc_tokens, "server": "llama.cpp SmolLM2-135M-Instruct"
              if server else url, "layouts": {k: {m: v[m] for m in keep} for k, v in results.items()},
              "reference_answer_tokens": reference}
    record.save("label_prompt_cost", report, args)


if __name__ == "__main__":
    main()
