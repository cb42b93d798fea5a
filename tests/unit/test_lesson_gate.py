"""The lesson gate: every ADD/UPDATE, from any model, is checked mechanically before it enters E (word cap,
prose, no copied instructions, not tied to one problem, no answer leak) and each rejection is counted by
reason in the run report. Also: the schema's length bound, and the main job's example lessons."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.unit.test_nodes import BATCH, Fake, extract_reply, run_step, tool_reply
from tfgrpo.cli import MAIN_JOB_PROMPTS
from tfgrpo.data import load_dataset
from tfgrpo.learner import gate_summary
from tfgrpo.nodes.extract import LESSON_MAX_CHARS, WORD_CAP, extraction_schema
from tfgrpo.nodes.update_library import (
    ANSWER_LEAK,
    NOT_PROSE,
    OVER_CAP,
    PROBLEM_SPECIFIC,
    TEMPLATE_COPY,
    LibraryUpdate,
    leak_of,
    learner_templates,
    lesson_flaw,
)
from tfgrpo.runs.rundir import RunDir, totals
from tfgrpo.state.types import Query

GOOD = (
    "When subtracting a negative number, turn it into an addition first; sign slips came from treating "
    "a - -b as a - b."
)
TEMPLATES = learner_templates("", 2)
MAIN_JOB_TEMPLATES = learner_templates(MAIN_JOB_PROMPTS, 2)
ARITHMETIC: list[Query] = [
    {"id": "q1", "question": "Calculate -( 20 + 67 + -59 ).", "answer": "-28"},
    {"id": "q2", "question": "Calculate -2 - -1.", "answer": "-1"},
]


def reason_of(content: str, batch: list[Query] = ARITHMETIC, templates: set | None = None) -> str | None:
    flaw = lesson_flaw(content, batch, TEMPLATES if templates is None else templates)
    return None if flaw is None else flaw[0]


def test_a_good_lesson_passes() -> None:
    assert lesson_flaw(GOOD, ARITHMETIC, TEMPLATES) is None
    assert lesson_flaw(GOOD, ARITHMETIC, MAIN_JOB_TEMPLATES) is None
    # one small number of a question is generic, not a quote of the problem
    assert reason_of("When a product has a factor of 1, skip it; keep the sign of the other factor.") is None


def test_over_the_word_cap_is_rejected() -> None:
    # the main job's 0.5B learner wrote 60-word lessons the prompt's cap did not stop
    long = GOOD + " " + " ".join(["Then check the sign of every term once more before adding."] * 2)
    assert len(long.split()) > WORD_CAP
    flaw = lesson_flaw(long, ARITHMETIC, TEMPLATES)
    assert flaw is not None and flaw[0] == OVER_CAP and f"cap {WORD_CAP}" in flaw[1]


def test_a_copy_of_the_learner_instructions_is_rejected() -> None:
    # the update prompt's lesson shape, pasted as a lesson (the main job stored its schema's twin)
    copied = "When it applies (a feature of the problem), what to do, the pitfall seen."
    assert reason_of(copied) == TEMPLATE_COPY
    assert reason_of("When calculating (-9 / 9), what to do; the pitfall seen. Empty for DELETE/NONE.") == (
        TEMPLATE_COPY
    )
    # the schema's own field descriptions count as instructions
    described = "ADD/UPDATE: the lesson text (max 35 words). DELETE/NONE: empty."
    assert reason_of(described) == TEMPLATE_COPY
    # and a main-job prompt example repeated is not a lesson learned
    example = re.findall(r'^"(.+)"$', Path(MAIN_JOB_PROMPTS, "extract_system.txt").read_text(), re.M)[0]
    assert reason_of(example, templates=MAIN_JOB_TEMPLATES) == TEMPLATE_COPY


def test_numbers_and_operators_are_not_a_lesson() -> None:
    assert reason_of("81 + (-78)") == NOT_PROSE
    assert reason_of("Add the terms: 8 + 1 = 9.") == NOT_PROSE  # too few words
    assert reason_of("Sum is 9 * 8 - 7 / 6 + 5 - 4 * 3 then add it up") == NOT_PROSE  # mostly not words


def test_a_lesson_tied_to_one_problem_is_rejected() -> None:
    narrated = (
        "When the first model turn was to subtract -1 from -2, this resulted in the final response of -3. "
        "The reward for this attempt was 0."
    )
    flaw = lesson_flaw(narrated, ARITHMETIC, TEMPLATES)
    assert flaw == (PROBLEM_SPECIFIC, "quotes the numbers of q2 (1, 2)")
    assert reason_of("When a sum starts with a minus, 67 and 59 keep their own signs inside.") == (
        PROBLEM_SPECIFIC
    )
    assert reason_of("When negating brackets, remember that 20 becomes negative too, like the others.") == (
        PROBLEM_SPECIFIC  # one two-digit number of q1
    )
    assert reason_of("The reward for this attempt was low because the sign was lost early on.") == (
        PROBLEM_SPECIFIC  # narrates an attempt, no numbers needed
    )
    # numbers written as words count too: the main job's lesson pattern allows no digits, and the 0.5B
    # learner then stored "When subtracting three from five, which resulted in a digit slip (incorrect)."
    spelled = "When adding twenty and fifty-nine inside brackets, the minus in front flips both."
    assert lesson_flaw(spelled, ARITHMETIC, TEMPLATES) == (
        PROBLEM_SPECIFIC,
        "quotes the numbers of q1 (20, 59)",
    )
    assert reason_of("When negating brackets that hold sixty-seven, every term inside flips its sign.") == (
        PROBLEM_SPECIFIC
    )
    # "one" and "two" are prose here, not q2's numbers
    assert reason_of("When one term is negative, add the other two first and then subtract it.") is None


def test_an_answer_leak_is_still_rejected_by_the_gate() -> None:
    assert reason_of("When negating a sum of three terms the result is -28, keep signs.") == ANSWER_LEAK


def test_rejections_are_counted_by_reason_in_the_step_report() -> None:
    junk = [
        " ".join([GOOD] * 2),  # over the cap
        "When it applies (a feature of the problem), what to do, the pitfall.",  # the update prompt
        "81 + (-78) = 3",  # not prose
        # names the numbers of q1 and of q2: each group's proposal quotes its own problem
        "When adding 2 and 3 or taking 4 from 7, the result is easy to get right, so keep going.",
    ]
    ops = [{"op": "ADD", "content": c} for c in [*junk, GOOD]]
    # the learner withdraws each one it is sent back (an empty rewrite)
    fake = Fake(extract=extract_reply(ops), retry=lambda body: tool_reply("RevisedLesson", {"content": ""}))
    out = run_step(fake, experiences_per_group=5)
    report = out["report"]
    # two groups proposed the same five: the gate stops eight before the consolidation call, each goes
    # back to the learner once, and is then rejected for good
    assert report["lessons_rejected"] == {OVER_CAP: 2, TEMPLATE_COPY: 2, NOT_PROSE: 2, PROBLEM_SPECIFIC: 2}
    assert report["lessons_retried"] == report["lessons_rejected"]
    assert fake.count("retry") == 8
    assert [i["text"] for i in out["library"]["items"]] == [GOOD]
    (update,) = fake.bodies("update")
    sent = " ".join(str(m.get("content")) for m in update["messages"])
    assert "81 + (-78)" not in sent and GOOD in sent
    assert all(r["why"].startswith("proposal: ") for r in report["rejected"])
    history = [report, report]
    assert gate_summary(history) == (
        "lessons rejected by the lesson gate: over word cap 4, template copy 4, not prose 4, "
        "problem-specific 4 (16 sent back once with the reason; reasons in report.md)"
    )
    assert totals(history)["lessons_rejected"] == {
        OVER_CAP: 4,
        TEMPLATE_COPY: 4,
        NOT_PROSE: 4,
        PROBLEM_SPECIFIC: 4,
    }


def test_the_consolidations_output_passes_the_same_gate(tmp_path: Path) -> None:
    def consolidate(body: dict) -> dict:
        final = [{"op": "ADD", "content": "5 + 6 = 11"}, {"op": "ADD", "content": GOOD}]
        return tool_reply("LibraryUpdate", {"operations": final})

    fake = Fake(extract=extract_reply([{"op": "ADD", "content": GOOD}]), update=consolidate)
    out = run_step(fake, batch=BATCH)
    report = out["report"]
    assert report["lessons_rejected"] == {NOT_PROSE: 1}
    assert [i["text"] for i in out["library"]["items"]] == [GOOD]
    run = RunDir(tmp_path)
    run.create()
    run.write_outputs({"library": out["library"]}, [report])
    md = (tmp_path / "report.md").read_text()
    assert "- lessons_rejected: {'not prose': 1}" in md
    assert "not prose: 0 words among 5 tokens" in md


def test_nothing_left_after_the_gate_makes_no_consolidation_call() -> None:
    fake = Fake(extract=extract_reply([{"op": "ADD", "content": "81 + (-78)"}]))
    out = run_step(fake)
    assert fake.count("update") == 0
    assert out["report"]["lessons_rejected"] == {NOT_PROSE: 2}
    assert out["library"]["items"] == []


def test_the_schemas_bound_a_lessons_length() -> None:
    for schema in (extraction_schema(2).model_json_schema(), LibraryUpdate.model_json_schema()):
        content = [d for d in schema["$defs"].values() if "content" in d.get("properties", {})]
        assert content and all(d["properties"]["content"]["maxLength"] == LESSON_MAX_CHARS for d in content)
    # within the bound a lesson of WORD_CAP average words fits
    assert len(GOOD) / len(GOOD.split()) * WORD_CAP < LESSON_MAX_CHARS


def test_llama_cpp_grammar_honours_max_length() -> None:
    grammar = pytest.importorskip("llama_cpp.llama_grammar")
    import json

    gbnf = grammar.json_schema_to_gbnf(json.dumps(extraction_schema(2).model_json_schema()))
    # a bounded repetition of characters: LESSON_MAX_CHARS nested optional chars, not an open "char*"
    content_rule = [line for line in gbnf.splitlines() if line.startswith("ProposedOperation-content ")]
    assert content_rule and content_rule[0].count("(char") == LESSON_MAX_CHARS


def test_main_job_example_lessons_are_good_and_leak_no_answer() -> None:
    text = Path(MAIN_JOB_PROMPTS, "extract_system.txt").read_text()
    examples = re.findall(r'^"(.+)"$', text, re.M)
    assert len(examples) == 2
    training = load_dataset("rg:basic_arithmetic:size=8:seed=1:max_terms=3:max_digits=2")
    heldout = load_dataset("rg:basic_arithmetic:size=50:seed=1000:max_terms=3:max_digits=2")
    for example in examples:
        assert len(example.split()) <= WORD_CAP
        # the copy check against every question and answer the main job sees, and the rest of the gate
        assert leak_of(example, [*training, *heldout]) is None
        assert lesson_flaw(example, [*training, *heldout], TEMPLATES) is None


# General lessons of the kinds the paper's learned libraries hold: a domain constant, a range, small
# cases, a unit. Each names numbers that many questions of a large batch contain; it is tied to a
# problem only when that problem is the one it came from. (lesson, a question quoting its numbers in
# digits: the gate reads a question's digits, a lesson's digits and spelled numbers)
GENERAL_LESSONS = [
    (
        "When only the remainder mod 1000 is asked for, keep the last three digits after every product; "
        "carrying whole products made the work overflow.",
        "Find the remainder when 7^2024 is divided by 1000.",
    ),
    (
        "When digits are summed in base ten, write the number out digit by digit first; skipping a zero "
        "digit gave sums that were one digit short.",
        "What is the sum of the digits of 2^15 written in base 10?",
    ),
    (
        "When a count asks for integers between 10 and 100, settle first whether both ends are included; "
        "off-by-one counts came from the boundaries.",
        "How many integers between 10 and 100 are multiples of 7?",
    ),
    (
        "When a colouring problem allows three or four colours, list the small cases by hand before any "
        "formula; guessed formulas overcounted the symmetric colourings.",
        "In how many ways can a square's corners be coloured with 3 or 4 colours?",
    ),
    (
        "When minutes must become hours, divide by 60 and keep the remainder as minutes; writing the "
        "remainder as a decimal fraction of an hour was wrong.",
        "A film lasts 150 minutes; there are 60 minutes in an hour. How long is it in hours?",
    ),
]
PLAIN = {"id": "plain", "question": "How many edges does a cube have?", "answer": "12"}


@pytest.mark.parametrize(("lesson", "quoting"), GENERAL_LESSONS)
def test_a_general_lesson_is_judged_against_its_own_problem(lesson: str, quoting: str) -> None:
    from tfgrpo.nodes.update_library import screen_lessons

    other = {"id": "other", "question": quoting, "answer": "0"}
    own_quoting = {"id": "own", "question": quoting, "answer": "0"}
    own_plain = {**PLAIN, "id": "own"}
    op = {"op": "ADD", "content": lesson, "sources": ["own"]}
    # the lesson itself is well formed
    assert len(lesson.split()) <= WORD_CAP
    assert lesson_flaw(lesson, [own_plain], TEMPLATES) is None
    # another problem of the batch quotes its numbers: that is no reason to reject it
    kept, rejected, counts = screen_lessons([op], [own_plain, other], TEMPLATES)
    assert (kept, rejected, counts) == ([op], [], {})
    # its own problem quotes them: it is tied to that problem, whatever the rest of the batch holds
    kept, rejected, counts = screen_lessons([op], [own_quoting, {**PLAIN, "id": "other"}], TEMPLATES)
    assert kept == [] and counts == {PROBLEM_SPECIFIC: 1}
    assert "quotes the numbers of own" in rejected[0]["why"]


def test_an_answer_is_a_leak_only_from_its_own_problem() -> None:
    from tfgrpo.nodes.update_library import screen_lessons

    lesson = GENERAL_LESSONS[0][0]  # names 1000
    thousand = {"id": "t", "question": "How many grams are in a kilogram?", "answer": "1000"}
    op = {"op": "ADD", "content": lesson, "sources": ["own"]}
    kept, _, _ = screen_lessons([op], [{**PLAIN, "id": "own"}, thousand], TEMPLATES)
    assert kept == [op]
    _, _, counts = screen_lessons([{**op, "sources": ["t"]}], [{**PLAIN, "id": "own"}, thousand], TEMPLATES)
    assert counts == {ANSWER_LEAK: 1}
    # no known provenance: the whole batch is its problem (the conservative reading)
    _, _, counts = screen_lessons([{**op, "sources": []}], [{**PLAIN, "id": "own"}, thousand], TEMPLATES)
    assert counts == {ANSWER_LEAK: 1}


def test_in_a_step_each_groups_proposal_is_gated_by_its_own_question() -> None:
    # both groups propose the same lesson naming 1000; only q1's question quotes 1000
    batch: list[Query] = [
        {"id": "q1", "question": "Calculate 1000 - 7.", "answer": "993"},
        {"id": "q2", "question": "Calculate 2 + 3.", "answer": "5"},
    ]
    lesson = GENERAL_LESSONS[0][0]
    withdraw = lambda body: tool_reply("RevisedLesson", {"content": ""})  # noqa: E731
    fake = Fake(extract=extract_reply([{"op": "ADD", "content": lesson}]), retry=withdraw)
    out = run_step(fake, batch=batch)
    report = out["report"]
    assert report["lessons_retried"] == report["lessons_rejected"] == {PROBLEM_SPECIFIC: 1}
    (why,) = [r["why"] for r in report["rejected"]]
    assert "quotes the numbers of q1 (1000)" in why
    assert [(i["text"], i["sources"]) for i in out["library"]["items"]] == [(lesson, ["q2"])]


# ------------------------------------------------------------------ one retry with the gate's reason

LONG = (
    "When a sum is preceded by a minus sign and brackets, distribute the minus over every term inside the "
    "brackets before adding anything else; the attempts that dropped the sign of the second or third term "
    "got the wrong total."
)
SHORT = (
    "When a minus precedes a bracketed sum, flip the sign of every term inside; dropped signs gave wrong "
    "totals."
)


def test_an_over_long_lesson_comes_back_shortened_through_the_retry() -> None:
    assert len(LONG.split()) == 40 and len(SHORT.split()) <= WORD_CAP
    fake = Fake(
        extract=extract_reply([{"op": "ADD", "content": LONG}]),
        retry=lambda body: tool_reply("RevisedLesson", {"content": SHORT}),
    )
    out = run_step(fake, batch=BATCH[:1])
    report = out["report"]
    assert [(i["text"], i["sources"]) for i in out["library"]["items"]] == [(SHORT, ["q1"])]
    assert report["lessons_retried"] == {OVER_CAP: 1}
    assert report["lessons_rejected"] == {}
    assert gate_summary([report]) == "lessons sent back once by the lesson gate: 1, all rewritten"
    # the learner is told why, with the lesson and the problem it came from
    (retry,) = fake.bodies("retry")
    sent = "\n".join(str(m.get("content")) for m in retry["messages"])
    assert f"over {WORD_CAP} words (40 words): shorten it" in sent
    assert LONG in sent and BATCH[0]["question"] in sent
    # the consolidation call sees the rewrite, not the original
    (update,) = fake.bodies("update")
    consolidated = " ".join(str(m.get("content")) for m in update["messages"])
    assert SHORT in consolidated and LONG not in consolidated


def test_a_rewrite_that_fails_again_is_rejected_for_good_with_its_new_reason() -> None:
    specific = "When a bracket holds 20 and 67, negate both of them before the sum; sign slips followed."
    batch: list[Query] = [{"id": "q1", "question": "Calculate -( 20 + 67 ).", "answer": "-87"}]
    fake = Fake(
        extract=extract_reply([{"op": "ADD", "content": specific}]),
        retry=lambda body: tool_reply("RevisedLesson", {"content": "81 + (-78) = 3"}),
    )
    out = run_step(fake, batch=batch)
    report = out["report"]
    (retry,) = fake.bodies("retry")
    assert "names numbers of its problem (20, 67)" in str(retry["messages"])
    assert report["lessons_retried"] == {PROBLEM_SPECIFIC: 1}
    assert report["lessons_rejected"] == {NOT_PROSE: 1}
    (why,) = [r["why"] for r in report["rejected"]]
    assert why.startswith("proposal after retry: not prose") and why.endswith(f"(first: {PROBLEM_SPECIFIC})")
    assert out["library"]["items"] == [] and fake.count("update") == 0


def test_an_unparseable_retry_is_dropped_and_the_lesson_rejected_with_its_reason() -> None:
    fake = Fake(
        extract=extract_reply([{"op": "ADD", "content": LONG}]),
        retry=lambda body: {"content": "I cannot do that."},
    )
    out = run_step(fake, batch=BATCH[:1], structured_retries=0)
    report = out["report"]
    assert report["lessons_retried"] == {OVER_CAP: 1}
    assert report["lessons_rejected"] == {OVER_CAP: 1}
    assert report["dropped"].get("retry_lesson") == 1
    assert out["library"]["items"] == []


def test_a_rewrite_that_echoes_the_gates_reason_is_rejected() -> None:
    # seen in the study (durations_hours_asked, 1.5B learner): told "template copy, copies the learner's
    # instructions (...): say it in your own words", it stored "...; pitfall: copied learner's instructions."
    copied = "When converting minutes to hours, what to do, the pitfall seen: divide by sixty."
    echo = "To convert minutes to hours, divide by sixty; pitfall: copied learner's instructions."
    fake = Fake(
        extract=extract_reply([{"op": "ADD", "content": copied}]),
        retry=lambda body: tool_reply("RevisedLesson", {"content": echo}),
    )
    out = run_step(fake, batch=BATCH[:1])
    report = out["report"]
    assert "copies the learner's instructions" in str(fake.bodies("retry")[0]["messages"])
    assert report["lessons_retried"] == {TEMPLATE_COPY: 1}
    assert report["lessons_rejected"] == {TEMPLATE_COPY: 1}
    (why,) = [r["why"] for r in report["rejected"]]
    assert "echoes the gate's reason ('learner s instructions')" in why
    assert out["library"]["items"] == []


def test_a_rewrite_sharing_only_common_words_with_the_reason_passes() -> None:
    # "shorten it" / "the answer" are everyday words: only three consecutive words of the reason count
    fake = Fake(
        extract=extract_reply([{"op": "ADD", "content": LONG}]),
        retry=lambda body: tool_reply("RevisedLesson", {"content": SHORT + " Shorten it."}),
    )
    out = run_step(fake, batch=BATCH[:1])
    assert [i["text"] for i in out["library"]["items"]] == [SHORT + " Shorten it."]
