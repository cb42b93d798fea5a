"""math-verify in helper processes: the pool behind the ``math`` reward.

sympy can hang (``\\boxed{9^{9^{9}}}``), so every check runs in a helper process with a wall-clock timeout;
a helper that times out or dies is killed and replaced. The pool holds one helper per core (up to
:data:`POOL_SIZE`): a step's checks run in parallel, not one after another. Helpers start lazily, or in
the background with :func:`prewarm` (each imports sympy for about a second: a run starts them while its
first rollouts wait on the network). Where helpers cannot start, checks run in the calling thread,
without a timeout.

Importing this module is cheap and has no side effects.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


#: Number of helper processes: one per core this process may use, at most 8 (each holds sympy, ~100 MB).
POOL_SIZE: int = max(1, min(8, _cores()))
#: Time allowed for a helper process to start and import math-verify.
_WORKER_START_TIMEOUT_S: float = 60.0
#: Address-space limit of a helper process, so a runaway sympy computation fails with MemoryError.
_WORKER_MEMORY_LIMIT_BYTES: int = 4 << 30

# Source of the helper process (run with ``python -c``).  ``check`` is also exec'd in-thread for the
# fallback path, so both paths share one implementation.  The helper only imports math-verify, not
# this package, so it neither re-runs the parent's ``__main__`` nor pays for tfgrpo's imports.
_WORKER_SOURCE = r"""
import json, logging, os, sys, threading, time

def check(golds, pred):
    from math_verify import parse, verify
    target = parse(pred, parsing_timeout=None)
    if not target:
        return False
    for gold in golds:
        parsed = parse(gold, parsing_timeout=None)
        if parsed and verify(parsed, target, timeout_seconds=None):
            return True
    return False

