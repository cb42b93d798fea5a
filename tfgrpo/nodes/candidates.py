"""Beyond the paper: **lessons chosen by what they do** (``--candidates N``, optional).

A weak learner proposes mostly junk and sometimes the right lesson, and cannot tell which is which; the
policy can, by using the lesson (as GEPA and DSPy's optimizers select by measured score). With N > 1
``extract`` samples every kept group's call N times (candidate 0 as without the option, candidate c its
own sampling seed, memo keys and ledger node names ``NODE@cC``), and ``update_library`` turns each
candidate's proposals into a candidate E through the same gate, retry and consolidation. The current E
stays in state; each candidate E and its report go to the store.

Then the selection, in the shape of the validation gate (:mod:`tfgrpo.nodes.validate`): the selection
set is the step's questions whose groups had contrast, fixed by the step; each distinct changed
candidate E answers each of them ``selection_k`` times (a ``Send`` branch each, memoized in the store),
run i with the sampling seed of the question's rollout i, so it is paired with what the current E scored
there (those rollouts are not run again). A candidate with no applied lesson is the current E and is not
scored; candidates with the same E are scored once. ``choose_candidate`` keeps the candidate with the
best mean paired gain if that gain exceeds ``candidate_margin``, else E stays.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal, cast

from langgraph.runtime import Runtime, get_runtime
from langgraph.types import Send
from typing_extensions import TypedDict

from tfgrpo.context import Context
from tfgrpo.nodes._llm import (
    context_of,
    derived_seed,
    library_text_of,
    memo_get,
    memo_put,
    publish_library_text,
    step_namespace,
    stop_if_draining,
    store_of,
)
from tfgrpo.nodes.reward import scored_run
from tfgrpo.nodes.rollout import sample_seed
from tfgrpo.state.graph_state import StepState
from tfgrpo.state.library import Library, Operation, empty_library, render_library
from tfgrpo.state.report import usage_totals
from tfgrpo.state.types import (
    CallRecord,
    Candidate,
    CandidateScore,
    Dropped,
    Query,
    SelectionReport,
    SelectionRun,
    StepReport,
    Usage,
    usage_of,
)

SELECT = "select"
CHOOSE = "choose_candidate"
DONE = "done"  # route_after_update's name for whatever follows the step
LEARNER_NODES = ("extract", "retry_lesson", "update_library")


def suffix(candidate: int) -> str:
    """What a candidate's memo keys and ledger node names carry: nothing for candidate 0 (the one update
    a run without ``--candidates`` makes, under the same keys), ``@cC`` for the others."""
    return f"@c{candidate}" if candidate else ""


def candidate_seed(state: StepState, query_id: str, candidate: int) -> int | None:
    """The learner's sampling seed for a candidate's call on one group: none for candidate 0 (its request
    is the one a run without ``--candidates`` sends), a distinct reproducible one for the others."""
    if not candidate:
        return None
    seed = cast(dict[str, Any], state).get("seed", 0)  # the learn loop's (StepState has none)
    return derived_seed("candidate", seed, state.get("step", 0), query_id, candidate)


def own_proposals(state: StepState, candidate: int) -> StepState:
    """``state`` as one candidate's update sees it: only that candidate's proposals."""
    proposals = [p for p in state.get("proposals", []) if p.get("candidate", 0) == candidate]
    return {**state, "proposals": proposals}


def operation_line(op: Operation) -> str:
    text = " ".join(str(op.get("content") or "").split())
    return " ".join(part for part in (op.get("op"), op.get("id") or "", text) if part)


def set_aside(
    runtime: Runtime[Context],
    state: StepState,
    updates: list[tuple[Library, StepReport]],
    calls: list[CallRecord],
    dropped: list[Dropped],
) -> dict[str, Any]:
    """``update_library`` with N > 1: each candidate's E and report go to the store, its rendering is
    published for the selection runs, and state keeps E as it was plus what tells the candidates apart."""
    store = store_of(runtime)
    run_id, step = state.get("run_id", ""), state.get("step", 0)
    current = state.get("library") or empty_library()
    current_key = publish_library_text(store, run_id, render_library(current))
    ns = step_namespace(run_id, step, "candidates")
    seen: dict[str, int] = {}
    candidates: list[Candidate] = []
    for c, (library, report) in enumerate(updates):
        memo_put(store, ns, f"c{c}", {"library": library, "report": report})
        key = publish_library_text(store, run_id, render_library(library))
        changed = bool(report["applied"]) and key != current_key
        candidates.append(
            {
                "candidate": c,
                "library_key": key,
                "changed": changed,
                "duplicate_of": seen.get(key) if changed else None,
                "lessons": [operation_line(op) for op in report["applied"]],
            }
        )
        if changed:
            seen.setdefault(key, c)
    return {"candidates": candidates, "usage": usage_of(calls), "dropped": dropped}


class SelectTask(TypedDict):
    run_id: str
    step: int
    seed: int
    candidate: int
    query: Query
    i: int
    library_key: str


def selection_set(state: StepState, k: int) -> list[tuple[Query, int]]:
    """The step's questions whose groups had contrast, each with the runs i < k whose rollout scored."""
    queries = {q["id"]: q for q in state.get("batch", [])}
    return [
        (queries[group["query_id"]], i)
        for group in state.get("groups", [])
        if group["kept"] and group["query_id"] in queries
        for i in range(min(k, len(group["rewards"])))
        if group["rewards"][i] is not None
    ]


