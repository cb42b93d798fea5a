"""Part of step 6 of Training-Free GRPO (**update-library**): one retry of a proposal the lesson gate
rejected.

A proposed lesson the gate stops (:func:`tfgrpo.nodes.lesson_gate.lesson_flaw`) goes back to the
learner once, with the problem it came from and the gate's reason as an instruction ("over 35 words:
shorten it", "names a number of its problem"), instead of being dropped: an over-long or too specific
lesson often holds a general one. The learner rewrites it or withdraws it (empty content); the rewrite
then passes the same gate like any proposal. Calls run in parallel and are memoized in the store, so a
resumed step pays for none twice. A retry whose output stays unparseable is recorded as dropped.
:func:`retry_rejected` runs the whole round for update-library: hints, calls, the gate again.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.runnables.config import ContextThreadPoolExecutor
from langgraph.runtime import Runtime
from pydantic import BaseModel, ConfigDict, Field

from tfgrpo.context import Context
from tfgrpo.nodes._llm import call_structured, learner_model, memo_get, memo_put, step_namespace, store_of
from tfgrpo.nodes._prompts import prompt_text
from tfgrpo.nodes.candidates import suffix
from tfgrpo.nodes.extract import LESSON_MAX_CHARS, WORD_CAP
from tfgrpo.nodes.lesson_gate import lesson_flaw, own_problems, retry_hint, screen_lessons
from tfgrpo.state.graph_state import StepState
from tfgrpo.state.library import Operation, RejectedOperation
from tfgrpo.state.types import CallRecord, Dropped, Query

NODE = "retry_lesson"


def _content_schema(schema: dict[str, Any]) -> None:
    # same bound as the extract schema: a grammar-constrained server closes the string there
    schema["properties"]["content"]["maxLength"] = LESSON_MAX_CHARS


class RevisedLesson(BaseModel):
    """A rejected lesson rewritten so that it passes the check, or withdrawn."""

    model_config = ConfigDict(json_schema_extra=_content_schema)

    content: str = Field(
        description=f"The rewritten lesson (max {WORD_CAP} words); empty to withdraw it.",
    )


def revised_schema(lesson_pattern: str = "") -> type[RevisedLesson]:
    """:class:`RevisedLesson` whose ``content`` also carries the run's lesson pattern (same tool name)."""
    if not lesson_pattern:
        return RevisedLesson

    def extra(schema: dict[str, Any]) -> None:
        _content_schema(schema)
        schema["properties"]["content"]["pattern"] = lesson_pattern

    namespace = {
        "__doc__": RevisedLesson.__doc__,
        "__module__": RevisedLesson.__module__,
        "__qualname__": RevisedLesson.__qualname__,
        "model_config": ConfigDict(json_schema_extra=extra),
    }
    return type(RevisedLesson.__name__, (RevisedLesson,), namespace)


SYSTEM_PROMPT = """You wrote a lesson for an experience library: short lessons a problem solver reads \
before solving NEW problems of this kind. A mechanical check rejected it, for the reason given. Rewrite \
it once so that it passes: keep what it teaches (when it applies, what to do, the pitfall), in at most \
{word_cap} words, without the numbers, the answer or the wording of the problem it came from. If nothing \
general is left, give an empty content. Call the RevisedLesson tool."""

USER_TEMPLATE = """Problem the lesson came from:
{question}

Rejected lesson:
{lesson}

Why it was rejected: {reason}"""


def _key(op: Operation) -> str:
    text = json.dumps([op.get("op"), op.get("id"), op.get("content"), op.get("sources")])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _retry_one(
    runtime: Runtime[Context],
    ctx: Context,
    ns: tuple[str, ...],
    op: Operation,
    hint: str,
    questions: str,
    node: str = NODE,
) -> dict[str, Any]:
    store = store_of(runtime)
    key = _key(op)
    done = memo_get(store, ns, key)
    if done is None:
        model, spec = learner_model(ctx)
        system = prompt_text(ctx.prompts, "retry_system", SYSTEM_PROMPT)
        user = prompt_text(ctx.prompts, "retry_user", USER_TEMPLATE)
        messages = [
            SystemMessage(system.format(word_cap=WORD_CAP)),
            HumanMessage(user.format(question=questions, lesson=op.get("content") or "", reason=hint)),
        ]
        parsed, records, error = call_structured(
            ctx,
            model,
            spec,
            node,
            revised_schema(ctx.lesson_pattern),
            messages,
            retries=ctx.structured_retries,
            method=ctx.structured_method,
        )
        content = parsed.content.strip() if parsed is not None else None
        done = {"content": content, "error": error, "calls": records}
        memo_put(store, ns, key, done)
    return done


