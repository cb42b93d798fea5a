"""The lesson gate inside update-library: rejections counted by reason in the step's report, the one
retry with the gate's reason, the consolidation's output gated too, the learner's real instructions (its
prompts and schema descriptions, ``--prompts`` included) as what a lesson must not copy. Also: the
schema's length bound, and the main job's example lessons. The gate's pure checks:
``test_lesson_gate.py``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.helpers import extract_reply, tool_reply
from tests.unit.test_lesson_gate import ARITHMETIC, GENERAL_LESSONS, GOOD
from tests.unit.test_nodes import BATCH, Fake, run_step
from tfgrpo.cli import MAIN_JOB_PROMPTS
from tfgrpo.data import load_dataset
from tfgrpo.learner import gate_summary
from tfgrpo.nodes.extract import LESSON_MAX_CHARS, WORD_CAP, extraction_schema
from tfgrpo.nodes.lesson_gate import (
    ANSWER_LEAK,
    NOT_PROSE,
    OVER_CAP,
    PROBLEM_SPECIFIC,
    TEMPLATE_COPY,
    leak_of,
    lesson_flaw,
    retry_hint,
)
from tfgrpo.nodes.update_library import LibraryUpdate, learner_templates
from tfgrpo.runs.rundir import RunDir, totals
from tfgrpo.state.library import Operation
from tfgrpo.state.types import Query

TEMPLATES = learner_templates("", 2)
MAIN_JOB_TEMPLATES = learner_templates(MAIN_JOB_PROMPTS, 2)


def real_reason_of(content: str, templates: set | None = None) -> str | None:
    flaw = lesson_flaw(content, ARITHMETIC, TEMPLATES if templates is None else templates)
    return None if flaw is None else flaw[0]


def test_a_good_lesson_copies_none_of_the_learners_instructions() -> None:
    assert lesson_flaw(GOOD, ARITHMETIC, TEMPLATES) is None
    assert lesson_flaw(GOOD, ARITHMETIC, MAIN_JOB_TEMPLATES) is None


def test_a_copy_of_the_learner_instructions_is_rejected() -> None:
    # the update prompt's lesson shape, pasted as a lesson (the main job stored its schema's twin)
    copied = "When it applies (a feature of the problem), what to do, the pitfall seen."
    assert real_reason_of(copied) == TEMPLATE_COPY
    fragment = "When calculating (-9 / 9), what to do; the pitfall seen. Empty for DELETE/NONE."
    assert real_reason_of(fragment) == TEMPLATE_COPY
    # the schema's own field descriptions count as instructions
    described = "ADD/UPDATE: the lesson text (max 35 words). DELETE/NONE: empty."
    assert real_reason_of(described) == TEMPLATE_COPY
    # and a main-job prompt example repeated is not a lesson learned
    example = re.findall(r'^"(.+)"$', Path(MAIN_JOB_PROMPTS, "extract_system.txt").read_text(), re.M)[0]
    assert real_reason_of(example, templates=MAIN_JOB_TEMPLATES) == TEMPLATE_COPY


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
    totals_section = md.split("## Totals", 1)[1].split("\n## ", 1)[0]
    assert "{" not in totals_section  # tables, never a Python dict (by_role was one)
    assert "### lessons_rejected\n\n| key | count |\n|---|---|\n| not prose | 1 |" in totals_section
    assert "### by_role\n\n| role | calls |" in totals_section
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


def test_in_a_step_each_groups_proposal_is_gated_by_its_own_question() -> None:
    # both groups propose the same lesson naming 1000; only q1's question quotes 1000
    batch: list[Query] = [
        {"id": "q1", "question": "Calculate 1000 - 7.", "answer": "993"},
        {"id": "q2", "question": "Calculate 2 + 3.", "answer": "5"},
    ]
    lesson = GENERAL_LESSONS[0][0]  # names 1000
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


# ------------------------------------------------- the gate's fixture: what it must pass, what it must stop
# Against the learner's real instructions (default and main-job prompts, schema descriptions). A probe of
# the study (issue 27) found 4 of 12 correct convention lessons rejected for words like "reward", "final
# response" or the extract prompt's own "the pitfall the attempts fell into".
DURATION: Query = {
    "id": "d1",
    "question": "A meeting lasts 147 minutes. How long is it in hours?",
    "answer": "2.45",
}
CONVENTION_LESSONS = [
    "When a duration in minutes is asked in hours, divide by sixty and give one decimal number of hours, "
    "never hours and minutes.",
    "When the question asks for hours, the reward reads only the answer line: write the decimal hours "
    "there, without a unit or minutes.",
    "When a time must be reported in hours, put the final response on one answer line as a decimal; "
    "answers in hours and minutes scored zero.",
    "When converting minutes to hours, avoid the pitfall the attempts fell into: writing hours and minutes "
    "instead of one decimal number of hours.",
    "When the reply risks running out of length, write the answer line first and the working after it; "
    "cut-off replies never reached their answer.",
    "When a fraction must be simplified, divide both parts by their greatest common divisor and write it "
    "as a over b in lowest terms.",
    "When an answer is a date, write it as year, month, day with two-digit month and day; other orders "
    "were read as wrong answers.",
]
LEAKS_AND_COPIES = [
    ("When a meeting is long, its length in hours is 2.45, not hours and minutes.", ANSWER_LEAK),
    ("Remember: a meeting lasts 147 minutes. How long is it in hours? Divide.", ANSWER_LEAK),
    ("When 147 minutes are converted, divide by sixty to get the hours right.", PROBLEM_SPECIFIC),
    ("This attempt divided by sixty, but the others wrote hours and minutes instead.", PROBLEM_SPECIFIC),
    ("Attempt 3 gave a decimal number of hours while the others gave hours and minutes.", PROBLEM_SPECIFIC),
    ("When it applies (a feature of the problem), what to do, the pitfall seen.", TEMPLATE_COPY),
    ("ADD/UPDATE: the lesson text (max 35 words). DELETE/NONE: empty.", TEMPLATE_COPY),
    ("When a rate is given per hour but the time in minutes, convert the minutes to hours.", TEMPLATE_COPY),
]


@pytest.mark.parametrize("templates", [TEMPLATES, MAIN_JOB_TEMPLATES], ids=["default", "main-job"])
@pytest.mark.parametrize(
    "lesson", [*CONVENTION_LESSONS, *(lesson for lesson, _ in GENERAL_LESSONS)], ids=lambda s: s[:40]
)
def test_correct_convention_and_general_lessons_pass_the_gate(lesson: str, templates: set) -> None:
    assert len(lesson.split()) <= WORD_CAP
    assert lesson_flaw(lesson, [DURATION], templates) is None


@pytest.mark.parametrize(("lesson", "reason"), LEAKS_AND_COPIES, ids=lambda s: str(s)[:40])
def test_leaks_and_copies_are_rejected_by_the_gate(lesson: str, reason: str) -> None:
    flaw = lesson_flaw(lesson, [DURATION], TEMPLATES | MAIN_JOB_TEMPLATES)
    assert flaw is not None and flaw[0] == reason, flaw


@pytest.mark.parametrize(
    ("rejected", "rewrite"),
    [
        (  # not prose -> "write it as a sentence in words"
            "hours = minutes / 60",
            "When a duration must be given in hours, write it as one decimal number of hours, not hours and "
            "minutes.",
        ),
        (  # copies the instructions -> "say it in your own words"
            "When it applies (a feature of the problem), what to do, the pitfall seen.",
            "When a time is asked in hours, say it in hours as one decimal number, not in hours and minutes.",
        ),
        (  # answer leak -> "leave the answer and the question's wording out"
            "When a meeting is long, its length in hours is 2.45, not hours and minutes.",
            "When the question asks for hours, leave the answer as one decimal number of hours, not hours "
            "and minutes.",
        ),
    ],
    ids=["not-prose", "template-copy", "answer-leak"],
)
def test_a_rewrite_that_obeys_the_retry_hint_is_not_its_echo(rejected: str, rewrite: str) -> None:
    op: Operation = {"op": "ADD", "content": rejected, "sources": ["d1"]}
    flaw = lesson_flaw(rejected, [DURATION], TEMPLATES)
    assert flaw is not None
    hint = retry_hint(flaw[0], flaw[1], op)
    assert lesson_flaw(rewrite, [DURATION], TEMPLATES, hint=hint) is None, hint


# ------------------------------------------- a gate-passing ADD is merged or kept, never silently dropped
ADDITION = (
    "When adding two numbers, line up their units digits first; misaligned columns gave sums off by a digit."
)
SUBTRACTION = (
    "When subtracting, take the smaller number from the larger and then set the sign; reversed order "
    "flipped it."
)


def lesson_per_question(body: dict) -> dict:
    lesson = ADDITION if "Calculate 2 + 3." in str(body["messages"]) else SUBTRACTION
    return tool_reply(
        "ExtractedExperiences", {"analysis": "a", "operations": [{"op": "ADD", "content": lesson}]}
    )


@pytest.mark.parametrize(
    "final",
    [
        [{"op": "ADD", "content": ADDITION, "sources": ["q1"]}],  # q2's only lesson left out
        [{"op": "NONE", "content": "", "sources": []}],  # both left out ("specific to one problem")
    ],
    ids=["one-dropped", "none"],
)
def test_a_consolidation_that_drops_a_groups_only_lesson_keeps_it(final: list[dict]) -> None:
    fake = Fake(
        extract=lesson_per_question, update=lambda body: tool_reply("LibraryUpdate", {"operations": final})
    )
    out = run_step(fake)
    texts = [item["text"] for item in out["library"]["items"]]
    assert sorted(texts) == sorted([ADDITION, SUBTRACTION])
    report = out["report"]
    assert report["lessons_kept"] == len([ADDITION, SUBTRACTION]) - sum(op["op"] == "ADD" for op in final)
    kept = [op for op in report["applied"] if op["content"] == SUBTRACTION]
    assert kept and kept[0]["reason"].startswith("kept as proposed")


def test_a_consolidation_that_merges_two_groups_lessons_keeps_only_the_merge() -> None:
    merged = "When adding or subtracting, align the units digits and set the sign last; slips came from both."
    final = [{"op": "ADD", "content": merged, "sources": ["q1", "q2"]}]
    fake = Fake(
        extract=lesson_per_question, update=lambda body: tool_reply("LibraryUpdate", {"operations": final})
    )
    out = run_step(fake)
    assert [item["text"] for item in out["library"]["items"]] == [merged]
    assert out["report"]["lessons_kept"] == 0


def test_the_text_of_every_proposed_and_rejected_lesson_is_in_the_report(tmp_path: Path) -> None:
    junk = "81 + (-78) = 3"

    def retry(body: dict) -> dict:  # the over-long lesson is rewritten; the junk is withdrawn
        return tool_reply("RevisedLesson", {"content": SHORT if "shorten it" in str(body) else ""})

    proposals = [{"op": "ADD", "content": c} for c in (GOOD, junk, LONG)]
    fake = Fake(extract=extract_reply(proposals), retry=retry)
    out = run_step(fake, batch=BATCH[:1], experiences_per_group=3)
    report = out["report"]
    assert [op["content"] for op in report["proposed"]] == [GOOD, junk, LONG]
    assert [op["content"] for op in report["rewrites"]] == [SHORT]
    run = RunDir(tmp_path)
    run.create()
    run.write_outputs({"library": out["library"]}, [report])
    saved = json.loads((tmp_path / "report.json").read_text())["steps"][0]
    assert [op["content"] for op in saved["proposed"]] == [GOOD, junk, LONG]
    md = (tmp_path / "report.md").read_text()
    proposed = md.split("## Proposed operations", 1)[1].split("##", 1)[0]
    assert all(f'- step 0: ADD "{text}"' in proposed for text in (GOOD, junk, LONG))
    assert f'- step 0: ADD "{SHORT}"' in md.split("## Rewrites that passed the lesson gate", 1)[1]
    rejected = md.split("## Rejected operations", 1)[1]
    assert f'- step 0: ADD "{junk}" — proposal: not prose' in rejected


def test_the_extract_prompt_states_the_gates_rules_with_its_thresholds() -> None:
    from tfgrpo.nodes import lesson_gate
    from tfgrpo.nodes.extract import SYSTEM_PROMPT

    rules = SYSTEM_PROMPT.split("Every lesson is checked before it is stored, and rejected when it:", 1)[1]
    assert f"{lesson_gate.COPIED_WORDS} or more consecutive words of its question" in rules  # answer leak
    assert "quotes the numbers of this problem (one of two or more digits, or two different numbers)" in rules
    assert (lesson_gate.SPECIFIC_DIGITS, lesson_gate.SPECIFIC_NUMBERS) == (2, 2)
    assert '"this attempt", "attempt 3", "the first model turn"' in rules  # narration
    assert f"copies {lesson_gate.TEMPLATE_WORDS} or more consecutive words of these instructions" in rules
    assert f"has fewer than {lesson_gate.MIN_PROSE_WORDS} words" in rules
    assert "is longer than {word_cap} words" in rules
    # the main job's shorter prompt states them too
    main_job = Path(MAIN_JOB_PROMPTS, "extract_system.txt").read_text()
    assert (
        "A lesson is rejected when it contains the answer, copies the question or these instructions"
        in main_job
    )
