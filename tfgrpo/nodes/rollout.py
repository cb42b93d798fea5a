"""Step 1 of Training-Free GRPO: **rollout**. One branch = one sample o_g ~ pi(o | q, E).

The learn graph fans out one ``Send("rollout", RolloutTask)`` per (query, g). E goes in the *system*
prompt, exactly as at inference time (the reference code trains with E in the user message and infers
with it in the system prompt; we do not copy that mismatch). The trajectory is written to the store;
state only gets a small :class:`RolloutRef`.
"""

from __future__ import annotations

import hashlib
from typing import Any

from langchain_core.messages import HumanMessage, SystemMessage, messages_to_dict
from langgraph.runtime import Runtime, get_runtime
from langgraph.types import Send
from typing_extensions import TypedDict

from tfgrpo.context import Context
from tfgrpo.nodes._llm import (
    call_text,
    context_of,
    library_text_of,
    memo_get,
    memo_put,
    policy_model,
    publish_library_text,
    step_namespace,
    store_of,
)
from tfgrpo.state.graph_state import StepState
from tfgrpo.state.library import render_library
from tfgrpo.state.types import Dropped, Query, Rollout, RolloutRef, usage_of

SYSTEM_PROMPT = "You are a careful problem solver. Think step by step, then give the final answer {fmt}."
ANSWER_FORMATS = {
    "math": "in \\boxed{{}}",
    "default": "on a last line of the form 'Answer: <answer>'",
}


def system_prompt(reward: str, library_text: str) -> str:
    fmt = ANSWER_FORMATS["math"] if reward == "math" else ANSWER_FORMATS["default"]
    base = SYSTEM_PROMPT.format(fmt=fmt)
    return f"{base}\n\n{library_text}" if library_text else base


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
    digest = hashlib.sha256(f"{seed}:{step}:{query_id}:{g}".encode()).hexdigest()
    return int(digest[:8], 16) % (2**31)


def rollout(task: RolloutTask, runtime: Runtime[Context]) -> dict[str, Any]:
    ctx = context_of(runtime)
    store = store_of(runtime)
    query, g = task["query"], task["g"]
    key = rollout_key(query["id"], g)
    ns = step_namespace(task["run_id"], task["step"], "rollouts")

    done = memo_get(store, ns, key)
    if done is None:
        model, spec = policy_model(ctx)
        messages = [
            SystemMessage(
                system_prompt(ctx.reward, library_text_of(store, task["run_id"], task["library_key"]))
            ),
            HumanMessage(query["question"]),
        ]
        seed = sample_seed(task.get("seed", 0), task["step"], query["id"], g)
        msg, record, error = call_text(ctx, model, spec, "rollout", messages, seed=seed)
        text = msg.content if msg is not None and isinstance(msg.content, str) else ""
        record_: Rollout = {
            "query_id": query["id"],
            "g": g,
            "step": task["step"],
            "response": text,
            "trajectory": messages_to_dict([*messages, *([msg] if msg is not None else [])]),
            "error": error,
        }
        done = {"rollout": record_, "calls": [record]}
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


def fan_out_rollouts(state: StepState) -> list[Send] | str:
    """The map of step 1: one branch per (query, g). An empty batch goes straight to the update."""
    runtime = get_runtime()
    ctx = context_of(runtime)
    library_text = render_library(state["library"]) if state.get("library") else ""
    library_key = publish_library_text(store_of(runtime), state.get("run_id", ""), library_text)
    sends = [
        Send(
            "rollout",
            RolloutTask(
                run_id=state.get("run_id", ""),
                step=state.get("step", 0),
                seed=state.get("seed", 0),  # type: ignore[typeddict-item]
                query=query,
                g=g,
                library_key=library_key,
            ),
        )
        for query in state.get("batch", [])
        for g in range(ctx.group_size)
    ]
    return sends or "update_library"