def retry_lessons(
    runtime: Runtime[Context],
    ctx: Context,
    run_id: str,
    step: int,
    rejected: list[tuple[Operation, str]],
    batch: list[Query],
    candidate: int = 0,
) -> tuple[list[Operation | None], list[CallRecord], list[Dropped]]:
    """Send each ``(operation, hint)`` back to the learner once. Returns, in order, the operation with
    its rewritten content (None when withdrawn or when the retry failed), the call records and the
    failed retries as dropped items."""
    if not rejected:
        return [], [], []
    # a candidate's retries (--candidates) are its own: memo namespace and ledger node name
    ns = step_namespace(run_id, step, "retry" + suffix(candidate))
    by_id = {query["id"]: query for query in batch}

    def questions_of(op: Operation) -> str:
        own = [by_id[s]["question"] for s in op.get("sources") or [] if s in by_id]
        return "\n\n".join(own) or "(several problems)"

    with ContextThreadPoolExecutor(max_workers=max(1, ctx.max_concurrency)) as pool:
        results = list(
            pool.map(
                lambda item: _retry_one(
                    runtime, ctx, ns, item[0], item[1], questions_of(item[0]), NODE + suffix(candidate)
                ),
                rejected,
            )
        )
    revised: list[Operation | None] = []
    calls: list[CallRecord] = []
    dropped: list[Dropped] = []
    for (op, _), done in zip(rejected, results, strict=True):
        calls.extend(done["calls"])
        if done["content"] is None:
            dropped.append(
                {
                    "stage": NODE,
                    "item": _key(op) + suffix(candidate),
                    "reason": done["error"] or "retry of a rejected lesson failed",
                }
            )
        revised.append({**op, "content": done["content"]} if done["content"] else None)
    return revised, calls, dropped


@dataclass(frozen=True)
class RetryOutcome:
    """One round of retries of the proposals the gate rejected: the rewrites that passed the gate
    (``passed``), the final rejections (``rejected``) and their counts by reason (``counts``), the
    retries counted by the first reason (``retried``), the call records and the failed retries
    (``dropped``)."""

    passed: list[Operation]
    rejected: list[RejectedOperation]
    counts: Counter[str]
    retried: Counter[str]
    calls: list[CallRecord]
    dropped: list[Dropped]


def retry_rejected(
    runtime: Runtime[Context],
    ctx: Context,
    state: StepState,
    gated: list[RejectedOperation],
    templates: set[tuple[str, ...]],
    candidate: int = 0,
) -> RetryOutcome:
    """Each proposal the gate rejected goes back to the learner once with the reason
    (:func:`retry_lessons`); the rewrite passes the same gate."""
    batch = state.get("batch", [])
    items: list[tuple[Operation, str]] = []
    first: list[tuple[str, str]] = []
    for rejected in gated:
        op = rejected["operation"]
        flaw = lesson_flaw(op.get("content") or "", own_problems(op, batch), templates, ctx.lesson_pattern)
        reason, detail = flaw if flaw is not None else ("", "")
        first.append((reason, detail))
        items.append((op, retry_hint(reason, detail, op) if reason else ""))
    revised, calls, dropped = retry_lessons(
        runtime, ctx, state.get("run_id", ""), state.get("step", 0), items, batch, candidate
    )
    passed: list[Operation] = []
    final: list[RejectedOperation] = []
    counts: Counter[str] = Counter()
    for rejected, (reason, _), (_, hint), rewrite in zip(gated, first, items, revised, strict=True):
        if rewrite is None:
            counts[reason] += 1
            final.append({**rejected, "why": f"{rejected['why']} (retried once: no rewrite)"})
            continue
        again = screen_lessons(
            [rewrite], batch, templates, where="proposal after retry: ", pattern=ctx.lesson_pattern, hint=hint
        )
        passed.extend(again.kept)
        final.extend({**r, "why": f"{r['why']} (first: {reason})"} for r in again.rejected)
        counts.update(again.counts)
    retried = Counter(reason for reason, _ in first)
    return RetryOutcome(passed, final, counts, retried, calls, dropped)
