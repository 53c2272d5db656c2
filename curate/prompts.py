"""Labeling and rewriting prompts, and the tolerant parsers of their answers.

Two layouts:
- `counts` (default): one request per document; the instruction (all four behaviors) comes first
  and the document last, so a server's prefix cache shares the instruction; the answer is a JSON
  object with the four counts and then, under `quotes`, per counted behavior up to `max_quotes` short
  verbatim quotes (one per instance), constrained by a JSON schema where the server supports it
  (`max_quotes: 0`: counts only).
- `paper`: the seed paper's layout, one request per behavior, each answered with `<count>N</count>`.

A quote is kept only when it occurs in the text the labeler saw (whitespace runs folded, case ignored,
a LaTeX command the model left unescaped in JSON recognized), and its behavior's count is at least 1;
the labels keep the document's own text of it. The others are counted by reason, never kept.

`prompt_version` is a hash of a layout's templates, schema and request settings, stored with every label.

Rewriting (`curate rewrite`): one request per document, the instruction first and the document last, the
answer a JSON object with a self-contained `question`, the worked reasoning (`thought`: the document's own
checks, retractions, subgoals and backward steps, none invented) and the `answer`, constrained by a schema;
`rewrite_prompt_version` hashes it the same way.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from typing import NamedTuple

from curate.schema import ANSWER, BEHAVIORS, QUESTION, THOUGHT

LAYOUTS = ("counts", "paper")
MIN_QUOTE_CHARS, MAX_QUOTE_CHARS = 5, 120  # the reference labels' quotes: 7 to 91 characters
QUOTE_CHECKS = ("kept", "invented", "too_short", "without_count", "duplicate", "beyond_limit")

_DEFINITIONS = {
    "verification": "the author explicitly checks a result or an intermediate step (substitutes a solution "
                    "back, tests a special case, recomputes another way, a sanity check)",
    "backtracking": "the author explicitly abandons an approach or retracts an earlier claim and goes "
                    "another way (\"this doesn't work, so instead...\", \"wait, that's wrong\")",
    "subgoal_setting": "the author explicitly states an intermediate goal that breaks the problem down "
                       "(\"first we find X, then Y\", \"Step 1: ...\")",
    "backward_chaining": "the author reasons from the desired goal back toward the givens (\"to show X it "
                         "suffices to show Y\", \"we want ..., so we need ...\")",
}

_COUNTS_INTRO = (
    "You annotate math text for four reasoning behaviors. Count the distinct instances of each "
    "behavior that the author performs (mentions of a behavior do not count):\n"
    + "".join(f"- {b}: {d}.\n" for b, d in _DEFINITIONS.items())
    + "Most texts show few behaviors; 0 is the usual count. "
)


def counts_instruction(max_quotes: int) -> str:
    """The `counts` layout's instruction (the document follows it)."""
    example = {b: 0 for b in BEHAVIORS}
    if not max_quotes:
        return _COUNTS_INTRO + f"Answer with only a JSON object, e.g. {json.dumps(example)}.\n\nText:\n"
    return _COUNTS_INTRO + (
        f"Then, under \"quotes\", give for each behavior you counted up to {max_quotes} quotes, one per instance: a "
        f"few words copied exactly from the text where the author does it. Answer with only a JSON object, e.g. "
        f"{json.dumps({**example, 'quotes': {}})} for a text without any.\n\nText:\n")


def counts_schema(max_quotes: int) -> dict:
    """The JSON schema of a `counts` answer: the four integer counts first (an answer cut short by
    max_tokens keeps them), then `quotes`: per counted behavior at most `max_quotes` short strings."""
    schema = {"type": "object", "properties": {b: {"type": "integer", "minimum": 0} for b in BEHAVIORS},
              "required": list(BEHAVIORS), "additionalProperties": False}
    if max_quotes:
        quotes = {"type": "array", "maxItems": max_quotes,
                  "items": {"type": "string", "minLength": MIN_QUOTE_CHARS, "maxLength": MAX_QUOTE_CHARS}}
        schema["properties"]["quotes"] = {"type": "object", "properties": {b: quotes for b in BEHAVIORS},
                                          "additionalProperties": False}
        schema["required"].append("quotes")
    return schema


