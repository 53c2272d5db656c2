"""Scoring cost measured against its limit, in one run: overhead, memory, scaling, projection.

- overhead: `curate score` (reader -> BehaviorScorer -> AttributeWriter on datatrove's
  LocalPipelineExecutor, 1 task, 1 worker) vs a bare loop of the same classifier's `predict` over
  the same texts already in memory (batches of the scorer's size), and vs one plain
  whole-document fastText `predict` pass with the same model. Each run is a fresh process; runs
  alternate, `--reps` times each; medians. Goal: pipeline >= 0.85x the bare loop's docs/s.
- memory: peak RSS of the scoring worker (ru_maxrss of its process; 1 worker runs in-process) on
  the small vs the big corpus. Goal: flat within 10%.
- scaling: the same corpus with 2 tasks on 1 vs 2 workers. Goal: >= 1.8x on 2 idle cores.
- projection: core-hours to score OpenWebMath (6.3M documents, 14.7B tokens) from the pipeline's
  CPU seconds per document and per token. Goal: <= 2 core-hours.

Rates are given per wall second and per CPU second (CPU time of the measured process: robust when
other jobs share the cores, which `os.getloadavg()` in the results shows).

    python3 benchmarks/make_corpus.py --out /tmp/bench
    python3 benchmarks/bench_score.py --model /tmp/bench/clf/classifier/model.bin

writes benchmarks/results/score.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
import record  # noqa: E402 (benchmarks/record.py, beside this script)
OWM_DOCS, OWM_TOKENS = 6_300_000, 14_700_000_000


def _cpu_s(who=resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mb(who=resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux: KiB


# ---------------------------------------------------------------------------------------------
# Measured runs, each in a fresh process (`bench_score.py _run KIND ...` prints one JSON line)


def run_pipeline(files: list[str], model: str, out: str, tasks: int, workers: int) -> dict:
    """`curate score` as the CLI runs it; setup (token calibration, fingerprint) timed apart."""
    from curate.config import ScoreConfig
    from curate.layout import Layout
    from curate.score import prepare, score

    shutil.rmtree(out, ignore_errors=True)
    cfg, layout = ScoreConfig(tasks=tasks, workers=workers), Layout(out)
    t0, c0 = time.perf_counter(), _cpu_s()
    prepare(files, model, layout, cfg)  # calibration + fingerprint: a fixed cost per run
    t1, c1 = time.perf_counter(), _cpu_s()
    score(files, model, layout, cfg)
    t2, c2 = time.perf_counter(), _cpu_s()
    # with more than 1 worker the ranks run in a forkserver's children, which rusage cannot see
    return {"setup_wall_s": t1 - t0, "setup_cpu_s": c1 - c0, "wall_s": t2 - t1,
            "cpu_s": c2 - c1 if workers == 1 else None, "peak_rss_mb": _peak_rss_mb() if workers == 1 else None}


def _texts(files: list[str]) -> list[str]:
    from curate.io import Dropped, iter_documents

    return [d["text"] for f in files for d in iter_documents(f) if not isinstance(d, Dropped)]


def run_bare(files: list[str], model: str, plain: bool) -> dict:
    """The classifier's predict (what the scorer calls per batch) over texts already in memory, or
    one plain whole-document fastText predict pass with the same model, in the same batches, each
    text's whitespace made spaces by the fastest path curate has (`classifier_texts(.., "plain")`)."""
    from curate.score import BehaviorScorer
    from curate.classifier import BehaviorClassifier
    from curate.views import classifier_texts

    texts = _texts(files)
    classifier = BehaviorClassifier.load(model)
    batch = BehaviorScorer(model, chars_per_token=1.0).batch_size
    t0, c0 = time.perf_counter(), _cpu_s()
    for i in range(0, len(texts), batch):
        if plain:
            classifier.model.predict(classifier_texts(texts[i:i + batch], "plain"), k=-1, threshold=0.0)
        else:
            classifier.predict(texts[i:i + batch])
    return {"wall_s": time.perf_counter() - t0, "cpu_s": _cpu_s() - c0, "peak_rss_mb": _peak_rss_mb()}


