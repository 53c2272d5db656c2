"""Small helpers for tests: writing job files and reading outputs."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import yaml


def write_job(path: Path, **sections) -> Path:
    """Write a job YAML file from keyword sections and return its path."""
    path.write_text(yaml.safe_dump(sections, sort_keys=False))
    return path


def read_dir(folder: Path, pattern: str = "*.parquet"):
    """All rows of the Parquet files matching `pattern` in `folder`, in file order."""
    files = sorted(Path(folder).glob(pattern))
    return [row for f in files for row in pq.read_table(f).to_pylist()]
