"""Where a job's outputs live, and how a stage records what its output was made from.

One `Layout` names every folder of an output folder. Data folders hold only data, so that they
load directly with pyarrow, dask, polars or `datasets`; what a stage needs to resume or explain
its work (stats, fingerprints, datatrove logs and completions, checkpoints, Slurm logs) lives
beside the data in `logs/<stage>/`:

    OUT/sample/sample.parquet          the label sample
    OUT/labels/labels.parquet          LLM labels
    OUT/classifier/                    model.bin + card.json (+ oof.parquet: out-of-fold predictions)
    OUT/scores/NNNNN.parquet           attribute rows, one per input document
    OUT/filters/drops.parquet          ids kept out of the mix, with the reason
    OUT/mix/, OUT/control/             Hugging Face dataset layout: README.md (card), stats.json, data/*.parquet
    OUT/report/                        plots and index.html
    OUT/logs/<stage>/                  stats.json (with the fingerprint), logs, checkpoints

The data outputs (scores, filter decisions, mixes, exports) can live apart from the rest, in
another folder or an object store (`data_dir`: an fsspec URL such as `s3://bucket/run`); logs,
checkpoints, the classifier and the report stay in the (local) output folder.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from curate.io import read_json, write_text
from curate.storage import local_path, stamp

STATS_FILE = "stats.json"
MODEL_FILE, CARD_FILE, OOF_FILE = "model.bin", "card.json", "oof.parquet"
DATA_DIR, DATASET_CARD = "data", "README.md"


def location(path: str | Path):
    """A file or folder as a path object: `pathlib.Path` for a local path (or `file://` URL), a
    universal_pathlib `UPath` (the same API over fsspec) for a URL of a store."""
    local = local_path(str(path))
    if local is not None:
        return Path(local)
    from upath import UPath

    return UPath(str(path))


@dataclass(frozen=True)
class Layout:
    """The folders and files of one output folder (a job's `output_dir`, or the `--out` of a stage
    command); `data` is where the data outputs go (default: the output folder itself)."""

    root: Path
    data: Path | None = None

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))
        object.__setattr__(self, "data", self.root if self.data is None else location(self.data))

    def logs(self, stage: str) -> Path:
        """The folder of a stage's stats, logs and checkpoints."""
        return self.root / "logs" / stage

    def stats(self, stage: str) -> Path:
        """A stage's stats JSON (it records the fingerprint the output was made from)."""
        return self.logs(stage) / STATS_FILE

    @property
    def sample_file(self) -> Path:
        return self.root / "sample" / "sample.parquet"

    @property
    def labels_file(self) -> Path:
        return self.root / "labels" / "labels.parquet"

    @property
    def classifier_dir(self) -> Path:
        return self.root / "classifier"

    @property
    def model_file(self) -> Path:
        return self.classifier_dir / MODEL_FILE

    @property
    def card_file(self) -> Path:
        return self.classifier_dir / CARD_FILE

    @property
    def oof_file(self) -> Path:
        return self.classifier_dir / OOF_FILE

    @property
    def scores_dir(self) -> Path:
        return self.data / "scores"

    @property
    def drops_file(self) -> Path:
        return self.data / "filters" / "drops.parquet"

    def mix_dir(self, which: str = "mix") -> Path:
        """A mix in the Hugging Face dataset layout (`mix`, the matched `control`, `rewrite`)."""
        return self.data / which

    @property
    def export_dir(self) -> Path:
        return self.data / "export"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def slurm_dir(self) -> Path:
        return self.logs("slurm")


def dataset_files(mix_dir: Path) -> list[Path]:
    """The Parquet shards of a mix folder, in order."""
    return sorted((location(mix_dir) / DATA_DIR).glob("*.parquet"), key=str)


def fingerprint_of(*parts) -> str:
    """SHA-256 of the JSON of `parts`: what a stage's output was made from."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def recorded_fingerprint(path: Path) -> str | None:
    """The fingerprint a stats/card JSON file records, or None when there is none (or no file)."""
    try:
        return read_json(path).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


def is_current(path: Path, fingerprint: str) -> bool:
    """Whether the JSON file at `path` records this fingerprint."""
    return recorded_fingerprint(path) == fingerprint


def input_stamps(files: list[str]) -> list[tuple]:
    """What identifies the input files without reading them: (path, size, modification time) of a
    local file, (URL, size, ETag or version) of an object in a store."""
    return [stamp(f) for f in files]


def claim(folder: Path, fingerprint: str, clear) -> bool:
    """Make `folder` hold only work done for `fingerprint`: when the fingerprint recorded in
    `folder/fingerprint` differs, call `clear()` (which deletes the earlier work) and record the new
    one. Returns whether earlier work for the same fingerprint is kept (an interrupted run resumes)."""
    marker = Path(folder) / "fingerprint"
    if marker.exists() and marker.read_text() == fingerprint:
        return True
    clear()
    write_text(fingerprint, marker)
    return False
