"""Step 6 of Training-Free GRPO: **update-library**.

One consolidation call over all proposals of the batch decides the final operations
``{op: ADD|UPDATE|DELETE|NONE, id, content}``: similar ADDs merged, DELETE beats UPDATE, several UPDATEs
on one id folded into one (the prompt states these rules, the word cap, what "specific to one problem"
means and the library's remaining capacity). An ADD/UPDATE that carries a ground-truth answer of the
batch or copies 8+ consecutive words of one of its questions is rejected mechanically, with the reason.
The rest are applied with :func:`apply_operations`: DELETE really deletes, and an
UPDATE/DELETE of an unknown id is rejected and counted (never turned into an ADD). If the consolidation
output stays unparseable, the raw proposals are applied under the same rules and the failure is recorded.
"""

from __future__ import annotations

import json
import re
from typing import Any, cast

from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.runtime import Runtime
from pydantic import BaseModel, Field

from tfgrpo.context import Context
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
from tfgrpo.nodes.extract import WORD_CAP, ProposedOperation
from tfgrpo.state.graph_state import StepState
from tfgrpo.state.library import (
    Library,
    Operation,
    RejectedOperation,
    apply_operations,
    empty_library,
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
    words = _words(content)
    grams = {tuple(words[i : i + COPIED_WORDS]) for i in range(len(words) - COPIED_WORDS + 1)}
    for query in batch:
        answer = normalize_answer_text(query.get("answer") or "")
        long_enough = len(answer) >= MIN_ANSWER_CHARS and answer not in COMMON_ANSWERS
        # not inside a longer number or word: 123 is not in 1234
        if long_enough and re.search(rf"(?<![\w.]){re.escape(answer)}(?!\w)", text):
            return f"contains the ground-truth answer of {query['id']} ({query['answer']!r})"
        question = _words(query.get("question") or "")
        for i in range(len(question) - COPIED_WORDS + 1):
            if tuple(question[i : i + COPIED_WORDS]) in grams:
                copied = " ".join(question[i : i + COPIED_WORDS])
                return (
                    f"copies {COPIED_WORDS}+ consecutive words of the question of {query['id']} ({copied!r})"
                )
    return None


def screen_leaks(
    operations: list[Operation], batch: list[Query]
) -> tuple[list[Operation], list[RejectedOperation]]:
    """Split the final operations into those that may be applied and those rejected as leaks."""
    kept: list[Operation] = []
    rejected: list[RejectedOperation] = []
    for op in operations:
        why = leak_of(op.get("content") or "", batch) if op["op"] in ("ADD", "UPDATE") else None
        if why is None:
            kept.append(op)
        else:
            rejected.append({"operation": op, "why": f"answer leak: {why}"})
    return kept, rejected


def update_library(state: StepState, runtime: Runtime[Context]) -> dict[str, Any]:
    ctx = context_of(runtime)
    library = state.get("library") or empty_library()
    proposals = state.get("proposals", [])
    proposed: list[Operation] = [op for p in proposals for op in p["operations"]]
    calls: list[CallRecord] = []
    dropped: list[Dropped] = []
    final: list[Operation] = []

    if proposed:
        store = store_of(runtime)
        ns = step_namespace(state.get("run_id", ""), state.get("step", 0), "update")
        done = memo_get(store, ns, "consolidation")
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
                LibraryUpdate,
                messages,
                retries=ctx.structured_retries,
                method=ctx.structured_method,
            )
            ops = [op.model_dump() for op in parsed.operations] if parsed is not None else None
            done = {"operations": ops, "error": error, "calls": records}
            memo_put(store, ns, "consolidation", done)
        calls = done["calls"]
        known_sources = {p["query_id"] for p in proposals}
        if done["operations"] is None:
            dropped.append(
                {
                    "stage": "update_library",
                    "item": "consolidation",
                    "reason": f"{done['error']}; applied {len(proposed)} proposals unconsolidated",
                }
            )
            final = proposed
        else:
            for op in done["operations"]:
                # provenance: keep the sources the model named if real, else the whole batch's
                sources = [s for s in op.get("sources") or [] if s in known_sources]
                final.append(cast(Operation, {**op, "sources": sources or sorted(known_sources)}))

    final, leaks = screen_leaks(final, state.get("batch", []))
    new_library, applied, rejected = apply_operations(
        library,
        final,
        step=state.get("step", 0),
        max_items=ctx.max_library_items,
        max_tokens=ctx.max_library_tokens,
    )
    report = build_step_report(
        state,
        library=new_library,
        applied=applied,
        rejected=[*leaks, *rejected],
        more_calls=calls,
        more_dropped=dropped,
        final_operations=len(final) + len(leaks),
    )
    return {"library": new_library, "report": report, "usage": usage_of(calls), "dropped": dropped}
