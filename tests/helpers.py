"""Small helpers for tests: writing job files and reading outputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parent.parent


def run_curate(*args, prefix: tuple[str, ...] = (), timeout: float = 600, **popen) -> subprocess.CompletedProcess:
    """Run the real `curate` CLI (python -m curate) from the repository root."""
    return subprocess.run([*prefix, sys.executable, "-m", "curate", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, **popen)


def write_job(path: Path, **sections) -> Path:
    """Write a job YAML file from keyword sections and return its path."""
    path.write_text(yaml.safe_dump(sections, sort_keys=False))
    return path


def read_dir(folder: Path, pattern: str = "*.parquet"):
    """All rows of the Parquet files matching `pattern` in `folder`, in file order."""
    files = sorted(Path(folder).glob(pattern))
    return [row for f in files for row in pq.read_table(f).to_pylist()]
