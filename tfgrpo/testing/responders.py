"""A rule-based stand-in for every role of a learning run (policy, summarizer, extractor, curator).

It decides from the request alone (no hidden state), so a restarted process gets the same answers:
rollouts compute the arithmetic in the question and are right or off by one depending on the request's
``seed``; the learner roles return well-formed summaries and operations derived from the prompt. It
proves the pipeline; it does not learn, and the demo says so.
"""

from __future__ import annotations

import ast
import hashlib
import json
import operator
import re
from collections.abc import Callable
from typing import Any

LESSONS = (
    "Evaluate the expression left to right only after applying operator precedence; "
    "recompute each intermediate result before writing the final answer.",
    "Treat a minus sign directly before a number as part of that number (e.g. 2 - -1 = 3).",
    "Resolve parentheses first, then multiplication and division, then addition and subtraction.",
    "Double-check the sign of the result when subtracting a larger number from a smaller one.",
)

_OPS: dict[type, Callable[..., float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def _eval(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return float(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return float(_OPS[type(node.op)](_eval(node.left), _eval(node.right)))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return float(_OPS[type(node.op)](_eval(node.operand)))
    raise ValueError("not arithmetic")


_EXPRESSION = re.compile(r"[-+*/().\d\s]*\d[-+*/().\d\s]*")


def solve_arithmetic(question: str) -> str | None:
    """The value of the first arithmetic expression in ``question`` (None when there is none)."""
    match = _EXPRESSION.search(question.replace("×", "*").replace("÷", "/"))
    if not match:
        return None
    try:
        value = _eval(ast.parse(match.group(0).strip().rstrip("."), mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError):
        return None
    return str(int(value)) if value == int(value) else f"{value:g}"


def _digest(*parts: Any) -> int:
    return int(hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:8], 16)


def _text(message: dict[str, Any]) -> str:
    content = message.get("content") or ""
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content)


def _forced_tool(request: dict[str, Any]) -> str | None:
    choice = request.get("tool_choice")
    if isinstance(choice, dict):
        return str(choice.get("function", {}).get("name") or choice.get("name") or "") or None
    tools = request.get("tools") or []
    if choice in ("required", "any") and len(tools) == 1:
        return str(tools[0]["function"]["name"])
    return None


def grpo_responder(request: dict[str, Any]) -> dict[str, Any]:
    messages = request.get("messages", [])
    system = " ".join(_text(m) for m in messages if m.get("role") in ("system", "developer"))
    user = _text([m for m in messages if m.get("role") == "user"][-1]) if messages else ""
    tool = _forced_tool(request)

    if tool == "ExtractedExperiences":
        ids = re.findall(r"\[(G\d+)\]", user)
        pick = _digest(user) % len(LESSONS)
        operations: list[dict[str, Any]] = [
            {"op": "ADD", "content": LESSONS[pick], "reason": "the correct attempts did this"}
        ]
        if ids and _digest(user, "update") % 3 == 0:
            operations = [
                {
                    "op": "UPDATE",
                    "id": ids[0],
                    "content": LESSONS[pick] + " Verify once more.",
                    "reason": "sharpen",
                }
            ]
        return {
            "tool_calls": [
                {
                    "name": tool,
                    "arguments": {
                        "analysis": "Correct attempts kept track of signs.",
                        "operations": operations,
                    },
                }
            ]
        }
    if tool == "LibraryUpdate":
        match = re.search(r"Proposed operations[^\n]*\n(.*)", user, re.DOTALL)
        proposed = json.loads(match.group(1)) if match else []
        merged: list[dict[str, Any]] = []
        seen: set[tuple[Any, ...]] = set()
        for op in proposed:
            key = (op.get("op"), op.get("id"), op.get("content"))
            if key not in seen:
                seen.add(key)
                merged.append({k: op.get(k) for k in ("op", "id", "content", "reason", "sources")})
        return {"tool_calls": [{"name": tool, "arguments": {"operations": merged}}]}
    if tool == "RevisedLesson":
        # a rejected lesson rewritten: a trigger, then its first 16 words without digits (shorter, no
        # problem numbers)
        lesson = re.search(r"Rejected lesson:\n(.*?)\n\nWhy it was rejected", user, re.DOTALL)
        words = [w for w in (lesson.group(1) if lesson else "").split() if not re.search(r"\d", w)]
        if words and words[0] != "When":
            words = ["When", "solving", "such", "problems,", words[0].lower(), *words[1:]]
        return {"tool_calls": [{"name": tool, "arguments": {"content": " ".join(words[:20])}}]}
    if tool is not None:
        return {"tool_calls": [{"name": tool, "arguments": {}}]}
    if "grading a quiz" in system:
        truth = re.search(r"True answer: (.*)\nStudent answer: (.*)\nGrade:", user, re.DOTALL)
        same = truth is not None and truth.group(1).strip().lower() == truth.group(2).strip().lower()
        return {"content": "CORRECT" if same else "INCORRECT"}
    if "SUMMARIZE" in system:
        reward = re.search(r"Reward of this attempt: ([\d.]+)", user)
        verdict = "reached the ground truth" if reward and float(reward.group(1)) >= 1 else "went wrong"
        return {"content": f"1. Parsed the expression.\n2. Computed step by step.\n3. The attempt {verdict}."}

    # policy rollout; with tools offered, use them once, then answer from their result
    offered = {t["function"]["name"] for t in request.get("tools") or []}
    tool_results = [_text(m) for m in messages if m.get("role") == "tool"]
    if offered and not tool_results:
        if "python" in offered:
            expr = _EXPRESSION.search(user) if solve_arithmetic(user) is not None else None
            code = f"print({expr.group(0).strip().rstrip('.')})" if expr else "print('no arithmetic found')"
            return {"tool_calls": [{"name": "python", "arguments": {"code": code}}]}
        if "search" in offered:
            return {"tool_calls": [{"name": "search", "arguments": {"query": user[:200]}}]}
        # any other tool (e.g. an experienced agent used as a tool): ask it the question
        return {"tool_calls": [{"name": sorted(offered)[0], "arguments": {"question": user}}]}
    if tool_results:
        found = re.search(r"\[([^\]]+)\]", tool_results[-1])
        first = (
            found.group(1) if found else tool_results[-1].strip().splitlines()[0] if tool_results[-1] else ""
        )
        shown = f"\\boxed{{{first}}}" if "boxed" in system else f"Answer: {first}"
        return {"content": f"From the tool: {tool_results[-1][:200]}\nThe result is {shown}"}
    seed = request.get("seed")
    if seed is None:
        seed = _digest(messages)
    value = solve_arithmetic(user)
    if value is None:
        final = "unknown"
    elif int(seed) % 2 == 0:
        final = value
    else:
        final = solve_arithmetic(f"{value} + 1") or value
    shown = f"\\boxed{{{final}}}" if "boxed" in system else f"Answer: {final}"
    return {"content": f"Let me compute this step by step.\nThe result is {shown}"}


def eval_responder(request: dict[str, Any]) -> dict[str, Any]:
    """:func:`grpo_responder`, except that a tool-less policy request whose system prompt carries
    experiences (``[G1] ...``) is right 3 times in 4 instead of 1 in 2 (decided by the request's seed):
    a library that really helps, so evaluation tests can see a difference of known sign."""
    messages = request.get("messages", [])
    system = " ".join(_text(m) for m in messages if m.get("role") in ("system", "developer"))
    plain = not request.get("tools") and "grading a quiz" not in system and "SUMMARIZE" not in system
    seed = request.get("seed")
    if not plain or seed is None or not re.search(r"\[G\d+\]", system):
        return grpo_responder(request)
    user = _text([m for m in messages if m.get("role") == "user"][-1])
    value = solve_arithmetic(user)
    final = value if value is None or int(seed) % 4 else solve_arithmetic(f"{value} + 1")
    shown = f"\\boxed{{{final}}}" if "boxed" in system else f"Answer: {final}"
    return {"content": f"Following the experiences, step by step.\nThe result is {shown}"}


def rarely_right_responder(request: dict[str, Any]) -> dict[str, Any]:
    """:func:`grpo_responder`, except that a tool-less policy request is right about one time in ten
    (decided by its ``seed``, so a request gets the same answer every time): most groups of a few attempts
    hold no right one, the case dynamic sampling (``--max-group-size``) is for."""
    messages = request.get("messages", [])
    system = " ".join(_text(m) for m in messages if m.get("role") in ("system", "developer"))
    plain = not request.get("tools") and "grading a quiz" not in system and "SUMMARIZE" not in system
    seed = request.get("seed")
    user = _text([m for m in messages if m.get("role") == "user"][-1]) if messages else ""
    value = solve_arithmetic(user)
    if not plain or seed is None or value is None:
        return grpo_responder(request)
    final = value if _digest("right", seed) % 10 == 0 else solve_arithmetic(f"{value} + 1")
    shown = f"\\boxed{{{final}}}" if "boxed" in system else f"Answer: {final}"
    return {"content": f"Let me compute this step by step.\nThe result is {shown}"}


def tool_agent_responder(request: dict[str, Any]) -> dict[str, Any]:
    """:func:`grpo_responder` for a user's agent with a tool of its own (``tfgrpo learn --agent``): it
    calls the offered tool once, then answers from the tool's result -- right, or off by one when the
    request's ``seed`` is odd, so a group's rollouts differ and there is something to learn."""
    reply = grpo_responder(request)
    messages = request.get("messages", [])
    seed = request.get("seed")
    followup = any(m.get("role") == "tool" for m in messages) and not _forced_tool(request)
    if not followup or reply.get("tool_calls") or seed is None or int(seed) % 2 == 0:
        return reply
    value = solve_arithmetic(_text([m for m in messages if m.get("role") == "user"][-1]))
    wrong = solve_arithmetic(f"{value} + 1") if value is not None else "unknown"
    return {"content": f"The tool says {value}; adding it up again.\nAnswer: {wrong}"}


# A weak learner's candidates (``--candidates N``): junk mostly, the lesson that works sometimes.
RIGHT_LESSON = (
    "When the expression has several operators, apply precedence rules strictly before adding terms."
)
JUNK_LESSONS = (
    "When a problem looks long, restate it in your own words and keep a calm pace throughout.",
    "When several attempts disagree, prefer the answer written with the most confident wording.",
)


def one_right_lesson_responder(request: dict[str, Any]) -> dict[str, Any]:
    """:func:`grpo_responder` with a learner that cannot tell a right lesson from junk and a policy that
    uses the right one. The extractor proposes junk, except that a request with a ``seed`` (a sampled
    candidate) proposes :data:`RIGHT_LESSON` one time in three (decided by the seed); a tool-less policy
    request is always right when its system prompt holds :data:`RIGHT_LESSON`, else one time in four (by
    its seed, so a candidate E and the current E are compared on equal terms)."""
    messages = request.get("messages", [])
    system = " ".join(_text(m) for m in messages if m.get("role") in ("system", "developer"))
    user = _text([m for m in messages if m.get("role") == "user"][-1]) if messages else ""
    seed = request.get("seed")
    if _forced_tool(request) == "ExtractedExperiences":
        right = seed is not None and _digest("lesson", seed) % 3 == 0
        lesson = RIGHT_LESSON if right else JUNK_LESSONS[_digest(user, seed) % len(JUNK_LESSONS)]
        operation = {"op": "ADD", "content": lesson, "reason": "the better attempts did this"}
        arguments = {"analysis": "The better attempts did this.", "operations": [operation]}
        return {"tool_calls": [{"name": "ExtractedExperiences", "arguments": arguments}]}
    plain = not request.get("tools") and "grading a quiz" not in system and "SUMMARIZE" not in system
    value = solve_arithmetic(user)
    if not plain or seed is None or value is None:
        return grpo_responder(request)
    right = RIGHT_LESSON in system or _digest("right", seed) % 4 == 0
    final = value if right else solve_arithmetic(f"{value} + 1")
    shown = f"\\boxed{{{final}}}" if "boxed" in system else f"Answer: {final}"
    return {"content": f"Let me compute this step by step.\nThe result is {shown}"}
