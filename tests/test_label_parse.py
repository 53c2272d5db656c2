"""The labeler's prompts, document cutting, tolerant answer parser and quote validation, and the
generic inference settings (no server needed)."""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given, strategies as st

from curate.inference import cut_to_tokens
from curate.prompts import (
    QUOTE_CHECKS,
    build_requests,
    counts_instruction,
    counts_schema,
    find_quote,
    parse_answer,
    parse_count_tag,
    parse_counts,
    prompt_version,
    response_format,
)
from curate.schema import BEHAVIORS
from curate.tokens import load_tokenizer

ALL = dict(zip(BEHAVIORS, (2, 0, 1, 3)))


@pytest.mark.parametrize("answer", [
    json.dumps(ALL),
    "```json\n" + json.dumps(ALL, indent=2) + "\n```",
    "Here are the counts: " + json.dumps(ALL) + " Hope this helps.",
    '{"verification": "2", "backtracking": 0, "subgoal_setting": 1.0, "backward_chaining": 3}',
    "verification: 2\nbacktracking: 0\nsubgoal_setting: 1\nbackward_chaining = 3",
])
def test_counts_parser_reads_json_in_its_usual_disguises(answer):
    assert parse_counts(answer) == (ALL, None)


@pytest.mark.parametrize("answer", [
    None, "", "I cannot answer that.", '{"verification": 1, "backtracking', '{"verification": -1}',
])
def test_counts_parser_never_invents_a_count(answer):
    counts, error = parse_counts(answer)
    assert error is not None and error.startswith("unparseable answer")
    assert set(counts) == set(BEHAVIORS)
    assert counts["verification"] in (None, 1)  # only a count the text states, never a default zero
    assert all(v is None for b, v in counts.items() if b != "verification")


def test_counts_parser_rejects_non_integer_counts():
    counts, error = parse_counts('{"verification": true, "backtracking": 0, "subgoal_setting": 2.5, "backward_chaining": 0}')
    assert counts == {"verification": None, "backtracking": 0, "subgoal_setting": None, "backward_chaining": 0}
    assert "verification" in error and "subgoal_setting" in error


def test_counts_parser_keeps_what_it_can_read_and_names_what_is_missing():
    counts, error = parse_counts('{"verification": 1, "backtracking": 0}')
    assert counts == {"verification": 1, "backtracking": 0, "subgoal_setting": None, "backward_chaining": None}
    assert "subgoal_setting" in error and "backward_chaining" in error and "verification" not in error


@pytest.mark.parametrize("answer,count", [
    ("<count>2</count>", 2), ("<count> 2 </count>", 2), ("Reasoning...\n<COUNT>\n4\n</COUNT>", 4),
    ("First <count>1</count>, on reflection <count>3</count>", 3), ("0", 0),
])
def test_paper_tag_parser_accepts_spaces_inside_tags(answer, count):
    assert parse_count_tag(answer) == (count, None)


@pytest.mark.parametrize("answer", [None, "", "<count></count>", "<count>two</count>", "The count is <count>-1</count>"])
def test_paper_tag_parser_reports_missing_counts(answer):
    count, error = parse_count_tag(answer)
    assert count is None and "<count>" in error


@given(st.text(max_size=300))
@example(text="²")  # isdigit() but not a number int() reads: found by this test
def test_parsers_never_raise(text):
    counts, error = parse_counts(text)
    assert all(v is None or (isinstance(v, int) and v >= 0) for v in counts.values())
    assert (error is None) == all(v is not None for v in counts.values())
    count, error = parse_count_tag(text)
    assert (count is None) != (error is None)


def test_one_request_layout_puts_the_instruction_first_and_the_document_last():
    [(behavior, payload)] = build_requests("DOC TEXT", "counts", "json_object", max_quotes=3)
    assert behavior is None
    assert [m["role"] for m in payload["messages"]] == ["system", "user"]
    assert payload["messages"][0]["content"] == counts_instruction(3) and payload["messages"][-1]["content"] == "DOC TEXT"
    assert "up to 3 quotes" in counts_instruction(3) and "quotes" not in counts_instruction(0)
    schema = payload["response_format"]["schema"]
    assert payload["response_format"]["type"] == "json_object" and schema["required"] == [*BEHAVIORS, "quotes"]
    assert list(schema["properties"]) == [*BEHAVIORS, "quotes"]  # the counts first: an answer cut short keeps them
    for b in BEHAVIORS:  # per behavior at most 3 quotes (one per instance)
        assert schema["properties"][b] == {"type": "integer", "minimum": 0}
        assert schema["properties"]["quotes"]["properties"][b]["maxItems"] == 3
    assert list(counts_schema(0)["properties"]) == list(BEHAVIORS)


def test_paper_layout_asks_once_per_behavior_with_count_tags():
    requests = build_requests("DOC TEXT", "paper")
    assert [b for b, _ in requests] == list(BEHAVIORS)
    for behavior, payload in requests:
        assert payload["messages"][-1]["content"] == "DOC TEXT"
        assert behavior.replace("_", " ") in payload["messages"][0]["content"]
        assert "<count>" in payload["messages"][0]["content"] and "response_format" not in payload