def measure(kind: str, corpus: Path, model: str, out: Path, tasks: int = 1, workers: int = 1) -> dict:
    """Run one measurement in a fresh process; its JSON result plus docs/tokens per second."""
    cmd = [sys.executable, __file__, "_run", kind, str(corpus), model, str(out), str(tasks), str(workers)]
    log = out.parent / f"{out.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as stderr:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{kind} run failed (exit {done.returncode}); see {log}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    manifest = json.loads((corpus / "corpus.json").read_text())
    docs, tokens = manifest["documents"], manifest["documents"] * manifest["mean_tokens_per_doc"]
    result.update(docs=docs, docs_per_s=docs / result["wall_s"])
    if result["cpu_s"]:
        result.update(docs_per_cpu_s=docs / result["cpu_s"], tokens_per_cpu_s=tokens / result["cpu_s"])
    return result


def _code_version() -> str:
    """The commit measured, with the scoring modules changed since it (if any)."""
    git = ["git", "-C", str(REPO)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "diff", "--name-only", "HEAD", "--", "curate"], capture_output=True, text=True).stdout.split()
    return commit + (f" + uncommitted {', '.join(dirty)}" if dirty else "")


def _files(corpus: Path) -> list[str]:
    return sorted(str(p) for p in corpus.glob("part-*.parquet"))


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="/tmp/bench/clf/classifier/model.bin", help="a model.bin with its card.json beside it")
    parser.add_argument("--corpus", default="/tmp/bench/corpus-10k", help="from make_corpus.py")
    parser.add_argument("--big", default="/tmp/bench/corpus-100k", help="the larger corpus, for memory")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--parts", default="overhead,memory,scaling", help="comma-separated subset")
    parser.add_argument("--work", default="/tmp/bench/runs")
    record.add_options(parser)
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    corpus, big, work = Path(args.corpus), Path(args.big), Path(args.work)
    results: dict = {"model": args.model, "corpus": json.loads((corpus / "corpus.json").read_text()),
                     "cpus": os.cpu_count(), "loadavg_start": os.getloadavg(), "code": _code_version()}
    rows = []

    if "overhead" in parts:
        runs = {"pipeline": [], "bare": [], "plain": []}
        for rep in range(args.reps):  # interleaved, so that load changes hit every kind alike
            for kind in runs:
                runs[kind].append(measure(kind, corpus, args.model, work / f"{kind}-{rep}"))
        med = {k: {m: _median(v, m) for m in ("wall_s", "cpu_s", "docs_per_s", "docs_per_cpu_s", "peak_rss_mb")}
               for k, v in runs.items()}
        setup = {m: _median(runs["pipeline"], m) for m in ("setup_wall_s", "setup_cpu_s")}
        overhead = {
            "runs": runs, "medians": med, "pipeline_setup": setup,
            "pipeline_vs_bare_docs_per_s": med["pipeline"]["docs_per_s"] / med["bare"]["docs_per_s"],
            "pipeline_vs_bare_docs_per_cpu_s": med["pipeline"]["docs_per_cpu_s"] / med["bare"]["docs_per_cpu_s"],
            "bare_cost_vs_plain_fasttext_cpu": med["bare"]["cpu_s"] / med["plain"]["cpu_s"],
            "pipeline_cost_vs_plain_fasttext_cpu": med["pipeline"]["cpu_s"] / med["plain"]["cpu_s"],
            "goal": "pipeline >= 0.85x bare docs/s",
        }
        results["overhead"] = overhead
        rows += [
            ("overhead", "pipeline / bare loop, docs per wall s", f"{overhead['pipeline_vs_bare_docs_per_s']:.3f}", ">= 0.85"),
            ("overhead", "pipeline / bare loop, docs per CPU s", f"{overhead['pipeline_vs_bare_docs_per_cpu_s']:.3f}", ">= 0.85"),
            ("overhead", "docs/s: pipeline | bare | plain fastText",
             " | ".join(f"{med[k]['docs_per_s']:.0f}" for k in runs), ""),
            ("overhead", "CPU cost of predict vs plain fastText pass", f"{overhead['bare_cost_vs_plain_fasttext_cpu']:.2f}x",
             "<= 1.2x (issue 12)"),
            ("overhead", "pipeline setup (calibration, fingerprint) s", f"{setup['setup_wall_s']:.2f}", ""),
        ]
        projection_rate = med["pipeline"]
        docs_per_cpu_s = med["pipeline"]["docs_per_cpu_s"]
        tokens_per_cpu_s = _median(runs["pipeline"], "tokens_per_cpu_s")
        results["projection"] = {
            "owm_docs": OWM_DOCS, "owm_tokens": OWM_TOKENS,
            "pipeline_docs_per_cpu_s": docs_per_cpu_s, "pipeline_tokens_per_cpu_s": tokens_per_cpu_s,
            "core_hours_from_docs": OWM_DOCS / docs_per_cpu_s / 3600,
            "core_hours_from_tokens": OWM_TOKENS / tokens_per_cpu_s / 3600,
            "core_hours_from_wall_docs_per_s": OWM_DOCS / projection_rate["docs_per_s"] / 3600,
            "goal": "<= 2 core-hours",
        }
        p = results["projection"]
        rows.append(("projection", "OpenWebMath core-hours (per doc | per token)",
                     f"{p['core_hours_from_docs']:.2f} | {p['core_hours_from_tokens']:.2f}", "<= 2"))

    if "memory" in parts:
        small = measure("pipeline", corpus, args.model, work / "memory-small")
        large = measure("pipeline", big, args.model, work / "memory-big")
        growth = large["peak_rss_mb"] / small["peak_rss_mb"] - 1
        results["memory"] = {"small": small, "big": large, "growth": growth, "goal": "within 10%"}
        rows.append(("memory", f"peak RSS {small['docs'] // 1000}k -> {large['docs'] // 1000}k docs (MB)",
                     f"{small['peak_rss_mb']:.0f} -> {large['peak_rss_mb']:.0f} ({growth:+.1%})", "within 10%"))

    if "scaling" in parts:
        runs = {1: [], 2: []}
        for rep in range(args.reps):
            for w in runs:
                runs[w].append(measure("pipeline", corpus, args.model, work / f"scaling-{w}-{rep}", tasks=2, workers=w))
        speedup = _median(runs[1], "wall_s") / _median(runs[2], "wall_s")
        results["scaling"] = {"runs": runs, "speedup_2_vs_1_workers": speedup, "goal": ">= 1.8x on 2 idle cores"}
        rows.append(("scaling", "2 vs 1 workers (2 tasks), wall", f"{speedup:.2f}x", ">= 1.8x"))

    results["loadavg_end"] = os.getloadavg()
    busy = max(results["loadavg_start"][0], results["loadavg_end"][0]) > 0.5 * (os.cpu_count() or 1)
    results["machine_busy"] = busy
    print(f"{'part':10s} {'measure':48s} {'value':>22s}  goal")
    for part, what, value, goal in rows:
        print(f"{part:10s} {what:48s} {value:>22s}  {goal}")
    print(f"load average {results['loadavg_start'][0]:.1f} -> {results['loadavg_end'][0]:.1f} on {os.cpu_count()} cores"
          + (" (busy: wall-clock figures and scaling are not reliable)" if busy else ""))
    for part in ("overhead", "projection", "memory", "scaling"):
        if part in results:  # each part records the machine state it was measured under
            results[part].update(loadavg=[results["loadavg_start"], results["loadavg_end"]], machine_busy=busy)
    record.save("score", results, args)


def _run_entry(kind: str, corpus: str, model: str, out: str, tasks: str, workers: str) -> None:
    files = _files(Path(corpus))
    if kind == "pipeline":
        result = run_pipeline(files, model, out, int(tasks), int(workers))
    else:
        result = run_bare(files, model, plain=kind == "plain")
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_run":
        _run_entry(*sys.argv[2:8])
    else:
        main()
