"""The default embedded model, Qwen2.5-Coder-0.5B-Instruct, assembled from its PyPI part wheels and served
by llama.cpp: the assembled file's hash, tool calls coming back as OpenAI ``tool_calls`` through
langchain-openai, and a real ``python`` tool call in ``tfgrpo infer --domain math``."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool

from tests.conftest import PYTHON, cli_env, needs_qwen
from tfgrpo.models.chat_format import LocalChatOpenAI, local_chat_model
from tfgrpo.models.local_server import DEFAULT_LOCAL_MODEL, EMBEDDED_MODELS, QWEN_05B, LocalModelServer
from tfgrpo.models.weights import ensure_weights

pytestmark = [pytest.mark.integration, *needs_qwen]


@tool
def python(code: str) -> str:
    """Run Python 3 code and return what it prints."""
    return "391\n"


def chat(server: LocalModelServer, max_tokens: int = 200) -> LocalChatOpenAI:
    return local_chat_model(
        server.base_url, server.model_name, temperature=0.0, max_tokens=max_tokens, timeout=300
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalModelServer]:
    with LocalModelServer(model_name=DEFAULT_LOCAL_MODEL, log_dir=tmp_path_factory.mktemp("qwen")) as srv:
        yield srv


def test_the_assembled_file_has_the_published_hash(tmp_path: Path) -> None:
    path = ensure_weights(QWEN_05B, tmp_path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()  # independent of the module's own check
    assert path.stat().st_size == 491_400_064
    assert digest == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert path.read_bytes()[:4] == b"GGUF" and sorted(p.name for p in tmp_path.iterdir()) == [
        path.name,
        path.name + ".verified",
    ]
    assert EMBEDDED_MODELS[DEFAULT_LOCAL_MODEL].weights == QWEN_05B


def test_bound_tools_come_back_as_openai_tool_calls(server: LocalModelServer) -> None:
    model = chat(server).bind_tools([python])
    question = HumanMessage("Use the python tool to compute 17 * 23.")
    reply = model.invoke([question])
    assert isinstance(reply, AIMessage) and reply.tool_calls, reply
    call = reply.tool_calls[0]
    assert call["name"] == "python" and "17" in call["args"]["code"] and call["id"]
    # the tool result and the earlier call (content null) render back into the prompt
    result = ToolMessage("391\n", tool_call_id=call["id"], name="python")
    final = model.invoke([question, reply, result])  # rejected with HTTP 500 by the stock server
    assert isinstance(final, AIMessage) and (final.content or final.tool_calls), final
    grown = final.usage_metadata["input_tokens"] - reply.usage_metadata["input_tokens"]  # type: ignore[index]
    assert grown >= 20, grown  # the call and its <tool_response> were rendered into the prompt


def test_no_tools_offered_means_plain_text(server: LocalModelServer) -> None:
    reply = chat(server, 32).invoke("Say hello in one word.")
    assert isinstance(reply.content, str) and reply.content.strip() and not reply.tool_calls


def test_infer_math_shows_a_real_python_tool_call() -> None:
    env = {k: v for k, v in cli_env().items() if k not in ("TFGRPO_MODEL", "OPENAI_BASE_URL")}
    done = subprocess.run(
        [PYTHON, "-m", "tfgrpo.cli", "infer", "--domain", "math", "--trajectory", "--max-tokens", "256",
         "--question", "Use Python to compute 123456789 * 987654321. Give the exact integer."],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    calls = [ln for ln in lines if ln.startswith("-> python(")]
    results = [ln for ln in lines if ln.startswith("<- python:")]
    assert calls and results, done.stdout
    assert "code" in json.loads(calls[0][len("-> python(") : -1])
    # the tool really ran: its output (or the error of the model's code) came back into the trajectory
    assert all(len(r) > len("<- python: ") for r in results), done.stdout
    assert lines[-1].startswith("answer: "), done.stdout


def test_a_grammar_constrained_main_job_answer_parses_and_scores(server: LocalModelServer) -> None:
    """The main job's answer grammar reaches generation through tfgrpo's Qwen chat format: asked to
    explain (which draws prose without it), the model still answers in calculation lines, and the
    answer scores."""
    from tfgrpo import cli
    from tfgrpo.context import Context
    from tfgrpo.evals.rewards import math_reward
    from tfgrpo.nodes.policy import policy_system_prompt

    grammar = Path(cli.MAIN_JOB_GRAMMAR).read_text(encoding="utf-8")
    model = local_chat_model(
        server.base_url, server.model_name, temperature=0.0, max_tokens=96, timeout=300, grammar=grammar
    )
    system = policy_system_prompt(Context(prompts=cli.MAIN_JOB_PROMPTS), "", with_tools=False)
    reply = model.invoke([("system", system), HumanMessage("Explain in words how to calculate 12 + 30 - 5.")])
    text = str(reply.content)
    number = r"-?\d{1,6}"
    expr = rf"[-( ]*{number}[) ]*( [-+*/] [-( ]*{number}[) ]*)*"
    line = rf"{expr}( = {expr})+"
    assert re.fullmatch(rf"({line}\n){{0,6}}({line}|\\boxed\{{{number}\}})", text), text
    assert reply.response_metadata.get("finish_reason") == "stop", text
    assert math_reward(text, "37") == 1.0 and math_reward(text, "38") == 0.0, text


def test_top_first_grammar_sampling_matches_the_stock_sampler(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's grammar sampling (tfgrpo.models.grammar) tests the likely tokens first: greedy answers
    equal the stock sampler's, and a grammar none of the likely tokens fits still holds (the fallback)."""
    import llama_cpp
    from llama_cpp.llama import Llama

    from tfgrpo import cli
    from tfgrpo.models.grammar import install

    llm = Llama(str(ensure_weights(QWEN_05B)), n_ctx=1024, n_threads=1, verbose=False)
    prompt = (
        "<|im_start|>system\nWork out the calculation one step per line, no words.<|im_end|>\n"
        "<|im_start|>user\nExplain in words how to calculate 12 + 30 - 5.<|im_end|>\n<|im_start|>assistant\n"
    )
    answer = llama_cpp.LlamaGrammar.from_string(Path(cli.MAIN_JOB_GRAMMAR).read_text(), verbose=False)
    rare = llama_cpp.LlamaGrammar.from_string('root ::= "zqxj" [0-9]', verbose=False)

    def greedy(grammar: llama_cpp.LlamaGrammar) -> str:
        out = llm.create_completion(prompt, max_tokens=40, temperature=0.0, grammar=grammar)
        return str(out["choices"][0]["text"])  # type: ignore[index]

    stock = greedy(answer)
    monkeypatch.setattr(Llama, "_init_sampler", Llama._init_sampler)  # restored after the test
    install()
    assert greedy(answer) == stock and "\n" in stock, stock
    assert re.fullmatch(r"zqxj[0-9]", greedy(rare))