_PAPER_EXAMPLES = {
    "verification": "\"Let's check: 3 * 4 = 12, which matches the total.\"",
    "backtracking": "\"This approach doesn't lead anywhere. Let's try a substitution instead.\"",
    "subgoal_setting": "\"First, we need the speed of the train; then we can find the time.\"",
    "backward_chaining": "\"To prove the claim, it suffices to show that n^2 is even.\"",
}

PAPER_TEMPLATE = (
    "Here is a text from a math web page. Evaluate whether the text contains any {name} steps, "
    "where {definition}. An example of a {name} step is: {example}\n\n"
    "Count the number of distinct {name} steps and give the count between the tags <count> </count>. "
    "If the text contains no {name} steps, answer <count>0</count>.\n\nText:\n"
)


def paper_instruction(behavior: str) -> str:
    """The paper-style instruction for one behavior (the document follows it)."""
    return PAPER_TEMPLATE.format(name=behavior.replace("_", " "), definition=_DEFINITIONS[behavior],
                                 example=_PAPER_EXAMPLES[behavior])


def prompt_version(layout: str, max_quotes: int = 0, settings: dict | None = None) -> str:
    """A short hash of a layout's templates and output schema, and of the request `settings` (sampling
    parameters, structured output, whitespace): changes whenever what the labeler is asked does."""
    if layout == "counts":
        material = counts_instruction(max_quotes) + json.dumps(counts_schema(max_quotes), sort_keys=True)
    elif layout == "paper":
        material = "".join(paper_instruction(b) for b in BEHAVIORS)
    else:
        raise ValueError(f"unknown prompt layout {layout!r} (expected one of {', '.join(LAYOUTS)})")
    material += json.dumps(settings or {}, sort_keys=True)
    return f"{layout}-" + hashlib.sha256(material.encode()).hexdigest()[:12]


def response_format(structured_output: str, schema: dict, name: str = "behavior_counts") -> dict | None:
    """The request's `response_format` for `schema` (called `name` in OpenAI's form).

    `json_schema`: OpenAI's form (vLLM, SGLang). `json_object`: `{"type": "json_object", "schema": ...}`,
    the form llama.cpp's server takes (it answers HTTP 500 to `json_schema`). `none`: unconstrained.
    """
    if structured_output == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}
    if structured_output == "json_object":
        return {"type": "json_object", "schema": schema}
    if structured_output == "none":
        return None
    raise ValueError(f"unknown structured_output {structured_output!r}")


def build_requests(document: str, layout: str, structured_output: str = "none",
                   max_quotes: int = 0) -> list[tuple[str | None, dict]]:
    """Chat payloads for one (already cut) document: `[(behavior or None for all, payload), ...]`.

    The instruction is the system message and the document the user message: instruction first,
    document last.
    """
    if layout == "counts":
        payload = {"messages": [{"role": "system", "content": counts_instruction(max_quotes)},
                                {"role": "user", "content": document}]}
        fmt = response_format(structured_output, counts_schema(max_quotes))
        if fmt is not None:
            payload["response_format"] = fmt
        return [(None, payload)]
    if layout == "paper":
        return [(b, {"messages": [{"role": "system", "content": paper_instruction(b)},
                                  {"role": "user", "content": document}]}) for b in BEHAVIORS]
    raise ValueError(f"unknown prompt layout {layout!r} (expected one of {', '.join(LAYOUTS)})")


_COUNT_TAG = re.compile(r"<count>\s*(-?\d+)\s*</count>", re.IGNORECASE)
_KEY_VALUE = {b: re.compile(rf"[\"']?{b}[\"']?\s*[:=]\s*[\"']?(-?\d+)(?![\d.])", re.IGNORECASE) for b in BEHAVIORS}
_JSON_ESCAPES = str.maketrans({"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"})


class ParsedAnswer(NamedTuple):
    counts: dict[str, int | None]
    error: str | None
    evidence: dict[str, list[str]]  # behavior -> kept quotes, as the document writes them
    quotes: Counter  # QUOTE_CHECKS -> how many quotes of the answer ended so


