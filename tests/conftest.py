from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tfgrpo.models import register_provider
from tfgrpo.testing.fake_openai import FakeOpenAIServer
from tfgrpo.testing.responders import grpo_responder
from tfgrpo.testing.scripted import ScriptedChatModel

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def scripted() -> Iterator[list[ScriptedChatModel]]:
    """Register the ``scripted:`` provider; yields the list of models it built (to count calls)."""
    built: list[ScriptedChatModel] = []

    def factory(name: str, settings: object) -> ScriptedChatModel:
        model = ScriptedChatModel(responder=grpo_responder)
        built.append(model)
        return model

    register_provider("scripted", factory)
    yield built


@pytest.fixture
def fake_server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(grpo_responder) as server:
        yield server


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("OPENAI_API_KEY", None)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


PYTHON = sys.executable
