"""Step 6 of Training-Free GRPO: **update-library**.

One consolidation call over all proposals of the batch decides the final operations
``{op: ADD|UPDATE|DELETE|NONE, id, content}``: similar ADDs merged, DELETE beats UPDATE, several UPDATEs
on one id folded into one (the prompt states these rules, the word cap, what "specific to one problem"
means and the library's remaining capacity). Every ADD/UPDATE, proposed or final, from any model,
passes the **lesson gate** (:mod:`tfgrpo.nodes.lesson_gate`: no answer leak or copied question, within the
word cap, prose, not copied from the learner's instructions, not tied to one problem). A proposal stopped
there goes back to the learner once with the reason (:func:`tfgrpo.nodes.retry_lesson.retry_rejected`);
what still fails never reaches the consolidation call. Every rejection is listed with its reason and
counted by reason in the report (``lessons_rejected``).
The rest are applied with :func:`apply_operations`: DELETE really deletes, and an
UPDATE/DELETE of an unknown id is rejected and counted (never turned into an ADD). If the consolidation
output stays unparseable, the raw proposals are applied under the same rules and the failure is recorded.
A consolidation whose output would not fit the learner's token cap (``--learner-max-tokens``) is split
into consecutive chunks, each consolidated against E as the chunks before it left it.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any, cast

from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.runnables.config import ContextThreadPoolExecutor
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
from tfgrpo.nodes.candidates import own_proposals, set_aside, suffix
from tfgrpo.nodes.consolidation_budget import capacity_text, consolidation_chunks
from tfgrpo.nodes.extract import (
    ALL_OPS,
    WORD_CAP,
    ProposedOperation,
    extraction_schema,
    offered_ops,
    shaped_operation,
    with_operations,
)
from tfgrpo.nodes.lesson_gate import schema_descriptions, screen_lessons, templates_of
from tfgrpo.state.graph_state import StepState
from tfgrpo.state.library import (
    Library,
    Operation,
    RejectedOperation,
    apply_operations,
    empty_library,
    render_library_for_review,
)
from tfgrpo.state.report import build_step_report
from tfgrpo.state.types import CallRecord, Dropped, StepReport, usage_of


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
5. Every proposed ADD ends up merged into an operation (list its problem in `sources`) or kept as it \
is: a proposal you leave out is added as proposed. Rewrite a lesson that names a quantity, entity, value \
or the answer of its problem into the general rule; sharpen generic advice ("double-check", "be \
careful") with its trigger.
6. Respect the capacity: when little is left, prefer merging and UPDATE over ADD.
Only use ids that exist in the library. Answer NONE when nothing should change. Call the LibraryUpdate \
tool."""

USER_TEMPLATE = """{library}

Capacity: {capacity}

Proposed operations (JSON, with the problem each came from):
{proposals}"""


def learner_templates(prompts: str, k: int) -> set[tuple[str, ...]]:
    """The word n-grams (:func:`~tfgrpo.nodes.lesson_gate.templates_of`) of what the learner reads
    besides the data: its system prompts as this run uses them (``--prompts`` overrides included) and
    the descriptions in its extract, update and retry schemas."""
    return templates_of(
        [
            prompt_text(prompts, "summarize_system", summarize_node.SYSTEM_PROMPT),
            prompt_text(prompts, "extract_system", extract_node.SYSTEM_PROMPT),
            prompt_text(prompts, "update_system", SYSTEM_PROMPT),
            prompt_text(prompts, "retry_system", retry_node.SYSTEM_PROMPT),
            *schema_descriptions(extraction_schema(k).model_json_schema()),
            *schema_descriptions(LibraryUpdate.model_json_schema()),
            *schema_descriptions(retry_node.RevisedLesson.model_json_schema()),
        ]
    )


KEPT_AS_PROPOSED = "kept as proposed: the consolidation left it out"


