"""Records that flow through one learning step. Small on purpose: trajectories live in the store."""

from __future__ import annotations

from typing import NotRequired

from typing_extensions import TypedDict

from tfgrpo.state.library import Operation, RejectedOperation


class Query(TypedDict):
    id: str
    question: str
    answer: str
    # a reasoning_gym row: the ``rg:`` spec that generated it and its index there (its task's scorer
    # needs the whole entry, which is regenerated from these rather than kept in checkpointed state)
    source: NotRequired[str]
    index: NotRequired[int]


class Rollout(TypedDict):
    """A whole rollout, kept in the LangGraph store (never in checkpointed state)."""

    query_id: str
    g: int
    step: int
    response: str  # final text of the policy
    trajectory: list[dict]  # message dicts (tool calls and results for agent rollouts)
    error: NotRequired[str | None]


class RolloutRef(TypedDict):
    """What state keeps of a rollout: where it is stored and whether it is usable."""

    key: str
    query_id: str
    g: int
    ok: bool
    error: NotRequired[str | None]


class Group(TypedDict):
    """The G rollouts of one query with their rewards and the gate's verdict."""

    query_id: str
    keys: list[str]  # store keys of the rollouts, in g order
    rewards: list[float | None]  # None = unusable (failed rollout or failed reward)
    kept: bool
    reason: str  # the variance gate's verdict
    # parallel to ``keys``: why the reward gave what it gave ("read 'X'; expected 'Y': ..."), "" for none
    reward_reasons: NotRequired[list[str]]
    # set by the variance gate on a kept group: its attempts are short and tool-less, so the extractor
    # reads them whole and no summarize call is made (nodes/attempts.py)
    read_whole: NotRequired[bool]
    # attempts drawn beyond the first G because the rewards were all equal (dynamic sampling)
    extra_attempts: NotRequired[int]


class SummaryRef(TypedDict):
    key: str  # store key of the rollout it summarizes
    query_id: str
    g: int
    ok: bool


class Proposal(TypedDict):
    """Operations proposed by ``extract`` for one group (its semantic advantage)."""

    query_id: str
    analysis: str
    operations: list[Operation]
    candidate: NotRequired[int]  # --candidates: the sampled update it belongs to (absent: 0, the first)


class CallRecord(TypedDict):
    node: str
    role: str  # policy | learner | judge
    model: str
    ok: bool
    input_tokens: int
    output_tokens: int
    cost_usd: float | None  # None: no price known for the model
    retries: int  # transient failures retried before this result
    started: float  # unix time
    seconds: float
    memo: NotRequired[bool]  # answered from the resume memo, no new request
    malformed: NotRequired[int]  # 1: the reply came back but its structured output was unusable
    cached: NotRequired[int]  # 1: answered from the run's result cache (an identical request), not paid


class Usage(TypedDict):
    """Calls of one node within a step, aggregated: constant size whatever B x G is.
    The per-call records stay in the store next to each result."""

    calls: int
    failed: int
    retries: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    unpriced: int  # calls whose model has no price
    malformed: NotRequired[int]  # replies whose structured output was unusable (retried or dropped)
    cached: NotRequired[int]  # calls answered from the result cache: not in calls, tokens or cost
    cached_tokens: NotRequired[int]
    first_started: float
    last_ended: float


def usage_of(records: list[CallRecord]) -> dict[str, Usage]:
    out: dict[str, Usage] = {}
    for r in records:
        paid = not r.get("cached")  # a cached call paid nothing: counted apart
        one: Usage = {
            "calls": 1 if paid else 0,
            "failed": 0 if r["ok"] else 1,
            "retries": r.get("retries", 0),
            "input_tokens": r["input_tokens"] if paid else 0,
            "output_tokens": r["output_tokens"] if paid else 0,
            "cost_usd": (r.get("cost_usd") or 0.0) if paid else 0.0,
            "unpriced": 1 if r.get("cost_usd") is None and paid else 0,
            "malformed": r.get("malformed", 0),
            "cached": 0 if paid else 1,
            "cached_tokens": 0 if paid else r["input_tokens"] + r["output_tokens"],
            "first_started": r["started"],
            "last_ended": r["started"] + r["seconds"],
        }
        out = merge_usage(out, {r["node"]: one})
    return out


def merge_usage(left: dict[str, Usage] | None, right: dict[str, Usage] | None) -> dict[str, Usage]:
    """Reducer of the ``usage`` channel: sums per node, earliest start, latest end."""
    merged = dict(left or {})
    for node, u in (right or {}).items():
        if node not in merged:
            merged[node] = u
            continue
        m = merged[node]
        merged[node] = {
            "calls": m["calls"] + u["calls"],
            "failed": m["failed"] + u["failed"],
            "retries": m["retries"] + u["retries"],
            "input_tokens": m["input_tokens"] + u["input_tokens"],
            "output_tokens": m["output_tokens"] + u["output_tokens"],
            "cost_usd": m["cost_usd"] + u["cost_usd"],
            "unpriced": m["unpriced"] + u["unpriced"],
            "malformed": m.get("malformed", 0) + u.get("malformed", 0),
            "cached": m.get("cached", 0) + u.get("cached", 0),
            "cached_tokens": m.get("cached_tokens", 0) + u.get("cached_tokens", 0),
            "first_started": min(m["first_started"], u["first_started"]),
            "last_ended": max(m["last_ended"], u["last_ended"]),
        }
    return merged


