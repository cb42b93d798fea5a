"""Run untrusted, model-written Python in an OS sandbox (the paper's "code interpreter").

``run_python(code)`` runs ``sys.executable -I -X utf8 -u -c <bootstrap> <code file> <limits>`` inside a
bubblewrap (``bwrap``) sandbox and returns a :class:`PythonResult`; :func:`python_tool` wraps it as the
LangChain tool ``python``.

The boundary (bubblewrap; :func:`sandbox_problem` says why it cannot run here, and how to install it)
    * new user, pid, network, ipc and uts namespaces: the code sees only its own processes (it is pid 2),
      has no network but a loopback of its own, cannot ``setns()`` back into the parent's namespaces (no
      capability in them) and cannot create user namespaces;
    * an environment built from scratch (a fixed list, for bwrap too: no key of the parent ever reaches
      the sandbox), all capabilities dropped, a new session (no terminal injection), ``--die-with-parent``;
    * a private, read-only filesystem: ``/usr`` (and ``/bin``, ``/lib*``), the few files of ``/etc`` the
      dynamic loader needs, the interpreter's prefix, fresh ``/proc`` and ``/dev``; the only writable
      place is a private ``tmpfs`` scratch directory (``/scratch``, also ``/tmp``, ``HOME`` and the
      cwd) of at most ``SCRATCH_LIMIT`` bytes that vanishes with the sandbox. The run directory, the
      home directory, other processes' ``/proc/PID/environ`` and the rest of the host are not there;
    * a seccomp filter: no new process or thread (``clone``/``fork``/``vfork`` fail with ``EPERM``,
      ``clone3`` with ``ENOSYS``), no ``unshare``: a fork bomb or a shell never starts (RLIMIT_NPROC
      does not bind root, and the tool often runs as root in containers);
    * at the timeout the parent kills bwrap; ``--die-with-parent`` then kills the sandbox's pid 1 and
      the kernel kills every process of the pid namespace, ``setsid`` or not.

``run_python(code, unsafe=True)`` (the CLI's ``--unsafe-python``) skips the boundary and runs the same
bootstrap as a plain child process: the guards below and the resource limits only. Where bwrap is
missing and ``unsafe`` is not given, the call returns an error result naming the fix.

In both modes the child
    * gets a minimal environment (``PATH``, ``TZ``, a UTF-8 locale, one BLAS thread), stdin ``/dev/null``;
    * runs with ``-I`` (isolated mode: ignores ``PYTHON*`` variables, the user site directory and the
      current directory) but *not* ``-S``: the interpreter's own ``site-packages`` stay importable, so
      math code can use numpy / sympy when they are installed;
    * is the leader of a new session / process group (``start_new_session``, no ``preexec_fn``: the
      parent is multi-threaded); the parent enforces the wall-clock timeout and always ends by killing
      the whole group with ``SIGKILL``;
    * sets its own limits in the bootstrap, before the model's code runs: ``RLIMIT_AS`` (memory),
      ``RLIMIT_CPU`` (timeout + 1 s), ``RLIMIT_FSIZE`` (10 MB), ``RLIMIT_NOFILE`` (256), ``RLIMIT_CORE``
      0 and, unsandboxed and not root, ``RLIMIT_NPROC`` (current task count of the user + 64).

Python-level guards give the model a clear message for the common cases; unsandboxed they are *not* a
security boundary (``posix.*``, ``_socket`` and ``ctypes`` go around them):

    * network: ``socket.socket.connect/connect_ex/bind/sendto/sendmsg`` and ``socket.create_connection``,
      ``create_server``, ``getaddrinfo``, ``gethostbyname(_ex)``, ``gethostbyaddr``, ``getnameinfo`` raise
      ``PermissionError("network access is disabled")``; ``socketpair`` (asyncio's self-pipe) still works.
      Unsandboxed, the bootstrap also tries ``unshare(CLONE_NEWNET)`` (as root), then
      ``unshare(CLONE_NEWUSER | CLONE_NEWNET)``, and goes on without when both fail. The child's
      ``TFGRPO_SANDBOX_NETNS`` says which applied (``bwrap``, ``net``, ``user+net`` or ``none``).
    * processes: ``os.fork/forkpty/system/posix_spawn(p)/execv(e)`` and ``_posixsubprocess.fork_exec``
      (so ``subprocess``, ``multiprocessing``, ``os.spawn*``, ``os.popen``) raise
      ``PermissionError("subprocesses are disabled")``.
    * signals: ``os.kill/killpg`` and ``signal.pidfd_send_signal`` only reach the child itself.

Output is read from pipes while the child runs, keeping at most ``4 * max_output`` bytes per stream (the
first and the last half); the rest is counted and dropped, so ``print('x' * 10**8)`` costs the parent
nothing. Every path is bounded in time, and a failure of the parent side becomes an error result.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import functools
import importlib.util
import json
import math
import os
import platform
import re
import selectors
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from langchain_core.tools import BaseTool

__all__ = ["BWRAP_INSTALL_HINT", "PythonResult", "python_tool", "run_python", "sandbox_problem"]

FILE_SIZE_LIMIT = 10 * 1024 * 1024
"""Largest file the code may write (``RLIMIT_FSIZE``); bigger writes fail with ``OSError: File too large``."""

SCRATCH_LIMIT = 64 * 1024 * 1024
"""Size of the sandbox's private scratch directory (a ``tmpfs``); writes beyond fail with ``ENOSPC``."""