def main(memory_limit):
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # stray prints must not corrupt the protocol on stdout
    parent = os.getppid()

    def watchdog():
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watchdog, daemon=True).start()
    hello = json.loads(sys.stdin.readline())
    sys.path[:] = hello["sys_path"] + [p for p in sys.path if p not in hello["sys_path"]]
    logging.disable(logging.CRITICAL)
    if memory_limit:
        try:
            import resource
            _, hard = resource.getrlimit(resource.RLIMIT_AS)
            if hard == resource.RLIM_INFINITY or hard > memory_limit:
                resource.setrlimit(resource.RLIMIT_AS, (memory_limit, hard))
        except Exception:
            pass
    try:
        import math_verify  # noqa: F401
        check(["\\boxed{1}"], "\\boxed{1}")  # warm up parser caches
    except BaseException as exc:
        out.write(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}) + "\n")
        out.flush()
        return
    out.write(json.dumps({"ok": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        try:
            req = json.loads(line)
            reply = {"ok": True, "result": bool(check(req["golds"], req["pred"]))}
        except BaseException as exc:
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
        out.write(json.dumps(reply) + "\n")
        out.flush()
"""


class _WorkerTimeout(Exception):
    pass


class _WorkerDied(Exception):
    pass


class WorkerUnavailable(Exception):
    pass


class PoolClosed(WorkerUnavailable):
    pass


_stats_lock = threading.Lock()
_stats: dict[str, int] = {"timeouts": 0, "worker_crashes": 0, "worker_errors": 0, "in_thread_calls": 0}


def _bump(key: str) -> None:
    with _stats_lock:
        _stats[key] += 1


def timeouts() -> int:
    """Number of math-verify calls (process-wide, since import) that hit the wall-clock timeout."""
    with _stats_lock:
        return _stats["timeouts"]


def stats() -> dict[str, int]:
    """Counters: ``timeouts``, ``worker_crashes``, ``worker_errors``, ``in_thread_calls``."""
    with _stats_lock:
        return dict(_stats)


class _Worker:
    """One helper process speaking JSON lines over its stdin/stdout."""

    def __init__(self) -> None:
        code = _WORKER_SOURCE + f"\nmain({_WORKER_MEMORY_LIMIT_BYTES!r})\n"
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                bufsize=0,
                close_fds=True,
                start_new_session=True,  # Ctrl-C in the terminal is the parent's business
            )
        except OSError as exc:
            raise WorkerUnavailable(f"cannot start math-verify helper: {exc}") from exc
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._stdin = self.proc.stdin
        self._fd = self.proc.stdout.fileno()
        self._buf = bytearray()
        try:
            self._send({"sys_path": [p for p in sys.path if isinstance(p, str)]})
            reply = self._recv(time.monotonic() + _WORKER_START_TIMEOUT_S)
        except (_WorkerTimeout, _WorkerDied) as exc:
            self.kill()
            raise WorkerUnavailable(f"math-verify helper did not start: {exc!r}") from exc
        if not reply.get("ok"):
            self.kill()
            raise WorkerUnavailable(f"math-verify helper failed to start: {reply.get('error')}")

    def _send(self, obj: dict[str, Any]) -> None:
        try:
            self._stdin.write((json.dumps(obj) + "\n").encode("utf-8"))
            self._stdin.flush()
        except (BrokenPipeError, OSError, ValueError) as exc:
            raise _WorkerDied(f"write failed: {exc}") from exc

    def _recv(self, deadline: float) -> dict[str, Any]:
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _WorkerTimeout()
            try:
                ready, _, _ = select.select([self._fd], [], [], remaining)
            except (OSError, ValueError) as exc:
                raise _WorkerDied(f"select failed: {exc}") from exc
            if not ready:
                raise _WorkerTimeout()
            chunk = os.read(self._fd, 65536)
            if not chunk:
                raise _WorkerDied(f"helper exited (code {self.proc.poll()})")
            self._buf.extend(chunk)
        line, _, rest = bytes(self._buf).partition(b"\n")
        self._buf = bytearray(rest)
        result: dict[str, Any] = json.loads(line.decode("utf-8"))
        return result

    def check(self, golds: list[str], pred: str, timeout: float) -> bool:
        self._send({"golds": golds, "pred": pred})
        reply = self._recv(time.monotonic() + timeout)
        if not reply.get("ok"):
            _bump("worker_errors")
            logger.debug("math-verify helper error: %s", reply.get("error"))
            return False
        return bool(reply.get("result"))

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            self.proc.wait(timeout=5)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


class _WorkerPool:
    """Up to ``size`` helpers; each call borrows one exclusively, so any thread may call ``check``."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.pid = os.getpid()
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._closed = False

    def check(self, golds: list[str], pred: str, timeout: float) -> bool:
        with self._slots:
            worker = self._borrow()
            try:
                result = worker.check(golds, pred, timeout)
            except _WorkerTimeout:
                _bump("timeouts")
                logger.warning("math-verify timed out after %.1fs; helper restarted, reward 0.0", timeout)
                self._discard(worker)
                return False
            except _WorkerDied as exc:
                _bump("worker_crashes")
                logger.warning("math-verify helper died (%s); reward 0.0", exc)
                self._discard(worker)
                return False
            except BaseException:
                self._discard(worker)  # e.g. KeyboardInterrupt mid-call: the protocol is out of step
                raise
            self._return(worker)
            return result

    def _borrow(self) -> _Worker:
        with self._lock:
            if self._closed:
                raise PoolClosed("math-verify helpers are shut down")
            if self._idle:
                return self._idle.pop()
        worker = _Worker()  # slow (imports sympy); outside the lock
        with self._lock:
            if self._closed:
                worker.kill()
                raise PoolClosed("math-verify helpers are shut down")
            self._all.add(worker)
        return worker

    def start_one(self) -> None:
        """Start one more idle helper unless the pool is full (for :func:`prewarm`; errors are left to
        the checks, which fall back to the calling thread)."""
        with self._slots:
            with self._lock:
                if self._closed or len(self._all) >= self.size:
                    return
            try:
                worker = _Worker()
            except WorkerUnavailable as exc:
                logger.debug("math-verify prewarm: %s", exc)
                return
            with self._lock:
                if self._closed or len(self._all) >= self.size:
                    worker.kill()
                    return
                self._all.add(worker)
                self._idle.append(worker)

    def _return(self, worker: _Worker) -> None:
        with self._lock:
            if self._closed:
                worker.kill()
            else:
                self._idle.append(worker)

    def _discard(self, worker: _Worker) -> None:
        with self._lock:
            self._all.discard(worker)
        worker.kill()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers = list(self._all)
            self._all.clear()
            self._idle.clear()
        for worker in workers:
            worker.kill()


_pool_lock = threading.Lock()
_pool_instance: _WorkerPool | None = None
_atexit_registered = False
_process_broken = False
_exiting = False
_in_thread_check: Callable[[list[str], str], bool] | None = None


def _get_pool() -> _WorkerPool:
    global _pool_instance, _atexit_registered
    with _pool_lock:
        if _pool_instance is None or _pool_instance.pid != os.getpid():
            # (a forked child must not share its parent's pipes: start afresh)
            _pool_instance = _WorkerPool(POOL_SIZE)
            if not _atexit_registered:
                atexit.register(_shutdown_at_exit)
                _atexit_registered = True
        return _pool_instance


def shutdown() -> None:
    """Kill all math-verify helper processes (registered with atexit; safe to call any time).

    A later check starts fresh helpers.
    """
    global _pool_instance
    with _pool_lock:
        pool, _pool_instance = _pool_instance, None
    if pool is not None and pool.pid == os.getpid():
        pool.close()


def _shutdown_at_exit() -> None:
    global _exiting
    _exiting = True  # a straggling (daemon) thread must not start new helpers now
    shutdown()


def _check_in_thread(golds: list[str], pred: str) -> bool:
    global _in_thread_check
    if _in_thread_check is None:
        namespace: dict[str, Any] = {}
        exec(compile(_WORKER_SOURCE, "<math-verify helper>", "exec"), namespace)
        _in_thread_check = namespace["check"]
    _bump("in_thread_calls")
    try:
        return bool(_in_thread_check(golds, pred))
    except Exception as exc:
        _bump("worker_errors")
        logger.debug("math-verify error: %s", exc)
        return False


def verify(golds: list[str], pred: str, timeout: float, *, use_process: bool = True) -> bool:
    """math-verify's verdict: does ``pred`` match one of ``golds``? In a helper process bounded by
    ``timeout`` (a timeout or a crash gives False and is counted), else in the calling thread."""
    global _process_broken
    if use_process and not _process_broken and not _exiting and os.name == "posix":
        try:
            return _get_pool().check(golds, pred, timeout)
        except PoolClosed:
            pass  # shut down while this call was waiting: verify this one in-thread
        except WorkerUnavailable as exc:
            if not _process_broken:
                _process_broken = True
                logger.warning("%s; verifying in-thread without a timeout from now on", exc)
    return _check_in_thread(golds, pred)


def prewarm() -> None:
    """Start the helpers now, in background threads, so that the first checks do not wait for them."""
    if os.name != "posix" or _process_broken or _exiting:
        return
    pool = _get_pool()
    for _ in range(pool.size):
        threading.Thread(target=pool.start_one, name="math-verify-prewarm", daemon=True).start()
