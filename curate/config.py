"""Job files: loading and validation.

A job file is YAML with one section per stage. Unknown keys and wrong types are rejected before
any work starts, with a one-line error naming the file and the key. A job can `extends:` another
job file (a path relative to it): its sections are merged over the other's, key by key. Paths may
name environment variables (`$SCRATCH/owm`, `${HOME}/data`); `$CURATE_DATA` is the data bundled
with curate unless set.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlparse

import yaml
from pydantic import (
    AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator,
)

BUNDLED_DATA = Path(__file__).resolve().parent / "data"
_VARIABLE = re.compile(r"\$(\w+|\{(\w+)\})")


class JobError(ValueError):
    """A job file that cannot be run as written."""


def expand_path(value: str) -> str:
    """`value` with `$NAME` / `${NAME}` replaced by environment variables (`CURATE_DATA`: the
    bundled data unless set); an unset variable is an error."""
    def variable(match: re.Match) -> str:
        name = match.group(2) or match.group(1)
        if name == "CURATE_DATA":
            return os.environ.get(name, str(BUNDLED_DATA))
        if name not in os.environ:
            raise ValueError(f"environment variable ${name} is not set")
        return os.environ[name]

    return _VARIABLE.sub(variable, value)


PathStr = Annotated[str, AfterValidator(expand_path)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class InputConfig(_Section):
    paths: list[PathStr] = Field(min_length=1, description="Parquet/JSONL files or folders in the OpenWebMath schema")
    glob: str | None = Field(None, description="glob inside folders, e.g. '**/*.parquet'")


class TrainConfig(_Section):
    labels: PathStr | None = Field(None, description="labels file; with a label stage, trained on together with its "
                                   "labels (a document in both: the label stage's row)")
    fit: Literal["linear", "fasttext"] = Field("linear", description="'linear': regularized logistic regressions on "
                                               "fastText's input rows, written as a fastText model; 'fasttext': "
                                               "fastText's own trainer (epoch, lr, dim)")
    epoch: int = Field(25, ge=1, description="fit: fasttext only")
    lr: float = Field(0.2, gt=0, description="fit: fasttext only")
    dim: int = Field(32, ge=1, description="fit: fasttext only")
    word_ngrams: int = Field(2, ge=1)
    min_count: int = Field(2, ge=1, description="documents (linear) / occurrences (fasttext) a word needs to be in "
                           "the vocabulary")
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
    normalization: Literal["plain", "math", "words", "alnum"] = Field(
        "math", description="'math': ASCII lowercase, LaTeX commands and math symbols as tokens, digits -> 0; "
        "'words': letters only; 'alnum': letters and digits; 'plain': whitespace only")
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
    method: Literal["threshold", "top_k", "proportional"] = Field(
        "top_k", description="how copies are chosen: 'top_k' (highest scores, one copy each; the default: the most "
        "enrichment without repeating documents), 'proportional' (copies ~ score), 'threshold'")
    token_budget: int | None = Field(None, ge=1)
    threshold: float = Field(0.5, ge=0, le=1)
    max_repeats: int = Field(4, ge=1)
    temperature: float = Field(1.0, gt=0)
    shard_rows: int = Field(50_000, ge=1, description="rows per output shard at most")
    materialize: bool = Field(False, description="write each repeat as its own row, shuffled")
    control: bool = Field(False, description="also write a matched control (OUT/control): the lowest-scoring "
                                             "documents, same tokens, matched on url host and length")


class SampleConfig(_Section):
    n: int = Field(1000, ge=1, description="documents in the sample")
    stratify: Literal["none", "domain"] = Field("none", description="'domain': each url host gets a share "
                                                                     "proportional to its document count")
    near_dup_threshold: float = Field(0.8, gt=0, le=1, description="MinHash Jaccard similarity above which a "
                                                                   "document is a near-duplicate of an earlier one")
    num_perm: int = Field(128, ge=16, description="MinHash permutations")
    shingle_words: int = Field(5, ge=1, description="words per shingle")


class LLMConfig(_Section):
    """The server and run settings of a stage that asks an LLM about documents (`label`, `rewrite`):
    what `curate.inference` reads."""

    model: str = Field(description="model name (endpoint) or path/hub id that `vllm serve` loads")
    server_type: Literal["endpoint", "vllm"] = Field("endpoint", description="'endpoint': an OpenAI-compatible "
                                                     "server at endpoint_url; 'vllm': start `vllm serve` per task")
    endpoint_url: str | None = Field(None, description="base URL of the server, with or without /v1, e.g. "
                                                       "http://127.0.0.1:8000 (API key: env OPENAI_API_KEY)")
    engine: Literal["auto", "vllm", "llama.cpp"] = Field(
        "auto", description="the server software (names of sampling parameters, structured output form): auto = "
                            "vllm for server_type vllm, llama.cpp for endpoints; vllm also fits SGLang")
    structured_output: Literal["auto", "json_schema", "json_object", "none"] = Field(
        "auto", description="output constraint: auto = json_schema for engine vllm, json_object for llama.cpp")
    max_doc_tokens: int = Field(3000, ge=16, description="documents are cut at a line boundary to this many tokens")
    tokenizer: str = Field("smollm2", description="tokenizer that counts max_doc_tokens")
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0, description="sent to vLLM as repetition_penalty, to llama.cpp as "
                                                             "repeat_penalty (both apply their own default otherwise)")
    tp: int = Field(1, ge=1, description="tensor parallel size (vllm)")
    max_model_len: int = Field(8192, ge=256, description="context length (vllm)")
    server_args: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="extra `vllm serve` arguments, e.g. {gpu-memory-utilization: 0.9, "
                                          "enforce-eager: true} (a JSON object on the command line)")
    concurrency: int = Field(32, ge=1, description="requests in flight per task")
    request_timeout: float = Field(600.0, gt=0, description="seconds one request may take once the server is ready "
                                                            "(queueing in the server included) before it is retried")
    retries: int = Field(3, ge=0, description="retries (exponential backoff) of a request after a 5xx or timeout")
    max_error_rate: float = Field(0.05, ge=0, le=1, description="a run with a larger share of documents whose "
                                  "requests failed exits non-zero and asks them again when re-run")
    stop_after_failures: int = Field(20, ge=0, description="stop at once when the first N documents of a run all "
                                                           "failed (0: never)")
    tasks: int = Field(1, ge=1, description="datatrove tasks (each with its own vllm server)")
    records_per_chunk: int = Field(500, ge=1, description="documents per checkpoint chunk")
    server_ready_timeout: float | None = Field(None, gt=0, description="seconds to wait for the server to be ready "
                                               "(default: 1800 for vllm, loading weights and compiling; 60 for endpoints)")

    @field_validator("server_args", mode="before")
    @classmethod
    def _server_args_from_json(cls, value):
        if isinstance(value, str):  # the command line's --server-args '{"enforce-eager": true}'
            try:
                return json.loads(value)
            except json.JSONDecodeError as e:
                raise ValueError(f"server_args must be a JSON object: {e}") from None
        return value

    @model_validator(mode="after")
    def _endpoint_has_url(self):
        if self.server_type == "endpoint" and not self.endpoint_url:
            raise ValueError("server_type 'endpoint' needs endpoint_url")
        if self.endpoint_url is not None:
            parsed = urlparse(self.endpoint_url.strip())
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise ValueError(f"endpoint_url must be an http(s) URL with a host, got {self.endpoint_url!r}")
        return self


class LabelConfig(LLMConfig):
    """`curate label`: behavior counts (and evidence quotes) per document from an LLM."""

    prompt: Literal["counts", "paper"] = Field("counts", description="'counts': one request per document, JSON "
                                               "counts and quotes; 'paper': one request per behavior, <count>N</count>")
    max_quotes: int = Field(3, ge=0, le=10, description="verbatim quotes per behavior in a counts answer, one per "
                                                        "instance (training evidence); 0: counts only")
    max_tokens: int = Field(512, ge=1, description="completion tokens per request at most (an answer cut short does "
                                                   "not parse: 4 behaviors x 3 quotes need about 400)")


class RewriteConfig(LLMConfig):
    """`curate rewrite`: each selected document of a mix rewritten by an LLM as question / thought / answer."""

    mixes: list[Annotated[str, Field(pattern=r"^\w[\w.-]*$")]] = Field(
        ["mix"], min_length=1, description="mix folders of the output folder whose documents are rewritten: mix "
        "into OUT/rewrite, any other (control) into OUT/rewrite-<mix>")
    max_tokens: int = Field(2048, ge=1, description="completion tokens per request at most (a rewrite cut short "
                                                    "does not parse)")

    @field_validator("mixes")
    @classmethod
    def _listed_once(cls, mixes: list[str]) -> list[str]:
        if len(set(mixes)) != len(mixes):
            raise ValueError(f"mixes lists a value twice: {mixes}")
        return mixes


class BootstrapConfig(_Section):
    """`curate bootstrap`: rounds of score the pool -> pick documents -> label them -> retrain."""

    rounds: int = Field(3, ge=1, description="labeling rounds (a finished round is skipped when re-run)")
    per_round: int = Field(100, ge=1, description="documents labeled per round")
    uncertain_fraction: float = Field(0.75, ge=0, le=1, description="share of a round picked by uncertainty "
                                      "(a probability closest to its behavior's threshold); the rest: top behavior_score")
    pool: list[PathStr] | None = Field(None, description="unlabeled Parquet/JSONL files or folders; default: input.paths")
    near_dup_threshold: float = Field(0.8, gt=0, le=1, description="MinHash Jaccard similarity above which a "
                                      "document is a near-duplicate of a labeled or already picked one")


class ExportConfig(_Section):
    """`curate export`: the mix as trainers read it, every copy of a document its own document, shuffled."""

    formats: list[Literal["parquet", "jsonl", "tokens"]] = Field(
        ["parquet"], min_length=1, description="'parquet' (datasets), 'jsonl' (Megatron-LM's preprocess_data.py), "
        "'tokens' (datatrove's tokenized .ds files for nanotron)")
    mixes: list[Annotated[str, Field(pattern=r"^\w[\w.-]*$")]] = Field(
        ["mix"], min_length=1, description="mix folders of the output folder to export: mix, control, rewrite, "
        "rewrite-control")
    seed: int | None = Field(None, description="seed of the shuffle; the job's seed when unset")
    shard_rows: int = Field(50_000, ge=1, description="copies per parquet/jsonl shard at most")
    shard_tokens: int | None = Field(None, ge=1, description="tokens per .ds file, about (datatrove's "
                                     "max_tokens_per_file); one file per task when unset")
    tokenizer: str = Field("smollm2", description="tokenizer of 'tokens': 'smollm2', a tokenizers JSON or a GGUF file")
    eos: str | None = Field("<|endoftext|>", description="token added after every document in 'tokens' "
                            "(null or empty: none)")
    tasks: int = Field(1, ge=1, description="datatrove tasks tokenizing at once; each writes its own .ds files")

    @field_validator("eos")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None

    @model_validator(mode="after")
    def _listed_once(self):
        for key in ("formats", "mixes"):
            values = getattr(self, key)
            if len(set(values)) != len(values):
                raise ValueError(f"{key} lists a value twice: {values}")
        return self


SLURM_TASKS = ("sample", "label", "train", "score", "finish", "rewrite", "export", "dask")
"""The Slurm jobs of a job's chain (`dask`: the workers of the mix's global pass)."""


class SlurmResources(_Section):
    """What one Slurm task of the chain asks for; unset keys take the `slurm` section's values."""

    partition: str | None = Field(None, description="partition to submit to")
    time: str | None = Field(None, description="time limit of each task (sbatch --time)")
    cpus_per_task: int | None = Field(None, ge=1)
    mem_per_cpu_gb: int | None = Field(None, ge=1)
    gpus: int | None = Field(None, ge=0, description="GPUs per task")
    gpu_request: Literal["gpus", "gres"] | None = Field(
        None, description="how GPUs are asked for: 'gpus' (sbatch --gpus=N) or 'gres' (--gres=gpu:N)")
    sbatch_args: dict[str, str] | None = Field(None, description="extra sbatch options, added to the section's")