BWRAP_INSTALL_HINT = (
    "install it with `apt-get install bubblewrap` (Debian/Ubuntu) or `dnf install bubblewrap` (Fedora)"
)
OPEN_FILES_LIMIT = 256
NPROC_MARGIN = 64
_KILL_GRACE = 1.0  # seconds to drain the pipes after the child is gone or killed
_REAP_TIMEOUT = 5.0  # seconds to wait for a SIGKILLed child to be reaped
_CODE_NAME = "<code>"
_NETWORK_MSG = "network access is disabled"
_PROCESS_MSG = "subprocesses are disabled"
_MARKER = "\n[... {n} characters truncated]\n"
_SCRATCH = "/scratch"  # the sandbox's cwd, HOME and TMPDIR
_CODE_PATH = "/run/tfgrpo/code.py"  # where the sandbox sees the code file (read-only)
_PROBE_TIMEOUT = 30.0
_MARKER_RE = re.compile(r"\n?\[\.\.\. (\d+) characters truncated\]\n?")

# Runs in the child (``python -I -X utf8 -u -c``) before the model's code; argv: code file, JSON limits.
_BOOTSTRAP = r"""
import json, os, resource, signal, sys

_path, _cfg = sys.argv[1], json.loads(sys.argv[2])
sys.argv = ["<code>"]


def _netns():
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        newnet, newuser = 0x40000000, 0x10000000
        if libc.unshare(newnet) == 0:
            return "net"
        uid, gid = os.geteuid(), os.getegid()
        if libc.unshare(newuser | newnet) == 0:
            maps = (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1"))
            for name, text in maps:
                try:
                    with open(f"/proc/self/{name}", "w") as f:
                        f.write(text)
                except OSError:
                    pass
            return "user+net"
    except Exception:
        pass
    return "none"


def _limit(name, soft, hard=None):
    try:
        which = getattr(resource, name)
        hard = soft if hard is None else hard
        _, cur_hard = resource.getrlimit(which)
        if cur_hard != resource.RLIM_INFINITY:
            hard = min(hard, cur_hard)
            soft = min(soft, hard)
        resource.setrlimit(which, (soft, hard))
    except (AttributeError, ValueError, OSError):
        pass


def _user_tasks(uid):
    n = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}").st_uid == uid:
                    n += len(os.listdir(f"/proc/{pid}/task"))
            except OSError:
                pass
    return n


if _cfg["sandbox"]:
    os.environ["TFGRPO_SANDBOX_NETNS"] = "bwrap"
else:
    os.environ["TFGRPO_SANDBOX_NETNS"] = _netns() if _cfg["netns"] else "off"
_limit("RLIMIT_CORE", 0)
_limit("RLIMIT_CPU", _cfg["cpu"], _cfg["cpu"] + 1)
_limit("RLIMIT_FSIZE", _cfg["fsize"])
_limit("RLIMIT_NOFILE", _cfg["nofile"])
if not _cfg["sandbox"] and os.getuid() != 0:  # in the sandbox no process can be created at all
    try:
        _limit("RLIMIT_NPROC", _user_tasks(os.getuid()) + _cfg["nproc_margin"])
    except OSError:
        pass
_limit("RLIMIT_AS", _cfg["memory"])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-big write raises OSError instead of killing


def _guard(message):
    def refuse(*args, **kwargs):
        raise PermissionError(message)

    return refuse


import socket

_no_net = _guard(_cfg["network_msg"])
for _name in ("connect", "connect_ex", "bind", "sendto", "sendmsg"):
    setattr(socket.socket, _name, _no_net)
for _name in ("create_connection", "create_server", "getaddrinfo", "gethostbyname", "gethostbyname_ex",
              "gethostbyaddr", "getnameinfo"):
    setattr(socket, _name, _no_net)

import _posixsubprocess

_no_proc = _guard(_cfg["process_msg"])
for _name in ("fork", "forkpty", "system", "posix_spawn", "posix_spawnp", "execv", "execve"):
    if hasattr(os, _name):
        setattr(os, _name, _no_proc)
_posixsubprocess.fork_exec = _no_proc

_real_kill, _real_killpg, _pid, _pgrp = os.kill, os.killpg, os.getpid(), os.getpgrp()
_no_signal = _guard("signalling other processes is disabled")


def _kill(pid, sig):
    if pid in (0, _pid, -_pgrp):
        return _real_kill(pid, sig)
    return _no_signal()


def _killpg(pgid, sig):
    if pgid in (0, _pgrp):
        return _real_killpg(pgid, sig)
    return _no_signal()


os.kill, os.killpg = _kill, _killpg
if hasattr(signal, "pidfd_send_signal"):
    signal.pidfd_send_signal = _no_signal

import linecache, traceback, types

with open(_path, encoding="utf-8", errors="replace") as _f:
    _src = _f.read()
linecache.cache["<code>"] = (len(_src), None, _src.splitlines(True), "<code>")
_main = types.ModuleType("__main__")
_main.__dict__["__builtins__"] = __builtins__
sys.modules["__main__"] = _main
try:
    _compiled = compile(_src, "<code>", "exec")
except (SyntaxError, ValueError) as _exc:
    traceback.print_exception(type(_exc), _exc, None)
    sys.exit(1)
try:
    exec(_compiled, _main.__dict__)
except SystemExit:
    raise
except BaseException as _exc:
    traceback.print_exception(type(_exc), _exc, _exc.__traceback__.tb_next)
    sys.exit(1)
"""


