"""Model specs resolve lazily; with no model configured the embedded model is the default."""

from __future__ import annotations

import pytest

from tfgrpo import local_model
from tfgrpo.errors import ConfigError
from tfgrpo.models import DEFAULT_MODEL, ModelSettings, get_model, resolve_spec


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
