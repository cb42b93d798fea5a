"""Improve your own agent: learn an experience library E on an existing LangChain agent, then add it with
one middleware. Nothing of the agent changes: its model, tool, prompt and middleware stay yours.

    OPENAI_API_KEY=sk-... python examples/improve_your_own_agent.py runs/acme
    # any OpenAI-compatible server instead:
    OPENAI_BASE_URL=http://127.0.0.1:8080/v1 MODEL=my-model python examples/improve_your_own_agent.py

Run it again with the same arguments and it resumes: finished work is not paid twice.
"""

from __future__ import annotations

import ast
import operator
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

import tfgrpo

MODEL = os.environ.get("MODEL", "gpt-4o-mini")
BASE_URL = os.environ.get("OPENAI_BASE_URL")  # None: api.openai.com
API_KEY = os.environ.get("OPENAI_API_KEY", "not-needed")  # local servers ignore the key

# -- the app you already have ------------------------------------------------------------------------
SYSTEM_PROMPT = "You are Acme's arithmetic assistant. Check every calculation with the calculator tool."
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.USub: operator.neg}


def _eval(node: ast.AST) -> int:
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return int(_OPS[type(node.op)](_eval(node.left), _eval(node.right)))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return int(_OPS[type(node.op)](_eval(node.operand)))
    raise ValueError("not integer arithmetic")


@tool
def calculator(question: str) -> str:
    """Evaluate the integer arithmetic expression (+, -, *) contained in the question."""
    match = re.search(r"[-+*()\d\s]*\d[-+*()\d\s]*", question)
    try:
        return str(_eval(ast.parse(match.group(0).strip(), mode="eval").body)) if match else "no expression"
    except (SyntaxError, ValueError):
        return "no expression"


def make_agent(middleware: Sequence[AgentMiddleware[Any, Any]] = ()) -> Any:
    """Your agent. Taking ``middleware=`` is all tfgrpo needs to learn on it."""
    model = ChatOpenAI(model=MODEL, base_url=BASE_URL, api_key=API_KEY, temperature=0.7)  # type: ignore[arg-type]
    return create_agent(model, [calculator], system_prompt=SYSTEM_PROMPT, middleware=list(middleware))


# -- questions with known answers --------------------------------------------------------------------
def rows(triples: list[tuple[int, int, int]]) -> list[dict[str, str]]:
    return [{"question": f"Calculate {a} * {b} - {c}.", "answer": str(a * b - c)} for a, b, c in triples]


TRAIN = rows(
    [(12, 7, 5), (23, 4, 9), (31, 3, 14), (8, 17, 6), (15, 15, 25), (9, 26, 11), (44, 2, 19), (6, 38, 7)]
)
TEST = rows([(13, 6, 4), (27, 3, 8), (19, 5, 12), (7, 24, 9)])


def main(run_dir: str) -> None:
    # 1. learn E on your agent (the learner summarizes its runs and distils experiences)
    learner = ChatOpenAI(model=MODEL, base_url=BASE_URL, api_key=API_KEY, temperature=0.3)  # type: ignore[arg-type]
    result = tfgrpo.learn(
        dataset=TRAIN, agent=make_agent, learner=learner, run_dir=run_dir,
        epochs=1, batch_size=4, group_size=4, max_concurrency=4,
    )  # fmt: skip
    print(f"learned {len(result.library['items'])} experiences in {len(result.steps)} steps")
    for item in result.library["items"]:
        print(f"  [{item['id']}] {item['text']}")

    # 2. measure: the same agent with and without E, on held-out questions
    report = tfgrpo.evaluate(
        dataset=TEST, agent=make_agent, library=result.library, baseline=True, k=2, eval_dir=f"{run_dir}/eval"
    )
    for arm, scores in report["arms"].items():
        print(f"{arm}: Mean@2 = {scores['mean_at_k']}")

    # 3. production: your agent plus one middleware (E is re-read when the library file changes)
    agent = make_agent(middleware=[tfgrpo.ExperienceMiddleware(library=run_dir)])
    out = agent.invoke({"messages": [("user", "Calculate 21 * 4 - 6.")]})
    used = [c["name"] for m in out["messages"] for c in getattr(m, "tool_calls", [])]
    print(f"tools used: {used}")
    print(f"answer: {out['messages'][-1].content}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/acme")
