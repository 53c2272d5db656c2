"""The labeler's prompts, document cutting and tolerant answer parser (no server needed)."""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given, strategies as st

from curate.label import cut_to_tokens
from curate.prompts import (
    COUNTS_INSTRUCTION,
    build_requests,
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
    [(behavior, payload)] = build_requests("DOC TEXT", "counts", "json_object")
    assert behavior is None
    assert [m["role"] for m in payload["messages"]] == ["system", "user"]
    assert payload["messages"][0]["content"] == COUNTS_INSTRUCTION and payload["messages"][-1]["content"] == "DOC TEXT"
    assert payload["response_format"]["type"] == "json_object"
    assert set(payload["response_format"]["schema"]["required"]) == set(BEHAVIORS)


def test_paper_layout_asks_once_per_behavior_with_count_tags():
    requests = build_requests("DOC TEXT", "paper")
    assert [b for b, _ in requests] == list(BEHAVIORS)
    for behavior, payload in requests:
        assert payload["messages"][-1]["content"] == "DOC TEXT"
        assert behavior.replace("_", " ") in payload["messages"][0]["content"]
        assert "<count>" in payload["messages"][0]["content"] and "response_format" not in payload


def test_structured_output_forms():
    assert response_format("json_schema")["json_schema"]["schema"]["required"] == list(BEHAVIORS)
    assert response_format("json_object")["type"] == "json_object"
    assert response_format("none") is None


def test_prompt_versions_differ_per_layout_and_are_stable():
    assert prompt_version("counts") == prompt_version("counts") != prompt_version("paper")
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
