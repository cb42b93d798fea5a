"""The run lock in a shared PostgreSQL database: a session advisory lock per run id.

Two processes (on one machine or several) must not drive the same run at once: both would pay for the
same calls and race on its checkpoints. ``with advisory_lock(url, run_id):`` holds
``pg_try_advisory_lock`` on a connection of its own for as long as the run runs; a second process is
refused at once with a one-line error. When a process dies (even by SIGKILL) its connection closes and
the server releases the lock, so a killed run can be resumed immediately. The interface matches the
file lock of SQLite run directories (:mod:`tfgrpo.runlock`): a context manager that raises
:class:`tfgrpo.errors.ConfigError` when the run is held elsewhere.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from tfgrpo.errors import ConfigError

NAMESPACE = "tfgrpo-run:"


def lock_key(run_id: str) -> int:
    """A stable signed 64-bit key (advisory locks take a bigint) for ``run_id``."""
    digest = hashlib.sha256((NAMESPACE + run_id).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def advisory_lock(url: str, run_id: str) -> Iterator[None]:
    import psycopg

    from tfgrpo.backends import redacted

    try:
        conn = psycopg.connect(url, autocommit=True)
    except psycopg.Error as exc:
        raise ConfigError(f"{redacted(url)}: cannot connect ({str(exc).strip().splitlines()[0]})") from None
    key = lock_key(run_id)
    try:
        got = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
        if not got or not got[0]:
            raise ConfigError(
                f"run {run_id!r} is being run by another process (PostgreSQL advisory lock held); "
                "wait for it to stop, or use another --run-id"
            )
        try:
            yield
        finally:
            # if the connection is gone, the server has released the lock already
            with suppress(psycopg.Error):
                conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
    finally:
        conn.close()
