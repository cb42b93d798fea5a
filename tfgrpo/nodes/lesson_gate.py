"""The **lesson gate** of step 6 (update-library): what a lesson must not be, checked mechanically on
every ADD/UPDATE, proposed, rewritten or consolidated, from any model.

A lesson is rejected, with a reason counted in the report's ``lessons_rejected``, when it carries a
ground-truth answer or copies a question of its own problems (:func:`leak_of`), copies the learner's
instructions or echoes the reason it was sent back with, names the numbers of its problem or narrates an
attempt, is not prose, is over the word cap, or misses the run's ``--lesson-pattern``
(:func:`lesson_flaw`, :func:`screen_lessons`). Numbers and answers are checked against the lesson's own
problems (its ``sources``), not the whole batch: "mod 1000" is a domain constant unless its own problem
quotes 1000. Pure text checks: no model, no store, no I/O; the caller passes the learner's instructions
as word n-grams (:func:`templates_of`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# the cap the learner's prompts and schemas state; the gate is what enforces it
from tfgrpo.nodes.extract import WORD_CAP
from tfgrpo.state.library import Operation, RejectedOperation
from tfgrpo.state.types import Query

__all__ = ["WORD_CAP"]  # re-exported: the gate's tests and callers read the cap here

# An ADD/UPDATE must not carry the batch's answers or questions into E (checked mechanically).
MIN_ANSWER_CHARS = 3  # shorter answers ("5", "no") appear in any text by chance
COMMON_ANSWERS = frozenset({"yes", "no", "true", "false", "none"})
COPIED_WORDS = 8  # this many consecutive words of a question make a copy


# The lesson gate: what a lesson must not be, checked mechanically on every ADD/UPDATE (any model). The
# reasons, as counted in the report's ``lessons_rejected``:
OVER_CAP = "over word cap"  # more than WORD_CAP words (the prompts ask for it; nothing else enforces it)
TEMPLATE_COPY = "template copy"  # TEMPLATE_WORDS consecutive words of a learner prompt / schema description
NOT_PROSE = "not prose"  # fewer than MIN_PROSE_WORDS words, or mostly numbers and operators
PROBLEM_SPECIFIC = "problem-specific"  # quotes the numbers of its own problem, or narrates attempts
ANSWER_LEAK = "answer leak"  # its own problem's answer or a copy of its question (leak_of)
OFF_PATTERN = "off pattern"  # does not match the run's --lesson-pattern (a model that ignored the schema)
LESSON_REASONS = (ANSWER_LEAK, TEMPLATE_COPY, PROBLEM_SPECIFIC, NOT_PROSE, OVER_CAP, OFF_PATTERN)  # in order
# 5 words: a lesson in its own words shares at most a short phrase ("when a minus sign") with the prompts,
# while a pasted instruction shares more: the main job's 0.5B learner stored its schema's field
# description ("When it applies (a feature of the problem), what to do, the pitfall seen.") and fragments
# of it ("When calculating (-9 / 9), what to do; the pitfall seen.": "what to do the pitfall" is 5)
TEMPLATE_WORDS = 5
MIN_PROSE_WORDS = 6  # words with a letter in them: a trigger, an action and a pitfall need more
# of the whitespace-separated tokens: "-(a + b) = -a - b" inside a sentence still passes
MIN_PROSE_SHARE = 0.5
# Numbers of one batch question in a lesson tie it to that problem: one of SPECIFIC_DIGITS+ digits ("81"),
# or SPECIFIC_NUMBERS distinct ones ("subtract 1 from 2" for "2 - 1"); single small numbers are generic.
SPECIFIC_DIGITS = 2
SPECIFIC_NUMBERS = 2
# Narrating one attempt ("The reward for this attempt was 0", "attempt 3 wrote ...") is a report, not a
# lesson. "reward" and "final response" alone are not narration: a correct convention lesson says what the
# reward reads or where the final response goes (a probe of issue 27: 4 of 12 correct lessons were
# rejected for such words).
NARRATION = re.compile(
    r"\b(this (attempt|problem|question|response)|attempts? #?\d+|(first|second) (model )?turn)\b",
    re.IGNORECASE,
)


def normalize_answer_text(text: str) -> str:
    """Lower case, LaTeX spacing and delimiters removed, ``\\dfrac`` as ``\\frac``, one space between
    words: the form in which a lesson and an answer are compared."""
    text = text.lower()
    text = re.sub(r"\\boxed\{(.*)\}", r"\1", text)
    text = re.sub(r"\\[dt]frac", r"\\frac", text)
    text = re.sub(r"\\left|\\right|\\[,;!]|\$", "", text)
    return re.sub(r"\s+", " ", text).strip(" .")


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def leak_of(content: str, batch: list[Query]) -> str | None:
    """Why ``content`` must not enter E, or None: it contains the ground-truth answer of a problem of the
    batch (normalized; answers of fewer than 3 characters and yes/no are exempt), or copies 8 or more
    consecutive words of one of its questions."""
    text = normalize_answer_text(content)
    grams = ngrams(_words(content), COPIED_WORDS)
    for query in batch:
        answer = normalize_answer_text(query.get("answer") or "")
        long_enough = len(answer) >= MIN_ANSWER_CHARS and answer not in COMMON_ANSWERS
        # not inside a longer number or word: 123 is not in 1234
        if long_enough and re.search(rf"(?<![\w.]){re.escape(answer)}(?!\w)", text):
            return f"contains the ground-truth answer of {query['id']} ({query['answer']!r})"
        copied = first_shared(_words(query.get("question") or ""), grams, COPIED_WORDS)
        if copied is not None:
            return f"copies {COPIED_WORDS}+ consecutive words of the question of {query['id']} ({copied!r})"
    return None


def ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def first_shared(words: list[str], grams: set[tuple[str, ...]], n: int) -> str | None:
    """The first run of ``n`` consecutive ``words`` that is one of ``grams``, joined, or None."""
    for i in range(len(words) - n + 1):
        if tuple(words[i : i + n]) in grams:
            return " ".join(words[i : i + n])
    return None


def schema_descriptions(schema: Any) -> list[str]:
    """Every ``description`` string of a JSON schema, nested ones included."""
    if isinstance(schema, dict):
        own = [schema["description"]] if isinstance(schema.get("description"), str) else []
        return own + [d for value in schema.values() for d in schema_descriptions(value)]
    if isinstance(schema, list):
        return [d for value in schema for d in schema_descriptions(value)]
    return []


def templates_of(texts: Iterable[str]) -> set[tuple[str, ...]]:
    """The TEMPLATE_WORDS-grams of ``texts``: what the learner reads besides the data (its system prompts
    as the run uses them, the descriptions in its schemas). A lesson sharing one of them was copied from
    the instructions, not learned."""
    return {gram for text in texts for gram in ngrams(_words(text), TEMPLATE_WORDS)}


_UNITS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
NUMBER_WORDS = {w: i for i, w in enumerate(_UNITS)} | {w: 20 + 10 * i for i, w in enumerate(_TENS)}
_NUMBER_WORD = re.compile(
    rf"\b({'|'.join(_TENS)})(?:[- ]({'|'.join(_UNITS[1:10])}))?\b|\b({'|'.join(_UNITS)})\b", re.IGNORECASE
)


# "zero", "one" and "two" are ordinary prose ("one term", "the other two"): spelled numbers count from three
SPELLED_FROM = 3


def _numbers(text: str) -> set[str]:
    return set(re.findall(r"\d+(?:\.\d+)?", text))


def _spelled_numbers(text: str) -> set[str]:
    """Numbers written as words ("three", "eighty-one"): a lesson held to a pattern without digits names
    its problem's numbers this way ("When subtracting three from five, ...")."""
    found = set()
    for m in _NUMBER_WORD.finditer(text):
        tens, unit, alone = (g.lower() if g else "" for g in m.groups())
        value = NUMBER_WORDS[tens] + NUMBER_WORDS.get(unit, 0) if tens else NUMBER_WORDS[alone]
        if value >= SPELLED_FROM:
            found.add(str(value))
    return found


