"""Graph state for the step graph and the learn loop (``typing_extensions.TypedDict`` for Studio/JSON)."""

from __future__ import annotations

import operator
from typing import Annotated, Any, NotRequired

from pydantic import Field
from typing_extensions import TypedDict

from tfgrpo.state.library import Library
from tfgrpo.state.types import (
    AttemptResult,
    Candidate,
    Dropped,
    Group,
    Proposal,
    Query,
    RolloutRef,
    SelectionRun,
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
    # --candidates: the step's candidate updates of E and their selection runs (nodes/candidates.py)
    candidates: NotRequired[list[Candidate]]
    selection: NotRequired[Annotated[list[SelectionRun], operator.add]]
    usage: NotRequired[Annotated[dict[str, Usage], merge_usage]]
    dropped: NotRequired[Annotated[list[Dropped], operator.add]]
    report: NotRequired[StepReport]


class LearnState(StepState):
    """The learning loop: E, the epoch/batch counters and the seed. The per-step history is in the store
    (:func:`tfgrpo.nodes.schedule.step_history`): in state, every checkpoint would grow with the steps."""

    seed: NotRequired[int]
    dataset: NotRequired[str]  # given as input (Studio): replaces the context's dataset
    dataset_fingerprint: NotRequired[str]
    settings_fingerprint: NotRequired[str]
    run_settings: NotRequired[dict[str, Any]]  # the run-defining settings: a refused resume names changes
    done: NotRequired[bool]
    history: NotRequired[list[StepReport]]  # Studio's graph only: written once, by ``finish``
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
    # given as input (Studio): replace the context's dataset / library; baseline adds the no-E arm
    dataset: NotRequired[str]
    library: NotRequired[str]
    baseline: NotRequired[bool]
    # how score counts a failed run: "scored 0" (default) or "excluded" (--exclude-failed)
    failed_runs: NotRequired[str]
    # the scores, once every run is done
    metrics: NotRequired[dict[str, Any]]
    comparison: NotRequired[dict[str, Any] | None]
    per_question: NotRequired[list[dict[str, Any]]]


# What a LangGraph Studio user gives and gets (the graphs' input_schema / output_schema in langgraph.json;
# the CLI drives the same graphs with their full state). Settings (model, sizes, budget...) are context.


# Studio's input form shows these descriptions (pydantic reads them from the annotations)
_DATASET = "JSONL/CSV path on the server, or rg:NAME[:key=value...] (default: the context's dataset)."
_RUN_ID = "The run's id: its results and E are kept in the store under it (default: a new id)."


class StepInput(TypedDict):
    """One GRPO step: a batch of questions (id, question, answer), E before it (default: empty), and a
    run id (default: a new one; the step's results are kept in the store under it)."""

    batch: Annotated[list[Query], Field(description="The questions: objects with id, question, answer.")]
    library: NotRequired[Annotated[Library, Field(description="E before the step (default: empty).")]]
    run_id: NotRequired[Annotated[str, Field(description=_RUN_ID)]]


class StepOutput(TypedDict):
    """E after the step and the step's report."""

    library: NotRequired[Library]
    report: NotRequired[StepReport]


class LearnInput(TypedDict):
    """Learn an experience library. All optional: the context's dataset, seed 0, a new run id."""

    dataset: NotRequired[Annotated[str, Field(description=_DATASET)]]
    seed: NotRequired[Annotated[int, Field(description="Shuffle and sampling seed (default 0).")]]
    run_id: NotRequired[Annotated[str, Field(description=_RUN_ID)]]


class LearnOutput(TypedDict):
    """The run id (E is published under it), the library E and the per-step report."""

    run_id: NotRequired[str]
    library: NotRequired[Library]
    history: NotRequired[list[StepReport]]
    done: NotRequired[bool]


class EvalInput(TypedDict):
    """Mean@k / Pass@k of the agent on ``dataset`` (default: the context's), k runs per question, with E
    from ``library`` (library.json, a run directory, or a learn run's id) and, with ``baseline`` (default
    true), without E on the same seeds."""

    dataset: NotRequired[Annotated[str, Field(description=_DATASET)]]
    library: NotRequired[
        Annotated[str, Field(description="E: library.json, a run directory, or a learn run's id.")]
    ]
    k: NotRequired[Annotated[int, Field(description="Runs per question and arm (default 4).")]]
    baseline: NotRequired[
        Annotated[bool, Field(description="Also run the agent without E on the same seeds (default true).")]
    ]
    seed: NotRequired[Annotated[int, Field(description="Sampling seed (default 0).")]]


class EvalOutput(TypedDict):
    """Per arm: Mean@k with its 95% CI, Pass@k, failures, cost; the paired library-vs-baseline CI; and a
    row per question."""

    eval_id: NotRequired[str]
    metrics: NotRequired[dict[str, Any]]
    comparison: NotRequired[dict[str, Any] | None]
    per_question: NotRequired[list[dict[str, Any]]]
