"""Where a run's checkpoints and store live: ``--db URL`` / ``$TFGRPO_DATABASE_URL``.

* nothing given: the run directory's own SQLite files (``checkpoints.sqlite``, ``store.sqlite``), one
  run per directory, thread ``learn`` / ``eval`` as always;
* a file path (or ``sqlite:///PATH``): one SQLite file that several runs share;
* a ``postgresql://`` URL: ``PostgresSaver`` + ``PostgresStore`` (``pip install 'tfgrpo[postgres]'``),
  tables created on first use; several machines can share it, each running its own runs.

In a shared database every run is keyed by its run id (``--run-id``, default: the run directory's name):
its checkpoint threads are ``RUN_ID/learn`` (``RUN_ID/eval``), its store items live under
``("tfgrpo", RUN_ID, ...)``. The same run id on another machine resumes the run, with its budget: the
ledger is rebuilt from the result memo in the store (:func:`tfgrpo.learner.spent_so_far`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tfgrpo.errors import ConfigError
from tfgrpo.runs.pglock import redacted

if TYPE_CHECKING:
    from langgraph.store.base import BaseStore

ENV_VAR = "TFGRPO_DATABASE_URL"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
POSTGRES_HINT = "PostgreSQL support is an extra: pip install 'tfgrpo[postgres]'"


# SQLAlchemy's spelling of a PostgreSQL URL with psycopg 3: the same database for psycopg's connect
DRIVER_SCHEMES = ("postgresql+psycopg://", "postgres+psycopg://")
SUPPORTED_FORMS = (
    "postgresql://USER@HOST/DB (postgres://, postgresql+psycopg://), sqlite:///PATH or a file path"
)
# a scheme before ':' (two letters at least: C:\runs is a Windows path), as in mysql://, postgres:/host
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")
_DATABASE_WORDS = ("postgres", "postgresql", "mysql", "mariadb", "sqlite", "mssql", "oracle", "mongodb")


def database_url(flag: str | None) -> str:
    """``--db`` if given, else ``$TFGRPO_DATABASE_URL``, else "" (the run directory's SQLite files).

    A value that looks like a URL of another scheme (``mysql://``, ``postgres:/host/db``) is refused: it
    would otherwise become a SQLite file named like it, and the run would not be in the database the
    user meant."""
    url = (flag or os.environ.get(ENV_VAR, "")).strip()
    where = "--db" if flag else ENV_VAR
    for scheme in DRIVER_SCHEMES:
        if url.startswith(scheme):
            return "postgresql://" + url[len(scheme) :]
    if is_postgres(url) or url.startswith("sqlite:///"):
        return url
    match = _SCHEME.match(url)
    scheme = match.group(1).split("+")[0].lower() if match else ""
    if match and (url[match.end() :].startswith("/") or scheme in _DATABASE_WORDS):
        raise ConfigError(f"{where} {redacted(url)!r} is not a supported database: use {SUPPORTED_FORMS}")
    return url


def is_postgres(url: str) -> bool:
    return url.startswith(POSTGRES_SCHEMES)


def check_run_id(run_id: str) -> str:
    if not run_id or "/" in run_id or len(run_id) > 200:
        raise ConfigError(f"run id {run_id!r}: expected 1-200 characters without '/'")
    return run_id


@dataclass
class Backend:
    """A checkpointer and a store for one run, plus what differs per database: pruning and the lock."""

    kind: str  # "sqlite" | "postgres"
    saver: Any
    store: BaseStore
    run_id: str
    shared: bool  # several runs in one database: threads are prefixed with the run id
    url: str = ""
    _stack: ExitStack = field(default_factory=ExitStack, repr=False)

    def thread(self, name: str) -> str:
        """The checkpoint thread ``name`` of this run (``learn``, ``eval``, ``eval-retry1``...)."""
        return f"{self.run_id}/{name}" if self.shared else name

    def prune(self, thread_id: str, latest_checkpoint_id: str) -> int:
        """Delete the thread's checkpoints older than ``latest_checkpoint_id`` (resume needs the latest);
        returns how many went (0 when the backend does not say)."""
        if self.kind == "postgres":
            prune_postgres(self.saver, thread_id)
            return 0
        from tfgrpo.runs.rundir import prune_checkpoints

        return prune_checkpoints(self.saver, thread_id, latest_checkpoint_id)

    def lock(self) -> AbstractContextManager[Any]:
        """Held while the run runs: a second process on the same run id is refused."""
        return self.lock_for(self.run_id)

    def lock_for(self, run_id: str) -> AbstractContextManager[Any]:
        """The lock of run ``run_id`` in this database. PostgreSQL: a session advisory lock (released by
        the server if the process dies); a shared SQLite file: a file lock per run id beside it
        (``tfgrpo.runs.sqlitelock``); a run directory's own files: the directory's lock, the caller's
        (``tfgrpo.runs.runlock``)."""
        if self.kind == "postgres":
            from tfgrpo.runs.pglock import PostgresRunLock

            return PostgresRunLock(self.url, run_id)
        if self.shared:
            from tfgrpo.runs.sqlitelock import SqliteRunLock

            return SqliteRunLock(_sqlite_path(self.url), run_id)
        return nullcontext()

    def close(self) -> None:
        self._stack.close()


def _sqlite_path(url: str) -> Path:
    return Path(url[len("sqlite:///") :] if url.startswith("sqlite:///") else url)


@contextmanager
def open_backend(
    url: str, *, local_dir: Path, run_id: str, local_option: str = "--run-dir"
) -> Iterator[Backend]:
    """Open (and set up on first use) the database for run ``run_id``; ``local_dir`` holds the default
    SQLite files when ``url`` is empty."""
    from tfgrpo.runs.rundir import open_checkpointer, open_store, refuse_emptied

    stack = ExitStack()
    try:
        if is_postgres(url):
            backend = _open_postgres(url, run_id, stack)
        else:
            if url:
                path = _sqlite_path(url)
                path.parent.mkdir(parents=True, exist_ok=True)
                saver_file, store_file, option = path, path, "--db"
            else:
                local_dir.mkdir(parents=True, exist_ok=True)
                saver_file, store_file = local_dir / "checkpoints.sqlite", local_dir / "store.sqlite"
                option = local_option  # the flag that names local_dir, for one-line errors
                refuse_emptied(local_dir, [saver_file, store_file], option)
            # one transaction per saver call and per batch of store puts, WAL (tfgrpo.runs.rundir)
            saver = open_checkpointer(saver_file, option=option)
            stack.callback(saver.conn.close)
            store = open_store(store_file, option=option)
            stack.callback(store.conn.close)
            backend = Backend("sqlite", saver, store, check_run_id(run_id), bool(url), url, stack)
        yield backend
    finally:
        stack.close()


def open_postgres_store(url: str, stack: ExitStack) -> BaseStore:
    """A ``PostgresStore`` alone (to read published E), closed with ``stack``."""
    try:
        import psycopg
        from langgraph.store.postgres import PostgresStore
    except ImportError:
        raise ConfigError(POSTGRES_HINT) from None
    try:
        store = stack.enter_context(PostgresStore.from_conn_string(url))
        store.setup()
    except psycopg.Error as exc:
        raise ConfigError(f"{redacted(url)}: cannot use the database ({_first_line(exc)})") from None
    return store


def _open_postgres(url: str, run_id: str, stack: ExitStack) -> Backend:
    try:
        import psycopg
        from langgraph.checkpoint.postgres import PostgresSaver
        from langgraph.store.postgres import PostgresStore
    except ImportError:
        raise ConfigError(POSTGRES_HINT) from None
    try:
        saver = stack.enter_context(PostgresSaver.from_conn_string(url))
        store = stack.enter_context(PostgresStore.from_conn_string(url))
        saver.setup()  # creates or migrates the tables: safe on every start
        store.setup()
    except psycopg.Error as exc:
        raise ConfigError(f"{redacted(url)}: cannot use the database ({_first_line(exc)})") from None
    return Backend("postgres", saver, store, check_run_id(run_id), True, url, stack)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def prune_postgres(saver: Any, thread_id: str) -> None:
    """:func:`tfgrpo.runs.rundir.prune_checkpoints` for PostgreSQL: ``PostgresSaver.prune`` keeps the latest
    checkpoint with its pending writes and blobs, in one transaction on a snapshot of the thread."""
    saver.prune([thread_id], strategy="keep_latest")


def count_checkpoints(backend: Backend, thread_id: str) -> int:
    """How many checkpoints a thread keeps (for tests and ``--keep-checkpoints`` checks)."""
    return sum(1 for _ in backend.saver.list({"configurable": {"thread_id": thread_id}}))


# --- the runs of a shared database: ``tfgrpo runs list`` / ``tfgrpo runs rm RUN_ID``

MEMO_PAGE = 500
# What a run writes in the store, by namespace: ("tfgrpo", RUN_ID, ...) its identity, published E, step
# history and node memo; ("tfgrpo-llm-results", RUN_ID) its result cache (every response it paid for:
# left behind, the same run id would replay them for free). An evaluation also writes under the internal
# id its checkpoint state holds (``eval_id``): ("tfgrpo", EVAL_ID, "libraries") and ("tfgrpo-eval", EVAL_ID).
RESULTS_ROOT = "tfgrpo-llm-results"
RUN_ROOTS = ("tfgrpo", RESULTS_ROOT)
EVAL_ROOTS = ("tfgrpo", "tfgrpo-eval")


def _rows(backend: Backend, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """``query`` (``?`` placeholders) on the checkpointer's own connection, rows as tuples."""
    if backend.kind == "postgres":
        from psycopg.rows import tuple_row

        with backend.saver.conn.cursor(row_factory=tuple_row) as cur:
            cur.execute(query.replace("?", "%s"), params)
            return list(cur.fetchall())
    return list(backend.saver.conn.execute(query, params).fetchall())


def run_threads(backend: Backend) -> dict[str, list[str]]:
    """Run id -> its checkpoint threads (``RUN_ID/learn``, ``RUN_ID/eval`` ...) in a shared database."""
    threads: dict[str, list[str]] = {}
    for (thread,) in _rows(backend, "SELECT DISTINCT thread_id FROM checkpoints"):
        run_id, sep, _ = str(thread).partition("/")
        if sep:
            threads.setdefault(run_id, []).append(str(thread))
    return threads


def thread_values(backend: Backend, thread: str) -> dict[str, Any]:
    """The channel values of a thread's latest checkpoint ({} when it has none)."""
    found = backend.saver.get_tuple({"configurable": {"thread_id": thread}})
    return dict(found.checkpoint.get("channel_values") or {}) if found is not None else {}


def namespace_items(store: BaseStore, namespace: tuple[str, ...]) -> Iterator[Any]:
    """Every item under ``namespace`` (and below it), page by page."""
    offset = 0
    while True:
        page = store.search(namespace, limit=MEMO_PAGE, offset=offset)
        yield from (item for item in page if item.namespace[: len(namespace)] == namespace)
        if len(page) < MEMO_PAGE:
            return
        offset += MEMO_PAGE


@dataclass
class RunSpending:
    """A run's calls: the ones the server was paid for (its result cache) and the ones answered from
    that cache instead (a resumed or replayed run: booked in its memo as ``cached``)."""

    calls: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    cached_calls: int = 0
    cached_tokens: int = 0
    last: Any = None

    def seen(self, updated_at: Any) -> None:
        self.last = updated_at if self.last is None else max(self.last, updated_at)


def spent_in_store(store: BaseStore, run_id: str, eval_ids: tuple[str, ...] = ()) -> RunSpending:
    """What run ``run_id`` spent (exact after a crash: paid calls come from its result cache, from which
    the ledger is rebuilt on resume; dollars from the call records of its memo)."""
    spent = RunSpending()
    for item in namespace_items(store, (RESULTS_ROOT, run_id)):
        spent.seen(item.updated_at)
        paid = item.value.get("paid")
        if isinstance(paid, dict):
            spent.calls += 1
            spent.tokens += int(paid.get("input_tokens", 0)) + int(paid.get("output_tokens", 0))
    for namespace in [("tfgrpo", run_id), *(("tfgrpo-eval", e) for e in eval_ids)]:
        for item in namespace_items(store, namespace):
            spent.seen(item.updated_at)
            calls = item.value.get("calls", [])
            for call in calls if isinstance(calls, list) else []:  # (step reports count calls: an int)
                if not isinstance(call, dict):
                    continue
                if call.get("cached"):
                    spent.cached_calls += 1
                    spent.cached_tokens += int(call.get("input_tokens", 0)) + int(
                        call.get("output_tokens", 0)
                    )
                else:
                    spent.cost_usd += call.get("cost_usd") or 0.0
    return spent


def eval_ids_of(backend: Backend, threads: list[str]) -> tuple[str, ...]:
    """The internal ids the evaluations among ``threads`` keep their runs under."""
    ids = {
        thread_values(backend, t).get("eval_id") for t in threads if t.partition("/")[2].startswith("eval")
    }
    return tuple(sorted(i for i in ids if isinstance(i, str) and i))


def run_status(backend: Backend, run_id: str, threads: list[str]) -> str:
    """``running`` (another process holds the run's lock), ``done`` or ``stopped`` (resumable)."""
    try:
        with backend.lock_for(run_id):
            pass
    except ConfigError:
        return "running"
    if not threads:
        return "-"
    values = [thread_values(backend, t) for t in threads]
    return "done" if all(_finished(v) for v in values) else "stopped"


def _finished(values: dict[str, Any]) -> bool:
    if "done" in values:  # a learn run: ``advance`` sets it after the last step
        return bool(values["done"])
    if "questions" in values and "arms" in values:  # an evaluation: every planned run has a result
        planned = len(values["questions"]) * values.get("k", 1) * len(values["arms"])
        return len({(r["arm"], r["query_id"], r["i"]) for r in values.get("results", [])}) >= planned
    return False


def list_runs(backend: Backend) -> list[dict[str, Any]]:
    """One row per run or evaluation of a shared database: kind, steps, |E|, calls and tokens paid and
    answered from its cache, cost, last update and status."""
    from tfgrpo.runs.rundir import step_history

    threads = run_threads(backend)
    owned = {run_id: eval_ids_of(backend, ts) for run_id, ts in threads.items()}
    internal = {e for ids in owned.values() for e in ids}
    in_store = {
        ns[1]
        for root in RUN_ROOTS
        for ns in backend.store.list_namespaces(prefix=(root,), max_depth=2)
        if len(ns) > 1
    }
    rows = []
    for run_id in sorted((set(threads) | in_store) - internal):
        history = step_history(backend.store, run_id)
        spent = spent_in_store(backend.store, run_id, owned.get(run_id, ()))
        kinds = sorted({t.partition("/")[2].split("-")[0] for t in threads.get(run_id, [])})
        rows.append(
            {
                "run_id": run_id,
                "kind": ",".join(kinds) or "-",
                "steps": len(history),
                "library_size": history[-1]["library_size"] if history else None,
                "calls": spent.calls,
                "tokens": spent.tokens,
                "cached_calls": spent.cached_calls,
                "cached_tokens": spent.cached_tokens,
                "cost_usd": round(spent.cost_usd, 6),
                "updated": spent.last.strftime("%Y-%m-%d %H:%M") if spent.last is not None else "",
                "status": run_status(backend, run_id, threads.get(run_id, [])),
            }
        )
    return rows


@dataclass
class RemovedRun:
    """What ``tfgrpo runs rm`` deleted."""

    threads: int = 0
    items: int = 0  # store items, the cached responses among them
    cached_responses: int = 0


def remove_run(backend: Backend, run_id: str) -> RemovedRun:
    """Delete everything run ``run_id`` wrote in the database: its checkpoint threads, and its store
    items in every namespace (state, published E, history, memo, result cache, its evaluations')."""
    from langgraph.store.base import PutOp

    threads = run_threads(backend).get(run_id, [])
    namespaces = [(root, run_id) for root in RUN_ROOTS]
    namespaces += [(root, e) for e in eval_ids_of(backend, threads) for root in EVAL_ROOTS]
    for thread in threads:
        backend.saver.delete_thread(thread)
    removed = RemovedRun(threads=len(threads))
    for namespace in namespaces:
        while mine := list(namespace_items_first_page(backend.store, namespace)):
            backend.store.batch([PutOp(item.namespace, item.key, None) for item in mine])
            removed.items += len(mine)
            if namespace[0] == RESULTS_ROOT:
                removed.cached_responses += len(mine)
    return removed


def namespace_items_first_page(store: BaseStore, namespace: tuple[str, ...]) -> list[Any]:
    page = store.search(namespace, limit=MEMO_PAGE)
    return [item for item in page if item.namespace[: len(namespace)] == namespace]
