"""One writer per run: an exclusive lock on a run (or eval) directory.

Two processes on one directory would both pay for every call and the last writer would win, so
``learn``, ``eval`` and ``attribute`` hold a lock for as long as they run. The lock is an OS file lock
(``flock``) on the run directory itself (a descriptor of the directory): the kernel drops it when its
process dies, however it dies, so a lock left by a killed process is taken over by the next one without
any clean-up, and unlike a lock file the directory cannot be deleted from under its holder while the
run's files are in it (deleting ``RUN_DIR/.lock`` let a second process in). ``RUN_DIR/.lock`` only
holds the PID of the holder, for the error message of the process that is refused.

The interface is :class:`RunLock` (``acquire`` / ``release``, or ``with``) and :func:`lock_run_dir`; a
lock held somewhere else (e.g. a database advisory lock) implements the same two methods.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from tfgrpo.errors import ConfigError

LOCK_FILE = ".lock"


class RunLocked(ConfigError):
    """Another process holds the run's lock."""

    def __init__(self, what: str, pid: int | None) -> None:
        holder = f"process {pid}" if pid else "another process"
        super().__init__(
            f"{what} is in use by {holder} (one tfgrpo process per run directory): "
            "wait for it to finish or stop it, or use another directory"
        )
        self.pid = pid


class RunLock(Protocol):
    def acquire(self) -> None:
        """Take the lock or raise :class:`RunLocked` at once (never wait)."""

    def release(self) -> None:
        """Give the lock back (idempotent)."""


class FileRunLock:
    """``flock`` on ``DIR`` itself; ``DIR/.lock`` keeps the holder's PID."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLocked(str(self.directory), _read_pid(self.path)) from None
        # ours now (a PID left in the file by a dead holder is simply overwritten)
        self.path.write_text(f"{os.getpid()}\n", encoding="ascii")
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if _read_pid(self.path) == os.getpid():
                self.path.write_text("", encoding="ascii")
        except OSError:
            pass  # the PID note is only for messages; the lock itself is the descriptor
        finally:
            os.close(fd)  # closing the descriptor drops the flock

    def __enter__(self) -> FileRunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


@contextmanager
def lock_run_dir(directory: Path) -> Iterator[RunLock]:
    """Hold ``directory``'s lock for the ``with`` block; :class:`RunLocked` if another process has it."""
    lock = FileRunLock(directory)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()
