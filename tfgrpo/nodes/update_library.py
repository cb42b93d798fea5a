"""Step 6 of Training-Free GRPO: **update-library**.

One consolidation call over all proposals of the batch decides the final operations
``{op: ADD|UPDATE|DELETE|NONE, id, content}``: similar ADDs merged, DELETE beats UPDATE, several UPDATEs
on one id folded into one (the prompt states these rules, the word cap, what "specific to one problem"
means and the library's remaining capacity). An ADD/UPDATE that carries a ground-truth answer of the
batch or copies 8+ consecutive words of one of its questions is rejected mechanically, with the reason.
Every ADD/UPDATE, proposed or final, from any model, then passes the **lesson gate**
(:func:`lesson_flaw`): within the word cap, prose rather than numbers and operators, not copied from the
learner's prompts or schema descriptions, not tied to one problem of the batch by its numbers or a
narration of its attempts. Numbers and answers are checked against the lesson's own problems (its
``sources``), not the whole batch: "mod 1000" is a domain constant unless its own problem quotes 1000.
A proposal stopped there never reaches the consolidation call; every
rejection is listed with its reason and counted by reason in the report (``lessons_rejected``).
The rest are applied with :func:`apply_operations`: DELETE really deletes, and an
UPDATE/DELETE of an unknown id is rejected and counted (never turned into an ADD). If the consolidation
output stays unparseable, the raw proposals are applied under the same rules and the failure is recorded.
A consolidation whose output would not fit the learner's token cap (``--learner-max-tokens``) is split
into consecutive chunks, each consolidated against E as the chunks before it left it.
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from typing import Any, cast

from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.runtime import Runtime
from pydantic import BaseModel, Field

from tfgrpo.context import Context
from tfgrpo.nodes import extract as extract_node
from tfgrpo.nodes import retry_lesson as retry_node
from tfgrpo.nodes import summarize as summarize_node
from tfgrpo.nodes._llm import (
    call_structured,
    context_of,
    learner_model,
    memo_get,
    memo_put,
    step_namespace,
    store_of,
)
from tfgrpo.nodes._prompts import prompt_text
from tfgrpo.nodes.extract import (
    ALL_OPS,
    WORD_CAP,
    ProposedOperation,
    extraction_schema,
    offered_ops,
    shaped_operation,
    with_operations,
)
from tfgrpo.state.graph_state import StepState
from tfgrpo.state.library import (
    Library,
    Operation,
    RejectedOperation,
    apply_operations,
    empty_library,
    estimate_tokens,
    library_tokens,
    render_library_for_review,
)
from tfgrpo.state.report import build_step_report
from tfgrpo.state.types import CallRecord, Dropped, Query, usage_of


class FinalOperation(ProposedOperation):
    sources: list[str] = Field(
        default_factory=list, description="Ids of the problems whose proposals led to this operation."
    )


class LibraryUpdate(BaseModel):
    """The final, consolidated list of operations on the experience library for this batch."""

    # minItems only in the schema, as in extract: an explicit NONE rather than a bare empty list
    operations: list[FinalOperation] = Field(
        description="Operations to apply, in order (NONE if no proposal should change the library).",
        json_schema_extra={"minItems": 1},
    )


@functools.lru_cache(maxsize=16)
def update_schema(lesson_pattern: str = "", ops: tuple[str, ...] = ALL_OPS) -> type[LibraryUpdate]:
    """:class:`LibraryUpdate` whose operations' schema carries ``lesson_pattern`` and only ``ops``
    (:func:`~tfgrpo.nodes.extract.shaped_operation`); the class itself when neither is set."""
    operation = shaped_operation(FinalOperation, lesson_pattern, tuple(ops))
    if operation is FinalOperation:
        return LibraryUpdate
    return with_operations(LibraryUpdate, operation, {"minItems": 1})


SYSTEM_PROMPT = """You curate an experience library: short lessons a problem solver reads before \
solving NEW problems of this kind. You get the library under review, its remaining capacity, and the \
operations proposed from several groups of attempts (each with the problem it came from). Produce the \
final list of operations, following these rules:
1. Merge proposals that say the same thing into one ADD. When a proposal is close to an existing \
experience, UPDATE that experience instead of adding a near-duplicate.
2. An UPDATE's content is the full replacement text of the experience: one lesson, rewritten (sharper \
trigger, clearer action, the pitfall). Never concatenate two lessons into one item.
3. Every ADD/UPDATE keeps the lesson shape: when it applies (a feature of the problem), what to do, the \
pitfall; at most {word_cap} words.
4. DELETE an experience only when a proposal contradicts it with evidence, or when proposals from two \
or more different problems report that it misled. DELETE wins over an UPDATE of the same id; several \
UPDATEs of one id become one.
5. Drop proposals specific to one problem: a lesson that names a quantity, entity, value or the answer \
of its problem, or that would help only on that problem. Drop generic advice ("double-check", "be \
careful") that names no trigger.
6. Respect the capacity: when little is left, prefer merging and UPDATE over ADD.
Only use ids that exist in the library. Answer NONE when nothing should change. Call the LibraryUpdate \
tool."""

USER_TEMPLATE = """{library}

