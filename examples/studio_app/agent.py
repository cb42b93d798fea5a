"""Your own LangChain agent, served by ``langgraph dev`` beside tfgrpo's ``learn`` graph, with the E a
Studio learn run publishes.

    cd examples/studio_app && langgraph dev       # graphs: learn (tfgrpo), agent (this file)

1. In Studio, run ``learn`` with the input ``{"run_id": "team-math", "dataset": ...}`` and a context
   ``{"model": "openai:gpt-4o-mini"}``. After every step it publishes E in the server's store.
2. Run ``agent``: ``ExperienceMiddleware(run="team-math")`` reads that run's latest E from the same store
   at every model call and appends it to this agent's own system prompt. Model, tools and prompt stay
   yours. (With ``db=URL`` or ``$TFGRPO_DATABASE_URL`` it reads the run from that database instead.)
"""

from __future__ import annotations

import os

from langchain.agents import create_agent
from langchain_openai import ChatOpenAI

from tfgrpo import ExperienceMiddleware

RUN_ID = os.environ.get("TFGRPO_LIBRARY_RUN", "team-math")  # the learn run whose E this agent uses

graph = create_agent(
    ChatOpenAI(model=os.environ.get("APP_MODEL", "gpt-4o-mini"), max_retries=0),
    tools=[],
    system_prompt="You are Acme's arithmetic assistant. Answer with the number only.",
    middleware=[ExperienceMiddleware(run=RUN_ID)],
)
