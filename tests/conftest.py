"""Shared fixtures: paths to the real data beside the project and to the bundled sample."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.slurm_cluster import slurm_cluster  # noqa: F401  (the real Slurm cluster fixture)
from tests.llm_server import llama_server  # noqa: F401  (the real llama.cpp LLM server fixture)
from tests.s3_server import s3_server  # noqa: F401  (the real S3-compatible server fixture)

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
BUNDLED_DOCS = REPO / "curate" / "data" / "mathweb"
BUNDLED_LABELS = REPO / "curate" / "data" / "labels" / "gold.parquet"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "data" / "mathweb").is_dir():
        pytest.fail(f"the shared data folder is missing: {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory) -> Path:
    """A real fastText behavior classifier trained on the bundled reference labels."""
    from curate.config import TrainConfig
    from curate.classifier import MODEL_FILE
    from curate.train import train

    out = tmp_path_factory.mktemp("classifier")
    train(BUNDLED_LABELS, out, TrainConfig(epoch=10))
    return out / MODEL_FILE
