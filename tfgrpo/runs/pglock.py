"""The run lock in a shared PostgreSQL database: a session advisory lock per run id.

Two processes (on one machine or several) must not drive the same run at once: both would pay for the
same calls and race on its checkpoints. :class:`PostgresRunLock` holds ``pg_try_advisory_lock`` on a
connection of its own for as long as the run runs; a second process is refused at once with a one-line
error. When a process dies (even by SIGKILL) its connection closes and the server releases the lock, so a
killed run can be resumed immediately, from any machine.

Same interface as the file lock of run directories (``tfgrpo.runs.runlock``: ``acquire`` / ``release``, or
``with``), raising a :class:`tfgrpo.errors.ConfigError` when the run is held elsewhere.
"""

from __future__ import annotations

import hashlib
import re
from contextlib import suppress
from typing import Any

from tfgrpo.errors import ConfigError

NAMESPACE = "tfgrpo-run:"


def redacted(url: str) -> str:
    """The URL without its password, for messages and run.json."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def lock_key(run_id: str) -> int:
    """A stable signed 64-bit key (advisory locks take a bigint) for ``run_id``."""
    digest = hashlib.sha256((NAMESPACE + run_id).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class PostgresRunLock:
    def __init__(self, url: str, run_id: str) -> None:
        self.url = url
        self.run_id = run_id
        self._conn: Any = None

    def acquire(self) -> None:
        """Take the lock or raise at once (never wait)."""
        import psycopg

        if self._conn is not None:
            return
        try:
            conn = psycopg.connect(self.url, autocommit=True)
        except psycopg.Error as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"{redacted(self.url)}: cannot connect ({text})") from None
        got = conn.execute("SELECT pg_try_advisory_lock(%s)", (lock_key(self.run_id),)).fetchone()
        if not got or not got[0]:
            conn.close()
            raise ConfigError(
                f"run {self.run_id!r} is being run by another process (PostgreSQL advisory lock held): "
                "wait for it to finish or stop it, or use another --run-id"
            )
        self._conn = conn

    def release(self) -> None:
        """Give the lock back (idempotent)."""
        import psycopg

        if self._conn is None:
            return
        conn, self._conn = self._conn, None
        try:
            # if the connection is gone, the server has released the lock already
            with suppress(psycopg.Error):
                conn.execute("SELECT pg_advisory_unlock(%s)", (lock_key(self.run_id),))
        finally:
            conn.close()

    def __enter__(self) -> PostgresRunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
