"""Evaluation: **attempt**. One branch = one run of the inference agent on one question, scored.

Not a step of the learning algorithm but of the paper's evaluation protocol (Mean@k / Pass@k): every
question is answered k times by the *same* agent that learning uses, once per arm -- ``library`` with E in
the system prompt, ``baseline`` with no E -- and run i of both arms uses the same sampling seed, so the
comparison is paired. The trajectory and the reward are memoized in the store the moment they exist, so
a killed evaluation resumes without repeating finished runs.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from langchain_core.messages import messages_to_dict
from langgraph.runtime import Runtime
from langgraph.types import Send
from typing_extensions import TypedDict

from tfgrpo.context import Context
from tfgrpo.data import load_dataset
from tfgrpo.errors import ConfigError
from tfgrpo.evals.rewards import extract_final_answer, ground_truth_reward
from tfgrpo.nodes._llm import (
    context_of,
    derived_seed,
    library_text_of,
    memo_get,
    memo_put,
    publish_library_text,
    stop_if_draining,
    store_of,
)
from tfgrpo.nodes._prompts import validate_prompts
from tfgrpo.nodes.policy import final_text, inference_experiences
from tfgrpo.nodes.reward import scored_run
from tfgrpo.state.graph_state import EvalState
from tfgrpo.state.types import AttemptResult, Query

ARMS = ("library", "baseline")


class AttemptTask(TypedDict):
    """The payload of one attempt branch (E travels by store key, not by value)."""

    eval_id: str
    arm: str
    query: Query
    i: int
    seed: int
    library_key: str


def attempt_seed(seed: int, query_id: str, i: int) -> int:
    """Run i of a question gets the same sampling seed in both arms: a paired comparison."""
    return derived_seed("eval", seed, query_id, i)


def attempt_namespace(eval_id: str, arm: str) -> tuple[str, ...]:
    return ("tfgrpo-eval", eval_id or "default", arm)


def attempt_key(query_id: str, i: int) -> str:
    return f"{query_id}#{i}"


def attempt(task: AttemptTask, runtime: Runtime[Context]) -> dict[str, Any]:
    ctx = context_of(runtime)
    store = store_of(runtime)
    query, arm, i = task["query"], task["arm"], task["i"]
    ns, key = attempt_namespace(task["eval_id"], arm), attempt_key(query["id"], i)
    done = memo_get(store, ns, key)
    if done is None:
        stop_if_draining(runtime)
        key_ = task["library_key"]
        experiences = library_text_of(store, task["eval_id"], key_) if key_ else ""
        seed = attempt_seed(task["seed"], query["id"], i)
        scored = scored_run(ctx, query, experiences, seed, node="rollout")
        value, error, calls = scored.value, scored.error, scored.calls
        response = final_text(scored.messages)
        paid = [c for c in calls if not c.get("cached")]  # an identical request in flight paid for the rest
        cached = [c for c in calls if c.get("cached")]
        result: AttemptResult = {
            "arm": arm,
            "query_id": query["id"],
            "i": i,
            "reward": value,
            "answer": extract_final_answer(response)[:200],
            "error": error,
            "calls": len(paid),
            "input_tokens": sum(c["input_tokens"] for c in paid),
            "output_tokens": sum(c["output_tokens"] for c in paid),
            "cost_usd": round(sum(c.get("cost_usd") or 0.0 for c in paid), 8),
            "cached_calls": len(cached),
            "cached_tokens": sum(c["input_tokens"] + c["output_tokens"] for c in cached),
        }
        done = {"result": result, "trajectory": messages_to_dict(scored.messages), "calls": calls}
        memo_put(store, ns, key, done)
    return {"results": [done["result"]]}


def eval_context(state: EvalState, ctx: Context) -> Context:
    """The context with the input's ``dataset`` and ``library`` (a file or run directory that exists, else
    a learn run's id: its published E) in place of the context's."""
    if state.get("dataset"):
        ctx = replace(ctx, dataset=state["dataset"])
    library = state.get("library")
    if library:
        found = Path(library).exists()
        ctx = replace(ctx, library=library if found else "", library_run="" if found else library)
    return ctx


def prepare(state: EvalState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Fill in what the input left out: an id, the questions (``dataset`` of the context), the arms, and
    E's rendering, published once in the store (``library`` / ``library_namespace`` of the context)."""
    ctx = eval_context(state, context_of(runtime))
    validate_prompts(ctx.prompts)  # a bad prompt override fails before any call
    store = store_of(runtime)
    eval_id = state.get("eval_id") or uuid.uuid4().hex[:12]
    given = state.get("arm_libraries")  # arms with their own E (attribution), already in the store
    experiences = "" if given else inference_experiences(ctx, runtime.store)
    # an empty E is still a library to test
    has_library = bool(ctx.library or ctx.library_namespace or ctx.library_run)
    default_arms = ["library"] if state.get("baseline") is False else list(ARMS)
    arms = list(given) if given else state.get("arms") or (default_arms if has_library else ["baseline"])
    unknown = sorted(set(arms) - set(ARMS))
    if unknown and not given:
        raise ConfigError(f"unknown evaluation arm(s) {', '.join(unknown)} (expected library, baseline)")
    if "library" in arms and not has_library and not given:
        raise ConfigError("the library arm needs a library: set 'library' or 'library_namespace'")
    ground_truth_reward(ctx.reward)  # a bad reward fails here, before any run is paid for
    if state.get("k", 1) < 1:
        raise ConfigError("k must be at least 1")
    return {
        "eval_id": eval_id,
        "questions": state.get("questions") or load_dataset(ctx.dataset),
        "seed": state.get("seed", 0),
        "arms": arms,
        "k": state.get("k", 1),
        "library_key": publish_library_text(store, eval_id, experiences),
    }


def fan_out_attempts(state: EvalState) -> list[Send]:
    """One branch per (arm, question, run): k runs per question in every arm, one arm after the other.

    The order is the order the calls reach the model: a server that keeps the previous prompt's KV prefix
    (llama.cpp) then reads E once per arm instead of once per run (arms taking turns made every library
    run re-read E: ~6 s per run for 370 tokens of E on one CPU core, 0.3 s with the prefix kept)."""
    keys = state.get("arm_libraries") or {"library": state.get("library_key", ""), "baseline": ""}
    return [
        Send(
            "attempt",
            AttemptTask(
                eval_id=state.get("eval_id", ""),
                arm=arm,
                query=query,
                i=i,
                seed=state.get("seed", 0),
                library_key=keys.get(arm, ""),
            ),
        )
        for arm in state.get("arms", ["library"])
        for query in state.get("questions", [])
        for i in range(state.get("k", 1))
    ]
