"""The run lock in a shared SQLite database (``--db FILE``): an OS lock per run id.

SQLite has no advisory locks, and the run directory's lock (:mod:`tfgrpo.runs.runlock`) does not keep two
directories from driving one run id in one database (``A/run`` and ``B/run`` both default to run id
``run``): both would pay for every call and end with different libraries for one run. So a run in a shared
SQLite file also holds the lock of ``FILE.locks/<hash of the run id>/``, the twin of PostgreSQL's advisory
lock (:mod:`tfgrpo.runs.pglock`): the run directory's own lock (``flock``, ``msvcrt`` on Windows, an
exclusive-create file elsewhere), taken at once or refused in one line, released when its process dies.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from tfgrpo.errors import ConfigError
from tfgrpo.runs.runlock import FileRunLock, RunLocked


def lock_dir(db_file: Path, run_id: str) -> Path:
    digest = hashlib.sha256(run_id.encode()).hexdigest()[:24]
    return db_file.with_name(db_file.name + ".locks") / digest


class SqliteRunLock:
    """One process per run id in one SQLite database (``acquire`` / ``release``, or ``with``)."""

    def __init__(self, db_file: Path, run_id: str) -> None:
        self.db_file = Path(db_file)
        self.run_id = run_id
        self.path = lock_dir(self.db_file, run_id)
        self._lock: FileRunLock | None = None

    def acquire(self) -> None:
        """Take the lock or raise at once (never wait)."""
        if self._lock is not None:
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"--db {self.db_file}: cannot create the run's lock {self.path} ({exc})"
            ) from None
        lock = FileRunLock(self.path)
        try:
            lock.acquire()
        except RunLocked as exc:
            holder = f"process {exc.pid}" if exc.pid else "another process"
            raise ConfigError(
                f"run {self.run_id!r} in {self.db_file} is being run by {holder} (one process per run id): "
                "wait for it to finish or stop it, or use another --run-id"
            ) from None
        self._lock = lock

    def release(self) -> None:
        """Give the lock back (idempotent)."""
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()

    def __enter__(self) -> SqliteRunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
