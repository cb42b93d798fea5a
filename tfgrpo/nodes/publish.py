"""The hand-off from learning to inference: E as published in the LangGraph store.

After every step the learn loop puts its current E (after any validation rollback) into the store:

    namespace ("tfgrpo", RUN_ID, "library")   key "latest"      E now
                                               key "step-NNNN"   E after step NNNN

so the ``inference`` and ``eval`` graphs (context field ``library_run``) and ``tfgrpo infer|eval|library
--db URL`` find a run's E by its run id: in Studio, learn on one thread and try the agent on another.
"""

from __future__ import annotations

from langgraph.store.base import BaseStore

from tfgrpo.errors import ConfigError
from tfgrpo.state.library import Library

LATEST = "latest"


def library_namespace(run_id: str) -> tuple[str, ...]:
    return ("tfgrpo", run_id, "library")


def step_key(step: int) -> str:
    return f"step-{step:04d}"


def publish_library(store: BaseStore, run_id: str, step: int, library: Library) -> None:
    ns = library_namespace(run_id)
    value = {"step": step, "library": library}
    store.put(ns, step_key(step), value, index=False)
    store.put(ns, LATEST, value, index=False)


def published_library(store: BaseStore, run_id: str, step: int | None = None) -> Library:
    """E of run ``run_id`` (after ``step``, default the latest), or a one-line error."""
    item = store.get(library_namespace(run_id), LATEST if step is None else step_key(step))
    if item is None:
        what = "no step has finished" if step is None else f"no library for step {step}"
        raise ConfigError(f"run {run_id!r}: {what} (nothing published in the store)")
    library: Library = item.value["library"]
    return library


def published_steps(store: BaseStore, run_id: str) -> list[int]:
    items = store.search(library_namespace(run_id), limit=10_000)
    return sorted(int(i.key.split("-")[1]) for i in items if i.key.startswith("step-"))