Capacity: {capacity}

Proposed operations (JSON, with the problem each came from):
{proposals}"""

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
# Narrating one attempt ("The reward for this attempt was 0") is a report, not a lesson.
NARRATION = re.compile(
    r"\b(rewards?|this (attempt|problem|question|response)|final response|(first|second) (model )?turn)\b",
    re.IGNORECASE,
)


def capacity_text(library: Library, max_items: int, max_tokens: int) -> str:
    items, tokens = len(library["items"]), library_tokens(library)
    return (
        f"{items} of {max_items} items used ({max(0, max_items - items)} left); about {tokens} of "
        f"{max_tokens} tokens used ({max(0, max_tokens - tokens)} left, at about 4 characters a token)"
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


def _descriptions(schema: Any) -> list[str]:
    """Every ``description`` string of a JSON schema, nested ones included."""
    if isinstance(schema, dict):
        own = [schema["description"]] if isinstance(schema.get("description"), str) else []
        return own + [d for value in schema.values() for d in _descriptions(value)]
    if isinstance(schema, list):
        return [d for value in schema for d in _descriptions(value)]
    return []


def learner_templates(prompts: str, k: int) -> set[tuple[str, ...]]:
    """The TEMPLATE_WORDS-grams of what the learner reads besides the data: its system prompts as this
    run uses them (``--prompts`` overrides included) and the descriptions in its extract and update
    schemas. A lesson sharing one of them was copied from the instructions, not learned."""
    texts = [
        prompt_text(prompts, "summarize_system", summarize_node.SYSTEM_PROMPT),
        prompt_text(prompts, "extract_system", extract_node.SYSTEM_PROMPT),
        prompt_text(prompts, "update_system", SYSTEM_PROMPT),
        prompt_text(prompts, "retry_system", retry_node.SYSTEM_PROMPT),
        *_descriptions(extraction_schema(k).model_json_schema()),
        *_descriptions(LibraryUpdate.model_json_schema()),
        *_descriptions(retry_node.RevisedLesson.model_json_schema()),
    ]
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
    """Three or more consecutive words of the gate's ``hint`` in a rewrite's ``content``, or None. The
    hint's parts in brackets (the lesson's own words, the problem's numbers) do not count."""
    own = re.sub(r"\([^)]*\)", " ", hint)
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


def screen_lessons(
    operations: list[Operation],
    batch: list[Query],
    templates: set[tuple[str, ...]],
    where: str = "",
    pattern: str = "",
    hint: str = "",
) -> tuple[list[Operation], list[RejectedOperation], Counter[str]]:
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
    return kept, rejected, counts


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