def consolidate(
    runtime: Runtime[Context],
    ctx: Context,
    state: StepState,
    library: Library,
    proposed: list[Operation],
    key: str,
    known_sources: set[str],
    node: str = "update_library",
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
            node,
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
    covered: set[str] = set()  # problems whose proposals a final ADD/UPDATE merged or kept
    for op in done["operations"]:
        # provenance: the sources the model named if real, else those of the proposal it repeats, else
        # every proposing problem's (the gate then checks against all of them)
        sources = [s for s in op.get("sources") or [] if s in known_sources]
        if not sources:
            sources = sorted(sources_of_text.get(op.get("content") or "", set()) & known_sources)
        sources = sources or sorted(known_sources)
        if op.get("op") in ("ADD", "UPDATE"):
            covered.update(sources)  # one of unknown provenance may have merged any of them
        final.append(cast(Operation, {**op, "sources": sources}))
    # a gate-passing ADD is merged or kept, never silently dropped (the reference code never drops one;
    # a small learner dropped a group's only lesson as "specific to one problem")
    texts = {op.get("content") for op in final if op.get("op") in ("ADD", "UPDATE")}
    left_out = [
        op
        for op in proposed
        if op["op"] == "ADD" and op.get("content") not in texts and not covered & set(op.get("sources") or [])
    ]
    final += [cast(Operation, {**op, "reason": KEPT_AS_PROPOSED}) for op in left_out]
    return final, done["calls"], []


@dataclass(frozen=True)
class Update:
    """One update of E from a set of proposals: E after it, the step's report, the calls it made and the
    items it dropped."""

    library: Library
    report: StepReport
    calls: list[CallRecord]
    dropped: list[Dropped]


def update_library(state: StepState, runtime: Runtime[Context]) -> dict[str, Any]:
    ctx = context_of(runtime)
    if ctx.candidates <= 1:
        one = candidate_update(runtime, ctx, state)
        return {
            "library": one.library,
            "report": one.report,
            "usage": usage_of(one.calls),
            "dropped": one.dropped,
        }
    # --candidates N: one update per sampled candidate, set aside for the selection (nodes/candidates.py)
    with ContextThreadPoolExecutor(max_workers=max(1, ctx.max_concurrency)) as pool:
        updates = list(pool.map(lambda c: candidate_update(runtime, ctx, own_proposals(state, c), c),
                                range(ctx.candidates)))  # fmt: skip
    return set_aside(
        runtime,
        state,
        [(u.library, u.report) for u in updates],
        [r for u in updates for r in u.calls],
        [d for u in updates for d in u.dropped],
    )


def candidate_update(runtime: Runtime[Context], ctx: Context, state: StepState, candidate: int = 0) -> Update:
    """The gate, the retry, the consolidation and the operations over ``state``'s proposals; a
    ``candidate`` above 0 (``--candidates``) makes its calls under its own memo keys and node names."""
    library = state.get("library") or empty_library()
    proposals = state.get("proposals", [])
    batch = state.get("batch", [])
    templates = learner_templates(ctx.prompts, ctx.experiences_per_group)
    # junk proposals never reach the consolidation call (nor cost its tokens)
    screened = screen_lessons(
        [op for p in proposals for op in p["operations"]],
        batch,
        templates,
        where="proposal: ",
        pattern=ctx.lesson_pattern,
    )
    proposed, gated, gate_counts = screened.kept, screened.rejected, screened.counts
    calls: list[CallRecord] = []
    dropped: list[Dropped] = []
    retried: Counter[str] = Counter()
    rewrites: list[Operation] = []  # rewrites that passed the gate (those that failed are in rejected)
    if gated:
        retry = retry_node.retry_rejected(runtime, ctx, state, gated, templates, candidate)
        proposed = [*proposed, *retry.passed]
        gated, gate_counts, retried = retry.rejected, retry.counts, retry.retried
        rewrites = retry.passed
        calls, dropped = retry.calls, retry.dropped

    known_sources = {p["query_id"] for p in proposals}
    chunks = consolidation_chunks(proposed, ctx.learner_max_tokens)
    current = library
    applied: list[Operation] = []
    rejected: list[RejectedOperation] = []
    leaks: list[RejectedOperation] = []
    final_counts: Counter[str] = Counter()
    n_final = kept = 0
    for i, chunk in enumerate(chunks or [[]]):
        # one chunk keeps the memo key of a single consolidation (a resumed run finds it)
        key = "consolidation" if len(chunks) <= 1 else f"consolidation-{i + 1}-of-{len(chunks)}"
        final, chunk_calls, chunk_dropped = consolidate(
            runtime,
            ctx,
            state,
            current,
            chunk,
            key + suffix(candidate),
            known_sources,
            "update_library" + suffix(candidate),
        )
        calls, dropped = [*calls, *chunk_calls], [*dropped, *chunk_dropped]
        screened = screen_lessons(final, batch, templates, pattern=ctx.lesson_pattern)
        final, chunk_leaks, chunk_counts = screened.kept, screened.rejected, screened.counts
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
        kept += sum(op.get("reason") == KEPT_AS_PROPOSED for op in final)
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
        lessons_kept=kept,
        rewrites=rewrites,
    )
    return Update(new_library, report, calls, dropped)