def test_structured_output_forms():
    assert response_format("json_schema", counts_schema(3))["json_schema"]["schema"]["required"] == [*BEHAVIORS, "quotes"]
    assert response_format("json_object", counts_schema(3))["type"] == "json_object"
    assert response_format("none", counts_schema(3)) is None


def test_prompt_versions_differ_per_layout_quotes_and_settings_and_are_stable():
    assert prompt_version("counts") == prompt_version("counts") != prompt_version("paper")
    assert prompt_version("counts", 3) != prompt_version("counts", 0) != prompt_version("counts", 2)
    assert prompt_version("counts", 3, {"sampling": {"repetition_penalty": 1.0}}) != prompt_version(
        "counts", 3, {"sampling": {"repetition_penalty": 1.05}})
    assert prompt_version("counts").startswith("counts-")
    with pytest.raises(ValueError):
        prompt_version("other")


def test_cut_ends_at_a_line_boundary_within_the_budget():
    tokenizer = load_tokenizer("smollm2")
    text = "\n".join(f"Line {i}: we compute {i} + {i} = {2 * i} and check it." for i in range(200))
    cut = cut_to_tokens(text, tokenizer, 100)
    assert text.startswith(cut) and len(cut) < len(text)
    assert text[len(cut)] == "\n"  # cut right before a line break
    n = len(tokenizer.encode(cut, add_special_tokens=False).ids)
    assert 80 <= n <= 100
    assert cut_to_tokens("short text", tokenizer, 100) == "short text"
    one_line = "word " * 500
    assert len(tokenizer.encode(cut_to_tokens(one_line, tokenizer, 50), add_special_tokens=False).ids) <= 50


# ---------------------------------------------------------------------------------------------
# Counts with quotes, and quote validation

DOC = "We want x. First we find the speed; then the time.\nLet's check:  3 * 4 = 12, which matches.\n$\\frac{a}{b}$ holds."


def _answer(**entries) -> str:
    """A counts answer: behavior=(count, [quotes])."""
    entries = {b: entries.get(b, (0, [])) for b in BEHAVIORS}
    return json.dumps({**{b: c for b, (c, _) in entries.items()}, "quotes": {b: q for b, (_, q) in entries.items() if q}})


def test_counts_are_read_from_an_answer_with_quotes_also_when_cut_short():
    assert parse_counts(_answer(verification=(2, ["some words"])))[0]["verification"] == 2
    counts, error = parse_counts(_answer(verification=(2, ["some words"]), backtracking=(1, []))[:-40])
    assert counts == {"verification": 2, "backtracking": 1, "subgoal_setting": 0, "backward_chaining": 0}
    assert error is None


def test_quotes_are_kept_as_the_document_writes_them_and_invented_ones_are_counted_never_kept():
    answer = _answer(verification=(2, ["LET'S CHECK: 3 * 4 = 12", "we verify the answer twice",
                                       "Let's check: 3 *  4 = 12", "ok"]),
                     subgoal_setting=(0, ["first we find the speed"]))
    parsed = parse_answer(answer, DOC, max_quotes=3)
    assert parsed.error is None and parsed.counts["verification"] == 2
    assert parsed.evidence["verification"] == ["Let's check:  3 * 4 = 12"]  # the document's own text, once
    assert parsed.evidence["subgoal_setting"] == []  # a quote under a count of 0 is not evidence
    assert parsed.quotes == {"kept": 1, "invented": 1, "duplicate": 1, "too_short": 1, "without_count": 1}


def test_a_latex_command_left_unescaped_in_json_is_recognized():
    answer = '{"verification": 1, "quotes": {"verification": ["$\\frac{a}{b}$ holds"]}}'  # JSON reads \f: form feed
    assert json.loads(answer)["quotes"]["verification"][0].startswith("$\f")
    parsed = parse_answer(answer, DOC, max_quotes=3)
    assert parsed.evidence["verification"] == ["$\\frac{a}{b}$ holds"] and parsed.quotes == {"kept": 1}


def test_at_most_max_quotes_distinct_quotes_per_behavior():
    quotes = ["We want x", "First we find the speed", "then the time", "which matches"]
    parsed = parse_answer(_answer(backward_chaining=(4, quotes)), DOC, max_quotes=2)
    assert parsed.evidence["backward_chaining"] == quotes[:2] and parsed.quotes == {"kept": 2, "beyond_limit": 2}


@given(st.text(min_size=1, max_size=200), st.lists(st.one_of(st.text(max_size=40), st.integers()), max_size=6),
       st.integers(0, 3), st.integers(1, 3))
def test_kept_quotes_always_occur_in_the_document_and_every_quote_is_accounted_for(doc, quotes, count, max_quotes):
    parsed = parse_answer(_answer(verification=(count, quotes)), doc, max_quotes)
    assert sum(parsed.quotes.values()) == len(quotes) and set(parsed.quotes) <= set(QUOTE_CHECKS)
    assert len(parsed.evidence["verification"]) == parsed.quotes["kept"] <= max_quotes
    for kept in parsed.evidence["verification"]:
        assert kept in doc and len(kept.strip()) >= 5