class SlurmConfig(_Section):
    """Site settings for `--executor slurm` (datatrove's SlurmPipelineExecutor, sbatch array jobs): the
    defaults of every task, and per-task overrides under `stages` (e.g. GPUs for `label`)."""

    partition: str | None = Field(None, description="partition to submit to; the cluster's default when unset")
    time: str = Field("04:00:00", description="time limit of each array task (sbatch --time)")
    cpus_per_task: int = Field(1, ge=1)
    mem_per_cpu_gb: int = Field(2, ge=1)
    gpus: int = Field(0, ge=0, description="GPUs per task (set it per stage: stages.label.gpus)")
    gpu_request: Literal["gpus", "gres"] = Field("gpus", description="how GPUs are asked for: 'gpus' "
                                                 "(sbatch --gpus=N) or 'gres' (--gres=gpu:N)")
    env_command: str | None = Field(None, description="shell line that activates the Python environment on the nodes, "
                                                       "e.g. 'source /path/to/venv/bin/activate'")
    sbatch_args: dict[str, str] = Field(default_factory=dict, description="extra sbatch options, e.g. {account: proj}")
    job_name_prefix: str | None = Field(None, description="prefix of the Slurm job names; the job's name when unset")
    max_array_size: int = Field(1001, ge=1, description="the cluster's MaxArraySize")
    dask_workers: int = Field(1, ge=0, description="dask_jobqueue.SLURMCluster workers for the mix's global pass "
                                                  "(0: a dask LocalCluster inside the mix task)")
    stages: dict[Literal[SLURM_TASKS], SlurmResources] = Field(  # type: ignore[valid-type]
        default_factory=dict, description=f"per-task overrides; tasks: {', '.join(SLURM_TASKS)}")

    def resources(self, task: str) -> SlurmResources:
        """The resources of one task: its `stages` entry over the section's defaults."""
        own = self.stages.get(task, SlurmResources())
        merged = {k: getattr(own, k) if getattr(own, k) is not None else getattr(self, k)
                  for k in SlurmResources.model_fields if k != "sbatch_args"}
        return SlurmResources(**merged, sbatch_args={**self.sbatch_args, **(own.sbatch_args or {})})


