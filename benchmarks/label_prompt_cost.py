"""Prompt cost of the labeler's layouts, measured against a real LLM server in one run.

Labels the same StackExchange documents (../shared/data/mathweb/math.parquet, seeded sample) with
the one-request JSON layout (`counts`) and the paper's four-request layout (`paper`), and prints
prompt tokens per document from the server's `usage`, their ratio (goal <= 0.35), parse-failure
rates and documents/hour. Starts llama.cpp's server with SmolLM2-135M-Instruct unless
--endpoint-url is given.

    python3 benchmarks/label_prompt_cost.py --docs 4 --max-doc-tokens 512
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    from curate.config import LabelConfig, SampleConfig
    from curate.label import label
    from curate.sample import sample
    from tests.llm_server import LlamaServer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=4)
    parser.add_argument("--max-doc-tokens", type=int, default=512)
    parser.add_argument("--endpoint-url", default=None)
    parser.add_argument("--seed", type=int, default=0)
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
        for layout, max_tokens in (("counts", 64), ("paper", 24)):
            cfg = LabelConfig(model="smollm2", endpoint_url=url, prompt=layout, max_doc_tokens=args.max_doc_tokens,
                              max_tokens=max_tokens, concurrency=1)
            results[layout] = label(work / "sample.parquet", work / layout, cfg)
    finally:
        if server:
            server.stop()
    for layout, s in results.items():
        print(f"{layout:6s}: {s['documents']} documents, {s['prompt_tokens_per_document']:.0f} prompt tokens/doc, "
              f"{s['completion_tokens_per_document']:.0f} completion tokens/doc, {s['requests_per_document']:.0f} "
              f"requests/doc, parse-failure rate {s['parse_failure_rate']:.0%}, "
              f"{s['this_run']['documents_per_hour']:.0f} documents/hour")
    ratio = results["counts"]["prompt_tokens_per_document"] / results["paper"]["prompt_tokens_per_document"]
    print(f"prompt tokens per document, counts / paper: {ratio:.3f} (goal <= 0.35)")
    print(json.dumps({k: {m: v[m] for m in ("prompt_tokens_per_document", "parse_failure_rate", "this_run")}
                      for k, v in results.items()}, indent=1))


if __name__ == "__main__":
    main()