class Dropped(TypedDict):
    """An item lost on the way; every one is counted in the step report."""

    stage: str
    item: str
    reason: str


class ValidationRun(TypedDict):
    """One validation run: E before the step ("before") or after it ("after") on a held-out question."""

    arm: str
    query_id: str
    i: int
    reward: float | None  # None: the run or its reward failed


class ValidationReport(TypedDict):
    before: float | None  # mean reward over the usable runs of each arm
    after: float | None
    runs: int
    failed: int
    kept: bool  # False: the step's E was rolled back to E before the step
    reason: str


class Candidate(TypedDict):
    """A candidate update of E (``--candidates``) as state keeps it; E itself and its report are in the
    store (step namespace ``candidates``)."""

    candidate: int
    library_key: str  # its rendering's key in the store (what a selection run injects)
    changed: bool  # False: nothing of it was applied (or it renders as the current E): not scored
    duplicate_of: int | None  # an earlier candidate with the same E: scored once, under that one
    lessons: list[str]  # its applied operations, one line each


class SelectionRun(TypedDict):
    """One selection run: candidate E on a question of the step, with the seed of its rollout i."""

    candidate: int
    query_id: str
    i: int
    reward: float | None  # None: the run or its reward failed


class CandidateScore(TypedDict):
    candidate: int
    status: str  # scored | unchanged (not scored) | duplicate of cN (scored once, as cN)
    lessons: list[str]
    mean: float | None  # its mean reward over the pairs where both it and the current E scored
    current: float | None  # the current E's over the same pairs (the step's rollouts)
    delta: float | None
    runs: int  # selection runs made for it
    failed: int
    calls: int  # what it cost: its learner calls (extract, retry, update) and its selection runs
    tokens: int
    cost_usd: float
    chosen: bool


class SelectionReport(TypedDict):
    """How a step with ``--candidates N`` chose its update of E."""

    questions: list[str]  # the selection set: the step's questions whose groups had contrast
    k: int
    margin: float
    chosen: int | None  # None: no candidate beat the current E by more than the margin; E stays
    reason: str
    candidates: list[CandidateScore]
    # beyond what one update costs: the other candidates' learner calls and every selection run
    extra_calls: int
    extra_tokens: int
    extra_cost_usd: float


class StepReport(TypedDict):
    step: int
    epoch: int
    batch_index: int
    queries: int
    rollouts: int
    rollouts_failed: int
    mean_reward: float | None
    groups_kept: int
    groups_skipped: int
    extra_rollouts: NotRequired[int]  # attempts drawn for all-equal groups beyond G (dynamic sampling)
    groups_rescued: NotRequired[int]  # kept groups that had contrast only thanks to those attempts
    operations_proposed: int
    operations_final: NotRequired[int]  # after the consolidation call merged / discarded proposals
    operations_applied: int
    operations_rejected: int
    rejected: list[RejectedOperation]
    applied: list[Operation]
    proposed: NotRequired[list[Operation]]  # every operation extract proposed, text included
    rewrites: NotRequired[list[Operation]]  # rewrites of rejected proposals that passed the gate
    dropped: dict[str, int]  # stage -> count
    lessons_rejected: NotRequired[dict[str, int]]  # lesson-gate reason -> ADD/UPDATEs rejected for good
    lessons_retried: NotRequired[dict[str, int]]  # first gate reason -> proposals sent back once
    lessons_kept: NotRequired[int]  # proposed ADDs the consolidation left out, kept as proposed
    malformed: NotRequired[dict[str, int]]  # stage -> replies with unusable structured output
    calls: int  # paid calls (requests the server answered or refused)
    calls_failed: int
    cached_calls: NotRequired[int]  # answered from the run's result cache: paid nothing
    cached_tokens: NotRequired[int]
    retries: int
    cost_usd: float
    usage: dict[str, Usage]  # per node
    input_tokens: int
    output_tokens: int
    seconds: float
    library_size: int
    library_version: int
    validation: NotRequired[ValidationReport]  # only with a validation set (see nodes/validate.py)
    selection: NotRequired[SelectionReport]  # only with --candidates above 1 (see nodes/candidates.py)


class AttemptResult(TypedDict):
    """One evaluation run (arm, question, sample i): what the eval's state and results.json keep of it.
    The trajectory stays in the store."""

    arm: str  # "library" (E injected) or "baseline" (same model and prompts, no E)
    query_id: str
    i: int
    reward: float | None  # None = unusable (the agent run or the reward failed; ``error`` says why)
    answer: str
    error: str | None
    calls: int  # paid calls: those answered from the run's result cache are counted apart
    input_tokens: int
    output_tokens: int
    cost_usd: float
    cached_calls: NotRequired[int]  # answered by an identical request (the other arm's, single flight)
    cached_tokens: NotRequired[int]