@dataclass(frozen=True)
class PythonResult:
    """What one run printed and how it ended.

    ``error`` is ``None`` on success, else a one-line reason: ``"timed out after 10 s"``,
    ``"memory limit 512 MB exceeded"``, ``"network access is disabled (exit code 1: ...)"``,
    ``"exit code 1: ZeroDivisionError: division by zero"``, ``"killed by signal SIGSEGV"``, ...
    ``stdout``/``stderr`` are already capped (with a truncation marker); ``render()`` gives the text a model
    sees, at most ``max_output`` characters plus the marker and the error line.
    """

    ok: bool
    stdout: str
    stderr: str
    error: str | None
    seconds: float
    returncode: int | None = None
    max_output: int = 4000

    def render(self, max_output: int | None = None) -> str:
        limit = self.max_output if max_output is None else max_output
        parts = []
        if self.stdout.strip():
            parts.append(self.stdout.rstrip())
        if self.stderr.strip():
            parts.append("[stderr]\n" + self.stderr.rstrip())
        text = _truncate("\n".join(parts), limit)
        if self.error:
            text = f"{text}\n[error] {self.error}" if text else f"[error] {self.error}"
        return text or "(no output; use print() to see results)"


def run_python(
    code: str,
    *,
    timeout: float = 10.0,
    memory_mb: int = 512,
    max_output: int = 4000,
    unsafe: bool = False,
) -> PythonResult:
    """Run ``code`` in a fresh, limited Python process inside the bubblewrap sandbox.

    ``unsafe=True`` runs it without the OS sandbox (in-process guards and limits only). Without it, where
    the sandbox cannot run, the result is an error naming the fix (see :func:`sandbox_problem`).
    Never raises (parent-side failures become ``error="sandbox failure: ..."``) and returns within
    ``timeout`` plus a few seconds of clean-up at worst (usually a fraction of a second after the end).
    """
    if not unsafe:
        problem = sandbox_problem()
        if problem is not None:
            return PythonResult(
                ok=False, stdout="", stderr="", error=f"sandbox unavailable: {problem}", seconds=0.0
            )
    return _run(
        code, timeout=timeout, memory_mb=memory_mb, max_output=max_output, netns=True, sandbox=not unsafe
    )


