"""Score every document with the behavior classifier in a DataTrove pipeline.

reader (Parquet/JSONL, OpenWebMath schema) -> BehaviorScorer (annotates, never drops) ->
AttributeWriter (one attribute row per document: id, probabilities, behavior_score, n_tokens; no
text). Each rank writes `OUT/scores/{rank:05d}.parquet`; datatrove's logs and completions, the
token settings, the input errors and the stats live in `OUT/logs/score/`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.writers.parquet import ParquetWriter

from curate.config import ScoreConfig
from curate.io import Dropped, count_rows, file_sha256, iter_readable, read_json, write_json
from curate.layout import CARD_FILE, Layout, claim, input_stamps, is_current, location
from curate.readers import OpenWebMathReader
from curate.schema import BEHAVIOR_SCORE, ID, N_TOKENS, PROB_COLUMNS, SCORE_COLUMNS, SCORES_SCHEMA, TEXT

STAGE = "score"
TOKENS_FILE, ERRORS_DIR, DATATROVE_DIR = "tokens.json", "errors", "datatrove"


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
    hidden temporary name (which pyarrow, dask and polars skip) and renamed when the rank finishes,
    so a killed task leaves no partial shard."""

    name = "📒 attributes"

    def __init__(self, output_folder: str):
        super().__init__(output_folder, output_filename=".${rank}.parquet.tmp", compression="zstd",
                         adapter=_attribute_row, schema=SCORES_SCHEMA, max_file_size=-1,
                         use_content_defined_chunking=False)

    def close(self):
        names = list(self._writers)
        super().close()
        for name in names:
            self.output_folder.mv(name, name.removeprefix(".").removesuffix(".tmp"))


def scores_fingerprint(model_path: str | Path, files: list[str], cfg: ScoreConfig, chars_per_token: float | None
                       ) -> str:
    """What the scores depend on: the model bytes and its card's recipe and calibration, the input
    files (path, size, mtime) and token counting."""
    card = Path(model_path).parent / CARD_FILE
    recipe = [read_json(card).get(k) for k in ("recipe", "calibration")] if card.exists() else None
    return hashlib.sha256(json.dumps([file_sha256(model_path), recipe, input_stamps(files), cfg.tokenizer,
                                      cfg.token_count, chars_per_token, cfg.tasks]).encode()).hexdigest()


def calibrate(files: list[str], cfg: ScoreConfig) -> dict:
    """Chars per token of the first `calibration_docs` readable documents, with the real tokenizer
    (files that cannot be read are skipped here: the scoring run reports them)."""
    from curate.tokens import calibrate_chars_per_token, load_tokenizer

    texts: list[str] = []
    for _, _, item in iter_readable(files, on_error=lambda *_: None):
        if not isinstance(item, Dropped):
            texts.append(item[TEXT])
        if len(texts) >= cfg.calibration_docs:
            break
    tokenizer = load_tokenizer(cfg.tokenizer)
    return {
        "tokenizer": cfg.tokenizer,
        "mode": "ratio",
        "chars_per_token": calibrate_chars_per_token(tokenizer, texts),
        "calibration_docs": len(texts),
    }


def build_pipeline(files: list[str], model_path: str | Path, layout: Layout, cfg: ScoreConfig, tokens: dict) -> list:
    """The datatrove pipeline of the score stage."""
    exact = tokens["mode"] == "exact"
    return [
        OpenWebMathReader(files, errors_folder=str(layout.logs(STAGE) / ERRORS_DIR)),
        BehaviorScorer(str(model_path), chars_per_token=None if exact else tokens["chars_per_token"],
                       tokenizer=cfg.tokenizer if exact else None),
        AttributeWriter(str(layout.scores_dir)),
    ]


FASTTEXT_MAGIC = (793712314).to_bytes(4, "little")  # the first four bytes of a fastText model file


def check_model(path: str | Path) -> None:
    """Raise a one-line error unless `path` is a fastText model file (before any worker loads it)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise FileNotFoundError(f"{path}: cannot read the classifier model ({e.strerror})") from None
    if head != FASTTEXT_MAGIC:
        raise ValueError(f"{path}: not a fastText model file (train one with `curate train`)")


def datatrove_logs(layout: Layout) -> Path:
    """datatrove's logging folder of the score stage (completions, per-rank stats and logs)."""
    return layout.logs(STAGE) / DATATROVE_DIR


def scored_shards(scores_dir) -> list[str]:
    """The finished attribute shards of a scores folder (a local path or a URL), in rank order."""
    folder = location(scores_dir)
    return sorted(str(p) for p in folder.glob("[0-9]*.parquet")) if folder.exists() else []


