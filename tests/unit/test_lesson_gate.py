"""The lesson gate (:mod:`tfgrpo.nodes.lesson_gate`), as pure text checks: every ADD/UPDATE is checked
mechanically before it enters E (word cap, prose, no copied instructions, not tied to its own problem, no
answer leak), each rejection with its reason. The gate inside a step (the report's counts, the one retry,
the learner's real instructions): ``test_update_library.py``."""

from __future__ import annotations

from collections import Counter

import pytest

from tfgrpo.nodes.lesson_gate import (
    ANSWER_LEAK,
    NOT_PROSE,
    OVER_CAP,
    PROBLEM_SPECIFIC,
    TEMPLATE_COPY,
    WORD_CAP,
    Screening,
    lesson_flaw,
    screen_lessons,
    templates_of,
)
from tfgrpo.state.types import Query

GOOD = (
    "When subtracting a negative number, turn it into an addition first; sign slips came from treating "
    "a - -b as a - b."
)
# what the learner reads besides the data, in short: a rule of the update prompt and a schema description
INSTRUCTIONS = [
    "Every ADD/UPDATE keeps the lesson shape: when it applies (a feature of the problem), what to do, the "
    "pitfall; at most 35 words.",
    "ADD/UPDATE: the lesson text (max 35 words). DELETE/NONE: empty.",
]
TEMPLATES = templates_of(INSTRUCTIONS)
ARITHMETIC: list[Query] = [
    {"id": "q1", "question": "Calculate -( 20 + 67 + -59 ).", "answer": "-28"},
    {"id": "q2", "question": "Calculate -2 - -1.", "answer": "-1"},
]


def reason_of(content: str, batch: list[Query] = ARITHMETIC, templates: set | None = None) -> str | None:
    flaw = lesson_flaw(content, batch, TEMPLATES if templates is None else templates)
    return None if flaw is None else flaw[0]


def test_a_good_lesson_passes() -> None:
    assert lesson_flaw(GOOD, ARITHMETIC, TEMPLATES) is None
    # one small number of a question is generic, not a quote of the problem
    assert reason_of("When a product has a factor of 1, skip it; keep the sign of the other factor.") is None


def test_over_the_word_cap_is_rejected() -> None:
    # the main job's 0.5B learner wrote 60-word lessons the prompt's cap did not stop
    long = GOOD + " " + " ".join(["Then check the sign of every term once more before adding."] * 2)
    assert len(long.split()) > WORD_CAP
    flaw = lesson_flaw(long, ARITHMETIC, TEMPLATES)
    assert flaw is not None and flaw[0] == OVER_CAP and f"cap {WORD_CAP}" in flaw[1]


def test_a_copy_of_the_instructions_is_rejected() -> None:
    # the update prompt's lesson shape, pasted as a lesson (the main job stored its schema's twin)
    copied = "When it applies (a feature of the problem), what to do, the pitfall seen."
    flaw = lesson_flaw(copied, ARITHMETIC, TEMPLATES)
    assert flaw == (TEMPLATE_COPY, "copies the learner's instructions ('when it applies a feature')")
    assert reason_of("When calculating (-9 / 9), what to do; the pitfall seen. Empty for DELETE/NONE.") == (
        TEMPLATE_COPY
    )
    assert reason_of("ADD/UPDATE: the lesson text (max 35 words). DELETE/NONE: empty.") == TEMPLATE_COPY
    # a short phrase in common with the instructions is a lesson's own words
    lesson = (
        "When a feature of a sum is a leading minus, flip every sign inside; dropped signs gave wrong totals."
    )
    assert reason_of(lesson) is None


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
    other = {"id": "other", "question": quoting, "answer": "0"}
    own_quoting = {"id": "own", "question": quoting, "answer": "0"}
    own_plain = {**PLAIN, "id": "own"}
    op = {"op": "ADD", "content": lesson, "sources": ["own"]}
    # the lesson itself is well formed
    assert len(lesson.split()) <= WORD_CAP
    assert lesson_flaw(lesson, [own_plain], TEMPLATES) is None
    # another problem of the batch quotes its numbers: that is no reason to reject it
    screened = screen_lessons([op], [own_plain, other], TEMPLATES)
    assert screened == Screening(kept=[op], rejected=[], counts=Counter())
    # its own problem quotes them: it is tied to that problem, whatever the rest of the batch holds
    screened = screen_lessons([op], [own_quoting, {**PLAIN, "id": "other"}], TEMPLATES)
    assert screened.kept == [] and screened.counts == {PROBLEM_SPECIFIC: 1}
    assert "quotes the numbers of own" in screened.rejected[0]["why"]


def test_an_answer_is_a_leak_only_from_its_own_problem() -> None:
    lesson = GENERAL_LESSONS[0][0]  # names 1000
    thousand = {"id": "t", "question": "How many grams are in a kilogram?", "answer": "1000"}
    op = {"op": "ADD", "content": lesson, "sources": ["own"]}
    batch = [{**PLAIN, "id": "own"}, thousand]
    assert screen_lessons([op], batch, TEMPLATES).kept == [op]
    assert screen_lessons([{**op, "sources": ["t"]}], batch, TEMPLATES).counts == {ANSWER_LEAK: 1}
    # no known provenance: the whole batch is its problem (the conservative reading)
    assert screen_lessons([{**op, "sources": []}], batch, TEMPLATES).counts == {ANSWER_LEAK: 1}
