"""Labeling prompts and the tolerant parser of their answers.

Two layouts:
- `counts` (default): one request per document; the instruction (all four behaviors) comes first
  and the document last, so a server's prefix cache shares the instruction; the answer is a JSON
  object with the four counts, constrained by a JSON schema where the server supports it.
- `paper`: the seed paper's layout, one request per behavior, each answered with `<count>N</count>`.

`prompt_version` is a hash of a layout's templates, stored with every label.
"""

from __future__ import annotations

import hashlib
import json
import re

from curate.schema import BEHAVIORS

LAYOUTS = ("counts", "paper")

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

COUNTS_INSTRUCTION = (
    "You annotate math text for four reasoning behaviors. Count the distinct instances of each "
    "behavior that the author performs (mentions of a behavior do not count):\n"
    + "".join(f"- {b}: {d}.\n" for b, d in _DEFINITIONS.items())
    + "Most texts show few behaviors; 0 is the usual count. Answer with only a JSON object, e.g. "
    + json.dumps({b: 0 for b in BEHAVIORS})
    + ".\n\nText:\n"
)

COUNTS_SCHEMA = {
    "type": "object",
    "properties": {b: {"type": "integer", "minimum": 0} for b in BEHAVIORS},
    "required": list(BEHAVIORS),
    "additionalProperties": False,
}

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


def prompt_version(layout: str) -> str:
    """A short hash of a layout's templates (and output schema): changes whenever the prompt does."""
    if layout == "counts":
        material = COUNTS_INSTRUCTION + json.dumps(COUNTS_SCHEMA, sort_keys=True)
    elif layout == "paper":
        material = "".join(paper_instruction(b) for b in BEHAVIORS)
    else:
        raise ValueError(f"unknown prompt layout {layout!r} (expected one of {', '.join(LAYOUTS)})")
    return f"{layout}-" + hashlib.sha256(material.encode()).hexdigest()[:12]


def response_format(structured_output: str) -> dict | None:
    """The request's `response_format` for the `counts` layout.

    `json_schema`: OpenAI's form (vLLM, SGLang). `json_object`: `{"type": "json_object", "schema": ...}`,
    the form llama.cpp's server takes (it answers HTTP 500 to `json_schema`). `none`: unconstrained.
    """
    if structured_output == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": "behavior_counts", "schema": COUNTS_SCHEMA}}
    if structured_output == "json_object":
        return {"type": "json_object", "schema": COUNTS_SCHEMA}
    if structured_output == "none":
        return None
    raise ValueError(f"unknown structured_output {structured_output!r}")


def build_requests(document: str, layout: str, structured_output: str = "none") -> list[tuple[str | None, dict]]:
    """Chat payloads for one (already cut) document: `[(behavior or None for all, payload), ...]`.

    The instruction is the system message and the document the user message: instruction first,
    document last.
    """
    if layout == "counts":
        payload = {"messages": [{"role": "system", "content": COUNTS_INSTRUCTION},
                                {"role": "user", "content": document}]}
        fmt = response_format(structured_output)
        if fmt is not None:
            payload["response_format"] = fmt
        return [(None, payload)]
    if layout == "paper":
        return [(b, {"messages": [{"role": "system", "content": paper_instruction(b)},
                                  {"role": "user", "content": document}]}) for b in BEHAVIORS]
    raise ValueError(f"unknown prompt layout {layout!r} (expected one of {', '.join(LAYOUTS)})")


_COUNT_TAG = re.compile(r"<count>\s*(-?\d+)\s*</count>", re.IGNORECASE)
_KEY_VALUE = {b: re.compile(rf"[\"']?{b}[\"']?\s*[:=]\s*[\"']?(-?\d+)(?![\d.])", re.IGNORECASE) for b in BEHAVIORS}


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


def _json_objects(text: str):
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            yield obj


def parse_counts(text: str | None) -> tuple[dict[str, int | None], str | None]:
    """Counts of all four behaviors from a `counts` answer, and an error when some are missing.

    Accepts a JSON object anywhere in the text (also inside code fences or after prose) and, failing
    that, `behavior: N` pairs. Never raises and never invents a count: what it cannot read is None.
    """
    counts: dict[str, int | None] = dict.fromkeys(BEHAVIORS)
    for obj in _json_objects(text or ""):
        found = {b: _as_count(obj.get(b)) for b in BEHAVIORS}
        if any(v is not None for v in found.values()):
            counts = found
            break
    for b in BEHAVIORS:
        if counts[b] is None and (m := _KEY_VALUE[b].search(text or "")) and int(m.group(1)) >= 0:
            counts[b] = int(m.group(1))
    missing = [b for b in BEHAVIORS if counts[b] is None]
    if not missing:
        return counts, None
    return counts, f"unparseable answer: no count for {', '.join(missing)}"


def parse_count_tag(text: str | None) -> tuple[int | None, str | None]:
    """The count in a paper-style answer: the last `<count> N </count>` (spaces allowed), or a bare
    number when the whole answer is one. None and an error when there is none."""
    tags = _COUNT_TAG.findall(text or "")
    if tags and int(tags[-1]) >= 0:
        return int(tags[-1]), None
    if (text or "").strip().isdecimal():  # isdigit() also accepts "²", which int() rejects
        return int(text.strip()), None
    return None, "unparseable answer: no <count>N</count>"