# A rewrite that repeats this many consecutive words of the reason it was sent back with wrote the verdict
# into the lesson (a 1.5B learner told "copies the learner's instructions" stored "...; pitfall: copied
# learner's instructions."); two words ("shorten it", "the answer") are everyday prose.
ECHO_WORDS = 3


def echo_of(content: str, hint: str) -> str | None:
    """Three or more consecutive words of the gate's verdict in ``hint`` in a rewrite's ``content``, or
    None. The hint's parts in brackets (the lesson's own words, the problem's numbers) do not count, nor
    does the action it asks for (:data:`RETRY_ACTIONS`): a rewrite that obeys "write it as a sentence in
    words" or "leave the answer ... out" may well say "write it as" or "leave the answer"."""
    own = re.sub(r"\([^)]*\)", " ", hint)
    for action in RETRY_ACTIONS.values():
        own = own.replace(action, " ")
    return first_shared(_words(content), ngrams(_words(own), ECHO_WORDS), ECHO_WORDS)


def lesson_flaw(
    content: str, batch: list[Query], templates: set[tuple[str, ...]], pattern: str = "", hint: str = ""
) -> tuple[str, str] | None:
    """``(reason, detail)`` when ``content`` must not enter E as a lesson (reasons in LESSON_REASONS, the
    first that applies), else None. ``pattern``: the run's lesson pattern (JSON-schema semantics: a
    search, anchored by its own ^ and $), "" for none. ``hint``: the reason a retried lesson was sent back
    with; repeating it is a template copy."""
    leak = leak_of(content, batch)
    if leak is not None:
        return ANSWER_LEAK, leak
    copied = first_shared(_words(content), templates, TEMPLATE_WORDS)
    if copied is not None:
        return TEMPLATE_COPY, f"copies the learner's instructions ({copied!r})"
    echo = echo_of(content, hint) if hint else None
    if echo is not None:
        return TEMPLATE_COPY, f"echoes the gate's reason ({echo!r})"
    numbers = _numbers(content) | _spelled_numbers(content)
    for query in batch:
        shared = numbers & _numbers(query.get("question") or "")
        if len(shared) >= SPECIFIC_NUMBERS or any(len(n.replace(".", "")) >= SPECIFIC_DIGITS for n in shared):
            return PROBLEM_SPECIFIC, f"quotes the numbers of {query['id']} ({', '.join(sorted(shared))})"
    narration = NARRATION.search(content)
    if narration:
        return PROBLEM_SPECIFIC, f"narrates an attempt ({narration.group(0)!r})"
    tokens = content.split()
    prose = [t for t in tokens if re.search(r"[^\W\d_]", t)]
    if len(prose) < MIN_PROSE_WORDS or len(prose) < MIN_PROSE_SHARE * len(tokens):
        return NOT_PROSE, f"{len(prose)} words among {len(tokens)} tokens"
    if len(tokens) > WORD_CAP:
        return OVER_CAP, f"{len(tokens)} words, cap {WORD_CAP}"
    if pattern and not re.search(pattern, content):
        return OFF_PATTERN, f"does not match the lesson pattern {pattern!r}"
    return None


