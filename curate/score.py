"""Score every document with the behavior classifier in a DataTrove pipeline.

reader (Parquet/JSONL, OpenWebMath schema) -> BehaviorScorer (annotates, never drops) ->
AttributeWriter (one attribute row per document: id, probabilities, behavior_score, n_tokens; no
text). Runs on datatrove's LocalPipelineExecutor; each rank writes `{rank:05d}.parquet`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.readers.base import BaseDiskReader
from datatrove.pipeline.writers.parquet import ParquetWriter
from datatrove.utils.logging import logger

from curate.config import ScoreConfig
from curate.io import (
    Dropped, InputError, file_sha256, iter_documents, list_input_files, metadata_problem, read_json, write_json,
    write_text,
)
from curate.progress import Progress
from curate.schema import (
    BEHAVIOR_SCORE,
    ID,
    N_TOKENS,
    PROB_COLUMNS,
    SCORES_SCHEMA,
    TEXT,
    URL,
)

ERRORS_DIR, LOGS_DIR = "errors", "logs"
TOKENS_FILE, DONE_FILE, FINGERPRINT_FILE = "tokens.json", "_DONE.json", "fingerprint"


def _row_count(path: str) -> int | None:
    if not path.endswith(".parquet"):
        return None
    try:
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    except Exception:  # noqa: BLE001 - an unreadable file is reported when it is read
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


class BehaviorScorer(PipelineStep):
    """Annotates each document with one probability per behavior, their mean as `behavior_score`,
    and `n_tokens`. The fastText model (and tokenizer, for exact counts) load once per worker."""

    name = "🧠 behavior scorer"
    type = "🔢 - SCORER"

    def __init__(self, model_path: str, chars_per_token: float | None = None, tokenizer: str | None = None,
                 batch_size: int = 256):
        super().__init__()
        if (chars_per_token is None) == (tokenizer is None):
            raise ValueError("give exactly one of chars_per_token (ratio counts) or tokenizer (exact counts)")
        self.model_path, self.chars_per_token, self.tokenizer = model_path, chars_per_token, tokenizer
        self.batch_size = batch_size

    def _annotate(self, batch: list[Document], model, tokenizer) -> None:
        from curate.tokens import count_tokens

        texts = [doc.text for doc in batch]
        probs = model.predict(texts)
        if tokenizer is not None:
            n_tokens = count_tokens(tokenizer, texts)
        else:
            n_tokens = [max(1, round(len(t) / self.chars_per_token)) for t in texts]
        for doc, p, mean, n in zip(batch, probs.tolist(), probs.mean(axis=1).tolist(), n_tokens):
            doc.metadata.update(zip(PROB_COLUMNS, p))
            doc.metadata[BEHAVIOR_SCORE] = mean
            doc.metadata[N_TOKENS] = int(n)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        from curate.classifier import BehaviorClassifier

        model = BehaviorClassifier.load(self.model_path)  # the model and the recipe in the card beside it
        tokenizer = None
        if self.tokenizer is not None:
            from curate.tokens import load_tokenizer

            tokenizer = load_tokenizer(self.tokenizer)
        batch: list[Document] = []
        for doc in data:
            batch.append(doc)
            if len(batch) == self.batch_size:
                with self.track_time(unit="batch"):
                    self._annotate(batch, model, tokenizer)
                self.stat_update("documents_scored", value=len(batch))
                yield from batch
                batch = []
        if batch:
            with self.track_time(unit="batch"):
                self._annotate(batch, model, tokenizer)
            self.stat_update("documents_scored", value=len(batch))
            yield from batch


def _attribute_row(self, document: Document) -> dict:
    return {ID: document.id, **{c: document.metadata[c] for c in (*PROB_COLUMNS, BEHAVIOR_SCORE, N_TOKENS)}}


class AttributeWriter(ParquetWriter):
    """Writes the scores of each rank to `{rank:05d}.parquet` (zstd, fixed schema), first under a
    temporary name and renamed when the rank finishes, so a killed task leaves no partial shard."""

    name = "📒 attributes"

    def __init__(self, output_folder: str):
        super().__init__(output_folder, output_filename="${rank}.parquet.tmp", compression="zstd",
                         adapter=_attribute_row, schema=SCORES_SCHEMA, max_file_size=-1,
                         use_content_defined_chunking=False)

    def close(self):
        names = list(self._writers)
        super().close()
        for name in names:
            self.output_folder.mv(name, name.removesuffix(".tmp"))


def scores_fingerprint(model_path: str, files: list[str], cfg: ScoreConfig, chars_per_token: float | None) -> str:
    """What the scores depend on: the model bytes and its card's recipe and calibration, the input
    files (path, size, mtime) and token counting."""
    from curate.classifier import CARD_FILE

    h = hashlib.sha256(file_sha256(model_path).encode())
    card = Path(model_path).parent / CARD_FILE
    if card.exists():
        h.update(json.dumps([read_json(card).get(k) for k in ("recipe", "calibration")]).encode())
    for path in files:
        st = os.stat(path)
        h.update(f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}".encode())
    h.update(json.dumps([cfg.tokenizer, cfg.token_count, chars_per_token, cfg.tasks]).encode())
    return h.hexdigest()


def calibrate(files: list[str], cfg: ScoreConfig) -> dict:
    """Chars per token of the first `calibration_docs` readable documents, with the real tokenizer."""
    from curate.tokens import calibrate_chars_per_token, load_tokenizer

    texts: list[str] = []
    for path in files:
        try:
            for item in iter_documents(path):
                if not isinstance(item, Dropped):
                    texts.append(item[TEXT])
                if len(texts) >= cfg.calibration_docs:
                    break
        except InputError:
            continue  # reported by the scoring run itself
        if len(texts) >= cfg.calibration_docs:
            break
    tokenizer = load_tokenizer(cfg.tokenizer)
    return {
        "tokenizer": cfg.tokenizer,
        "mode": "ratio",
        "chars_per_token": calibrate_chars_per_token(tokenizer, texts),
        "calibration_docs": len(texts),
    }


def build_pipeline(files: list[str], model_path: str, out_dir: Path, cfg: ScoreConfig, tokens: dict) -> list:
    """The datatrove pipeline of the score stage."""
    exact = tokens["mode"] == "exact"
    return [
        OpenWebMathReader(files, errors_folder=str(out_dir / ERRORS_DIR)),
        BehaviorScorer(model_path, chars_per_token=None if exact else tokens["chars_per_token"],
                       tokenizer=cfg.tokenizer if exact else None),
        AttributeWriter(str(out_dir)),
    ]


def scored_shards(scores_dir: str | Path) -> list[str]:
    """The finished attribute shards of a scores folder, in rank order."""
    return sorted(str(p) for p in Path(scores_dir).glob("[0-9]*.parquet"))


def file_errors(out_dir: str | Path) -> list[str]:
    """One-line errors of the input files the scoring run could not read."""
    folder = Path(out_dir) / ERRORS_DIR
    if not folder.is_dir():
        return []
    return [json.loads(line)["error"] for f in sorted(folder.glob("*.jsonl")) for line in f.read_text().splitlines()]


def token_settings(files: list[str], out_dir: Path, cfg: ScoreConfig) -> dict:
    """How documents' tokens are counted: exactly, or by the chars-per-token ratio, calibrated once
    and kept in `tokens.json` so that every rank (and every relaunch) uses the same ratio."""
    tokens_path = out_dir / TOKENS_FILE
    if cfg.token_count == "exact":
        tokens = {"tokenizer": cfg.tokenizer, "mode": "exact"}
    elif tokens_path.exists() and read_json(tokens_path).get("tokenizer") == cfg.tokenizer:
        tokens = read_json(tokens_path)
    else:
        tokens = calibrate(files, cfg)
    write_json(tokens, tokens_path)
    return tokens


def claim_scores(out_dir: Path, fingerprint: str) -> None:
    """Make `out_dir` hold only work done for `fingerprint`: when the recorded fingerprint differs,
    forget finished ranks (datatrove completions) and delete shards. An interrupted run with the same
    settings keeps its finished ranks and resumes; one with other settings starts afresh."""
    marker = out_dir / LOGS_DIR / FINGERPRINT_FILE
    if marker.exists() and marker.read_text() == fingerprint:
        return
    shutil.rmtree(out_dir / LOGS_DIR / "completions", ignore_errors=True)
    for old in out_dir.glob("*.parquet"):
        old.unlink()
    write_text(fingerprint, marker)


def prepare(files: list[str], model_path: str, out_dir: Path, cfg: ScoreConfig) -> tuple[dict, str, bool]:
    """Token settings and fingerprint of a scoring run, and whether it is already done; when it is
    not, readies `out_dir` for it (see `claim_scores`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tokens = token_settings(files, out_dir, cfg)
    fingerprint = scores_fingerprint(model_path, files, cfg, tokens.get("chars_per_token"))
    done_path = out_dir / DONE_FILE
    done = done_path.exists() and read_json(done_path).get("fingerprint") == fingerprint
    if not done:
        claim_scores(out_dir, fingerprint)
    return tokens, fingerprint, done


def score(files: list[str], model_path: str, out_dir: str | Path, cfg: ScoreConfig) -> dict:
    """Run the scoring pipeline locally (ranks already finished, e.g. by Slurm array tasks, are
    skipped). Returns a summary; a finished identical run is not redone."""
    from curate.cluster import build_executor

    out_dir = Path(out_dir)
    tokens, fingerprint, done = prepare(files, model_path, out_dir, cfg)
    if done:
        return {**read_json(out_dir / DONE_FILE), "skipped": True}
    build_executor(build_pipeline(files, model_path, out_dir, cfg, tokens), tasks=cfg.tasks, workers=cfg.workers,
                   logging_dir=out_dir / LOGS_DIR).run()
    summary = {"fingerprint": fingerprint, "input_files": files, "tokens": tokens,
               "file_errors": file_errors(out_dir), "skipped": False}
    write_json(summary, out_dir / DONE_FILE)
    return summary


def score_files(input_paths: list[str], glob: str | None, model_path: str, out_dir: str | Path, cfg: ScoreConfig) -> dict:
    """`curate score`: expand input paths, then `score`."""
    return score(list_input_files(input_paths, glob), model_path, out_dir, cfg)