def retry_rejected(
    runtime: Runtime[Context],
    ctx: Context,
    state: StepState,
    gated: list[RejectedOperation],
    templates: set[tuple[str, ...]],
) -> tuple[
    list[Operation], list[RejectedOperation], Counter[str], Counter[str], list[CallRecord], list[Dropped]
]:
    """Each proposal the gate rejected goes back to the learner once with the reason
    (:mod:`tfgrpo.nodes.retry_lesson`); the rewrite passes the same gate. Returns the rewrites that
    passed, the final rejections, their counts by reason, the retries by the first reason, the calls
    and the failed retries."""
    batch = state.get("batch", [])
    items: list[tuple[Operation, str]] = []
    first: list[tuple[str, str]] = []
    for rejected in gated:
        op = rejected["operation"]
        flaw = lesson_flaw(op.get("content") or "", own_problems(op, batch), templates, ctx.lesson_pattern)
        reason, detail = flaw if flaw is not None else ("", "")
        first.append((reason, detail))
        items.append((op, retry_hint(reason, detail, op) if reason else ""))
    revised, calls, dropped = retry_node.retry_lessons(
        runtime, ctx, state.get("run_id", ""), state.get("step", 0), items, batch
    )
    passed: list[Operation] = []
    final: list[RejectedOperation] = []
    counts: Counter[str] = Counter()
    retried: Counter[str] = Counter(reason for reason, _ in first)
    for rejected, (reason, _), (_, hint), rewrite in zip(gated, first, items, revised, strict=True):
        if rewrite is None:
            counts[reason] += 1
            final.append({**rejected, "why": f"{rejected['why']} (retried once: no rewrite)"})
            continue
        kept, again, again_counts = screen_lessons(
            [rewrite], batch, templates, where="proposal after retry: ", pattern=ctx.lesson_pattern, hint=hint
        )
        passed.extend(kept)
        final.extend({**r, "why": f"{r['why']} (first: {reason})"} for r in again)
        counts.update(again_counts)
    return passed, final, counts, retried, calls, dropped


# What one final operation costs the consolidation's output, beyond its JSON as proposed (4 characters a
# token, the estimate E's budget uses; real tokenizers give JSON fewer): a margin for the model's own
# reason and sources, and the list around the operations.
OUTPUT_MARGIN = 1.25
TOKENS_PER_OPERATION = 16
TOKENS_PER_CALL = 64


def operation_tokens(op: Operation) -> int:
    return int(OUTPUT_MARGIN * estimate_tokens(json.dumps(op, ensure_ascii=False))) + TOKENS_PER_OPERATION


def consolidation_chunks(proposed: list[Operation], max_tokens: int) -> list[list[Operation]]:
    """``proposed`` in consecutive chunks whose consolidation fits ``max_tokens`` of output (one chunk
    when all fit, or when there is no cap): a consolidation cut at the learner's token cap is
    unparseable, and would fall back to the raw proposals. An operation too long for any chunk gets
    one of its own."""
    chunks: list[list[Operation]] = []
    used = 0
    for op in proposed:
        cost = operation_tokens(op)
        if chunks and max_tokens > 0 and used + cost > max_tokens:
            chunks.append([])
            used = TOKENS_PER_CALL
        if not chunks:
            chunks.append([])
            used = TOKENS_PER_CALL
        chunks[-1].append(op)
        used += cost
    return chunks


def consolidate(
    runtime: Runtime[Context],
    ctx: Context,
    state: StepState,
    library: Library,
    proposed: list[Operation],
    key: str,
    known_sources: set[str],
) -> tuple[list[Operation], list[CallRecord], list[Dropped]]:
    """One consolidation call over ``proposed`` against ``library`` (memoized under ``key``): the final
    operations with their sources, the call records, and the failure if its output stayed unparseable
    (then the proposals themselves are the final operations)."""
    if not proposed:
        return [], [], []
    store = store_of(runtime)
    ns = step_namespace(state.get("run_id", ""), state.get("step", 0), "update")
    done = memo_get(store, ns, key)
    if done is None:
        model, spec = learner_model(ctx)
        system = prompt_text(ctx.prompts, "update_system", SYSTEM_PROMPT)
        user = prompt_text(ctx.prompts, "update_user", USER_TEMPLATE)
        messages = [
            SystemMessage(system.format(word_cap=WORD_CAP)),
            HumanMessage(
                user.format(
                    library=render_library_for_review(library),
                    capacity=capacity_text(library, ctx.max_library_items, ctx.max_library_tokens),
                    proposals=json.dumps(proposed, indent=1, ensure_ascii=False),
                )
            ),
        ]
        parsed, records, error = call_structured(
            ctx,
            model,
            spec,
            "update_library",
            update_schema(ctx.lesson_pattern, offered_ops(library)),
            messages,
            retries=ctx.structured_retries,
            method=ctx.structured_method,
        )
        ops = [op.model_dump() for op in parsed.operations] if parsed is not None else None
        done = {"operations": ops, "error": error, "calls": records}
        memo_put(store, ns, key, done)
    if done["operations"] is None:
        dropped: Dropped = {
            "stage": "update_library",
            "item": key,
            "reason": f"{done['error']}; applied {len(proposed)} proposals unconsolidated",
        }
        return proposed, done["calls"], [dropped]
    # a final op that repeats a proposal's text came from that proposal's problem
    sources_of_text: dict[str, set[str]] = {}
    for op in proposed:
        sources_of_text.setdefault(op.get("content") or "", set()).update(op.get("sources") or [])
    final: list[Operation] = []
    for op in done["operations"]:
        # provenance: the sources the model named if real, else those of the proposal it repeats, else
        # every proposing problem's (the gate then checks against all of them)
        sources = [s for s in op.get("sources") or [] if s in known_sources]
        if not sources:
            sources = sorted(sources_of_text.get(op.get("content") or "", set()) & known_sources)
        final.append(cast(Operation, {**op, "sources": sources or sorted(known_sources)}))
    return final, done["calls"], []


