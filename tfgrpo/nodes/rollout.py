"""Step 1 of Training-Free GRPO: **rollout**. One branch = one sample o_g ~ pi(o | q, E).

The learn graph fans out one ``Send("rollout", RolloutTask)`` per (query, g). Each branch runs the
policy agent of :mod:`tfgrpo.nodes.policy` -- the very agent of the inference graph -- so E reaches the
model through the same prompt, in the *system* prompt, in training and in production (the reference code
trains with E in the user message and infers with it in the system prompt); where the domain has no
tool, the agent's run is its one model call, made without the agent graph (``run_policy``). The
trajectory (tool calls and results included) is written to the store; state only gets a small
:class:`RolloutRef`. E's rendering reaches the branches by key: ``share_library`` puts it in the store at
the step's start, and the routers that send rollout and summarize branches name its key.
"""

from __future__ import annotations

from typing import Any, Literal

from langchain_core.messages import messages_to_dict
from langgraph.runtime import Runtime, get_runtime
from langgraph.types import Send
from typing_extensions import TypedDict

from tfgrpo.context import Context
from tfgrpo.nodes._llm import (
    context_of,
    derived_seed,
    library_key,
    library_text,
    library_text_of,
    memo_get,
    memo_put,
    publish_library_text,
    step_namespace,
    stop_if_draining,
    store_of,
)
from tfgrpo.nodes.policy import final_text, run_policy
from tfgrpo.state.graph_state import StepState
from tfgrpo.state.types import Dropped, Query, Rollout, RolloutRef, usage_of


class RolloutTask(TypedDict):
    """The payload of one rollout branch."""

    run_id: str
    step: int
    seed: int
    query: Query
    g: int
    library_key: str  # E's rendering is in the store under this key (see publish_library_text)


def rollout_key(query_id: str, g: int) -> str:
    return f"{query_id}#{g}"


def sample_seed(seed: int, step: int, query_id: str, g: int) -> int:
    """A distinct, reproducible sampling seed per rollout (servers that honour ``seed`` replay a run)."""
    return derived_seed(seed, step, query_id, g)


def rollout(task: RolloutTask, runtime: Runtime[Context]) -> dict[str, Any]:
    ctx = context_of(runtime)
    store = store_of(runtime)
    query, g = task["query"], task["g"]
    key = rollout_key(query["id"], g)
    ns = step_namespace(task["run_id"], task["step"], "rollouts")

    done = memo_get(store, ns, key)
    if done is None:
        stop_if_draining(runtime)
        library_text = library_text_of(store, task["run_id"], task["library_key"])
        seed = sample_seed(task.get("seed", 0), task["step"], query["id"], g)
        # the branch is the unit of resume; its result is memoized in the store
        calls_ns = step_namespace(task["run_id"], task["step"], "policy_calls")
        messages, error, records = run_policy(
            ctx, query["question"], library_text, seed, memo=(store, calls_ns, key)
        )
        record_: Rollout = {
            "query_id": query["id"],
            "g": g,
            "step": task["step"],
            "response": final_text(messages),
            "trajectory": messages_to_dict(messages),
            "error": error,
        }
        done = {"rollout": record_, "calls": list(records)}
        memo_put(store, ns, key, done)

    stored: Rollout = done["rollout"]
    ok = not stored.get("error")
    ref: RolloutRef = {"key": key, "query_id": query["id"], "g": g, "ok": ok, "error": stored.get("error")}
    update: dict[str, Any] = {"rollouts": [ref], "usage": usage_of(done["calls"])}
    if not ok:
        drop: Dropped = {"stage": "rollout", "item": key, "reason": stored.get("error") or "failed"}
        update["dropped"] = [drop]
    return update


def load_rollout(runtime: Runtime[Any], run_id: str, step: int, key: str) -> Rollout | None:
    found = memo_get(store_of(runtime), step_namespace(run_id, step, "rollouts"), key)
    return found["rollout"] if found else None


def share_library(state: StepState, runtime: Runtime[Any]) -> dict[str, Any]:
    """The step's first node: E's rendering into the store, once, for the step's map branches (rollout,
    summarize: E does not change before update_library), which carry only its key."""
    publish_library_text(store_of(runtime), state.get("run_id", ""), library_text(state.get("library")))
    return {}


def rollout_send(state: StepState, query: Query, g: int) -> Send:
    """The branch of attempt ``g`` at ``query`` (the step's first G, or an extra one of dynamic sampling);
    E's rendering is in the store since the step's start (share_library): the branch gets only its key."""
    return Send(
        "rollout",
        RolloutTask(
            run_id=state.get("run_id", ""),
            step=state.get("step", 0),
            seed=state.get("seed", 0),  # type: ignore[typeddict-item]
            query=query,
            g=g,
            library_key=library_key(library_text(state.get("library"))),
        ),
    )


def fan_out_rollouts(state: StepState) -> list[Send] | Literal["update_library"]:
    """The map of step 1: one branch per (query, g). An empty batch goes straight to the update."""
    ctx = context_of(get_runtime())
    sends = [rollout_send(state, query, g) for query in state.get("batch", []) for g in range(ctx.group_size)]
    return sends or "update_library"
