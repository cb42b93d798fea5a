"""Use a learned experience library inside an existing LangChain app.

    TFGRPO_MODEL=openai:gpt-4o-mini python examples/embed_in_langchain.py runs/demo
    # any OpenAI-compatible server: also set OPENAI_BASE_URL=http://127.0.0.1:8080/v1

Shows the experienced agent used directly (sync, async, streaming), inside an LCEL chain, and as a tool of
another agent built with ``langchain.agents.create_agent``.
"""

from __future__ import annotations

import asyncio
import os
import sys

from langchain.agents import create_agent
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda

from tfgrpo.api import experienced_agent, load_library
from tfgrpo.models.spec import ModelSettings, get_model


def main(library_path: str) -> None:
    library = load_library(library_path)
    print(f"library: {len(library['items'])} experiences (version {library['version']})")
    agent = experienced_agent(library_path)  # model and base_url from TFGRPO_MODEL / OPENAI_BASE_URL

    # 1. directly
    print("sync:", agent.invoke("Calculate 12 * 7.")["answer"])
    print("async:", asyncio.run(agent.ainvoke("Calculate 5 - 9."))["answer"])
    nodes = [next(iter(chunk)) for chunk in agent.stream("Calculate 2 + 2.", stream_mode="updates")]
    print("stream:", " -> ".join(nodes))

    # 2. in an LCEL chain
    prompt = ChatPromptTemplate.from_messages([("user", "Calculate {expression}.")])
    chain = prompt | RunnableLambda(lambda p: {"messages": p.to_messages()}) | agent | (lambda s: s["answer"])
    print("chain:", chain.invoke({"expression": "3 * (4 + 5)"}))

    # 3. as a specialist tool of another agent
    tool = agent.as_answer_tool("arithmetic_expert", "Computes arithmetic expressions exactly.")
    manager = create_agent(
        get_model(
            ModelSettings(spec=os.environ["TFGRPO_MODEL"], base_url=os.environ.get("OPENAI_BASE_URL", ""))
        ),
        tools=[tool],
    )
    out = manager.invoke({"messages": [("user", "Ask the arithmetic expert for 6 * 7 and report it.")]})
    used = [c["name"] for m in out["messages"] for c in getattr(m, "tool_calls", [])]
    print("manager used:", used, "->", out["messages"][-1].content)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/demo")