def _run(
    code: str, *, timeout: float, memory_mb: int, max_output: int, netns: bool, sandbox: bool
) -> PythonResult:
    start = time.monotonic()
    max_output = max(int(max_output), 100)
    root: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    filter_fd: int | None = None
    try:
        root = tempfile.mkdtemp(prefix="tfgrpo-python-")
        scratch = os.path.join(root, "scratch")
        os.mkdir(scratch)
        code_path = os.path.join(root, "code.py")
        with open(code_path, "w", encoding="utf-8", errors="surrogatepass") as f:
            f.write(code)
        limits = {
            "memory": int(memory_mb) * 1024 * 1024,
            "cpu": math.ceil(timeout) + 1,
            "fsize": FILE_SIZE_LIMIT,
            "nofile": OPEN_FILES_LIMIT,
            "nproc_margin": NPROC_MARGIN,
            "netns": netns,
            "sandbox": sandbox,
            "network_msg": _NETWORK_MSG,
            "process_msg": _PROCESS_MSG,
        }
        python = [sys.executable, "-I", "-X", "utf8", "-u", "-c", _BOOTSTRAP]
        if sandbox:
            program = _process_filter()
            if program is not None:
                filter_path = os.path.join(root, "seccomp.bpf")
                with open(filter_path, "wb") as fb:
                    fb.write(program)
                filter_fd = os.open(filter_path, os.O_RDONLY)
            argv = [*_bwrap_argv(code_path, scratch, filter_fd), *python, _CODE_PATH, json.dumps(limits)]
            cwd, env = root, _sandbox_env()
        else:
            argv = [*python, code_path, json.dumps(limits)]
            cwd, env = scratch, _child_env(scratch)
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
            pass_fds=() if filter_fd is None else (filter_fd,),
        )
        if filter_fd is not None:
            os.close(filter_fd)
            filter_fd = None
        out, err, timed_out = _communicate(proc, timeout, cap=4 * max_output)
        rc = proc.returncode
        stdout, stderr = out.text(), err.text()
        if sandbox and rc is not None and rc > 128:  # bwrap reports a child killed by signal N as 128 + N
            rc = -(rc - 128)
        error = _diagnose(rc, timed_out, stderr, timeout=timeout, memory_mb=memory_mb)
        if sandbox and rc == 1 and not stdout and stderr.startswith("bwrap: "):  # it could not set up
            error = f"sandbox failure: {_last_line(stderr)}"
        return PythonResult(
            ok=error is None,
            stdout=stdout,
            stderr=stderr,
            error=error,
            seconds=round(time.monotonic() - start, 3),
            returncode=rc,
            max_output=max_output,
        )
    except Exception as exc:  # the parent side failed (no fork, disk full, ...): report, never raise
        return PythonResult(
            ok=False,
            stdout="",
            stderr="",
            error=f"sandbox failure: {type(exc).__name__}: {exc}".replace("\n", " "),
            seconds=round(time.monotonic() - start, 3),
            max_output=max_output,
        )
    finally:
        if filter_fd is not None:
            with contextlib.suppress(OSError):
                os.close(filter_fd)
        if proc is not None:
            _kill_group(proc)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
            if proc.returncode is None:
                with contextlib.suppress(Exception):
                    proc.wait(timeout=_REAP_TIMEOUT)
        if root is not None:
            _rmtree(root)


