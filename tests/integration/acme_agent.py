"""A user's own LangChain agent, as a user would write it: its own model object, a custom tool and its
own system prompt. Used by the tests of ``tfgrpo learn --agent`` (the model's endpoint comes from
OPENAI_BASE_URL, the test server)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from tfgrpo.testing.responders import solve_arithmetic

SYSTEM_PROMPT = "You are Acme's arithmetic assistant. Check every calculation with the calculator tool."
MODEL_NAME = "acme-model"


@tool
def calculator(question: str) -> str:
    """Evaluate the arithmetic expression contained in the question."""
    return solve_arithmetic(question) or "no arithmetic found"


def make_model() -> ChatOpenAI:
    return ChatOpenAI(
        model=MODEL_NAME,
        base_url=os.environ["OPENAI_BASE_URL"],
        api_key="not-needed",  # type: ignore[arg-type]
        max_retries=0,
    )


def factory(middleware: Sequence[AgentMiddleware[Any, Any]] = ()) -> Any:
    return create_agent(make_model(), [calculator], system_prompt=SYSTEM_PROMPT, middleware=list(middleware))


def plain() -> Any:
    """A factory without ``middleware=`` whose agent lacks ExperienceMiddleware: refused."""
    return create_agent(make_model(), [calculator], system_prompt=SYSTEM_PROMPT)


def compiled() -> Any:
    """The compiled-graph form: the user put ExperienceMiddleware in the agent's middleware themselves."""
    from tfgrpo import ExperienceMiddleware

    return create_agent(
        make_model(), [calculator], system_prompt=SYSTEM_PROMPT, middleware=[ExperienceMiddleware()]
    )
