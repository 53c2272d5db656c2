"""A non-editable install (the wheel `pip install .` builds) runs the dry run from another folder:
the bundled data is package data, and nothing is read from the clone but the job file."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pyarrow.parquet as pq

from tests.conftest import BUNDLED_DOCS
from tests.helpers import REPO


def test_the_built_wheel_runs_the_dry_run_from_another_folder(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                            "-w", str(tmp_path / "dist"), str(REPO)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("curate_behaviors-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    bundled = {f"curate/data/{p.relative_to(BUNDLED_DOCS.parent).as_posix()}"
               for p in BUNDLED_DOCS.parent.rglob("*") if p.is_file()}
    assert bundled <= names, sorted(bundled - names)
    site = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(site),
                                str(wheel)], capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}  # before the editable install of the test environment
    where = subprocess.run([sys.executable, "-c", "import curate; print(curate.__file__)"], cwd=elsewhere, env=env,
                           capture_output=True, text=True, timeout=60)
    assert where.stdout.strip() == str(site / "curate" / "__init__.py"), where
    run = subprocess.run([sys.executable, "-m", "curate", "run", str(REPO / "jobs" / "dryrun.yaml")], cwd=elsewhere,
                         env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    out = elsewhere / "out" / "dryrun"
    documents = sum(pq.read_metadata(p).num_rows for p in BUNDLED_DOCS.glob("*.parquet"))
    scored = sum(pq.read_metadata(p).num_rows for p in (out / "scores").rglob("*.parquet"))
    assert scored == documents
    assert (out / "mix" / "README.md").exists() and (out / "control" / "README.md").exists()
    assert str(site / "curate" / "data") in (out / "logs" / "score" / "stats.json").read_text()
