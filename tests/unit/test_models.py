"""Model specs resolve lazily; with no model configured the embedded model is the default."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tfgrpo.errors import ConfigError
from tfgrpo.models import local_server as local_model
from tfgrpo.models.spec import DEFAULT_MODEL, ModelSettings, get_model, resolve_spec


def test_no_model_means_the_embedded_model() -> None:
    assert resolve_spec("") == DEFAULT_MODEL == "local:qwen2.5-coder-0.5b-instruct"
    assert resolve_spec("openai:gpt-4o-mini") == "openai:gpt-4o-mini"


def test_missing_local_runtime_is_a_one_line_error_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(local_model, "llama_server_available", lambda: False)
    with pytest.raises(ConfigError) as err:
        get_model(ModelSettings(spec="", temperature=0.123))
    message = str(err.value)
    assert "\n" not in message
    assert 'CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF"' in message and "tfgrpo[local]" in message


def test_unknown_embedded_model_is_a_one_line_error() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown embedded model 'local:nope' \(available: qwen2.5-coder-0.5b"
    ):
        get_model(ModelSettings(spec="local:nope", temperature=0.5))


def test_openai_model_without_key_or_base_url_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="needs OPENAI_API_KEY"):
        get_model(ModelSettings(spec="openai:gpt-4o-mini", temperature=0.321))


def test_importing_every_module_needs_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import pkgutil

    import tfgrpo

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    for info in pkgutil.walk_packages(tfgrpo.__path__, "tfgrpo."):
        importlib.import_module(info.name)


def test_a_slow_model_build_does_not_block_other_models() -> None:
    """Building one model (an import, a server start) holds only that model's lock: other models are
    returned at once, and every caller of the slow one gets the same instance once it exists."""
    import threading
    import uuid
    from concurrent.futures import ThreadPoolExecutor

    from tfgrpo.models.spec import register_provider
    from tfgrpo.testing.scripted import ScriptedChatModel

    release, building = threading.Event(), threading.Event()
    slow_prefix, fast_prefix = "slow" + uuid.uuid4().hex[:8], "fast" + uuid.uuid4().hex[:8]
    builds: list[str] = []

    def slow(name: str, settings: ModelSettings) -> ScriptedChatModel:
        builds.append(name)
        building.set()
        assert release.wait(10)
        return ScriptedChatModel()

    register_provider(slow_prefix, slow)
    register_provider(fast_prefix, lambda name, settings: ScriptedChatModel())
    with ThreadPoolExecutor(max_workers=4) as pool:
        waiting = [pool.submit(get_model, ModelSettings(spec=f"{slow_prefix}:m")) for _ in range(3)]
        assert building.wait(10)
        fast = pool.submit(get_model, ModelSettings(spec=f"{fast_prefix}:m"))
        assert fast.result(timeout=5) is not None  # not stuck behind the slow build
        release.set()
        models = {id(f.result(timeout=10)) for f in waiting}
    assert len(models) == 1 and builds == ["m"]


def test_embedded_server_takes_every_core_only_on_an_idle_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """ggml's threads wait on each other: all cores when nothing else runs, half beside other work, the
    variable overriding both."""
    monkeypatch.delenv("TFGRPO_LLAMA_THREADS", raising=False)
    monkeypatch.setattr(local_model.os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    monkeypatch.setattr(local_model, "_others_running", lambda: 0)
    assert local_model._default_threads() == 2
    monkeypatch.setattr(local_model, "_others_running", lambda: 1)
    assert local_model._default_threads() == 1
    monkeypatch.setattr(local_model, "_others_running", lambda: None)  # no /proc/loadavg
    assert local_model._default_threads() == 1
    monkeypatch.setenv("TFGRPO_LLAMA_THREADS", "3")
    assert local_model._default_threads() == 3


BUSY = "import time\nend = time.time() + 20\nwhile time.time() < end: pass"


def test_a_busy_neighbour_process_counts_as_running() -> None:
    if not Path("/proc/self/task").is_dir():
        pytest.skip("no /proc on this system")
    # a process of another program: started by a shell that exits, so it is not one of ours
    shell = subprocess.run(
        ["sh", "-c", f'"{sys.executable}" -c "$0" >/dev/null 2>&1 & echo $!', BUSY],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    pid = int(shell.stdout.split()[0])
    try:
        time.sleep(0.3)
        assert pid not in local_model._own_processes()
        assert pid in local_model._runnable_elsewhere()
        assert local_model._others_running(samples=3, interval=0.05) >= 1  # type: ignore[operator]
    finally:
        os.kill(pid, signal.SIGKILL)


def test_this_runs_own_busy_helpers_do_not_count() -> None:
    """The run's own helper processes start exactly when the server does; they are not a neighbour."""
    if not Path("/proc/self/task").is_dir():
        pytest.skip("no /proc on this system")
    own = subprocess.Popen([sys.executable, "-c", BUSY])
    try:
        time.sleep(0.3)
        assert own.pid in local_model._own_processes()
        assert own.pid not in local_model._runnable_elsewhere()
    finally:
        own.kill()
        own.wait()