class DedupConfig(_Section):
    """Near-duplicate removal (MinHash + LSH); each cluster's best-scoring document is kept."""

    enabled: bool = True
    backend: Literal["datasketch", "datatrove"] = Field(
        "datasketch", description="'datasketch': in one process; 'datatrove': MinHash stages as pipelines (clusters)")
    num_perm: int = Field(128, ge=8, description="MinHash permutations (datatrove: buckets x hashes per bucket)")
    threshold: float = Field(0.8, gt=0, lt=1, description="estimated Jaccard similarity of word shingles above "
                                                          "which two documents are near-duplicates")
    bands: int | None = Field(None, ge=1, description="LSH bands (rows = num_perm // bands); default: chosen for "
                                                      "the threshold")
    shingle_size: int = Field(5, ge=1, description="words per shingle")
    seed: int = Field(1, description="MinHash permutation seed")


class EvalSetConfig(_Section):
    """An evaluation set to keep out of the mix: Parquet/JSONL, one item per row."""

    path: PathStr
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
    output_dir: PathStr
    data_dir: PathStr | None = Field(None, description="where the data outputs go (scores, filter decisions, mixes, "
                                     "exports): a folder or an fsspec URL (s3://bucket/run); default: output_dir")
    seed: int = 0
    input: InputConfig
    train: TrainConfig = TrainConfig()
    score: ScoreConfig = ScoreConfig()
    filters: FiltersConfig = FiltersConfig()
    mix: MixConfig = MixConfig()
    sample: SampleConfig | None = None
    label: LabelConfig | None = None
    bootstrap: BootstrapConfig | None = None
    rewrite: RewriteConfig | None = None
    export: ExportConfig | None = None
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
        return self

    @model_validator(mode="after")
    def _rewrite_reads_made_mixes(self):
        made = {"mix", "control"} if self.mix.control else {"mix"}
        if self.rewrite is not None and set(self.rewrite.mixes) - made:
            raise ValueError(f"rewrite.mixes names {sorted(set(self.rewrite.mixes) - made)}, which the job does not "
                             f"make (it makes {sorted(made)}; control needs mix.control: true)")
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


