"""`curate label`: behavior counts and evidence quotes from an LLM, through datatrove's inference pipeline.

reader (the sample) -> InferenceRunner(LabelRollout) -> JSONL results, then one labels Parquet file
(schema.LABELS_SCHEMA) and a stats JSON. The server, requests, retries, checkpoints and failure
accounting are `curate.inference`'s; this module holds what is particular to labeling: the prompt
layouts of `curate.prompts`, the parsed counts and quotes, the labels file and its statistics.

Failure policy: an answer that does not parse is kept with null counts, its error and the raw text;
an invented quote is counted and never kept. A request answered with an error (HTTP 4xx, or a 5xx
that outlasts the retries) is written with its error, unless the run has more of those than
`max_error_rate` (or its first documents all failed): then the run exits non-zero, is not recorded
as current, and a re-run asks those documents again. A server that cannot be reached, never gets
ready or stops answering stops the run; a re-run resumes from the checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate import inference
from curate.config import LabelConfig
from curate.inference import Answer, Rollout, RunStopped, rollout_of
from curate.io import read_json, write_json, write_parquet
from curate.layout import Layout, is_current
from curate.prompts import QUOTE_CHECKS, build_requests, parse_answer, parse_count_tag, parse_counts, prompt_version
from curate.schema import BEHAVIORS, ERROR, ID, LABELER, LABELS_SCHEMA, PROMPT_VERSION, RAW_RESPONSE, TEXT, URL

STAGE, WORK_DIR = "label", "work"


class LabelingStopped(RunStopped):
    """A labeling run that stopped before the end or was refused for its failures; a re-run goes on."""


def resolved_structured_output(cfg: LabelConfig) -> str:
    """`auto` resolves to OpenAI's json_schema for vLLM and llama.cpp's json_object form; the paper layout
    is unconstrained (its answers are `<count>N</count>` tags)."""
    return "none" if cfg.prompt == "paper" else inference.structured_output(cfg)


def quotes_requested(cfg: LabelConfig) -> int:
    return cfg.max_quotes if cfg.prompt == "counts" else 0


def request_settings(cfg: LabelConfig) -> dict:
    """What, besides the prompt, decides the answers: sampling parameters, structured output, whitespace."""
    return inference.request_settings(cfg, resolved_structured_output(cfg))


def label_prompt_version(cfg: LabelConfig) -> str:
    return prompt_version(cfg.prompt, quotes_requested(cfg), request_settings(cfg))


def label_settings(cfg: LabelConfig) -> dict:
    """What the labels depend on besides the sample (the fingerprint's settings; server_args are left out,
    so that tuning memory flags keeps the checkpoints)."""
    settings = cfg.model_dump(include={"model", "prompt", "max_doc_tokens", "tokenizer", "tasks", "records_per_chunk"})
    settings.update(prompt_version=label_prompt_version(cfg), engine=inference.engine(cfg))
    return settings


def label_fingerprint(sample_path: str | Path, cfg: LabelConfig) -> str:
    """What the labels depend on: the sample's bytes, the model, the prompt and the request settings."""
    from curate.io import file_sha256

    return hashlib.sha256(json.dumps([file_sha256(sample_path), label_settings(cfg)], sort_keys=True).encode()).hexdigest()


class LabelRollout(Rollout):
    """One document: the layout's requests (one, or four for `paper`), the counts parsed from the answers,
    and for `counts` the quotes kept as evidence (raw_response = {"evidence": {behavior: [quote, ...]},
    "response": the answer}, the form `curate.labels.read_labels` reads)."""

    what = "label"

    def __init__(self, cfg: LabelConfig, run_id: str, total: int | None = None, backoff_s: float = 1.0):
        super().__init__(cfg, run_id, total, backoff_s)
        self.layout, self.structured_output = cfg.prompt, resolved_structured_output(cfg)
        self.max_quotes = quotes_requested(cfg)

    def requests(self, text: str) -> list[dict]:
        return [payload for _, payload in build_requests(text, self.layout, self.structured_output, self.max_quotes)]

    def result(self, text: str, answers: list[Answer]) -> dict:
        if self.layout == "paper":
            counts, errors = dict.fromkeys(BEHAVIORS), []
            for behavior, answer in zip(BEHAVIORS, answers):
                if answer.text is not None:
                    counts[behavior], error = parse_count_tag(answer.text)
                    errors += [f"{behavior}: {error}"] if error else []
            raw = json.dumps({b: a.text for b, a in zip(BEHAVIORS, answers)}, ensure_ascii=False)
            return {"counts": counts, "raw_response": raw, "error": "; ".join(errors) or None, "quotes": {}}
        [answer] = answers
        if answer.text is None:
            return {"counts": dict.fromkeys(BEHAVIORS), "raw_response": None, "error": None, "quotes": {}}
        if not self.max_quotes:
            counts, error = parse_counts(answer.text)
            return {"counts": counts, "raw_response": answer.text, "error": error, "quotes": {}}
        parsed = parse_answer(answer.text, text, self.max_quotes)
        raw = json.dumps({"evidence": parsed.evidence, "response": answer.text})  # the evidence as gold.parquet writes it
        return {"counts": parsed.counts, "raw_response": raw, "error": parsed.error, "quotes": dict(parsed.quotes)}


