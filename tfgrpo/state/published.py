"""The hand-off from learning to inference: E as published in the LangGraph store.

After every step the learn loop puts its current E (after any validation rollback) into the store:

    namespace ("tfgrpo", RUN_ID, "library")   key "latest"      {"step": N, "library": E now}
                                               key "step-NNNN"   {"step": N, "library": E after step N}

so everything that names a learned library by its run id reads it here: the ``inference`` and ``eval``
graphs (context ``library`` / ``library_run``), ``tfgrpo infer|eval|library --db URL``, ``tfgrpo.evaluate``
and ``ExperienceMiddleware(run=...)``. In the state room so that integrations can read it without the nodes.
"""

from __future__ import annotations

from typing import Any

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


def library_value(value: Any, where: str) -> Library:
    """A library from what a file or store item holds: E itself (``{"items": ...}``) or E as published
    (``{"step", "library"}``); else one line naming ``where``."""
    if isinstance(value, dict) and "items" not in value and isinstance(value.get("library"), dict):
        value = value["library"]
    if not isinstance(value, dict) or not isinstance(value.get("items"), list):
        raise ConfigError(f"{where}: not an experience library (no 'items')")
    library: Library = value  # type: ignore[assignment]
    return library


def published_library(store: BaseStore, run_id: str, step: int | None = None) -> Library:
    """E of run ``run_id`` (after ``step``, default the latest), or a one-line error."""
    item = store.get(library_namespace(run_id), LATEST if step is None else step_key(step))
    if item is None:
        what = "no step has finished" if step is None else f"no library for step {step}"
        raise ConfigError(f"run {run_id!r}: {what} (nothing published in the store)")
    return library_value(item.value, f"run {run_id!r}")


def is_published(store: BaseStore, run_id: str) -> bool:
    """Whether run ``run_id`` has published E in ``store`` (a name that is not a path may be a run id)."""
    return store.get(library_namespace(run_id), LATEST) is not None


def published_steps(store: BaseStore, run_id: str) -> list[int]:
    items = store.search(library_namespace(run_id), limit=10_000)
    return sorted(int(i.key.split("-")[1]) for i in items if i.key.startswith("step-"))