def scored(candidates: list[Candidate]) -> list[Candidate]:
    return [c for c in candidates if c["changed"] and c["duplicate_of"] is None]


def fan_out_selection(state: StepState) -> list[Send] | Literal["choose_candidate"]:
    """After update_library with N > 1: a selection run per distinct changed candidate, question and i
    (to ``choose_candidate`` directly when there is none)."""
    ctx = context_of(get_runtime())
    sends = [
        Send(
            SELECT,
            SelectTask(
                run_id=state.get("run_id", ""),
                step=state.get("step", 0),
                seed=state.get("seed", 0),  # type: ignore[typeddict-item]
                candidate=cand["candidate"],
                query=query,
                i=i,
                library_key=cand["library_key"],
            ),
        )
        for cand in scored(state.get("candidates", []))
        for query, i in selection_set(state, ctx.selection_k)
    ]
    return sends or "choose_candidate"


def route_after_update(state: StepState) -> list[Send] | Literal["choose_candidate", "done"]:
    """After update_library: on to the step's end (``DONE``) with one candidate, else to the selection."""
    if context_of(get_runtime()).candidates <= 1:
        return "done"
    return fan_out_selection(state)


def select(task: SelectTask, runtime: Runtime[Context]) -> dict[str, Any]:
    """One selection run (a map branch), memoized by E's rendering, question and i."""
    ctx = context_of(runtime)
    store = store_of(runtime)
    ns = step_namespace(task["run_id"], task["step"], "selection")
    key = f"{task['library_key']}:{task['query']['id']}#{task['i']}"
    done = memo_get(store, ns, key)
    if done is None:
        stop_if_draining(runtime)
        experiences = library_text_of(store, task["run_id"], task["library_key"])
        # the seed of the question's rollout i: paired with the current E's attempt there
        seed = sample_seed(task["seed"], task["step"], task["query"]["id"], task["i"])
        node = SELECT + suffix(task["candidate"])
        scored_ = scored_run(ctx, task["query"], experiences, seed, node=node)
        done = {"reward": scored_.value, "error": scored_.error, "calls": scored_.calls}
        memo_put(store, ns, key, done)
    run: SelectionRun = {
        "candidate": task["candidate"],
        "query_id": task["query"]["id"],
        "i": task["i"],
        "reward": done["reward"],
    }
    return {"selection": [run], "usage": usage_of(done["calls"])}


def _cost(usage: dict[str, Usage], candidate: int) -> tuple[int, int, float]:
    """Calls, tokens and dollars booked under a candidate's node names."""
    mark = suffix(candidate)
    nodes = [n + mark for n in (*LEARNER_NODES, SELECT)]
    mine = [usage[n] for n in nodes if n in usage]
    return (
        sum(u["calls"] for u in mine),
        sum(u["input_tokens"] + u["output_tokens"] for u in mine),
        round(sum(u["cost_usd"] for u in mine), 6),
    )


def _score(
    cand: Candidate, runs: list[SelectionRun], current: dict[tuple[str, int], float]
) -> dict[str, Any]:
    """Mean paired rewards of a candidate's runs and the current E's on the same (question, i)."""
    mine = [r for r in runs if r["candidate"] == cand["candidate"]]
    pairs = [
        (r["reward"], current[(r["query_id"], r["i"])])
        for r in mine
        if r["reward"] is not None and (r["query_id"], r["i"]) in current
    ]
    if not pairs:
        return {"mean": None, "current": None, "delta": None, "runs": len(mine), "failed": len(mine)}
    mean = round(sum(p[0] for p in pairs) / len(pairs), 4)
    base = round(sum(p[1] for p in pairs) / len(pairs), 4)
    failed = sum(1 for r in mine if r["reward"] is None)
    return {
        "mean": mean,
        "current": base,
        "delta": round(mean - base, 4),
        "runs": len(mine),
        "failed": failed,
    }