def _child_env(scratch: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH") or os.defpath,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": scratch,
        "TMPDIR": scratch,
        "MPLBACKEND": "Agg",
        "MPLCONFIGDIR": scratch,
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    for name in ("LD_LIBRARY_PATH", "TZ"):  # needed by some interpreter builds / for local time; no secrets
        if os.environ.get(name):
            env[name] = os.environ[name]
    return env


def sandbox_problem() -> str | None:
    """``None`` when the bubblewrap sandbox works on this machine, else one line saying why not and how to
    fix it. Checked once per process and bwrap path (a trial run of the full flag set, ~0.1 s)."""
    return _probe(shutil.which("bwrap"))


@functools.lru_cache(maxsize=4)
def _probe(bwrap: str | None) -> str | None:
    if bwrap is None:
        return f"bubblewrap (bwrap) is not installed: {BWRAP_INSTALL_HINT}"
    if not sys.platform.startswith("linux"):
        return "the bubblewrap sandbox needs Linux"
    try:
        with tempfile.TemporaryDirectory(prefix="tfgrpo-probe-") as root:
            code_path = os.path.join(root, "code.py")
            with open(code_path, "w", encoding="utf-8") as f:
                f.write("")
            done = subprocess.run(
                [*_bwrap_argv(code_path, root, None, bwrap=bwrap), sys.executable, "-I", "-S", _CODE_PATH],
                cwd=root,
                env=_sandbox_env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=_PROBE_TIMEOUT,
            )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"bubblewrap ({bwrap}) cannot run: {type(exc).__name__}: {exc}".replace("\n", " ")
    if done.returncode != 0:
        why = _last_line(done.stderr.decode("utf-8", "replace")) or f"exit code {done.returncode}"
        return bwrap_failure(bwrap, why)
    return None


# bwrap's words when the kernel or a security module refuses it a namespace
_NAMESPACE_REFUSED = re.compile(r"namespace|uid map|gid map|setgroups", re.IGNORECASE)


def bwrap_failure(bwrap: str, why: str) -> str:
    """One line for a sandbox that would not start: the AppArmor / user-namespace advice only when the
    namespace was refused; any other failure (a mount, a path) as bwrap said it, with what was mounted."""
    if _NAMESPACE_REFUSED.search(why):
        return (
            f"bubblewrap ({bwrap}) cannot start its sandbox here: {why} (it needs user namespaces; on "
            "Ubuntu 24.04 load the bwrap-userns-restrict AppArmor profile or set sysctl "
            "kernel.apparmor_restrict_unprivileged_userns=0)"
        )
    mounted = ", ".join(["/usr", *_python_dirs()])
    return (
        f"bubblewrap ({bwrap}) cannot start its sandbox here: {why} (while mounting {mounted} read-only "
        f"and a private {_SCRATCH} and /tmp)"
    )


def _bwrap_argv(
    code_path: str, scratch: str, filter_fd: int | None, *, bwrap: str | None = None
) -> list[str]:
    """The bwrap command line up to the program: namespaces and the filesystem. ``scratch`` is the host
    directory used as ``/scratch`` by a bwrap older than 0.7 (no ``--size``: no bounded ``tmpfs``)."""
    bwrap = bwrap or shutil.which("bwrap") or "bwrap"
    version = _bwrap_version(bwrap)
    argv = [
        bwrap,
        "--unshare-user",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--cap-drop",
        "ALL",
        "--die-with-parent",
        "--new-session",
        "--hostname",
        "sandbox",
    ]
    if version >= (0, 8):
        argv.append("--disable-userns")  # the process filter also refuses unshare; this holds without it
    argv += ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):  # merged /usr: the same symlink inside
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    for name in ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime"):
        argv += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    argv += ["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev"]  # /dev/shm: no unbounded tmpfs
    pythons = _python_dirs()
    # The scratch tmpfs is /scratch, with /tmp a symlink to it; when Python lives under /tmp (python3 -m
    # venv /tmp/venv) /tmp must be a directory to mount it in, so the scratch is /tmp and /scratch the link.
    at_tmp = any(d == "/tmp" or d.startswith("/tmp/") for d in pythons)
    place, link = ("/tmp", _SCRATCH) if at_tmp else (_SCRATCH, "/tmp")
    if version >= (0, 7):
        argv += ["--size", str(SCRATCH_LIMIT), "--tmpfs", place]
    else:
        argv += ["--bind", scratch, place]
    argv += ["--symlink", place, link]
    for prefix in pythons:  # after the scratch: one under /tmp is mounted inside it
        argv += ["--ro-bind", prefix, prefix]
    argv += ["--ro-bind", code_path, _CODE_PATH]
    argv += ["--remount-ro", "/", "--chdir", place]  # bwrap's root is a tmpfs without a size limit
    if filter_fd is not None:
        argv += ["--seccomp", str(filter_fd)]
    return [*argv, "--"]


