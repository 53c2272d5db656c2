"""Small helpers for tests: writing job files and reading outputs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parent.parent
BUNDLED_DOCS = REPO / "curate" / "data" / "mathweb"


def run_curate(*args, prefix: tuple[str, ...] = (), timeout: float = 600, **popen) -> subprocess.CompletedProcess:
    """Run the real `curate` CLI (python -m curate) from the repository root."""
    return subprocess.run([*prefix, sys.executable, "-m", "curate", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, **popen)


def write_job(path: Path, **sections) -> Path:
    """Write a job YAML file from keyword sections and return its path."""
    path.write_text(yaml.safe_dump(sections, sort_keys=False))
    return path


def big_input(path: Path, copies: int) -> Path:
    """Many real documents in one Parquet file at `path`: the bundled sample repeated, copy k's urls
    ending in `#k`."""
    sample = pq.read_table(sorted(BUNDLED_DOCS.glob("*.parquet")))
    url = sample.schema.get_field_index("url")
    pq.write_table(pa.concat_tables(
        sample.set_column(url, "url", pc.binary_join_element_wise(sample["url"], f"#{k}", "")) for k in range(copies)),
        path)
    return path


def read_dir(folder: Path, pattern: str = "*.parquet"):
    """All rows of the Parquet files matching `pattern` in `folder`, in file order."""
    files = sorted(Path(folder).glob(pattern))
    return [row for f in files for row in pq.read_table(f).to_pylist()]


def chromium(page: Path, tmp_path: Path, *flags: str) -> subprocess.CompletedProcess:
    """Headless Chromium (Debian's, installed by tests/run.sh) on a local page, with a new profile and
    no background networking (this machine's network is closed)."""
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("chromium is not installed (tests/run.sh installs the Debian package)")
    return subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={tmp_path / 'profile'}", *flags, Path(page).resolve().as_uri()],
                          capture_output=True, text=True, timeout=180, check=True)


def pixel_stats(path: Path) -> tuple[tuple[int, int], int, float]:
    """(size, distinct colours, fraction of pixels that are not near-white) of a PNG."""
    from PIL import Image

    image = Image.open(path).convert("RGB")
    pixels = np.asarray(image).reshape(-1, 3)
    colours = len(np.unique(pixels, axis=0))
    return image.size, colours, float((pixels.min(axis=1) < 235).mean())