def update_library(state: StepState, runtime: Runtime[Context]) -> dict[str, Any]:
    ctx = context_of(runtime)
    library = state.get("library") or empty_library()
    proposals = state.get("proposals", [])
    batch = state.get("batch", [])
    templates = learner_templates(ctx.prompts, ctx.experiences_per_group)
    # junk proposals never reach the consolidation call (nor cost its tokens)
    proposed, gated, gate_counts = screen_lessons(
        [op for p in proposals for op in p["operations"]],
        batch,
        templates,
        where="proposal: ",
        pattern=ctx.lesson_pattern,
    )
    calls: list[CallRecord] = []
    dropped: list[Dropped] = []
    retried: Counter[str] = Counter()
    if gated:
        rewrites, gated, gate_counts, retried, calls, dropped = retry_rejected(
            runtime, ctx, state, gated, templates
        )
        proposed.extend(rewrites)

    known_sources = {p["query_id"] for p in proposals}
    chunks = consolidation_chunks(proposed, ctx.learner_max_tokens)
    current = library
    applied: list[Operation] = []
    rejected: list[RejectedOperation] = []
    leaks: list[RejectedOperation] = []
    final_counts: Counter[str] = Counter()
    n_final = 0
    for i, chunk in enumerate(chunks or [[]]):
        # one chunk keeps the memo key of a single consolidation (a resumed run finds it)
        key = "consolidation" if len(chunks) <= 1 else f"consolidation-{i + 1}-of-{len(chunks)}"
        final, chunk_calls, chunk_dropped = consolidate(
            runtime, ctx, state, current, chunk, key, known_sources
        )
        calls, dropped = [*calls, *chunk_calls], [*dropped, *chunk_dropped]
        final, chunk_leaks, chunk_counts = screen_lessons(final, batch, templates, pattern=ctx.lesson_pattern)
        # each chunk is consolidated against E as the chunks before it left it
        current, chunk_applied, chunk_rejected = apply_operations(
            current,
            final,
            step=state.get("step", 0),
            max_items=ctx.max_library_items,
            max_tokens=ctx.max_library_tokens,
        )
        applied += chunk_applied
        rejected += chunk_rejected
        leaks += chunk_leaks
        final_counts += chunk_counts
        n_final += len(final) + len(chunk_leaks)
    # one step, one version (apply_operations returned a copy: current is not the state's E)
    new_library = current
    new_library["version"] = library["version"] + (1 if applied else 0)
    report = build_step_report(
        state,
        library=new_library,
        applied=applied,
        rejected=[*gated, *leaks, *rejected],
        more_calls=calls,
        more_dropped=dropped,
        final_operations=n_final,
        lessons_rejected=dict(gate_counts + final_counts),
        lessons_retried=dict(retried),
    )
    return {"library": new_library, "report": report, "usage": usage_of(calls), "dropped": dropped}
