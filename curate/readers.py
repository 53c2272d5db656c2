"""The datatrove reader of OpenWebMath-schema input files, for every stage that runs a datatrove pipeline."""

from __future__ import annotations

import json
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.readers.base import BaseDiskReader
from datatrove.utils.logging import logger

from curate.io import Dropped, InputError, count_rows, iter_documents, metadata_problem
from curate.progress import Progress
from curate.schema import ID, TEXT, URL


def _row_count(path: str) -> int | None:
    """Rows of a Parquet file from its footer (None for JSONL, or a file that cannot be read: it is
    reported when it is read)."""
    if not path.endswith(".parquet"):
        return None
    try:
        return count_rows(path)
    except InputError:
        return None


class OpenWebMathReader(BaseDiskReader):
    """Reads OpenWebMath-schema Parquet and JSONL files through `curate.io`.

    Unusable rows are counted by reason (`dropped_<reason>`) and logged; a file that cannot be
    read is logged in one line, written to `errors_folder/{rank}.jsonl`, and skipped.
    """

    name = "📖 OpenWebMath"

    def __init__(self, files: list[str], errors_folder: str, limit: int = -1):
        super().__init__(data_folder="/", limit=limit)
        self.files = files
        self.errors_folder = errors_folder

    def _report_file_error(self, rank: int, path: str, message: str, rows_read: int) -> None:
        logger.error(message)
        self.stat_update("failed_files")
        Path(self.errors_folder).mkdir(parents=True, exist_ok=True)
        with open(Path(self.errors_folder) / f"{rank:05d}.jsonl", "a") as f:
            f.write(json.dumps({"rank": rank, "path": path, "error": message, "rows_read": rows_read}) + "\n")

    def read_file(self, filepath: str) -> DocumentsPipeline:  # the base class's per-file hook
        for row, item in enumerate(iter_documents(filepath)):
            self.stat_update("rows_seen")
            if isinstance(item, Dropped):
                logger.warning(item.message())
                self.stat_update(f"dropped_{item.reason}")
                continue
            if problem := metadata_problem(item):
                logger.warning(f"{filepath}: row {row}: {problem} (document kept)")
                self.stat_update("warning_bad_metadata")
            yield Document(text=item[TEXT], id=item[ID], metadata={URL: item[URL]})

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        shard = self.files[rank::world_size]
        progress = Progress(f"rank {rank} read", total=sum(_row_count(f) or 0 for f in shard) or None, logger=logger)
        errors_file = Path(self.errors_folder) / f"{rank:05d}.jsonl"
        if errors_file.exists():  # a relaunched rank reports its own errors afresh
            errors_file.unlink()
        for path in shard:
            self.stat_update("input_files")
            rows_before = self.stats["rows_seen"].total
            try:
                for doc in self.read_file(path):
                    self.stat_update("documents_in")
                    progress.update()
                    yield doc
            except InputError as e:
                self._report_file_error(rank, path, str(e), int(self.stats["rows_seen"].total - rows_before))
        progress.finish()
