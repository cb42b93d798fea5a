"""Unit tests for tfgrpo.tools.python_exec (offline; every test starts real, short-lived child processes)."""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import os
import resource
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tfgrpo.tools import python_exec
from tfgrpo.tools.python_exec import PythonResult, python_tool, run_python, sandbox_problem


@pytest.fixture(autouse=True, params=["sandbox", "unsafe"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs twice: in the bubblewrap sandbox (skipped where it cannot run) and unsandboxed
    (``--unsafe-python``): the limits, the guards and the output handling are the same in both."""
    unsafe = request.param == "unsafe"
    if not unsafe and (problem := sandbox_problem()) is not None:
        pytest.skip(f"no bubblewrap sandbox here ({problem})")
    module = sys.modules[__name__]
    monkeypatch.setattr(module, "run_python", functools.partial(python_exec.run_python, unsafe=unsafe))
    monkeypatch.setattr(module, "python_tool", functools.partial(python_exec.python_tool, unsafe=unsafe))
    return str(request.param)


def test_prints_and_big_integers() -> None:
    r = run_python("print(2**100)\nprint('ünïcode', 3 / 4)")
    assert r.ok and r.error is None and r.returncode == 0
    assert r.stdout.splitlines() == [str(2**100), "ünïcode 0.75"]
    assert r.render() == f"{2**100}\nünïcode 0.75"
    assert 0 < r.seconds < 10


def test_no_output_is_explained() -> None:
    r = run_python("x = 1")
    assert r.ok and "print()" in r.render()


@pytest.mark.skipif(importlib.util.find_spec("sympy") is None, reason="sympy not installed")
def test_sympy_is_importable() -> None:
    r = run_python(
        "import sympy as sp\nx = sp.symbols('x')\nprint(sp.factor(x**2 - 1), sp.factorint(2**64 + 1))"
    )
    assert r.ok, r.render()
    assert r.stdout.strip() == "(x - 1)*(x + 1) {274177: 1, 67280421310721: 1}"


def test_exception_reports_exit_code_and_last_traceback_line() -> None:
    r = run_python("x = 1\ny = x / 0\n")
    assert not r.ok and r.returncode == 1
    assert r.error == "exit code 1: ZeroDivisionError: division by zero"
    text = r.render()
    assert 'File "<code>", line 2, in <module>' in text and "y = x / 0" in text  # source line shown
    assert "<string>" not in text  # the bootstrap frame is hidden
    assert text.endswith("[error] exit code 1: ZeroDivisionError: division by zero")


def test_syntax_error_and_sys_exit() -> None:
    r = run_python("print(1 +")
    assert not r.ok and r.error is not None and r.error.startswith("exit code 1: SyntaxError")
    r = run_python("import sys\nprint('bye')\nsys.exit(3)")
    assert r.error == "exit code 3" and r.stdout == "bye\n"


def test_stdin_is_closed() -> None:
    r = run_python("input()", timeout=5)
    assert r.error == "exit code 1: EOFError: EOF when reading a line"


def test_infinite_loop_times_out_and_keeps_earlier_output() -> None:
    t0 = time.monotonic()
    r = run_python("print('started')\nwhile True:\n    pass", timeout=2)
    elapsed = time.monotonic() - t0
    assert not r.ok and r.error == "timed out after 2 s"
    assert 1.9 <= elapsed < 5
    assert r.stdout == "started\n"  # unbuffered: output before the kill is not lost
    assert "[error] timed out after 2 s" in r.render()


def test_memory_limit() -> None:
    t0 = time.monotonic()
    r = run_python("x = bytearray(10 * 1024**3)", memory_mb=256)
    assert not r.ok and r.error == "memory limit 256 MB exceeded"
    assert time.monotonic() - t0 < 10
    assert run_python("print('still fine')").stdout == "still fine\n"  # and so is the parent


@pytest.mark.parametrize(
    "code",
    [
        "import socket\nsocket.create_connection(('127.0.0.1', 9))",
        "import urllib.request\nurllib.request.urlopen('http://127.0.0.1:9', timeout=3)",
        "import socket\nsocket.getaddrinfo('example.com', 80)",
        "import socket\ns = socket.socket()\ns.bind(('127.0.0.1', 0))",
    ],
)
def test_network_is_disabled(code: str) -> None:
    r = run_python(code)
    assert not r.ok and r.error is not None
    assert "network access is disabled" in r.error
    assert "refused" not in r.render().lower()


def test_network_namespace_is_used_when_available(mode: str) -> None:
    try:
        usable = subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        usable = False
    r = run_python("import os\nprint(os.readlink('/proc/self/ns/net'), os.environ['TFGRPO_SANDBOX_NETNS'])")
    assert r.ok, r.render()
    child_ns, netns = r.stdout.split()
    if mode == "sandbox":
        assert netns == "bwrap"
    elif not usable:
        pytest.skip("no network namespaces here (unshare -n fails); only the Python-level guard applies")
    else:
        assert netns in ("net", "user+net")
    assert child_ns != os.readlink("/proc/self/ns/net")
    # a bypass of the Python guard finds no network either (bwrap brings up the sandbox's own loopback)
    host = "192.0.2.1" if mode == "sandbox" else "127.0.0.1"
    r = run_python(f"import _socket\ns = _socket.socket()\ns.settimeout(3)\ns.connect(('{host}', 9))")
    assert r.error is not None and "Network is unreachable" in r.error


def test_fork_bomb_and_subprocesses_are_contained() -> None:
    t0 = time.monotonic()
    r = run_python("import os\nfor _ in range(1000):\n    os.fork()", timeout=5)
    assert not r.ok and r.error is not None and "subprocesses are disabled" in r.error
    assert time.monotonic() - t0 < 5
    r = run_python("import subprocess\nsubprocess.run(['true'])")
    assert r.error is not None and "subprocesses are disabled" in r.error
    r = run_python("import os\nos.system('true')")
    assert r.error is not None and "subprocesses are disabled" in r.error


def test_cannot_signal_the_parent() -> None:
    r = run_python("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)")
    assert r.error is not None and "signalling other processes is disabled" in r.error
    assert run_python("import os, signal\nos.kill(os.getpid(), 0)\nprint('self ok')").ok


def test_huge_output_is_truncated_and_parent_memory_stays_bounded() -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    r = run_python(
        "import sys\nfor _ in range(100):\n    sys.stdout.write('x' * 10**6)\nprint('END')", max_output=1000
    )
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert r.ok, r.error
    assert len(r.stdout) < 4 * 1000 + 100  # capped while reading
    assert r.stdout.rstrip().endswith("END")  # the tail is kept
    text = r.render()
    assert len(text) < 1000 + 100
    assert "characters truncated]" in text and text.endswith("END")
    dropped = int(text.split("[... ")[1].split(" characters")[0])
    assert dropped == 100 * 10**6 + len("END") - 1000  # counts what the capture dropped too
    assert after - before < 50 * 1024  # 100 MB of output did not land in the parent


def test_huge_single_print_does_not_hurt() -> None:
    r = run_python("print('x' * 10**9)", memory_mb=256)
    assert r.error == "memory limit 256 MB exceeded"


def test_scratch_dir_is_deleted_and_env_is_minimal(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake-parent-secret")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    code = textwrap.dedent(
        """
        import os
        open('note.txt', 'w').write('hi')
        print(os.getcwd())
        env = os.environ
        print(env.get('OPENAI_API_KEY'), env.get('HTTPS_PROXY'), os.path.samefile(env['HOME'], '.'))
        print('sk-fake' in repr(dict(os.environ)))
        """
    )
    r = run_python(code)
    assert r.ok, r.render()
    cwd, env_line, leaked = r.stdout.splitlines()
    assert env_line == "None None True" and leaked == "False"  # HOME is the scratch (cwd)
    assert not os.path.exists(os.path.join(cwd, "note.txt"))  # the note is nowhere on the host
    if mode == "unsafe":  # a host directory, deleted (the sandbox's scratch is a tmpfs, gone with it)
        assert not os.path.exists(cwd) and not os.path.exists(os.path.dirname(cwd))
    # nothing is kept between calls
    assert run_python("import os\nprint(os.path.exists('note.txt'))").stdout == "False\n"


def test_file_size_limit() -> None:
    r = run_python(f"with open('big', 'wb') as f:\n    f.write(b'x' * {2 * python_exec.FILE_SIZE_LIMIT})")
    assert r.error == "exit code 1: OSError: [Errno 27] File too large"


def test_parent_failures_become_error_results(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("no more processes")

    monkeypatch.setattr(python_exec.subprocess, "Popen", boom)
    r = run_python("print(1)")
    assert not r.ok and r.error == "sandbox failure: OSError: no more processes"


def test_render_truncation_keeps_head_and_tail() -> None:
    r = PythonResult(ok=False, stdout="a" * 50 + "b" * 50, stderr="", error="exit code 1", seconds=0.1)
    text = r.render(max_output=20)
    assert text == "a" * 10 + "\n[... 80 characters truncated]\n" + "b" * 10 + "\n[error] exit code 1"


def test_langchain_tool() -> None:
    tool = python_tool(timeout=5)
    assert tool.name == "python"
    assert "print()" in tool.description and "No network" in tool.description and "5 s" in tool.description
    assert list(tool.args) == ["code"]
    assert tool.invoke({"code": "print(1+1)"}) == "2"
    out = tool.invoke({"code": "1/0"})  # errors come back as text
    assert isinstance(out, str) and "ZeroDivisionError" in out and "[error] exit code 1" in out
    assert asyncio.run(tool.ainvoke({"code": "print(6*7)"})) == "42"


def test_concurrent_calls_from_threads() -> None:
    tool = python_tool()
    with ThreadPoolExecutor(max_workers=4) as pool:
        outs = list(pool.map(lambda i: tool.invoke({"code": f"print({i} * {i})"}), range(4)))
    assert outs == ["0", "1", "4", "9"]