def file_errors(layout: Layout) -> list[dict]:
    """The input files the scoring run could not read: {rank, path, error (one line), rows_read}."""
    folder = layout.logs(STAGE) / ERRORS_DIR
    return [json.loads(line) for f in sorted(folder.glob("*.jsonl")) for line in f.read_text().splitlines()]


def token_settings(files: list[str], layout: Layout, cfg: ScoreConfig) -> dict:
    """How documents' tokens are counted: exactly, or by the chars-per-token ratio, calibrated once
    and kept in `tokens.json` so that every rank (and every relaunch) uses the same ratio."""
    tokens_path = layout.logs(STAGE) / TOKENS_FILE
    if cfg.token_count == "exact":
        tokens = {"tokenizer": cfg.tokenizer, "mode": "exact"}
    elif tokens_path.exists() and read_json(tokens_path).get("tokenizer") == cfg.tokenizer:
        tokens = read_json(tokens_path)
    else:
        tokens = calibrate(files, cfg)
    write_json(tokens, tokens_path)
    return tokens


def claim_scores(layout: Layout, fingerprint: str) -> None:
    """Make the scores folder hold only work done for `fingerprint` (see `layout.claim`): other
    settings forget finished ranks and delete shards; the same settings resume."""
    def clear():
        shutil.rmtree(datatrove_logs(layout) / "completions", ignore_errors=True)
        shutil.rmtree(layout.logs(STAGE) / ERRORS_DIR, ignore_errors=True)
        for old in scored_shards(layout.scores_dir):
            location(old).unlink()

    claim(layout.logs(STAGE), fingerprint, clear)


def prepare(files: list[str], model_path: str | Path, layout: Layout, cfg: ScoreConfig) -> tuple[dict, str, bool]:
    """Token settings and fingerprint of a scoring run, and whether it is already done; when it is
    not, readies the scores folder for it (see `claim_scores`)."""
    if isinstance(layout.scores_dir, Path):
        layout.scores_dir.mkdir(parents=True, exist_ok=True)
    tokens = token_settings(files, layout, cfg)
    fingerprint = scores_fingerprint(model_path, files, cfg, tokens.get("chars_per_token"))
    done = is_current(layout.stats(STAGE), fingerprint)
    if not done:
        claim_scores(layout, fingerprint)
    return tokens, fingerprint, done


def summarize(files: list[str], layout: Layout, tokens: dict, fingerprint: str) -> dict:
    """Record a finished scoring run: `logs/score/stats.json` with the fingerprint, inputs, token
    settings, documents scored and the input files that could not be read."""
    errors = file_errors(layout)
    stats = {"fingerprint": fingerprint, "input_files": files, "tokens": tokens,
             "documents_out": sum(count_rows(s) for s in scored_shards(layout.scores_dir)),
             "file_errors": [e["error"] for e in errors]}
    write_json(stats, layout.stats(STAGE))
    return stats


def score(files: list[str], model_path: str | Path, layout: Layout, cfg: ScoreConfig) -> dict:
    """Run the scoring pipeline here (ranks already finished, e.g. by Slurm array tasks, are
    skipped) and return its stats (with `skipped`: True when an identical run had finished)."""
    from curate.executors import build_executor

    check_model(model_path)
    tokens, fingerprint, done = prepare(files, model_path, layout, cfg)
    if done:
        return {**read_json(layout.stats(STAGE)), "skipped": True}
    build_executor(build_pipeline(files, model_path, layout, cfg, tokens), tasks=cfg.tasks, workers=cfg.workers,
                   logging_dir=datatrove_logs(layout)).run()
    return {**summarize(files, layout, tokens, fingerprint), "skipped": False}


def load_scores(scores_dir: Path, dask_cluster=None):
    """All attribute rows (id, scores, n_tokens) of a scores folder as an Arrow table, read by the
    workers of a dask cluster (a LocalCluster unless `dask_cluster` says otherwise, e.g.
    dask-jobqueue on Slurm)."""
    import dask.dataframe as dd
    import pyarrow as pa

    from curate.executors import DaskCluster

    shards = scored_shards(scores_dir)
    if not shards:
        raise FileNotFoundError(f"{scores_dir}: no scored shards (run the score stage first)")
    with (dask_cluster or DaskCluster()).client():
        frame = dd.read_parquet(shards, columns=[ID, *SCORE_COLUMNS, N_TOKENS]).compute()
    return pa.Table.from_pandas(frame, preserve_index=False)
