"""Job files: loading and validation.

A job file is YAML with one section per stage. Unknown keys and wrong types are rejected before
any work starts, with a one-line error naming the file and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class JobError(ValueError):
    """A job file that cannot be run as written."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class InputConfig(_Section):
    paths: list[str] = Field(min_length=1, description="Parquet/JSONL files or folders in the OpenWebMath schema")
    glob: str | None = Field(None, description="glob inside folders, e.g. '**/*.parquet'")


class TrainConfig(_Section):
    labels: str | None = Field(None, description="labels file; defaults to the label stage's output")
    fit: Literal["linear", "fasttext"] = Field("linear", description="'linear': regularized logistic regressions on "
                                               "fastText's input rows, written as a fastText model; 'fasttext': "
                                               "fastText's own trainer (epoch, lr, dim)")
    epoch: int = Field(25, ge=1, description="fit: fasttext only")
    lr: float = Field(0.2, gt=0, description="fit: fasttext only")
    dim: int = Field(32, ge=1, description="fit: fasttext only")
    word_ngrams: int = Field(2, ge=1)
    min_count: int = Field(2, ge=1, description="documents (linear) / occurrences (fasttext) a word needs to be in the vocabulary")
    bucket: int = Field(500_000, ge=1, description="hash buckets of the word n-grams")
    c_grid: list[float] = Field([1.0, 3.0, 10.0, 30.0], min_length=1, description="fit: linear: inverse "
                                "regularization strengths of the document model, one chosen per behavior by "
                                "cross-validation inside each training fold")
    embeddings: Literal["smollm2", "none"] = Field("smollm2", description="fit: linear: word vectors (SmolLM2-135M "
                                                   "input embeddings, offline) shared by similar words' weights")
    embedding_grid: list[float] = Field([0.0, 1.0, 3.0], min_length=1, description="fit: linear: weights lambda of "
                                        "the word-vector kernel tried, one chosen per behavior with C")
    window_c: float = Field(1.0, gt=0, description="fit: linear: inverse regularization strength of the window model")
    presence_power: float = Field(0.35, ge=0, description="fit: linear: the document model divides by (distinct input "
                                  "rows) ** this (0.5: an L2-normalized bag of words and n-grams)")
    cv_folds: int = Field(5, ge=2, description="k of the k-fold cross-validation (by document) behind the card's metrics")
    normalization: Literal["plain", "math", "words", "alnum"] = Field("math", description="'math': ASCII lowercase, LaTeX commands and "
                                                    "math symbols as tokens, digits -> 0; 'plain': whitespace only")
    window_words: int = Field(30, ge=0, description="classifier tokens per scored window (0: whole documents only)")
    aggregate: Literal["noisy_or", "max"] = Field("max", description="document logit from its windows'")
    evidence: bool = Field(True, description="train on windows labeled by the labeler's evidence quotes where present")
    calibrate_length: bool = Field(False, description="log length as an input of the calibration (fitted out-of-fold)")
    workers: int = Field(2, ge=1, description="fits run at once (each in its own process)")

    @field_validator("c_grid", "embedding_grid", mode="before")
    @classmethod
    def _comma_separated(cls, value):
        return [float(v) for v in value.split(",")] if isinstance(value, str) else value


class ScoreConfig(_Section):
    tasks: int = Field(2, ge=1)
    workers: int = Field(2, ge=1)
    tokenizer: str = Field("smollm2", description="'smollm2' (bundled GGUF vocabulary), a tokenizers JSON or a GGUF file")
    token_count: Literal["ratio", "exact"] = "ratio"
    calibration_docs: int = Field(200, ge=1)


class MixConfig(_Section):
    method: Literal["threshold", "top_k", "proportional"] = "proportional"
    token_budget: int | None = Field(None, ge=1)
    threshold: float = Field(0.5, ge=0, le=1)
    max_repeats: int = Field(4, ge=1)
    temperature: float = Field(1.0, gt=0)
    shard_rows: int = Field(50_000, ge=1, description="rows per output shard at most")
    materialize: bool = Field(False, description="write each repeat as its own row, shuffled")