def _sandbox_env() -> dict[str, str]:
    """bwrap's whole environment, which it hands on to the code: built here, nothing inherited."""
    env = _child_env(_SCRATCH)
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), "/usr/local/bin", "/usr/bin", "/bin"])
    return env


@functools.lru_cache(maxsize=4)
def _bwrap_version(bwrap: str) -> tuple[int, ...]:
    try:
        out = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return (0,)
    found = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", out)
    return tuple(int(g) for g in found.groups() if g is not None) if found else (0,)


def _python_dirs() -> list[str]:
    """The interpreter's installation(s) outside ``/usr`` (a venv and its base, pyenv, conda, ...)."""
    dirs: list[str] = []
    for path in (sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix):
        real = os.path.realpath(path)
        if real in ("/", "/usr") or real.startswith("/usr/") or not os.path.isdir(real):
            continue
        for candidate in {path, real}:
            if candidate not in dirs:
                dirs.append(candidate)
    executable = os.path.realpath(sys.executable)
    if not any(executable.startswith(d + os.sep) for d in dirs) and not executable.startswith("/usr/"):
        dirs.append(os.path.dirname(executable))
    return sorted(dirs)


# Syscall numbers of what the filter refuses; other architectures run without the filter (the namespaces
# and the timeout still hold, RLIMIT_NPROC bounds a non-root user).
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_SYSCALLS = {
    "x86_64": {"clone": 56, "fork": 57, "vfork": 58, "unshare": 272, "clone3": 435},
    "aarch64": {"clone": 220, "unshare": 97, "clone3": 435},
}


