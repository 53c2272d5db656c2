"""Data contracts between curate's stages: column names, Arrow schemas and document ids.

Every stage reads and writes through these definitions, so a column is named in one place.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

import pyarrow as pa

BEHAVIORS: tuple[str, ...] = ("verification", "backtracking", "subgoal_setting", "backward_chaining")

# Input (OpenWebMath schema)
TEXT, URL, DATE, METADATA = "text", "url", "date", "metadata"
ID = "id"
INPUT_COLUMNS = (URL, TEXT, DATE, METADATA)

# A sample to label: the documents as read, with their ids.
SAMPLE_SCHEMA = pa.schema([(ID, pa.string()), (URL, pa.string()), (TEXT, pa.string()), (DATE, pa.string()),
                           (METADATA, pa.string())])

# Labels
LABELER, PROMPT_VERSION, RAW_RESPONSE, ERROR = "labeler", "prompt_version", "raw_response", "error"
LABELS_SCHEMA = pa.schema(
    [
        (ID, pa.string()),
        (URL, pa.string()),
        (TEXT, pa.string()),
        *[(b, pa.int32()) for b in BEHAVIORS],
        (LABELER, pa.string()),
        (PROMPT_VERSION, pa.string()),
        (RAW_RESPONSE, pa.string()),
        (ERROR, pa.string()),
    ]
)

# Scored shards: attributes of the input, one row per input document, no text.
BEHAVIOR_SCORE = "behavior_score"
N_TOKENS = "n_tokens"
PROB_COLUMNS: tuple[str, ...] = tuple(f"p_{b}" for b in BEHAVIORS)
SCORE_COLUMNS: tuple[str, ...] = (*PROB_COLUMNS, BEHAVIOR_SCORE)
SCORES_SCHEMA = pa.schema(
    [(ID, pa.string()), *[(c, pa.float32()) for c in SCORE_COLUMNS], (N_TOKENS, pa.int64())]
)

# Mix output shards: what a continued-pretraining job reads.
WEIGHT, REPEATS = "weight", "repeats"
MIX_SCHEMA = pa.schema(
    [
        (TEXT, pa.string()),
        (ID, pa.string()),
        (URL, pa.string()),
        *[(c, pa.float32()) for c in SCORE_COLUMNS],
        (N_TOKENS, pa.int64()),
        (WEIGHT, pa.float64()),
        (REPEATS, pa.int32()),
    ]
)

# Rewrites (`curate rewrite`): one row per selected document of a mix. The mix's columns first, so that
# `curate export` reads a rewrite folder as a mix: `text` is the rewrite, the scores and `n_tokens` are the
# rewrite's, `weight` the mix's and `repeats` the mix's copies (0 where the rewrite failed: never exported).
QUESTION, THOUGHT, ANSWER = "question", "thought", "answer"
REWRITE_SCHEMA = pa.schema(
    [*MIX_SCHEMA, (QUESTION, pa.string()), (THOUGHT, pa.string()), (ANSWER, pa.string()),
     (PROMPT_VERSION, pa.string()), (RAW_RESPONSE, pa.string()), (ERROR, pa.string())]
)

# Filter decisions (near-duplicates, contamination): one row per document kept out of the mix.
REASON, DETAIL = "reason", "detail"
NEAR_DUPLICATE, CONTAMINATION = "near_duplicate", "contamination"
DROPS_SCHEMA = pa.schema([(ID, pa.string()), (REASON, pa.string()), (DETAIL, pa.string())])



def doc_id(url: str | None, text: str) -> str:
    """A document's stable id: its url when present, else a hash of its text."""
    if url:
        return url
    return "sha1:" + hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()


_WORD = re.compile(r"\w+")


def word_tokens(text: str) -> list[str]:
    """Lowercase word tokens (runs of letters, digits and underscore; NFKC-normalized): the units of
    near-duplicate shingles and contamination n-grams."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).lower())