class SampleConfig(_Section):
    n: int = Field(1000, ge=1, description="documents in the sample")
    stratify: Literal["none", "domain"] = Field("none", description="'domain': each url host gets a share "
                                                                     "proportional to its document count")
    near_dup_threshold: float = Field(0.8, gt=0, le=1, description="MinHash Jaccard similarity above which a "
                                                                   "document is a near-duplicate of an earlier one")
    num_perm: int = Field(128, ge=16, description="MinHash permutations")
    shingle_words: int = Field(5, ge=1, description="words per shingle")


class LabelConfig(_Section):
    model: str = Field(description="model name (endpoint) or path/hub id that `vllm serve` loads")
    server_type: Literal["endpoint", "vllm"] = Field("endpoint", description="'endpoint': an OpenAI-compatible "
                                                     "server at endpoint_url; 'vllm': start `vllm serve` per task")
    endpoint_url: str | None = Field(None, description="base URL of the server, e.g. http://127.0.0.1:8000")
    prompt: Literal["counts", "paper"] = Field("counts", description="'counts': one request per document, JSON "
                                               "counts; 'paper': one request per behavior, <count>N</count>")
    structured_output: Literal["auto", "json_schema", "json_object", "none"] = Field(
        "auto", description="output constraint: auto = json_schema for vllm, json_object for endpoint (llama.cpp)")
    max_doc_tokens: int = Field(3000, ge=16, description="documents are cut at a line boundary to this many tokens")
    tokenizer: str = Field("smollm2", description="tokenizer that counts max_doc_tokens")
    max_tokens: int = Field(128, ge=1, description="completion tokens per request at most")
    temperature: float = Field(0.0, ge=0)
    tp: int = Field(1, ge=1, description="tensor parallel size (vllm)")
    max_model_len: int = Field(8192, ge=256, description="context length (vllm)")
    concurrency: int = Field(32, ge=1, description="requests in flight per task")
    request_timeout: float = Field(600.0, gt=0, description="seconds one request may take before it is retried")
    retries: int = Field(3, ge=0, description="retries (exponential backoff) of a request after a 5xx or timeout")
    tasks: int = Field(1, ge=1, description="datatrove tasks (each with its own vllm server)")
    records_per_chunk: int = Field(500, ge=1, description="documents per checkpoint chunk")
    server_ready_timeout: float = Field(1800.0, gt=0, description="seconds to wait for a started server")

    @model_validator(mode="after")
    def _endpoint_has_url(self):
        if self.server_type == "endpoint" and not self.endpoint_url:
            raise ValueError("server_type 'endpoint' needs endpoint_url")
        return self


class BootstrapConfig(_Section):
    """`curate bootstrap`: rounds of score the pool -> pick documents -> label them -> retrain."""

    rounds: int = Field(3, ge=1, description="labeling rounds (a finished round is skipped when re-run)")
    per_round: int = Field(100, ge=1, description="documents labeled per round")
    uncertain_fraction: float = Field(0.75, ge=0, le=1, description="share of a round picked by uncertainty "
                                      "(a probability closest to its behavior's threshold); the rest: top behavior_score")
    pool: list[str] | None = Field(None, description="unlabeled Parquet/JSONL files or folders; default: input.paths")
    near_dup_threshold: float = Field(0.8, gt=0, le=1, description="MinHash Jaccard similarity above which a "
                                      "document is a near-duplicate of a labeled or already picked one")


class SlurmConfig(_Section):
    """Site settings for `--executor slurm` (datatrove's SlurmPipelineExecutor, sbatch array jobs)."""

    partition: str | None = Field(None, description="partition to submit to; the cluster's default when unset")
    time: str = Field("04:00:00", description="time limit of each array task (sbatch --time)")
    cpus_per_task: int = Field(1, ge=1)
    mem_per_cpu_gb: int = Field(2, ge=1)
    gpus_per_task: int = Field(0, ge=0, description="GPUs per task (the label stage on GPU nodes)")
    env_command: str | None = Field(None, description="shell line that activates the Python environment on the nodes, "
                                                       "e.g. 'source /path/to/venv/bin/activate'")
    sbatch_args: dict[str, str] = Field(default_factory=dict, description="extra sbatch options, e.g. {account: proj}")
    job_name_prefix: str | None = Field(None, description="prefix of the Slurm job names; the job's name when unset")
    max_array_size: int = Field(1001, ge=1, description="the cluster's MaxArraySize")
    dask_workers: int = Field(1, ge=0, description="dask_jobqueue.SLURMCluster workers for the mix's global pass "
                                                  "(0: a dask LocalCluster inside the mix task)")


