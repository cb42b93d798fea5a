"""The Python tool's OS boundary (bubblewrap): one test per escape that Python-level patching let
through, and what happens where bubblewrap is missing (``--domain math`` is refused; ``--unsafe-python``
opts out).

Each escape uses what the guards in the child do not cover (``posix.*``, ``_socket``, ``ctypes``), so only
the namespaces, the cleared environment and the process filter stop it. Every test starts real processes.
"""

from __future__ import annotations

import ast
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from tfgrpo import cli
from tfgrpo.context import Context
from tfgrpo.tools import lazy, python_exec
from tfgrpo.tools.python_exec import run_python, sandbox_problem

REPO = Path(__file__).resolve().parents[2]

needs_bwrap = pytest.mark.skipif(
    sandbox_problem() is not None,
    reason=f"no bubblewrap sandbox here ({sandbox_problem()}); CI installs it (apt-get install bubblewrap)",
)


@pytest.fixture
def no_bwrap(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine without bubblewrap: ``bwrap`` is not on the PATH."""
    which = shutil.which
    monkeypatch.setattr(
        shutil, "which", lambda name, *a, **k: None if name == "bwrap" else which(name, *a, **k)
    )


def _processes_with(marker: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(pid))
            except OSError:
                pass
    return found


def _wait_until_gone(marker: str, seconds: float = 3.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while (alive := _processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in alive:  # do not leave an escaped process behind, whatever the verdict
        with contextlib.suppress(OSError):
            os.kill(pid, 9)
    return alive


@needs_bwrap
def test_a_shell_cannot_touch_the_host(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    code = f"import posix\nprint('system returned', posix.system('echo pwned > {target}'))"
    r = run_python(code)
    assert not target.exists(), r.render()
    assert "system returned 0" not in r.stdout  # no shell ran at all


@needs_bwrap
def test_a_fork_bomb_creates_no_process() -> None:
    code = textwrap.dedent(
        """
        import posix, time
        n = 0
        try:
            for _ in range(200):
                if posix.fork() == 0:
                    time.sleep(30)
                    posix._exit(0)
                n += 1
        except OSError as exc:
            print(type(exc).__name__, exc)
        print('forked', n)
        """
    )
    t0 = time.monotonic()
    r = run_python(code, timeout=5)
    assert time.monotonic() - t0 < 5
    assert r.stdout.splitlines()[-1] == "forked 0", r.render()


@needs_bwrap
def test_setns_cannot_reenter_the_parent_network() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        server.setblocking(False)
        port = server.getsockname()[1]
        code = textwrap.dedent(
            f"""
            import ctypes, os, _socket
            libc = ctypes.CDLL(None, use_errno=True)
            pids = [os.getppid(), 1] + [int(p) for p in os.listdir('/proc') if p.isdigit()]
            for pid in pids:
                try:
                    fd = os.open(f'/proc/{{pid}}/ns/net', os.O_RDONLY)
                except OSError:
                    continue
                if libc.setns(fd, 0x40000000) != 0:
                    continue
                s = _socket.socket()
                s.settimeout(2)
                try:
                    s.connect(('127.0.0.1', {port}))
                    s.send(b'escaped')
                    print('connected through the namespace of pid', pid)
                    break
                except OSError as exc:
                    print('setns worked for pid', pid, 'but', exc)
            """
        )
        r = run_python(code)
        assert "connected" not in r.stdout, r.render()
        with pytest.raises(BlockingIOError):
            server.accept()


@needs_bwrap
def test_the_parent_environment_is_unreachable() -> None:
    secret = f"sk-parent-secret-{uuid.uuid4().hex}"
    code = textwrap.dedent(
        """
        import os
        seen = [repr(dict(os.environ))]
        for pid in os.listdir('/proc'):
            for name in ('environ', 'cmdline'):
                try:
                    with open(f'/proc/{pid}/{name}', 'rb') as f:
                        seen.append(f.read().decode('utf-8', 'replace'))
                except OSError:
                    pass
        print('\\n'.join(seen))
        """
    )
    # The key must be in the parent's environment from its start (/proc/PID/environ shows the initial one).
    driver = (
        "import sys\nfrom tfgrpo.tools.python_exec import run_python\n"
        "r = run_python(sys.stdin.read())\nprint(r.stdout)\nprint(r.error)"
    )
    env = {**os.environ, "OPENAI_API_KEY": secret, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", driver], input=code, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "sk-parent-secret" not in out.stdout
    assert len(out.stdout) > 20  # the child did run and print what it could see


@needs_bwrap
def test_a_setsid_grandchild_does_not_outlive_the_timeout() -> None:
    marker = f"{time.time() % 1000:.6f}{os.getpid() % 1000}"  # a unique sleep duration to find it by
    code = textwrap.dedent(
        f"""
        import posix, time
        try:
            if posix.fork() == 0:
                posix.setsid()
                if posix.fork() == 0:
                    posix.execv('/bin/sleep', ['sleep', '{marker}'])
                posix._exit(0)
        except OSError as exc:
            print('no fork:', exc)
        while True:
            time.sleep(0.1)
        """
    )
    r = run_python(code, timeout=2)
    assert r.error == "timed out after 2 s"
    assert _wait_until_gone(marker) == []


@needs_bwrap
def test_the_namespace_dies_with_the_timeout_even_without_the_process_filter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Defence in depth: let the code fork (no seccomp filter); every process still dies at the timeout.
    monkeypatch.setattr(python_exec, "_process_filter", lambda: None)
    marker = f"{time.time() % 1000:.6f}{os.getpid() % 1000}1"
    code = textwrap.dedent(
        f"""
        import posix, time
        if posix.fork() == 0:
            posix.setsid()
            if posix.fork() == 0:
                posix.execv('/bin/sleep', ['sleep', '{marker}'])
            posix._exit(0)
        time.sleep(0.5)
        print('started')
        while True:
            time.sleep(0.1)
        """
    )
    r = run_python(code, timeout=2)
    assert r.error == "timed out after 2 s" and r.stdout == "started\n", r.render()
    assert _wait_until_gone(marker) == []


@needs_bwrap
def test_the_host_filesystem_is_absent_or_read_only() -> None:
    """What is guaranteed, wherever the project and its Python live: no file of the project, the run or
    the home is visible, and nothing outside the scratch is writable. (With a venv inside the project,
    e.g. a clone under /tmp, the project's folder exists inside as the empty mount point of the venv.)"""
    project = [REPO / "README.md", REPO / "pyproject.toml", Path(__file__), REPO / "tfgrpo" / "__init__.py"]
    project.append(REPO / ".env")  # a secret a user keeps in the project, if there is one
    seen = [str(f) for f in project if f.exists()]
    assert seen, "the project's files are where this test expects them"
    home = os.path.expanduser("~") + "/.bashrc"
    code = textwrap.dedent(
        f"""
        import os, sys
        print([f for f in {seen!r} + [{home!r}] if os.path.exists(f)])
        for target in (sys.prefix + '/pwned', {str(REPO / "pwned")!r}, '/usr/pwned', '/etc/pwned', '/pwned',
                       '/dev/shm/pwned'):
            try:
                open(target, 'w')
                print('wrote', target)
            except OSError as exc:
                print(exc.errno)
        """
    )
    r = run_python(code)
    lines = r.stdout.splitlines()
    assert lines[0] == "[]", r.render()  # the project, the run directory, the home: not there
    # EROFS: system, Python and everything but the scratch are read-only. The project's path is absent,
    # read-only, or (a project under /tmp, where the scratch is mounted) inside the scratch: never the host's
    assert lines[1] == "30" and lines[3:] == ["30"] * 4, r.render()
    assert not os.path.exists(os.path.join(sys.prefix, "pwned")) and not (REPO / "pwned").exists()


@needs_bwrap
def test_the_scratch_directory_is_private_and_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(python_exec.tempfile, "tempdir", str(tmp_path))  # where the parent keeps its files
    code = textwrap.dedent(
        """
        import os
        n = 0
        try:
            for i in range(20):
                with open(f'f{i}', 'wb') as f:
                    f.write(b'x' * 8 * 1024 * 1024)
                n += 1
        except OSError as exc:
            print(exc.errno, n * 8, 'MB written')
        """
    )
    r = run_python(code)
    errno_, written, _ = r.stdout.split(maxsplit=2)
    assert errno_ == "28" and int(written) <= python_exec.SCRATCH_LIMIT // 2**20  # ENOSPC at the limit
    assert list(tmp_path.iterdir()) == []  # nothing of the run is left on the host
    # bwrap < 0.7 has no --size: the scratch directory is then a private host directory, deleted afterwards
    monkeypatch.setattr(python_exec, "_bwrap_version", lambda bwrap: (0, 6))
    r = run_python(
        "import os\nopen('note', 'w').write('hi')\n"
        "print(os.path.samefile('.', os.environ['HOME']), os.path.exists('note'), os.getcwd())"
    )
    home, wrote, cwd = r.stdout.split()
    assert (home, wrote) == ("True", "True"), r.render()  # the cwd is the scratch, and writable
    assert not os.path.exists(os.path.join(cwd, "note"))  # the note is nowhere on the host
    assert list(tmp_path.iterdir()) == []


def test_without_bwrap_the_math_domain_is_refused_in_one_line(
    no_bwrap: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    assert cli.main(["learn", "--domain", "math", "--run-dir", str(run_dir), "--model", "openai:m"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "bubblewrap (bwrap) is not installed" in err and "apt-get install bubblewrap" in err
    assert "--unsafe-python" in err
    assert not run_dir.exists()  # refused before anything started
    assert cli.main(["infer", "--question", "1+1", "--domain", "math", "--model", "openai:m"]) == 2
    assert "apt-get install bubblewrap" in capsys.readouterr().err
    # and the tool itself refuses rather than run the code unsandboxed
    r = run_python("print('ran')")
    assert not r.ok and r.stdout == "" and r.error is not None
    assert r.error.startswith("sandbox unavailable: bubblewrap (bwrap) is not installed")


def test_a_bwrap_that_cannot_create_namespaces_is_refused_with_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # e.g. Ubuntu 24.04 for an ordinary user, or Docker's default seccomp profile
    fake = tmp_path / "bwrap"
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = --version ]; then echo "bubblewrap 0.9.0"; exit 0; fi\n'
        "echo 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    problem = sandbox_problem()
    assert problem is not None and "setting up uid map: Permission denied" in problem
    assert "apparmor" in problem.lower()
    assert cli.main(["infer", "--question", "q", "--domain", "math", "--model", "openai:m"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "uid map" in err and "--unsafe-python" in err


def test_unsafe_python_is_an_explicit_opt_in_with_a_warning(
    no_bwrap: None, capsys: pytest.CaptureFixture[str]
) -> None:
    args = cli.parse_args(
        ["infer", "--question", "q", "--domain", "math", "--unsafe-python", "--model", "openai:m"]
    )
    cli.check_python_sandbox(args)
    assert "warning: --unsafe-python" in capsys.readouterr().err
    ctx = cli.agent_context(args)
    assert ctx.unsafe_python and not Context().unsafe_python
    learn = cli.parse_args(["learn", "--domain", "math", "--unsafe-python"])
    assert cli.context_from_args(learn, preset="model").unsafe_python
    # the agent's tool follows the run's setting
    unsafe = SimpleNamespace(context=Context(unsafe_python=True))
    assert lazy.python.func(code="print(6 * 7)", runtime=unsafe) == "42"  # type: ignore[attr-defined]
    safe = SimpleNamespace(context={"unsafe_python": False})
    assert "sandbox unavailable" in lazy.python.func(code="print(6 * 7)", runtime=safe)  # type: ignore[attr-defined]


def test_other_domains_need_no_sandbox(no_bwrap: None) -> None:
    cli.check_python_sandbox(cli.parse_args(["infer", "--question", "q", "--domain", "direct"]))


def test_tools_never_import_nodes_or_graphs() -> None:
    # Lower rooms never import higher ones: tfgrpo/tools/ is below nodes/ and graphs/.
    for path in (REPO / "tfgrpo" / "tools").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                assert not name.startswith(("tfgrpo.nodes", "tfgrpo.graphs")), f"{path.name} imports {name}"


def _venv_under_tmp() -> Path:
    """A venv made the way CI systems and newcomers do (``python3 -m venv /tmp/...``)."""
    root = Path(__import__("tempfile").mkdtemp(prefix="tfgrpo-venv-", dir="/tmp"))
    made = subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(root / "venv")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if made.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"cannot create a venv under /tmp here: {made.stderr.strip()[-200:]}")
    return root


@needs_bwrap
def test_the_sandbox_starts_when_python_lives_under_tmp() -> None:
    root = _venv_under_tmp()
    try:
        script = textwrap.dedent("""
            import json, sys
            from tfgrpo.tools.python_exec import run_python, sandbox_problem
            code = (
                "import os, sys, tempfile\\n"
                "open('/tmp/x.txt', 'w').write('ok')\\n"
                "print(sys.prefix, open('/tmp/x.txt').read(), os.path.realpath(tempfile.gettempdir()),"
                " os.getcwd(), os.path.realpath('/tmp'))\\n"
            )
            result = run_python(code, timeout=20)
            print(json.dumps({"problem": sandbox_problem(), "ok": result.ok, "stdout": result.stdout,
                              "error": result.error, "prefix": sys.prefix}))
        """)
        out = subprocess.run(
            [str(root / "venv" / "bin" / "python"), "-c", script],
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        seen = __import__("json").loads(out.stdout.strip().splitlines()[-1])
        assert seen["prefix"].startswith("/tmp/")
        assert seen["problem"] is None, seen
        assert seen["ok"], seen
        prefix, written, tmpdir, cwd, tmp = seen["stdout"].split()
        assert prefix == seen["prefix"] and written == "ok"  # the venv's own Python, a writable /tmp
        assert tmpdir == cwd == tmp  # scratch: TMPDIR, cwd and /tmp are one private place
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_sandbox_failure_names_its_cause() -> None:
    """Only a refused namespace is blamed on AppArmor / user namespaces; any other bwrap error is shown
    as it is, with what the sandbox was mounting."""
    other = python_exec.bwrap_failure("/usr/bin/bwrap", "bwrap: Can't make symlink at /tmp: File exists")
    assert "Can't make symlink at /tmp: File exists" in other
    assert "AppArmor" not in other and "user namespaces" not in other
    refused = python_exec.bwrap_failure("/usr/bin/bwrap", "bwrap: setting up uid map: Permission denied")
    assert "AppArmor" in refused and "user namespaces" in refused
    refused = python_exec.bwrap_failure("/usr/bin/bwrap", "bwrap: No permissions to create new namespace")
    assert "AppArmor" in refused