def _process_filter() -> bytes | None:
    """A classic-BPF seccomp program for ``bwrap --seccomp``: no new process or thread, no ``unshare``.

    ``clone3`` gets ``ENOSYS`` so that the C library falls back to ``clone``, which gets ``EPERM`` like
    ``fork``/``vfork``/``unshare``; a foreign ABI (i386 or x32 calls on x86_64) kills the process.
    """
    machine = platform.machine()
    if machine not in _AUDIT_ARCH:
        return None
    load, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_JMP|JGE|K, BPF_RET|K
    allow, kill = 0x7FFF0000, 0x80000000  # SECCOMP_RET_ALLOW, SECCOMP_RET_KILL_PROCESS
    fail = 0x00050000  # SECCOMP_RET_ERRNO | errno
    nrs = _SYSCALLS[machine]
    program = [(load, 0, 0, 4), (jeq, 1, 0, _AUDIT_ARCH[machine]), (ret, 0, 0, kill), (load, 0, 0, 0)]
    if machine == "x86_64":
        program += [(jge, 0, 1, 0x40000000), (ret, 0, 0, kill)]  # x32 system calls
    for name, nr in nrs.items():
        code = errno.ENOSYS if name == "clone3" else errno.EPERM
        program += [(jeq, 0, 1, nr), (ret, 0, 0, fail | code)]
    program.append((ret, 0, 0, allow))
    return b"".join(struct.pack("=HBBI", *insn) for insn in program)


class _Capture:
    """Keeps the first and the last ``cap // 2`` bytes of a stream and counts what it drops."""

    def __init__(self, cap: int) -> None:
        self.half = max(cap // 2, 1)
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        room = self.half - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data[-self.half :]
            if len(self.tail) > self.half:
                del self.tail[: len(self.tail) - self.half]

    def text(self) -> str:
        dropped = self.total - len(self.head) - len(self.tail)
        if dropped == 0:
            return bytes(self.head + self.tail).decode("utf-8", "replace")
        head = codecs.getincrementaldecoder("utf-8")("replace").decode(bytes(self.head), final=False)
        tail = bytes(self.tail)
        skip = 0
        while skip < min(3, len(tail)) and 0x80 <= tail[skip] <= 0xBF:  # starts inside a UTF-8 character
            skip += 1
        return head + _MARKER.format(n=dropped + skip) + tail[skip:].decode("utf-8", "replace")


def _communicate(proc: subprocess.Popen[bytes], timeout: float, cap: int) -> tuple[_Capture, _Capture, bool]:
    """Drain stdout/stderr with a cap until the child is gone; kill the group at the deadline."""
    assert proc.stdout is not None and proc.stderr is not None
    out, err = _Capture(cap), _Capture(cap)
    sinks = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
    deadline = time.monotonic() + timeout
    drain_until: float | None = None  # set once the child has exited or was killed
    timed_out = False
    with selectors.DefaultSelector() as sel:
        for fd in sinks:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map():
            now = time.monotonic()
            if drain_until is None:
                if _exited(proc):
                    _kill_group(
                        proc
                    )  # stray children hold the pipes open; the leader is a zombie, not reaped
                    drain_until = now + _KILL_GRACE
                elif now >= deadline:
                    timed_out = True
                    _kill_group(proc)
                    drain_until = now + _KILL_GRACE
            elif now >= drain_until:
                break
            limit = drain_until if drain_until is not None else deadline
            for key, _ in sel.select(timeout=max(0.0, min(limit - now, 0.05))):
                fd = int(key.fd)
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if chunk:
                    sinks[fd].feed(chunk)
                else:
                    sel.unregister(fd)
    if drain_until is None:
        # Both pipes closed first (the usual end, or the code closed them): wait for the exit, up to the
        # deadline, without reaping, so that killing the group cannot hit a recycled pid.
        while not _exited(proc):
            if time.monotonic() >= deadline:
                timed_out = True
                break
            time.sleep(0.005)
    _kill_group(proc)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=_REAP_TIMEOUT)
    return out, err, timed_out


def _exited(proc: subprocess.Popen[bytes]) -> bool:
    """True once the child has exited, without reaping it (so its pid stays a valid process-group id)."""
    if proc.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.returncode is not None:
        return  # reaped: the pid (and group id) may belong to someone else now
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _rmtree(path: str) -> None:
    def fix(func: Any, target: str, _exc: Any) -> None:  # the code may have made its files read-only
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(target), stat.S_IRWXU)
            os.chmod(target, stat.S_IRWXU)
            func(target)

    with contextlib.suppress(OSError):
        shutil.rmtree(path, onerror=fix)


