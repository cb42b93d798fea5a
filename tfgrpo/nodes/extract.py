"""Step 5 of Training-Free GRPO: **extract** the semantic advantage of each kept group.

One learner call per kept group. Contrast comes first (``nodes/attempts.py``): the distinct answers as
the reward read them, with how many attempts gave each and its reward, how many were cut off at the
token limit, a lone success or lone failure named as such, and the first line where a better and a
worse attempt differ. Then the attempts, each under its reward, the reward's reason, the answer read,
finished or cut off, and its length: whole when the group's attempts are short and tool-less (no
summaries were made for them), else through their summaries; identical attempts are shown once with
their numbers. The learner (shown E as the library under review) reasons in free text first
(``analysis``, the first field of the schema) about what the better attempts did that the worse did
not, then proposes at most K operations on E: the natural-language counterpart of GRPO's
group-relative advantage. The prompt states the lesson gate's rules. NONE is the answer when nothing
transfers. Calls run in parallel; each result is memoized in the store so a resumed run never pays for
a finished group twice. Unparseable output is retried, then recorded as dropped.
"""

from __future__ import annotations

import functools
from typing import Any, TypeVar, cast

from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.runnables.config import ContextThreadPoolExecutor
from langgraph.runtime import Runtime
from pydantic import BaseModel, ConfigDict, Field, create_model

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
from tfgrpo.nodes.attempts import attempts_text, group_attempts, group_evidence
from tfgrpo.nodes.candidates import candidate_seed, suffix
from tfgrpo.nodes.summarize import NO_GROUND_TRUTH, load_summary
from tfgrpo.state.graph_state import StepState
from tfgrpo.state.library import OP_NAMES, Operation, OpName, render_library_for_review
from tfgrpo.state.types import CallRecord, Dropped, Group, Proposal, Query, usage_of


def _ask_for_text(schema: dict[str, Any]) -> None:
    # Validation accepts a missing content (DELETE, NONE) or reason; the schema asks for both as strings,
    # because servers that constrain sampling with the schema (llama.cpp) otherwise let small models
    # write ``null`` where the lesson should be.
    schema["required"] = sorted({*schema.get("required", []), "content", "reason"})
    # maxLength: a server that builds a grammar from the schema (llama-cpp-python 0.3.36 does) closes the
    # string there, so a rambling lesson costs at most LESSON_MAX_CHARS; the lesson gate in update_library
    # still rejects one over WORD_CAP words (a lesson cut at LESSON_MAX_CHARS is over it).
    content = schema["properties"]["content"]
    schema["properties"]["content"] = {
        "type": "string",
        "description": content.get("description", ""),
        "maxLength": LESSON_MAX_CHARS,
    }


# A lesson's length: short enough to read before every problem, long enough for trigger, action, pitfall.
WORD_CAP = 35
LESSON_MAX_CHARS = 8 * WORD_CAP  # ~45 words of ~6 characters: room for any lesson within the cap


class ProposedOperation(BaseModel):
    """One change to the experience library."""

    model_config = ConfigDict(json_schema_extra=_ask_for_text)

    op: OpName = Field(description="The kind of change.")
    id: str | None = Field(default=None, description="Experience id (e.g. G3) for UPDATE and DELETE.")
    content: str | None = Field(
        default=None,
        # not lesson-shaped: a small model pasted the former "when it applies (a feature of the problem),
        # what to do, the pitfall seen" into E; the shape is the prompt's to teach
        description=f"ADD/UPDATE: the lesson text (max {WORD_CAP} words). DELETE/NONE: empty.",
    )
    reason: str = Field(default="", description="Why, in one sentence.")


ALL_OPS: tuple[str, ...] = OP_NAMES
# An empty library has nothing to update or delete: the schema then offers only these (an UPDATE or DELETE
# of an empty library is always rejected as an unknown id; the main job's 0.5B learner answered DELETE or
# UPDATE with a null id and lost its lesson that way).
EMPTY_LIBRARY_OPS = ("ADD", "NONE")

OpT = TypeVar("OpT", bound=ProposedOperation)


def offered_ops(library: Any, allowed: str = "") -> tuple[str, ...]:
    """The operations a library can take: ADD and NONE while it is empty, all four after; of those,
    only the ``allowed`` ones (comma-separated, "" for all) when that leaves any."""
    ops = ALL_OPS if library and library.get("items") else EMPTY_LIBRARY_OPS
    wanted = {op.strip().upper() for op in allowed.split(",") if op.strip()}
    kept = tuple(op for op in ops if op in wanted)
    return kept if kept else ops


