"""The lesson pattern (``--lesson-pattern``): a regular expression every lesson must match, sent as a
JSON-schema ``pattern`` on the lesson text of the extract and update schemas (llama.cpp turns it into the
grammar of the learner's lesson), and checked by the lesson gate for any model ("off pattern"). Also: the
schema offers only ADD and NONE while the library is empty, and the main job's default pattern."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import extract_reply, tool_reply
from tests.unit.test_lesson_gate import ARITHMETIC, GOOD, TEMPLATES
from tests.unit.test_nodes import Fake, run_step, seeded_library
from tfgrpo import cli
from tfgrpo.errors import TfgrpoError
from tfgrpo.nodes.extract import (
    ALL_OPS,
    EMPTY_LIBRARY_OPS,
    ProposedOperation,
    extraction_schema,
    offered_ops,
    shaped_operation,
)
from tfgrpo.nodes.lesson_gate import OFF_PATTERN, lesson_flaw
from tfgrpo.nodes.update_library import LibraryUpdate, update_schema
from tfgrpo.state.library import empty_library

PATTERN = cli.MAIN_JOB_LESSON_PATTERN
OFF_PATTERN_LESSON = "Subtracting a negative number is an addition: turn a - -b into a + b first."
ON_PATTERN = "When a minus sign comes before a negative term, add its size instead of subtracting it."
# what the main job's 0.5B learner wrote before the pattern (all rejected, E stayed empty)
MEASURED_JUNK = [
    "subtracting -1 from 2",
    "Step-by-step calculation: 2 + (-8) = -6; Step-by-step calculation: 5 - 3 = 2",
    "subtract 3 from 5",
    # and with a first pattern whose character classes allowed spaces: runs of them
    "When subtracting                               , the kind of mistake was an operation out of order.",
    "When subtracting (- , subtracting   (-                     .",
]


def operation_schema(schema: dict[str, Any]) -> dict[str, Any]:
    (operation,) = [d for d in schema["$defs"].values() if "content" in d.get("properties", {})]
    return operation["properties"]


def sent_operation_schema(body: dict) -> dict[str, Any]:
    # langchain-openai sends the tool's schema with its definitions inlined
    (tool,) = body["tools"]
    return tool["function"]["parameters"]["properties"]["operations"]["items"]["properties"]


def test_the_schemas_carry_the_pattern_only_when_set() -> None:
    for plain in (extraction_schema(2), LibraryUpdate, update_schema()):
        props = operation_schema(plain.model_json_schema())
        assert "pattern" not in props["content"] and props["op"]["enum"] == list(ALL_OPS)
    assert update_schema() is LibraryUpdate
    assert shaped_operation(ProposedOperation) is ProposedOperation
    for shaped in (extraction_schema(2, PATTERN), update_schema(PATTERN)):
        props = operation_schema(shaped.model_json_schema())
        assert props["content"]["pattern"] == PATTERN and props["op"]["enum"] == list(ALL_OPS)
        assert shaped.__name__ in ("ExtractedExperiences", "LibraryUpdate")  # the same tool name
    assert "sources" in operation_schema(update_schema(PATTERN).model_json_schema())


def test_an_empty_library_is_offered_only_add_and_none() -> None:
    assert offered_ops(None) == offered_ops(empty_library()) == EMPTY_LIBRARY_OPS == ("ADD", "NONE")
    assert offered_ops(seeded_library()) == ALL_OPS
    schema = extraction_schema(2, "", EMPTY_LIBRARY_OPS)
    assert operation_schema(schema.model_json_schema())["op"]["enum"] == ["ADD", "NONE"]
    # validation stays the base class's: a NONE with empty content, and a DELETE from a model that ignores
    # the schema (apply_operations rejects its unknown id), both still parse
    parsed = schema.model_validate(
        {"analysis": "a", "operations": [{"op": "NONE", "content": ""}, {"op": "DELETE", "id": "G9"}]}
    )
    assert [op.op for op in parsed.operations] == ["NONE", "DELETE"]
    assert re.search(PATTERN, "")  # NONE's empty content is on pattern too


def test_a_step_sends_the_pattern_and_the_ops_the_library_can_take() -> None:
    fake = Fake(extract=extract_reply([{"op": "ADD", "content": ON_PATTERN}]))
    out = run_step(fake, lesson_pattern=PATTERN)
    assert [i["text"] for i in out["library"]["items"]] == [ON_PATTERN]
    for role in ("extract", "update"):
        props = sent_operation_schema(fake.bodies(role)[0])
        assert props["content"]["pattern"] == PATTERN and props["op"]["enum"] == ["ADD", "NONE"]
    fake = Fake(extract=extract_reply([{"op": "NONE", "content": ""}]))
    run_step(fake, library=seeded_library())
    props = sent_operation_schema(fake.bodies("extract")[0])
    assert "pattern" not in props["content"] and props["op"]["enum"] == list(ALL_OPS)


def test_extract_ops_narrow_the_extract_schema_only() -> None:
    """``--extract-ops ADD,UPDATE`` (the main job's): no NONE in the extract schema, so every kept group
    proposes a lesson; the update step may still answer NONE, and a model that ignores the schema and
    answers NONE is parsed as before (nothing dropped)."""
    assert offered_ops(None, "ADD,UPDATE") == ("ADD",)
    assert offered_ops(seeded_library(), "add, update") == ("ADD", "UPDATE")
    assert offered_ops(None, "DELETE") == EMPTY_LIBRARY_OPS  # nothing left: the library's own choice
    fake = Fake(extract=extract_reply([{"op": "NONE", "content": ""}]))
    out = run_step(fake, extract_ops="ADD,UPDATE")
    assert sent_operation_schema(fake.bodies("extract")[0])["op"]["enum"] == ["ADD"]
    assert out["report"]["dropped"] == {} and out["library"]["items"] == []
    fake = Fake(extract=extract_reply([{"op": "ADD", "content": ON_PATTERN}]))
    run_step(fake, library=seeded_library(), extract_ops="ADD,UPDATE")
    assert sent_operation_schema(fake.bodies("extract")[0])["op"]["enum"] == ["ADD", "UPDATE"]
    assert sent_operation_schema(fake.bodies("update")[0])["op"]["enum"] == list(ALL_OPS)


def test_off_pattern_lessons_are_rejected_and_counted() -> None:
    # a good lesson by every other rule, but not in the run's shape (a model that ignored the schema)
    assert lesson_flaw(OFF_PATTERN_LESSON, ARITHMETIC, TEMPLATES) is None
    flaw = lesson_flaw(OFF_PATTERN_LESSON, ARITHMETIC, TEMPLATES, PATTERN)
    assert flaw is not None and flaw[0] == OFF_PATTERN and PATTERN in flaw[1]
    assert lesson_flaw(ON_PATTERN, ARITHMETIC, TEMPLATES, PATTERN) is None
    both = [{"op": "ADD", "content": OFF_PATTERN_LESSON}, {"op": "ADD", "content": ON_PATTERN}]
    # sent back once, the learner withdraws it
    fake = Fake(extract=extract_reply(both), retry=lambda body: tool_reply("RevisedLesson", {"content": ""}))
    out = run_step(fake, lesson_pattern=PATTERN, experiences_per_group=2)
    assert out["report"]["lessons_rejected"] == {OFF_PATTERN: 2}  # one per group
    assert out["report"]["lessons_retried"] == {OFF_PATTERN: 2}
    assert [i["text"] for i in out["library"]["items"]] == [ON_PATTERN]
    # the retry's schema carries the pattern too (a grammar-constrained server writes that shape)
    retry = fake.bodies("retry")[0]
    (tool,) = retry["tools"]
    assert tool["function"]["parameters"]["properties"]["content"]["pattern"] == PATTERN
    # the same lessons without a pattern: both kept
    both = [{"op": "ADD", "content": OFF_PATTERN_LESSON}, {"op": "ADD", "content": ON_PATTERN}]
    fake = Fake(extract=extract_reply(both))
    out = run_step(fake, experiences_per_group=2)
    assert out["report"].get("lessons_rejected", {}) == {}
    assert len(out["library"]["items"]) == 2


def test_the_main_job_sets_the_lesson_pattern(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TFGRPO_MODEL", raising=False)
    args = cli.parse_args(["learn"])
    assert cli.apply_main_job_defaults(args)
    main = cli.context_from_args(args, preset="embedded")
    assert (main.lesson_pattern, main.extract_ops) == (PATTERN, cli.MAIN_JOB_EXTRACT_OPS)
    assert cli.MAIN_JOB_EXTRACT_OPS == "ADD,UPDATE"
    args = cli.parse_args(["learn", "--lesson-pattern", ""])
    cli.apply_main_job_defaults(args)
    assert cli.context_from_args(args, preset="embedded").lesson_pattern == ""
    args = cli.parse_args(["learn", "--dataset", "rg:basic_arithmetic:size=4"])
    assert not cli.apply_main_job_defaults(args)
    other = cli.context_from_args(args, preset="embedded")
    assert (other.lesson_pattern, other.extract_ops) == ("", "")
    args = cli.parse_args(["learn", "--extract-ops", "add,none", "--dataset", "rg:basic_arithmetic:size=4"])
    assert cli.context_from_args(args, preset="embedded").extract_ops == "ADD,NONE"
    args = cli.parse_args(["learn", "--extract-ops", "ADD,KEEP", "--dataset", "rg:basic_arithmetic:size=4"])
    with pytest.raises(TfgrpoError, match="--extract-ops: unknown operation 'KEEP'"):
        cli.context_from_args(args, preset="embedded")
    # the pattern's shape: trigger and action, no digits, within the word cap, or empty
    assert all(not re.search(PATTERN, junk) for junk in MEASURED_JUNK)
    assert re.search(PATTERN, GOOD)  # the gate's model lesson has this shape
    examples = re.findall(r'^"(.+)"$', Path(cli.MAIN_JOB_PROMPTS, "extract_system.txt").read_text(), re.M)
    assert examples and all(re.search(PATTERN, example) for example in examples)
    assert not re.search(PATTERN, "When a sum has 3 terms, add them from left to right first.")


@pytest.mark.parametrize(
    ("pattern", "why"),
    [("^(When [a-z$", "not a regular expression"), ("When .*", "^ and end with $"), ("^When .+$", "empty")],
)
def test_a_bad_lesson_pattern_is_one_clear_line(pattern: str, why: str) -> None:
    args = cli.parse_args(["learn", "--lesson-pattern", pattern, "--dataset", "rg:basic_arithmetic:size=4"])
    with pytest.raises(TfgrpoError, match=re.escape(why)) as info:
        cli.context_from_args(args, preset="embedded")
    assert "\n" not in str(info.value) and str(info.value).startswith("--lesson-pattern")


def test_llama_cpp_turns_the_pattern_into_the_lessons_grammar() -> None:
    grammar = pytest.importorskip("llama_cpp.llama_grammar")
    schema = extraction_schema(2, PATTERN, EMPTY_LIBRARY_OPS).model_json_schema()
    gbnf = grammar.json_schema_to_gbnf(json.dumps(schema))
    rules = dict(line.split(" ::= ", 1) for line in gbnf.splitlines() if " ::= " in line)
    assert rules["ProposedOperation-op"] == '"\\"ADD\\"" | "\\"NONE\\""'
    assert rules["ProposedOperation-content"].startswith('"\\"" ("When" " " [a-z')
    assert "0-9" not in gbnf.split("ProposedOperation-content ::=")[1].split("\n")[0]
    grammar.LlamaGrammar.from_string(gbnf, verbose=False)  # llama.cpp parses it