class DedupConfig(_Section):
    """Near-duplicate removal (MinHash + LSH); each cluster's best-scoring document is kept."""

    enabled: bool = True
    backend: Literal["datasketch", "datatrove"] = Field(
        "datasketch", description="'datasketch': in one process; 'datatrove': MinHash stages as pipelines (clusters)")
    num_perm: int = Field(128, ge=8, description="MinHash permutations (datatrove: buckets x hashes per bucket)")
    threshold: float = Field(0.8, gt=0, lt=1, description="estimated Jaccard similarity of word shingles above which two documents are near-duplicates")
    bands: int | None = Field(None, ge=1, description="LSH bands (rows = num_perm // bands); default: chosen for the threshold")
    shingle_size: int = Field(5, ge=1, description="words per shingle")
    seed: int = Field(1, description="MinHash permutation seed")


class EvalSetConfig(_Section):
    """An evaluation set to keep out of the mix: Parquet/JSONL, one item per row."""

    path: str
    name: str | None = Field(None, description="name in reports; defaults to the file name")
    fields: list[str] = Field(["text"], min_length=1, description="text columns of an item, e.g. [question, answer]")
    id_field: str | None = Field(None, description="column naming an item; default: its row number")


class DecontaminationConfig(_Section):
    """Drop documents sharing a long n-gram of lowercase word tokens with an evaluation item."""

    ngram: int = Field(13, ge=1, description="n-gram length in word tokens")
    eval_sets: list[EvalSetConfig] = Field([], description="evaluation sets; none: decontamination is off")


class FiltersConfig(_Section):
    dedup: DedupConfig = DedupConfig()
    decontaminate: DecontaminationConfig = DecontaminationConfig()


class Job(_Section):
    name: str
    output_dir: str
    seed: int = 0
    input: InputConfig
    train: TrainConfig = TrainConfig()
    score: ScoreConfig = ScoreConfig()
    filters: FiltersConfig = FiltersConfig()
    mix: MixConfig = MixConfig()
    sample: SampleConfig | None = None
    label: LabelConfig | None = None
    bootstrap: BootstrapConfig | None = None
    executor: Literal["local", "slurm"] = "local"
    slurm: SlurmConfig = SlurmConfig()

    @model_validator(mode="after")
    def _labels_from_one_place(self):
        if self.bootstrap is not None:
            if self.label is None or self.train.labels is None or self.sample is not None:
                raise ValueError("bootstrap needs a label section (the labeler) and train.labels (the initial "
                                 "labels), and no sample section")
        elif (self.sample is None) != (self.label is None):
            raise ValueError("the sample and label sections go together (sample -> label -> train)")
        if self.bootstrap is None and self.label is not None and self.train.labels is not None:
            raise ValueError("train.labels is set but the label stage makes the labels; remove one of them")
        return self

    @property
    def out(self) -> Path:
        return Path(self.output_dir)


def _format_error(path: str | Path, err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "<root>"
    if first["type"] == "extra_forbidden":
        return f"{path}: unknown key '{where}'"
    if first["type"] == "missing":
        return f"{path}: missing required key '{where}'"
    return f"{path}: key '{where}': {first['msg']} (got {first.get('input')!r})"


def load_job(path: str | Path) -> Job:
    """Read and validate a job file; raise JobError with a one-line message when it is wrong."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise JobError(f"{path}: cannot read job file: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise JobError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise JobError(f"{path}: a job file must be a mapping of sections, got {type(raw).__name__}")
    try:
        return Job.model_validate(raw)
    except ValidationError as e:
        raise JobError(_format_error(path, e)) from None