def merge_sections(base: dict, override: dict) -> dict:
    """`override` over `base`, mappings merged key by key (lists and values replaced)."""
    merged = dict(base)
    for key, value in override.items():
        merged[key] = merge_sections(base[key], value) if isinstance(value, dict) and isinstance(
            base.get(key), dict) else value
    return merged


def _read_mapping(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """A job file's mapping with what it `extends:` merged in."""
    if path.resolve() in chain:
        raise JobError(f"{path}: 'extends' loops back to itself ({' -> '.join(map(str, chain))})")
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise JobError(f"{path}: cannot read job file: {e.strerror}") from None
    except UnicodeDecodeError:
        raise JobError(f"{path}: not a job file (not UTF-8 text)") from None
    except yaml.YAMLError as e:
        raise JobError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise JobError(f"{path}: a job file must be a mapping of sections, got {type(raw).__name__}")
    base = raw.pop("extends", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise JobError(f"{path}: 'extends' must be the path of another job file")
    return merge_sections(_read_mapping(path.parent / base, (*chain, path.resolve())), raw)


def load_job(path: str | Path) -> Job:
    """Read and validate a job file (and what it extends); raise JobError with a one-line message when it is wrong."""
    path = Path(path)
    raw = _read_mapping(path)
    try:
        return Job.model_validate(raw)
    except ValidationError as e:
        raise JobError(_format_error(path, e)) from None
