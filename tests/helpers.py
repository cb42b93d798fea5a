"""Helpers the tests share: which role a request to the fake model plays, canned replies, and a fake
provider whose models answer per role. One module, so a change in how the learner's calls look (a new
tool name, a new prompt marker) is made once."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from tfgrpo.models.spec import register_provider
from tfgrpo.testing.fake_openai import forced_tool_name, message_text
from tfgrpo.testing.responders import grpo_responder
from tfgrpo.testing.scripted import ScriptedChatModel

Handler = Callable[[dict], dict]

# the learner's structured calls, by the tool the request forces
ROLE_OF_TOOL = {"ExtractedExperiences": "extract", "LibraryUpdate": "update", "RevisedLesson": "retry"}


def system_of(body: dict) -> str:
    return " ".join(message_text(m.get("content")) for m in body["messages"] if m["role"] == "system")


def role_of(body: dict) -> str:
    """The role of a chat request: extract, update, retry, summarize, judge or rollout."""
    tool = ROLE_OF_TOOL.get(forced_tool_name(body) or "")
    if tool is not None:
        return tool
    system = system_of(body)
    if "SUMMARIZE" in system:
        return "summarize"
    return "judge" if "grading a quiz" in system else "rollout"


def question_of(body: dict) -> str:
    """The last user message of a request (a rollout's question)."""
    return message_text([m for m in body["messages"] if m["role"] == "user"][-1]["content"])


def tool_reply(name: str, arguments: dict | str) -> dict:
    return {"tool_calls": [{"name": name, "arguments": arguments}]}


def extract_reply(operations: list[dict]) -> Handler:
    return lambda body: tool_reply("ExtractedExperiences", {"analysis": "a", "operations": operations})


class Fake:
    """A unique ``prefix:`` provider whose models answer per role (:func:`role_of`) with the given
    handlers; a role without one gets ``grpo_responder``."""

    def __init__(self, **handlers: Handler) -> None:
        self.handlers = handlers
        self.models: list[ScriptedChatModel] = []
        self.prefix = "f" + uuid.uuid4().hex[:10]
        register_provider(self.prefix, self._factory)

    def _factory(self, name: str, settings: object) -> ScriptedChatModel:
        model = ScriptedChatModel(responder=self.respond)
        self.models.append(model)
        return model

    def respond(self, body: dict) -> dict:
        handler = self.handlers.get(role_of(body))
        return handler(body) if handler is not None else grpo_responder(body)

    @property
    def spec(self) -> str:
        return f"{self.prefix}:model"

    def bodies(self, role: str | None = None) -> list[dict]:
        return [b for m in self.models for b in m.calls if role is None or role_of(b) == role]

    def count(self, role: str) -> int:
        return len(self.bodies(role))