def _current_rewards(state: StepState, k: int) -> dict[tuple[str, int], float]:
    out: dict[tuple[str, int], float] = {}
    for group in state.get("groups", []):
        for i, reward in enumerate(group["rewards"][:k]):
            if reward is not None:
                out[(group["query_id"], i)] = reward
    return out


def choose_candidate(state: StepState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Keep the candidate E with the best paired gain over the current E if it beats the margin, else
    keep E; the step's report is the kept candidate's (candidate 0's, nothing applied, when E stays)."""
    ctx = context_of(runtime)
    store = store_of(runtime)
    candidates = state.get("candidates", [])
    current = state.get("library") or empty_library()
    runs = state.get("selection", [])
    paired = _current_rewards(state, ctx.selection_k)
    usage = state.get("usage") or {}
    by_index = {c["candidate"]: _score(c, runs, paired) for c in scored(candidates)}
    best: int | None = None
    for c, score in by_index.items():  # ties: the lower candidate
        delta = score["delta"]
        if (
            delta is not None
            and delta > ctx.candidate_margin
            and (best is None or delta > by_index[best]["delta"])
        ):
            best = c
    rows: list[CandidateScore] = []
    for cand in candidates:
        c = cand["candidate"]
        source = cand["duplicate_of"] if cand["duplicate_of"] is not None else c
        score = by_index.get(source, {"mean": None, "current": None, "delta": None, "runs": 0, "failed": 0})
        if source != c:
            score = {**score, "runs": 0, "failed": 0}  # its runs are its original's
        status = (
            "unchanged" if not cand["changed"] else "scored" if source == c else f"duplicate of c{source}"
        )
        calls, tokens, cost = _cost(usage, c)
        rows.append(
            {
                "candidate": c,
                "status": status,
                "lessons": cand["lessons"],
                "calls": calls,
                "tokens": tokens,
                "cost_usd": cost,
                "chosen": c == best,
                **score,  # type: ignore[typeddict-item]
            }
        )
    ns = step_namespace(state.get("run_id", ""), state.get("step", 0), "candidates")
    kept = memo_get(store, ns, f"c{best if best is not None else 0}") or {}
    report: StepReport = dict(kept.get("report") or state.get("report") or {})  # type: ignore[assignment]
    stored = [memo_get(store, ns, f"c{c['candidate']}") or {} for c in candidates]
    next_id = max([current["next_id"], *(s["library"]["next_id"] for s in stored if s.get("library"))])
    if best is not None:
        library: Library = cast(Library, {**kept["library"], "next_id": next_id})
        reason = f"candidate {best} gained {by_index[best]['delta']:+.3f} over the current E: kept"
    else:
        # ids are never reused: E keeps the counter of the candidates set aside
        library = {**current, "next_id": next_id}
        gains = [s["delta"] for s in by_index.values() if s["delta"] is not None]
        reason = (
            f"no candidate gained more than {ctx.candidate_margin:g} (best {max(gains):+.3f}): E stays"
            if gains
            else "no candidate E to score (none changed E, or no question had contrast): E stays"
        )
        report = {**report, "applied": [], "operations_applied": 0}
    extra = [u for node, u in usage.items() if "@c" in node or node.split("@")[0] == SELECT]
    selection: SelectionReport = {
        "questions": sorted({q["id"] for q, _ in selection_set(state, ctx.selection_k)}),
        "k": ctx.selection_k,
        "margin": ctx.candidate_margin,
        "chosen": best,
        "reason": reason,
        "candidates": rows,
        "extra_calls": sum(u["calls"] for u in extra),
        "extra_tokens": sum(u["input_tokens"] + u["output_tokens"] for u in extra),
        "extra_cost_usd": round(sum(u["cost_usd"] for u in extra), 6),
    }
    report = {
        **report,
        "usage": usage,
        "selection": selection,
        "library_size": len(library["items"]),
        "library_version": library["version"],
        "dropped": dict(Counter(d["stage"] for d in state.get("dropped", []))),
        "malformed": {node: u.get("malformed", 0) for node, u in usage.items() if u.get("malformed")},
        "proposed": [op for p in state.get("proposals", []) for op in p["operations"]],
        "operations_proposed": sum(len(p["operations"]) for p in state.get("proposals", [])),
    }
    report.update(usage_totals(usage))  # type: ignore[typeddict-item]
    return {"library": library, "report": report}
