"""Where a benchmark's numbers go: always to a results folder outside the repository
(`--results`, default /tmp/bench/results), and into the tracked `benchmarks/results/` only with
`--record` — merged part by part, so a partial run never deletes the numbers of the parts it did not run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TRACKED = Path(__file__).resolve().parent / "results"


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", default="/tmp/bench/results", help="folder of this run's JSON results")
    parser.add_argument("--record", action="store_true",
                        help="also merge the results into the tracked benchmarks/results/ (parts not rerun are kept)")


def save(name: str, results: dict, args: argparse.Namespace) -> list[Path]:
    """Write `results` as `<name>.json` into the results folder (and, with --record, merge them into the
    tracked file); return the files written."""
    written = []
    folders = [Path(args.results)] + ([TRACKED] if args.record else [])
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.json"
        earlier = json.loads(path.read_text()) if folder == TRACKED and path.exists() else {}
        path.write_text(json.dumps({**earlier, **results}, indent=1) + "\n")
        written.append(path)
    print("results: " + ", ".join(map(str, written)))
    return written
