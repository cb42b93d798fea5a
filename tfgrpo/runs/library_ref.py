"""One way to name a learned library E, for the CLI, the Python API, Studio and ExperienceMiddleware:

* a run directory (its ``library.json``) or a ``library.json`` file; a file may hold E itself or E as
  published in the store (``{"step", "library"}``);
* a run id in a database (``--db URL`` / ``db=`` / ``$TFGRPO_DATABASE_URL``): the E that run published
  after its latest step (:mod:`tfgrpo.state.published`);
* in a LangGraph server (Studio), the run id of a learn run in the server's store.
"""

from __future__ import annotations

import json
import os
import threading
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from langgraph.store.base import BaseStore

from tfgrpo.errors import ConfigError
from tfgrpo.runs.backends import _sqlite_path, database_url, is_postgres, open_backend, redacted
from tfgrpo.state.library import Library
from tfgrpo.state.published import LATEST, library_namespace, library_value, published_library


def library_file(path: str | os.PathLike[str]) -> Path:
    """The ``library.json`` a path names (a run directory holds one)."""
    file = Path(path)
    return file / "library.json" if file.is_dir() else file


def read_library_file(path: str | os.PathLike[str]) -> Library:
    """E from a ``library.json`` / run directory, in either shape; one line naming the file otherwise."""
    file = library_file(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{file}: cannot read the experience library ({exc})") from None
    return library_value(data, str(file))


def library_from_db(db: str, run_id: str) -> Library:
    """The latest E run ``run_id`` published in database ``db`` (a SQLite file or PostgreSQL URL)."""
    if not is_postgres(db) and not _sqlite_path(db).exists():
        raise ConfigError(f"{redacted(db)}: no such database (looking for run {run_id!r})")
    scratch = Path(db).parent if not is_postgres(db) else Path.cwd()  # not written: db is given
    with open_backend(db, local_dir=scratch, run_id=run_id, local_option="--db") as backend:
        return published_library(backend.store, run_id)


def load_named_library(name: str | os.PathLike[str], *, db: str | None = None) -> Library:
    """E named by a path (run directory / library.json) or, when no such path exists, by a run id in
    ``db`` (default ``$TFGRPO_DATABASE_URL``)."""
    if Path(name).exists():
        return read_library_file(name)
    url = database_url(db)
    if not url:
        raise ConfigError(
            f"{name}: no run directory or library.json there (a run id needs a database: db=URL, --db "
            "or $TFGRPO_DATABASE_URL)"
        )
    return library_from_db(url, os.fspath(name))


def fetch_published_library(db: str, run_id: str, into: Path) -> Path:
    """Write the latest E that run ``run_id`` published in ``db`` to ``into/library.json`` (with its
    provenance, when the run recorded it)."""
    published = PublishedLibrary(db, run_id)
    try:
        library = published.current()
        if library is None:
            raise ConfigError(f"run {run_id!r}: no step has finished (nothing published in the store)")
        data: dict[str, Any] = dict(library)
        if published.provenance:
            data["provenance"] = published.provenance
    finally:
        published.close()
    into.mkdir(parents=True, exist_ok=True)
    path = into / "library.json"
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def other_model_note(library: str, model: str) -> str | None:
    """A one-line note when the E in ``library`` (a library.json / run directory) was learned with
    another policy model than ``model`` (lessons do not always transfer across models), else None."""
    try:
        data = json.loads(library_file(library).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    found = data.get("provenance") if isinstance(data, dict) else None
    provenance: dict[str, Any] = found if isinstance(found, dict) else {}
    learned = str(provenance.get("policy_model") or "")
    if not learned or learned.split(":", 1)[-1] == model.split(":", 1)[-1]:
        return None
    return (
        f"this E was learned with {learned} (run {provenance.get('run_id')!r}); answering with {model}: "
        "lessons do not always transfer across models"
    )


class PublishedLibrary:
    """E of learn run ``run_id`` in database ``db`` as it learns: every :meth:`current` reads the run's
    ``latest`` item (one keyed read on a connection kept open: cheap) and parses E again only when the
    run has published since, so an app follows the run step by step, a validation rollback included, on
    SQLite and PostgreSQL alike. ``None`` until the run's first step."""

    def __init__(self, db: str, run_id: str) -> None:
        if not is_postgres(db) and not _sqlite_path(db).exists():
            raise ConfigError(f"{redacted(db)}: no such database (looking for run {run_id!r})")
        self.db, self.run_id = db, run_id
        self._stack = ExitStack()
        self._store = self._open()
        self._lock = threading.Lock()
        self._seen: tuple[Any, Library] | None = None
        self.provenance: dict[str, Any] = {}  # who made the E read last (empty: not recorded)

    def _open(self) -> BaseStore:
        if is_postgres(self.db):
            from tfgrpo.runs.backends import open_postgres_store

            return open_postgres_store(self.db, self._stack)
        from tfgrpo.runs.rundir import open_store

        store = open_store(_sqlite_path(self.db), option="--db")
        self._stack.callback(store.conn.close)
        return store

    def current(self) -> Library | None:
        with self._lock:
            item = self._store.get(library_namespace(self.run_id), LATEST)
            if item is None:
                return None
            stamp = (item.updated_at, item.value.get("step") if isinstance(item.value, dict) else None)
            if self._seen is None or self._seen[0] != stamp:
                self._seen = (stamp, library_value(item.value, f"run {self.run_id!r}"))
                found = item.value.get("provenance") if isinstance(item.value, dict) else None
                self.provenance = found if isinstance(found, dict) else {}
            return self._seen[1]

    def close(self) -> None:
        self._stack.close()
