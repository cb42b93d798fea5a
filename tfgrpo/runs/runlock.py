"""One writer per run: an exclusive lock on a run (or eval) directory.

Two processes on one directory would both pay for every call and the last writer would win, so
``learn``, ``eval`` and ``attribute`` hold a lock for as long as they run. The lock is an OS file lock
(``flock``) on the run directory itself (a descriptor of the directory): the kernel drops it when its
process dies, however it dies, so a lock left by a killed process is taken over by the next one without
any clean-up, and unlike a lock file the directory cannot be deleted from under its holder while the
run's files are in it (deleting ``RUN_DIR/.lock`` let a second process in). ``RUN_DIR/.lock`` only
holds the PID of the holder, for the error message of the process that is refused.

Where there is no ``flock`` (Windows), the lock is ``msvcrt.locking`` on one byte of ``RUN_DIR/.lock``
past the PID, which the OS also drops when its process dies; with neither, an exclusive-create file
``RUN_DIR/.lock.held`` holding the PID, taken over when that process no longer exists.

The interface is :class:`RunLock` (``acquire`` / ``release``, or ``with``) and :func:`lock_run_dir`; a
lock held somewhere else (e.g. a database advisory lock) implements the same two methods.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from tfgrpo.errors import ConfigError

LOCK_FILE = ".lock"
HELD_FILE = ".lock.held"  # the exclusive-create fallback's lock (no flock, no msvcrt)
MSVCRT_OFFSET = 1 << 20  # the byte msvcrt locks: past the PID, which others read for their message


def _optional(name: str) -> Any:
    """A platform module, or None where it does not exist (``import tfgrpo`` works on every OS)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


_fcntl = _optional("fcntl")  # POSIX
_msvcrt = _optional("msvcrt")  # Windows


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
    """An OS lock on ``DIR`` (``flock`` on the directory itself, else ``msvcrt`` or an exclusive-create
    file, see the module's docstring); ``DIR/.lock`` keeps the holder's PID."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self._fd: int | None = None
        self._held: Path | None = None  # the exclusive-create fallback's file, while held

    def acquire(self) -> None:
        if self._fd is not None:
            return
        if _fcntl is not None:
            fd = self._take_flock()
        elif _msvcrt is not None:
            fd = self._take_msvcrt()
        else:
            fd = self._take_exclusive()
        # ours now (a PID left in the file by a dead holder is simply overwritten)
        self.path.write_text(f"{os.getpid()}\n", encoding="ascii")
        self._fd = fd

    def _refused(self) -> RunLocked:
        return RunLocked(str(self.directory), _read_pid(self.path))

    def _take_flock(self) -> int:
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            _fcntl.flock(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._refused() from None
        return fd

    def _take_msvcrt(self) -> int:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT)
        try:
            os.lseek(fd, MSVCRT_OFFSET, os.SEEK_SET)
            _msvcrt.locking(fd, _msvcrt.LK_NBLCK, 1)
        except OSError:
            os.close(fd)
            raise self._refused() from None
        return fd

    def _take_exclusive(self) -> int:
        held = self.directory / HELD_FILE
        for _ in range(2):
            try:
                fd = os.open(held, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            except FileExistsError:
                pid = _read_pid(held)
                if pid is None or _alive(pid):
                    raise self._refused() from None
                held.unlink(missing_ok=True)  # its holder died without releasing it
                continue
            os.write(fd, f"{os.getpid()}\n".encode("ascii"))
            self._held = held
            return fd
        raise self._refused()

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
            os.close(fd)  # closing the descriptor drops the flock / msvcrt lock
            if self._held is not None:
                held, self._held = self._held, None
                held.unlink(missing_ok=True)

    def __enter__(self) -> FileRunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (only where there is neither flock nor msvcrt: not on Windows,
    where signal 0 is not a probe)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, owned by someone else
    return True


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