def _labels_table(results: list[dict], cfg: LabelConfig) -> pa.Table:
    version = label_prompt_version(cfg)
    rows = []
    for doc in sorted(results, key=lambda d: d["id"]):
        answer = rollout_of(doc)
        rows.append({ID: doc["id"], URL: doc["metadata"].get(URL), TEXT: doc["text"], **answer["counts"],
                     LABELER: cfg.model, PROMPT_VERSION: version, RAW_RESPONSE: answer["raw_response"],
                     ERROR: answer["error"]})
    return pa.Table.from_pylist(rows, schema=LABELS_SCHEMA)


def label_stats(results: list[dict], run_id: str, seconds: float) -> dict:
    """`inference.run_stats` and: documents fully labeled, parse failures (an answer came back but a count
    could not be read), and what became of the quotes (QUOTE_CHECKS; invented = not in the document)."""
    answers = [rollout_of(doc) for doc in results]
    n = len(answers)
    parse_failures = sum(1 for a in answers if a["error"] and not a["request_failed"])
    quotes = Counter(dict.fromkeys(QUOTE_CHECKS, 0))
    for a in answers:
        quotes.update(a["quotes"])
    returned = sum(quotes.values())
    return {
        **inference.run_stats(results, run_id, seconds),
        "documents_labeled": sum(1 for a in answers if not a["error"]),
        "parse_failures": parse_failures,
        "parse_failure_rate": parse_failures / n if n else None,
        "quotes": {"returned": returned, **quotes},
        "invented_quote_rate": quotes["invented"] / returned if returned else None,
    }


def label(sample_path: str | Path, layout: Layout, cfg: LabelConfig, fingerprint: str | None = None) -> dict:
    """Label the documents of a sample file; write `layout.labels_file` and the stats
    (`logs/label/stats.json`; checkpoints in `logs/label/work/`) and return the stats. Re-running an
    interrupted or refused run goes on from where it stopped; re-running a finished one with the same
    settings does nothing. Raises LabelingStopped (one line)."""
    fingerprint = fingerprint or label_fingerprint(sample_path, cfg)
    stats_path = layout.stats(STAGE)
    if layout.labels_file.exists() and is_current(stats_path, fingerprint):
        return {**read_json(stats_path), "skipped": True}
    run_id = uuid.uuid4().hex
    rollout = LabelRollout(cfg, run_id, total=pq.ParquetFile(sample_path).metadata.num_rows)
    start = time.monotonic()
    try:
        results = inference.run_rollouts(sample_path, layout.logs(STAGE) / WORK_DIR, cfg, rollout, fingerprint)
    except RunStopped as e:
        raise LabelingStopped(f"labeling: {e}") from e.__cause__
    seconds = time.monotonic() - start
    write_parquet(_labels_table(results, cfg), layout.labels_file)
    stats = {"fingerprint": fingerprint, "labeler": cfg.model, "prompt": cfg.prompt,
             "prompt_version": label_prompt_version(cfg), "structured_output": resolved_structured_output(cfg),
             "max_quotes": quotes_requested(cfg), **label_stats(results, run_id, seconds), "skipped": False}
    write_json(stats, stats_path)
    return stats


def dry_run(sample_path: str | Path, layout: Layout, cfg: LabelConfig) -> str:
    """The `vllm serve` command line (server_type vllm) or the endpoint's URLs, and the request(s) for the
    first document of the sample, as a run would send them; starts nothing, writes nothing."""
    first = pq.read_table(sample_path, columns=[ID, TEXT]).slice(0, 1).to_pylist()
    if not first:
        raise ValueError(f"{sample_path}: the sample holds no document")
    rollout = LabelRollout(cfg, run_id="dry-run")
    return inference.dry_run_text(cfg, layout.logs(STAGE) / WORK_DIR, first[0][ID],
                                  rollout.requests(rollout.cut(first[0][TEXT])))


def eval_labels(labels_path: str | Path, reference_path: str | Path) -> dict:
    """Agreement of a labels file with a reference one, per behavior, over the documents in both with
    a count in both: Spearman correlation of counts, F1 of `count > 0` (reference as truth), and the
    ROC-AUC of the counts as a score, over all pairs and over pairs that share a length quintile and
    a url host (length-matched; the reference's text and url), beside length alone."""
    from scipy.stats import spearmanr

    from curate.labels import read_counts, read_lengths_and_hosts
    from curate.metrics import binary_metrics, length_matched_auc, roc_auc

    labels, reference = read_counts(labels_path), read_counts(reference_path)
    lengths, hosts = read_lengths_and_hosts(reference_path)
    common = sorted(set(labels) & set(reference))
    result = {"documents_in_both": len(common), "behaviors": {}}
    for b in BEHAVIORS:
        both = [i for i in common if labels[i][b] is not None and reference[i][b] is not None]
        x = np.array([labels[i][b] for i in both], dtype=float)
        y = np.array([reference[i][b] for i in both], dtype=float)
        n_chars = np.array([lengths[i] for i in both], dtype=float)
        rho = float(spearmanr(x, y).statistic) if len(both) > 1 and x.std() > 0 and y.std() > 0 else None
        agreement = binary_metrics(y > 0, x, 0.5)  # a count of 1 or more against the reference's
        matched = length_matched_auc(y > 0, x, n_chars, [hosts[i] for i in both]) if both else None
        result["behaviors"][b] = {
            "documents": len(both), "spearman": rho, **agreement, "roc_auc": roc_auc(y > 0, x),
            "length_matched_roc_auc": matched, "length_only_roc_auc": roc_auc(y > 0, n_chars),
            "positives_labels": int(np.sum(x > 0)), "positives_reference": int(np.sum(y > 0))}
    return result