def own_problems(op: Operation, batch: list[Query]) -> list[Query]:
    """The problems of ``batch`` that ``op`` came from (its ``sources``); the whole batch when it names
    none of them (the conservative reading of an unknown provenance)."""
    sources = set(op.get("sources") or [])
    own = [query for query in batch if query["id"] in sources]
    return own or batch


@dataclass(frozen=True)
class Screening:
    """What the gate let through (``kept``, in order), what it stopped (``rejected``, each with its
    reason) and the rejections counted by reason (``counts``, keys in LESSON_REASONS)."""

    kept: list[Operation]
    rejected: list[RejectedOperation]
    counts: Counter[str]


def screen_lessons(
    operations: list[Operation],
    batch: list[Query],
    templates: set[tuple[str, ...]],
    where: str = "",
    pattern: str = "",
    hint: str = "",
) -> Screening:
    """Split operations into those that may go on and those the lesson gate rejects (ADD/UPDATE only),
    with the rejections counted by reason. Each lesson is judged against its own problems
    (:func:`own_problems`): a general lesson is not rejected because another question of a large batch
    happens to contain one of its numbers. ``hint``: for a retried lesson, the reason it was sent back with
    (:func:`lesson_flaw`)."""
    kept: list[Operation] = []
    rejected: list[RejectedOperation] = []
    counts: Counter[str] = Counter()
    for op in operations:
        flaw = None
        if op["op"] in ("ADD", "UPDATE"):
            flaw = lesson_flaw(op.get("content") or "", own_problems(op, batch), templates, pattern, hint)
        if flaw is None:
            kept.append(op)
        else:
            counts[flaw[0]] += 1
            rejected.append({"operation": op, "why": f"{where}{flaw[0]}: {flaw[1]}"})
    return Screening(kept, rejected, counts)


# What the learner is told to do about each gate reason when a proposal goes back to it once
RETRY_ACTIONS = {
    ANSWER_LEAK: "leave the answer and the question's wording out",
    TEMPLATE_COPY: "say it in your own words",
    PROBLEM_SPECIFIC: "state the rule for new problems, without this problem's numbers or attempts",
    NOT_PROSE: "write it as a sentence in words",
    OVER_CAP: "shorten it",
    OFF_PATTERN: "follow the required shape",
}


def retry_hint(reason: str, detail: str, op: Operation) -> str:
    """The gate's verdict as the learner reads it: ids of problems become "its problem"."""
    for source in op.get("sources") or []:
        detail = detail.replace(f" of {source} ", " of its problem ")
    if reason == OVER_CAP:
        return f"over {WORD_CAP} words ({detail.split(',')[0]}): {RETRY_ACTIONS[reason]}"
    if reason == PROBLEM_SPECIFIC and detail.startswith("quotes the numbers"):
        return f"names numbers of its problem ({detail.split('(', 1)[-1]}: {RETRY_ACTIONS[reason]}"
    return f"{reason}, {detail}: {RETRY_ACTIONS[reason]}"