@given(st.lists(st.text(st.characters(categories=("L", "N", "P")), min_size=1, max_size=8), min_size=2, max_size=30),
       st.data())
def test_a_quote_copied_with_other_whitespace_or_case_is_found(words, data):
    doc = "\n".join(" ".join(words[i:i + 5]) for i in range(0, len(words), 5))
    start = data.draw(st.integers(0, len(words) - 2))
    # upper case where it keeps a letter one letter ("ŉ".upper() is two: re's case folding does not map those)
    quote = "  ".join(w.upper() if len(w.upper()) == len(w) else w for w in words[start:start + data.draw(st.integers(2, 6))])
    found = find_quote(quote, doc)
    assert found is not None and found in doc and found.split() and len(found.split()) == len(quote.split())


# ---------------------------------------------------------------------------------------------
# The generic inference settings


def test_endpoint_urls_are_taken_with_or_without_v1():
    from curate.inference import endpoint_base

    for url in ("http://h:8000", "http://h:8000/", "http://h:8000/v1", "http://h:8000/v1/", " http://h:8000/v1 "):
        assert endpoint_base(url) == "http://h:8000"
    assert endpoint_base("https://api.example.org/llm/v1") == "https://api.example.org/llm"


def test_every_request_names_its_sampling_parameters_in_the_servers_own_words():
    from curate.config import LabelConfig
    from curate.inference import sampling_params, server_args

    vllm = LabelConfig(model="m", server_type="vllm", server_args={"--enforce-eager": True})
    assert sampling_params(vllm) | {"repetition_penalty": 1.0, "top_k": -1, "top_p": 1.0} == sampling_params(vllm)
    assert server_args(vllm) == {"enforce-eager": True, "structured-outputs-config": '{"disable_any_whitespace": true}'}
    own = LabelConfig(model="m", server_type="vllm", server_args='{"structured-outputs-config": "{}"}')
    assert server_args(own) == {"structured-outputs-config": "{}"}  # the user's own setting wins
    llama = LabelConfig(model="m", endpoint_url="http://127.0.0.1:1/v1", repetition_penalty=1.1)
    assert sampling_params(llama)["repeat_penalty"] == 1.1 and "repetition_penalty" not in sampling_params(llama)
    assert sampling_params(llama)["top_k"] == 0 and server_args(llama) == {}


def test_bad_label_settings_are_refused_in_one_line():
    from pydantic import ValidationError

    from curate.config import LabelConfig

    for bad in ({"endpoint_url": "127.0.0.1:8080"}, {"endpoint_url": "http://h", "server_args": "{not json"}):
        with pytest.raises(ValidationError, match="endpoint_url must be an http|server_args must be a JSON object"):
            LabelConfig(model="m", **bad)


def test_the_vllm_command_is_the_one_datatrove_builds(monkeypatch, tmp_path):
    """curate starts `vllm serve` with its own copy of datatrove's command line (so that --dry-run prints what
    runs): it must stay the same as datatrove's."""
    import asyncio
    import sys

    from datatrove.pipeline.inference.servers import VLLMServer

    from curate.config import LabelConfig
    from curate.inference import inference_config, vllm_command
    from tests.helpers import REPO

    monkeypatch.syspath_prepend(str(REPO / "tests" / "bin" / "pyshim"))  # datatrove checks that vllm is importable
    sys.modules.pop("vllm", None)
    config = inference_config(LabelConfig(model="Qwen/Qwen2.5-32B-Instruct", server_type="vllm", tp=2,
                                          server_args={"gpu-memory-utilization": 0.85, "enforce-eager": True,
                                                       "enable-prefix-caching": False}), tmp_path)
    seen = {}

    async def capture(*cmd, **_kwargs):
        seen["cmd"] = list(cmd)

    monkeypatch.setattr(asyncio, "create_subprocess_exec", capture)

    async def start():
        server = VLLMServer(config, rank=0)
        server._port = 4321
        await server._start_vllm_task()

    asyncio.run(start())
    assert seen["cmd"] == vllm_command(config, 4321)
    assert "--tensor-parallel-size=2" in seen["cmd"] and "--no-enable-prefix-caching" in seen["cmd"]


def test_the_compile_lock_is_node_local_unless_the_user_sets_it(monkeypatch, tmp_path):
    import tempfile

    from curate.inference import compile_lock_dir

    monkeypatch.delenv("VLLM_COMPILE_LOCK_DIR", raising=False)
    (tmp_path / "node").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "node"))
    tempfile.tempdir = None  # re-read TMPDIR
    try:
        assert compile_lock_dir().parent == tmp_path / "node"
    finally:
        tempfile.tempdir = None
    monkeypatch.setenv("VLLM_COMPILE_LOCK_DIR", str(tmp_path / "shared"))
    assert compile_lock_dir() == tmp_path / "shared"