@functools.lru_cache(maxsize=64)
def shaped_operation(base: type[OpT], lesson_pattern: str = "", ops: tuple[str, ...] = ALL_OPS) -> type[OpT]:
    """``base`` whose JSON schema also carries ``pattern: lesson_pattern`` on ``content`` (when set) and
    only ``ops`` in the ``op`` enum: a server that builds a grammar from the schema (llama.cpp) then
    writes lessons of that shape and no other operation. Validation stays the base class's (a model that
    ignores the schema is caught by the lesson gate, and by apply_operations for unknown ids). Same
    name, so the same tool."""
    if not lesson_pattern and tuple(ops) == ALL_OPS:
        return base

    def extra(schema: dict[str, Any]) -> None:
        _ask_for_text(schema)
        if lesson_pattern:
            schema["properties"]["content"]["pattern"] = lesson_pattern
        schema["properties"]["op"]["enum"] = [op for op in ALL_OPS if op in ops]

    namespace = {
        "__doc__": base.__doc__,
        "__module__": base.__module__,
        "__qualname__": base.__qualname__,
        "model_config": ConfigDict(json_schema_extra=extra),
    }
    return cast("type[OpT]", type(base.__name__, (base,), namespace))


class ExtractedExperiences(BaseModel):
    """The semantic advantage of one group of attempts, as operations on the experience library."""

    # first in the schema, so the model reasons before it commits to operations
    analysis: str = Field(
        description="Written first, free text: which decision separated the better attempts from the "
        "worse, where and why the worse went wrong, whether a library experience helped, was ignored or "
        "misled, and whether the lesson would help on a different problem before its answer is known."
    )
    # minItems only in the schema (an empty list still validates): asks for an explicit NONE, and stops
    # grammar-constrained small models from answering every group with "operations": []
    operations: list[ProposedOperation] = Field(
        description="At most K operations on the library (NONE if nothing transfers to other problems).",
        json_schema_extra={"minItems": 1},
    )


@functools.lru_cache(maxsize=16)
def extraction_schema(
    k: int, lesson_pattern: str = "", ops: tuple[str, ...] = ALL_OPS
) -> type[ExtractedExperiences]:
    """:class:`ExtractedExperiences` whose schema also says ``maxItems: k``: a server that constrains
    sampling with the schema (llama.cpp) then closes the list after K operations, where a small model
    otherwise kept adding near-identical ADDs until max_tokens cut its JSON (retried, then dropped: 2 of 5
    kept groups in the embedded main job). Validation stays the base class's; operations beyond K from
    a model that ignores the schema are still cut and counted. Same name, so the same tool. Its
    operations are :func:`shaped_operation` (``lesson_pattern`` on their content, only ``ops``)."""
    operation = shaped_operation(ProposedOperation, lesson_pattern, tuple(ops))
    return with_operations(ExtractedExperiences, operation, {"minItems": 1, "maxItems": k})


ModelT = TypeVar("ModelT", bound=BaseModel)


def with_operations(
    model: type[ModelT], operation: type[BaseModel], schema_extra: dict[str, Any]
) -> type[ModelT]:
    """``model`` (same name and doc, so the same tool) whose ``operations`` list holds ``operation`` items
    and carries ``schema_extra`` (e.g. minItems / maxItems) in its JSON schema; validation is the
    base's plus whatever ``operation`` adds."""
    field = model.model_fields["operations"]
    return create_model(
        model.__name__,
        __base__=model,
        __doc__=model.__doc__,
        operations=(
            list[operation],  # type: ignore[valid-type]
            Field(description=field.description, json_schema_extra=schema_extra),
        ),
    )


SYSTEM_PROMPT = """You are the learner of a team that improves by comparing its own attempts. You get a \
problem, its ground truth, the experience library under review, the answers of several attempts as the \
reward read them (with counts and rewards), and the attempts: whole when they are short, else \
summarized. Each attempt shows its reward, the reward's reason, whether it finished or was cut off at \
the token limit, and its length.

First reason in `analysis` (free text, before any operation): what did the better attempts do THAT THE \
WORSE DID NOT? Compare the answers first: their form, unit, answer line and length, then the steps. A \
step that every attempt took is not the difference and not a lesson. A lone success shows what to do; \
a lone failure shows what to avoid. Say whether an experience of the library helped, was ignored or \
misled, and whether the difference would help on a DIFFERENT problem, before its answer is known.

Then write at most {k} operation(s) in `operations`:
- ADD a new lesson; UPDATE an existing one (give its id) with a full replacement text that makes it \
sharper; DELETE one (give its id) that misled the attempts; or NONE.
- A lesson says when it applies (a feature of the problem visible before solving it), what the better \
attempts did that the worse did not, and what went wrong without it, in at most {word_cap} words. \
Example shape: "When <feature of the problem>, <do this>; <otherwise> gave wrong answers."
- NONE when nothing transfers (a lucky guess, a one-off slip with no pattern, no difference between \
better and worse): NONE is better than a vague lesson. Generic advice ("double-check your work") does \
not help: say what to check, and when.

Every lesson is checked before it is stored, and rejected when it:
- contains the answer of this problem, or 8 or more consecutive words of its question;
- quotes the numbers of this problem (one of two or more digits, or two different numbers): write \
letters or words for them, and state the rule for new problems;
- tells the story of these attempts ("this attempt", "attempt 3", "the first model turn") instead of \
the rule;
- copies 5 or more consecutive words of these instructions;
- has fewer than 6 words, or is mostly numbers and symbols;
- is longer than {word_cap} words.

Call the ExtractedExperiences tool."""

