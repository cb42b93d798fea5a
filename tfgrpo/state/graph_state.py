"""Graph state for the step graph and the learn loop (``typing_extensions.TypedDict`` for Studio/JSON)."""

from __future__ import annotations

import operator
from typing import Annotated, NotRequired

from typing_extensions import TypedDict

from tfgrpo.state.library import Library
from tfgrpo.state.types import (
    AttemptResult,
    Dropped,
    Group,
    Proposal,
    Query,
    RolloutRef,
    StepReport,
    SummaryRef,
    Usage,
    ValidationRun,
    merge_usage,
)


class StepState(TypedDict):
    """One GRPO step over one batch. The per-step channels are cleared when the learn loop advances."""

    run_id: NotRequired[str]
    step: NotRequired[int]
    epoch: NotRequired[int]
    batch_index: NotRequired[int]
    library: NotRequired[Library]
    batch: NotRequired[list[Query]]
    rollouts: NotRequired[Annotated[list[RolloutRef], operator.add]]
    groups: NotRequired[list[Group]]
    summaries: NotRequired[Annotated[list[SummaryRef], operator.add]]
    proposals: NotRequired[list[Proposal]]
    usage: NotRequired[Annotated[dict[str, Usage], merge_usage]]
    dropped: NotRequired[Annotated[list[Dropped], operator.add]]
    report: NotRequired[StepReport]


class LearnState(StepState):
    """The learning loop: E, the epoch/batch counters and the seed. The per-step history is in the store
    (:func:`tfgrpo.nodes.schedule.step_history`): in state, every checkpoint would grow with the steps."""

    seed: NotRequired[int]
    dataset_fingerprint: NotRequired[str]
    settings_fingerprint: NotRequired[str]
    done: NotRequired[bool]
    # validation-gated updates (optional): E at the start of the step, and the held-out runs
    library_before: NotRequired[Library]
    validation: NotRequired[Annotated[list[ValidationRun], operator.add]]


class EvalState(TypedDict):
    """An evaluation: k runs per question and arm. Only compact results are kept; trajectories are in
    the store. ``library_key`` names E's rendering in the store (the library arm's system prompt)."""

    eval_id: NotRequired[str]
    questions: NotRequired[list[Query]]
    arms: NotRequired[list[str]]
    k: NotRequired[int]
    seed: NotRequired[int]
    library_key: NotRequired[str]
    # instead of library/baseline: arms that each inject their own E (store keys), e.g. leave-one-out
    arm_libraries: NotRequired[dict[str, str]]
    results: NotRequired[Annotated[list[AttemptResult], operator.add]]
