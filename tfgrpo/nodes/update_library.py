"""Step 6 of Training-Free GRPO: **update-library**.

One consolidation call over all proposals of the batch decides the final operations
``{op: ADD|UPDATE|DELETE|NONE, id, content}``: similar ADDs merged, DELETE beats UPDATE, several UPDATEs
on one id folded into one. They are applied with :func:`apply_operations`: DELETE really deletes, and an
UPDATE/DELETE of an unknown id is rejected and counted (never turned into an ADD). If the consolidation
output stays unparseable, the raw proposals are applied under the same rules and the failure is recorded.
"""

from __future__ import annotations

import json
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
from tfgrpo.nodes.extract import ProposedOperation
from tfgrpo.state.graph_state import StepState
from tfgrpo.state.library import Operation, apply_operations, empty_library, render_library
from tfgrpo.state.report import build_step_report
from tfgrpo.state.types import CallRecord, Dropped, usage_of


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


SYSTEM_PROMPT = (
    "You maintain a library of general experiences for solving problems. You receive the current "
    "library and operations proposed from several groups of attempts. Produce the final list of "
    "operations: merge proposals that say the same thing into one ADD, prefer UPDATE of an existing "
    "experience over a near-duplicate ADD, let DELETE win over UPDATE of the same id, fold several "
    "UPDATEs of one id into one, and drop proposals that are specific to a single problem. Only use ids "
    "that exist in the library. Keep each experience to 1-2 sentences. Call the LibraryUpdate tool."
)

USER_TEMPLATE = """Current experience library:
{library}

Proposed operations (JSON, with the problem each came from):
{proposals}"""


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
            messages = [
                SystemMessage(SYSTEM_PROMPT),
                HumanMessage(
                    USER_TEMPLATE.format(
                        library=render_library(library) or "(empty)",
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
        rejected=rejected,
        more_calls=calls,
        more_dropped=dropped,
        final_operations=len(final),
    )
    return {"library": new_library, "report": report, "usage": usage_of(calls), "dropped": dropped}
