"""State types: the experience library E and the records of a learning step."""

from tfgrpo.state.graph_state import LearnState, StepState
from tfgrpo.state.library import (
    Experience,
    Library,
    Operation,
    apply_operations,
    diff_libraries,
    empty_library,
    library_markdown,
    render_library,
)
from tfgrpo.state.types import (
    CallRecord,
    Dropped,
    Group,
    Proposal,
    Query,
    Rollout,
    RolloutRef,
    StepReport,
    SummaryRef,
    Usage,
)

__all__ = [
    "CallRecord",
    "Dropped",
    "Experience",
    "Group",
    "LearnState",
    "Library",
    "Operation",
    "Proposal",
    "Query",
    "Rollout",
    "RolloutRef",
    "StepReport",
    "StepState",
    "SummaryRef",
    "Usage",
    "apply_operations",
    "diff_libraries",
    "empty_library",
    "library_markdown",
    "render_library",
]