USER_TEMPLATE = """Problem:
{question}

Ground-truth answer: {answer}

{library}

{evidence}

{attempts}"""


def _proposal_key(query_id: str) -> str:
    return f"{query_id}"


def _extract_group(
    runtime: Runtime[Context],
    ctx: Context,
    state: StepState,
    group: Group,
    query: Query,
    candidate: int = 0,
) -> tuple[Proposal | None, list[CallRecord], list[Dropped]]:
    """``candidate``: which sampled candidate update (``--candidates``) this call is for; its own seed,
    memo key and ledger node name (:mod:`tfgrpo.nodes.candidates`)."""
    run_id, step = state.get("run_id", ""), state.get("step", 0)
    store = store_of(runtime)
    ns = step_namespace(run_id, step, "extract")
    memo_key = _proposal_key(query["id"]) + suffix(candidate)
    done = memo_get(store, ns, memo_key)
    if done is None:
        attempts = group_attempts(store, run_id, step, group)
        whole = bool(group.get("read_whole"))
        summaries: dict[int, str] | None = None
        if not whole:  # long trajectories: each attempt through its summary (a failed one is left out)
            summaries = {}
            for a in attempts:
                summary = load_summary(runtime, run_id, step, group["keys"][a.number - 1])
                if summary is not None:
                    summaries[a.number] = summary
            attempts = [a for a in attempts if a.number in summaries]
        if len(attempts) < 2:
            what = "attempts" if whole else "summaries"
            done = {
                "proposal": None,
                "error": f"only {len(attempts)} {what} usable",
                "calls": [],
                "over_k": 0,
            }
        else:
            model, spec = learner_model(ctx)
            system = prompt_text(ctx.prompts, "extract_system", SYSTEM_PROMPT)
            user = prompt_text(ctx.prompts, "extract_user", USER_TEMPLATE)
            evidence = group_evidence(query["answer"] or NO_GROUND_TRUTH, attempts)
            shown = attempts_text(attempts, summaries)
            if "{evidence}" not in user:  # an override written before the evidence existed still gets it
                shown = f"{evidence}\n\n{shown}"
            messages = [
                SystemMessage(system.format(k=ctx.experiences_per_group, word_cap=WORD_CAP)),
                HumanMessage(
                    user.format(
                        question=query["question"],
                        answer=query["answer"] or NO_GROUND_TRUTH,
                        library=render_library_for_review(state.get("library")),
                        evidence=evidence,
                        attempts=shown,
                    )
                ),
            ]
            parsed, records, error = call_structured(
                ctx,
                model,
                spec,
                "extract" + suffix(candidate),
                extraction_schema(
                    ctx.experiences_per_group,
                    ctx.lesson_pattern,
                    offered_ops(state.get("library"), ctx.extract_ops),
                ),
                messages,
                retries=ctx.structured_retries,
                method=ctx.structured_method,
                seed=candidate_seed(state, query["id"], candidate),
            )
            proposal: Proposal | None = None
            over_k = 0
            if parsed is not None:
                real = [op for op in parsed.operations if op.op != "NONE"]
                over_k = max(0, len(real) - ctx.experiences_per_group)
                ops: list[Operation] = [
                    {
                        "op": op.op,
                        "id": op.id,
                        "content": op.content,
                        "reason": op.reason,
                        "sources": [query["id"]],
                    }
                    for op in real[: ctx.experiences_per_group]
                ]
                proposal = {"query_id": query["id"], "analysis": parsed.analysis, "operations": ops}
                if candidate:
                    proposal["candidate"] = candidate
            done = {"proposal": proposal, "error": error, "calls": records, "over_k": over_k}
        memo_put(store, ns, memo_key, done)

    dropped: list[Dropped] = []
    if done["proposal"] is None:
        dropped.append({"stage": "extract", "item": memo_key, "reason": done["error"] or "failed"})
    if done["over_k"]:
        dropped.append(
            {
                "stage": "extract",
                "item": memo_key,
                "reason": f"{done['over_k']} operation(s) beyond K={ctx.experiences_per_group} cut",
            }
        )
    return done["proposal"], done["calls"], dropped


def extract(state: StepState, runtime: Runtime[Context]) -> dict[str, Any]:
    ctx = context_of(runtime)
    queries = {q["id"]: q for q in state.get("batch", [])}
    kept = [group for group in state.get("groups", []) if group["kept"]]
    # --candidates N: every group's call sampled N times (candidate 0 is the call made without it)
    tasks = [(c, group) for c in range(ctx.candidates) for group in kept]
    with ContextThreadPoolExecutor(max_workers=max(1, ctx.max_concurrency)) as pool:
        results = list(
            pool.map(
                lambda t: _extract_group(runtime, ctx, state, t[1], queries[t[1]["query_id"]], t[0]), tasks
            )
        )
    proposals = [proposal for proposal, _, _ in results if proposal is not None]
    calls = [record for _, records, _ in results for record in records]
    dropped = [drop for _, _, drops in results for drop in drops]
    return {"proposals": proposals, "usage": usage_of(calls), "dropped": dropped}
