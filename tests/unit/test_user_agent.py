"""Naming the user's agent: ``module:attr`` / ``file.py:attr`` / objects, and one-line refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO
from tfgrpo.errors import ConfigError
from tfgrpo.integrations.middleware import EXPERIENCES_KEY
from tfgrpo.integrations.user_agent import load_agent_object, prepare_agent, register_agent


@pytest.fixture(autouse=True)
def _endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # never called: graphs are only built


def test_module_file_and_object_specs_name_the_same_factory(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.integration import acme_agent

    monkeypatch.chdir(REPO)
    assert load_agent_object("tests.integration.acme_agent:factory") is acme_agent.factory
    by_file = load_agent_object("tests/integration/acme_agent.py:factory")
    assert by_file.__name__ == "factory"
    spec = register_agent(acme_agent.factory)
    assert load_agent_object(spec) is acme_agent.factory
    graph = prepare_agent(spec)  # the factory got ExperienceMiddleware: the state key exists
    assert EXPERIENCES_KEY in graph.channels


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon", "expected module:attr"),
        ("tests/integration/missing.py:factory", "file not found"),
        ("tests.integration.acme_agent:nope", "has no attribute 'nope'"),
        ("tfgrpo_no_such_module:agent", "cannot import"),
        ("tests.integration.acme_agent:SYSTEM_PROMPT", "neither a compiled graph nor a factory"),
        ("tests.integration.acme_agent:plain", "has no tfgrpo.ExperienceMiddleware"),
        ("tests.integration.acme_agent:make_model", "not a compiled agent graph"),
    ],
)
def test_bad_agent_specs_are_one_line_errors(
    spec: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    with pytest.raises(ConfigError, match=message) as info:
        prepare_agent(spec)
    assert "\n" not in str(info.value)


def test_a_file_that_fails_to_import_is_a_one_line_error(tmp_path: Path) -> None:
    broken = tmp_path / "app.py"
    broken.write_text("raise RuntimeError('no key configured')\n")
    with pytest.raises(ConfigError, match="importing .* failed: RuntimeError: no key configured"):
        prepare_agent(f"{broken}:agent")
