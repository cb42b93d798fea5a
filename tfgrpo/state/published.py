"""The hand-off from learning to inference: E as published in the LangGraph store.

After every step the learn loop puts its current E (after any validation rollback) into the store:

    namespace ("tfgrpo", RUN_ID, "library")   key "latest"      {"step": N, "library": E now}
                                               key "step-NNNN"   {"step": N, "library": E after step N}

so everything that names a learned library by its run id reads it here: the ``inference`` and ``eval``
graphs (context ``library`` / ``library_run``), ``tfgrpo infer|eval|library --db URL``, ``tfgrpo.evaluate``
and ``ExperienceMiddleware(run=...)``. In the state room so that integrations can read it without the nodes.
"""

from __future__ import annotations

import re
from typing import Any

from langgraph.store.base import BaseStore

from tfgrpo.errors import ConfigError
from tfgrpo.state.library import Experience, Library

LATEST = "latest"


def library_namespace(run_id: str) -> tuple[str, ...]:
    return ("tfgrpo", run_id, "library")


def step_key(step: int) -> str:
    return f"step-{step:04d}"


def tfgrpo_version() -> str:
    try:
        from importlib.metadata import version

        return version("tfgrpo")
    except Exception:  # not installed (a source checkout on PYTHONPATH)
        return "unknown"


def make_provenance(
    *, policy_model: str, learner_model: str, dataset_fingerprint: str, run_id: str, step: int | None
) -> dict[str, Any]:
    """Who made E (lessons do not always transfer across models): kept with E in ``library.json`` and
    in the published E, read by ``ExperienceMiddleware`` and ``tfgrpo infer`` to warn on another model."""
    return {
        "policy_model": policy_model,
        "learner_model": learner_model,
        "dataset_fingerprint": dataset_fingerprint,
        "run_id": run_id,
        "step": step,
        "tfgrpo_version": tfgrpo_version(),
    }


def publish_library(
    store: BaseStore, run_id: str, step: int, library: Library, provenance: dict[str, Any] | None = None
) -> None:
    ns = library_namespace(run_id)
    value: dict[str, Any] = {"step": step, "library": library}
    if provenance:
        value["provenance"] = provenance
    store.put(ns, step_key(step), value, index=False)
    store.put(ns, LATEST, value, index=False)


def library_value(value: Any, where: str) -> Library:
    """A library from what a file or store item holds: E itself (``{"items": ...}``) or E as published
    (``{"step", "library"}``), its items checked (a hand-edited ``library.json``); else one line naming
    ``where`` and the item."""
    if isinstance(value, dict) and "items" not in value and isinstance(value.get("library"), dict):
        value = value["library"]
    if not isinstance(value, dict) or not isinstance(value.get("items"), list):
        raise ConfigError(f"{where}: not an experience library (no 'items')")
    items = [_checked_item(item, n, where) for n, item in enumerate(value["items"], 1)]
    first: dict[str, int] = {}
    for n, item in enumerate(items, 1):
        if item["id"] in first:
            raise ConfigError(
                f"{where}: item {n}: id {item['id']!r} is used twice (first by item {first[item['id']]})"
            )
        first[item["id"]] = n
    numbers = [int(m.group(1)) for i in items if (m := _ID.fullmatch(i["id"]))]
    given = value.get("next_id")
    next_id = given if isinstance(given, int) and not isinstance(given, bool) else 1
    library: Library = {
        **value,
        "version": value["version"] if _is_int(value.get("version")) else 0,
        "next_id": max([next_id, *(n + 1 for n in numbers)]),  # an id is never given twice
        "items": items,
    }
    return library


_ID = re.compile(r"G(\d+)")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    return {str: "a string", int: "a number", float: "a number", bool: "true/false", list: "a list",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)  # fmt: skip


def _checked_item(item: Any, n: int, where: str) -> Experience:
    """One experience of a library, its fields checked (the steps and sources a hand-written item may
    leave out get their defaults)."""
    if not isinstance(item, dict):
        raise ConfigError(f'{where}: item {n}: expected an object {{"id", "text"}}, got {_kind(item)}')
    at = f"{where}: item {n}" + (f" ({item['id']})" if isinstance(item.get("id"), str) else "")
    if not isinstance(item.get("id"), str) or not item["id"].strip():
        raise ConfigError(f"{at}: 'id' must be a non-empty string, got {_kind(item.get('id'))}")
    if not isinstance(item.get("text"), str) or not item["text"].strip():
        got = "an empty string" if isinstance(item.get("text"), str) else _kind(item.get("text"))
        raise ConfigError(f"{at}: 'text' must be a non-empty string, got {got}")
    for name in ("created_step", "updated_step"):
        if name in item and not _is_int(item[name]):
            raise ConfigError(f"{at}: {name!r} must be a whole number, got {_kind(item[name])}")
    sources = item.get("sources", [])
    if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
        raise ConfigError(f"{at}: 'sources' must be a list of query ids (strings)")
    checked: Experience = {
        **item,  # type: ignore[typeddict-item]
        "created_step": item.get("created_step", 0),
        "updated_step": item.get("updated_step", item.get("created_step", 0)),
        "sources": sources,
    }
    return checked


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