def _last_line(text: str) -> str:
    for line in reversed(text.splitlines()):
        if line.strip() and not _MARKER_RE.fullmatch(line):
            return line.strip()[:300]
    return ""


_MEMORY_HINTS = ("MemoryError", "Cannot allocate memory", "out of memory", "bad_alloc", "Unable to allocate")


def _diagnose(rc: int | None, timed_out: bool, stderr: str, *, timeout: float, memory_mb: int) -> str | None:
    if timed_out:
        return f"timed out after {timeout:g} s"
    if rc == 0:
        return None
    last = _last_line(stderr)
    if rc is None:
        return "the process could not be stopped"
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = str(-rc)
        if name == "SIGXCPU":
            return f"timed out after {timeout:g} s (CPU time limit)"
        if any(h in stderr for h in _MEMORY_HINTS):
            return f"memory limit {memory_mb} MB exceeded"
        hint = " (possibly the memory limit)" if name in ("SIGKILL", "SIGSEGV", "SIGABRT", "SIGBUS") else ""
        return f"killed by signal {name}{hint}"
    if "MemoryError" in last or any(h in last for h in _MEMORY_HINTS):
        return f"memory limit {memory_mb} MB exceeded"
    detail = f"exit code {rc}: {last}" if last else f"exit code {rc}"
    if _NETWORK_MSG in last:
        return f"{_NETWORK_MSG} ({detail})"
    if _PROCESS_MSG in last:
        return f"{_PROCESS_MSG} ({detail})"
    return detail


def _truncate(text: str, limit: int) -> str:
    """Keep the first and last ``limit // 2`` characters; the marker counts what was dropped, including
    what an inner marker (from the capture cap) had already dropped."""
    if len(text) <= limit:
        return text
    head = limit // 2
    tail = limit - head
    removed = text[head : len(text) - tail]
    inner = list(_MARKER_RE.finditer(removed))
    n = len(removed) + sum(int(m.group(1)) - len(m.group(0)) for m in inner)
    return text[:head] + _MARKER.format(n=n) + text[len(text) - tail :]


def _available(*modules: str) -> list[str]:
    found = []
    for name in modules:
        with contextlib.suppress(Exception):
            if importlib.util.find_spec(name) is not None:
                found.append(name)
    return found


def python_tool(
    *, timeout: float = 10.0, memory_mb: int = 512, max_output: int = 4000, unsafe: bool = False
) -> BaseTool:
    """The LangChain tool ``python`` (input ``{"code": str}``) returning ``run_python(...).render()``.

    Errors come back as text (never raised), so the agent loop continues; safe to call from several
    threads at once (each call is its own process and scratch directory); async calls run in a thread.
    """
    import asyncio

    from langchain_core.tools import StructuredTool
    from pydantic import BaseModel, Field

    class PythonInput(BaseModel):
        code: str = Field(description="Python 3 source code to run; print() what you want to see.")

    def python(code: str) -> str:
        try:
            result = run_python(
                code, timeout=timeout, memory_mb=memory_mb, max_output=max_output, unsafe=unsafe
            )
            return result.render()
        except Exception as exc:  # run_python does not raise; belt and braces for the agent loop
            return f"[error] sandbox failure: {type(exc).__name__}: {exc}"

    async def apython(code: str) -> str:
        return await asyncio.to_thread(python, code)

    libs = _available("numpy", "sympy", "scipy", "mpmath", "networkx")
    description = (
        "Run Python 3 code in a sandbox and return what it prints. Use print() to see results. "
        f"No network, no subprocesses, no files kept between calls, {timeout:g} s time limit, "
        f"{memory_mb} MB memory. Each call starts a fresh interpreter: variables do not persist."
    )
    if libs:
        description += " Available libraries: " + ", ".join(libs) + "."
    return StructuredTool.from_function(
        func=python,
        coroutine=apython,
        name="python",
        description=description,
        args_schema=PythonInput,
    )