def _as_count(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _json_objects(text: str, strict: bool = True):
    """The JSON objects in `text`, in order (strict=False: control characters such as raw newlines allowed
    inside strings)."""
    decoder = json.JSONDecoder(strict=strict)
    for match in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            yield obj


def _read_counts(text: str) -> tuple[dict[str, int | None], dict]:
    """Counts, and the JSON object they came from ({} when read from loose `behavior: N` pairs)."""
    counts: dict[str, int | None] = dict.fromkeys(BEHAVIORS)
    source: dict = {}
    for obj in _json_objects(text):
        found = {b: _as_count(obj.get(b)) for b in BEHAVIORS}
        if any(v is not None for v in found.values()):
            counts, source = found, obj
            break
    for b in BEHAVIORS:
        if counts[b] is None and (m := _KEY_VALUE[b].search(text)) and int(m.group(1)) >= 0:
            counts[b] = int(m.group(1))
    return counts, source


def _missing(counts: dict) -> str | None:
    missing = [b for b in BEHAVIORS if counts[b] is None]
    return f"unparseable answer: no count for {', '.join(missing)}" if missing else None


def parse_counts(text: str | None) -> tuple[dict[str, int | None], str | None]:
    """Counts of all four behaviors from a `counts` answer, and an error when some are missing.

    Accepts a JSON object anywhere in the text (also inside code fences or after prose) and, failing
    that, `behavior: N` pairs (an answer cut short). Never raises and never invents a count: what it
    cannot read is None.
    """
    counts, _ = _read_counts(text or "")
    return counts, _missing(counts)


def find_quote(quote: str, document: str) -> str | None:
    """The document's own text of `quote`, found with whitespace runs folded and case ignored (re's simple
    case folding: a letter whose upper case is two letters, as "ŉ", must match as written), also when
    the model copied a LaTeX command into JSON unescaped (`\\frac` read back as form feed + "rac"); None
    when the document does not hold it."""
    for candidate in dict.fromkeys((quote, quote.translate(_JSON_ESCAPES))):
        words = candidate.split()
        found = re.search(r"\s+".join(map(re.escape, words)), document, re.IGNORECASE) if words else None
        if found:
            return found.group(0)
    return None


def _check_quote(quote, document: str, count: int | None, kept: list[str], max_quotes: int) -> str:
    """What becomes of one quote (one of QUOTE_CHECKS); a kept one is appended to `kept`."""
    quote = quote if isinstance(quote, str) else json.dumps(quote)
    if len(quote.strip()) < MIN_QUOTE_CHARS:
        return "too_short"
    found = find_quote(quote, document)
    if found is None:
        return "invented"
    if not count:
        return "without_count"
    if found in kept:
        return "duplicate"
    if len(kept) >= max_quotes:
        return "beyond_limit"
    kept.append(found)
    return "kept"


def parse_answer(text: str | None, document: str, max_quotes: int) -> ParsedAnswer:
    """Counts (as `parse_counts`) and the quotes kept as evidence: those that occur in `document` (the text
    the labeler saw) under a behavior counted at least once, at most `max_quotes` distinct ones per behavior."""
    counts, source = _read_counts(text or "")
    evidence: dict[str, list[str]] = {b: [] for b in BEHAVIORS}
    checks: Counter = Counter()
    by_behavior = source.get("quotes") if isinstance(source.get("quotes"), dict) else {}
    for b in BEHAVIORS:
        quotes = by_behavior.get(b)
        for quote in quotes if isinstance(quotes, list) else []:
            checks[_check_quote(quote, document, counts[b], evidence[b], max_quotes)] += 1
    return ParsedAnswer(counts, _missing(counts), evidence, checks)


def parse_count_tag(text: str | None) -> tuple[int | None, str | None]:
    """The count in a paper-style answer: the last `<count> N </count>` (spaces allowed), or a bare
    number when the whole answer is one. None and an error when there is none."""
    tags = _COUNT_TAG.findall(text or "")
    if tags and int(tags[-1]) >= 0:
        return int(tags[-1]), None
    if (text or "").strip().isdecimal():  # isdigit() also accepts "²", which int() rejects
        return int(text.strip()), None
    return None, "unparseable answer: no <count>N</count>"


# ---------------------------------------------------------------------------------------------
# Rewriting: a document as a self-contained question, the worked reasoning, and the answer

REWRITE_FIELDS = (QUESTION, THOUGHT, ANSWER)

REWRITE_INSTRUCTION = (
    "You rewrite a math text as a worked problem. Give three parts:\n"
    "- question: one self-contained problem that the text solves or explains, stating every given needed to "
    "solve it, so that it makes sense without the text (never mention \"the text\" or \"the author\").\n"
    "- thought: the reasoning from the question to the answer, step by step, as the text does it. Keep each of "
    "these behaviors wherever the text shows it, in the text's order:\n"
    + "".join(f"  - {b}: {d}.\n" for b, d in _DEFINITIONS.items())
    + "  Never add a behavior that the text does not show, and never invent facts or numbers.\n"
    "- answer: the final answer alone, as short as possible.\n"
    'Answer with only a JSON object {"question": "...", "thought": "...", "answer": "..."}.\n\nText:\n'
)


def rewrite_schema() -> dict:
    """The JSON schema of a rewrite: three non-empty strings, in the order they are written."""
    return {"type": "object", "properties": {f: {"type": "string", "minLength": 1} for f in REWRITE_FIELDS},
            "required": list(REWRITE_FIELDS), "additionalProperties": False}


def rewrite_prompt_version(settings: dict | None = None) -> str:
    """A short hash of the rewrite instruction, its schema and the request `settings`."""
    material = REWRITE_INSTRUCTION + json.dumps(rewrite_schema(), sort_keys=True)
    material += json.dumps(settings or {}, sort_keys=True)
    return "rewrite-" + hashlib.sha256(material.encode()).hexdigest()[:12]


def build_rewrite_request(document: str, structured_output: str = "none") -> dict:
    """The chat payload that asks for the rewrite of one (already cut) document: instruction first, document last."""
    payload = {"messages": [{"role": "system", "content": REWRITE_INSTRUCTION}, {"role": "user", "content": document}]}
    fmt = response_format(structured_output, rewrite_schema(), name="rewrite")
    if fmt is not None:
        payload["response_format"] = fmt
    return payload


_LATEX_ESCAPE = re.compile(r"[\b\f\r\t](?=[A-Za-z])")


def _as_text(value) -> str | None:
    """A rewrite field as text: a string, a number, or a list of strings (steps, one per line); a LaTeX
    command the model left unescaped in JSON (`\\frac` read back as form feed + "rac") gets its backslash back."""
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        value = "\n".join(value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return None
    value = _LATEX_ESCAPE.sub(lambda m: m.group(0).translate(_JSON_ESCAPES), value).strip()
    return value or None


class ParsedRewrite(NamedTuple):
    fields: dict[str, str | None]  # question, thought, answer (None: missing or empty)
    error: str | None


def parse_rewrite(text: str | None) -> ParsedRewrite:
    """The question, thought and answer of a rewrite, from the first JSON object in the text that has any of
    them (also inside code fences or after prose; raw newlines in its strings allowed). When one is missing or
    empty, all three are None and the error names what is missing: a rewrite is kept whole or not at all.
    Never raises."""
    fields: dict[str, str | None] = dict.fromkeys(REWRITE_FIELDS)
    for obj in _json_objects(text or "", strict=False):
        if any(f in obj for f in REWRITE_FIELDS):
            fields = {f: _as_text(obj.get(f)) for f in REWRITE_FIELDS}
            break
    else:
        return ParsedRewrite(fields, "unparseable answer: no JSON object with question, thought and answer")
    missing = [f for f in REWRITE_FIELDS if fields[f] is None]
    if missing:
        return ParsedRewrite(dict.fromkeys(REWRITE_FIELDS), f"unparseable answer: no {', '.join(missing)}")
    return ParsedRewrite(fields, None)
