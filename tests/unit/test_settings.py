"""Every setting is declared once (tfgrpo/context.py), and every way in refuses the same out-of-range value
with the same one line: the CLI's options, ``tfgrpo.learn()`` and each graph as langgraph.json serves it
(Studio), which used to run ``group_size: 0``, ``epochs: -1``, ``temperature: 7`` or ``budget_usd: -5`` to
"success". Each also accepts the setting's default (issue 28, item 1)."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal, get_origin

import pytest
from langgraph.store.memory import InMemoryStore
from langgraph_sdk.runtime import _ExecutionRuntime

import tfgrpo
from tfgrpo import cli
from tfgrpo.context import Context, setting_fields
from tfgrpo.errors import ConfigError
from tfgrpo.graphs import served

# one out-of-range value per setting that has a bound or a set of choices
OUT_OF_RANGE: dict[str, Any] = {
    "epochs": 0,
    "batch_size": 0,
    "group_size": 1,
    "max_group_size": -1,
    "experiences_per_group": 0,
    "max_library_items": 0,
    "max_library_tokens": -1,
    "validation_k": 0,
    "validation_tolerance": 1.5,
    "temperature": 7.0,
    "learner_temperature": -0.5,
    "judge_temperature": 2.5,
    "top_p": 0.0,
    "max_tokens": 0,
    "learner_max_tokens": 0,
    "judge_max_tokens": 0,
    "request_timeout": 0.0,
    "python_timeout": 90000.0,
    "max_concurrency": 0,
    "max_model_calls": 0,
    "max_tool_calls": -1,
    "tool_max_chars": 0,
    "structured_retries": -1,
    "whole_attempt_tokens": -1,
    "structured_method": "xml",
    "domain": "web",
    "budget_usd": -5.0,
    "budget_tokens": 0,
    "max_retries": 101,
    "retry_backoff": 3601.0,
    "lesson_pattern": "When .*",
    "extract_ops": "ADD,KEEP",
    "candidates": 9,
    "candidate_margin": -0.1,
    "selection_k": 0,
}
SERVED = {"learn": served.learn, "step": served.step, "eval": served.evaluate, "inference": served.inference}
ROWS = [{"question": "What is 1 + 1?", "answer": "2"}]
# a model that is never called: every case stops before the first call
MODEL = ["--model", "openai:x", "--base-url", "http://127.0.0.1:9"]
COMMANDS = {
    "learn": ["learn", "--dataset", "rg:basic_arithmetic:size=2:seed=1", *MODEL],
    "eval": ["eval", "--dataset", "rg:basic_arithmetic:size=2:seed=1", *MODEL],
    "infer": ["infer", "--question", "What is 1 + 1?", *MODEL],
}


class Reached(Exception):
    """The run would start: every setting was accepted."""


def _reached(*args: Any, **kwargs: Any) -> Any:
    raise Reached


def default_of(name: str) -> Any:
    return setting_fields(Context)[name].get_default(call_default_factory=True)


def refusal(name: str) -> str:
    with pytest.raises(ConfigError) as refused:
        Context(**{name: OUT_OF_RANGE[name]})
    message = str(refused.value)
    assert "\n" not in message and name.replace("_", "-") in message
    return message


def served_graphs(name: str) -> list[str]:
    """The served graphs whose context (Studio's form) has setting ``name``."""
    return [g for g, factory in SERVED.items() if name in {f.name for f in fields(graph_schema(g))}]


def graph_schema(graph: str) -> Any:
    from tfgrpo.graphs.evaluate import graph as eval_graph
    from tfgrpo.graphs.inference import graph as inference_graph
    from tfgrpo.graphs.learn import graph as learn_graph
    from tfgrpo.graphs.step import graph as step_graph

    compiled = {"learn": learn_graph, "step": step_graph, "eval": eval_graph, "inference": inference_graph}
    return compiled[graph].context_schema


def run(context: dict[str, Any]) -> Any:
    return _ExecutionRuntime(access_context="threads.create_run", store=InMemoryStore(), context=context)


def test_every_bounded_setting_has_a_case() -> None:
    # a new setting with a bound or choices gets a row above, so the walk below covers it
    declared = setting_fields(Context)
    bounded = {
        name for name, info in declared.items() if info.metadata or get_origin(info.annotation) is Literal
    } | {"lesson_pattern", "extract_ops"}  # checked by a validator
    assert bounded == set(OUT_OF_RANGE)


@pytest.mark.parametrize("name", sorted(OUT_OF_RANGE))
def test_the_cli_python_api_and_studio_refuse_the_same_value_with_the_same_line(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("tfgrpo.learner.run_learning", _reached)
    monkeypatch.setattr("tfgrpo.evaluator.run_eval", _reached)
    message, bad = refusal(name), OUT_OF_RANGE[name]
    for command, argv in COMMANDS.items():
        if name not in {f.name for f in fields(cli.COMMAND_CONTEXTS[command])}:
            continue
        code = cli.main([*argv, cli.option_of(name), str(bad)])
        assert (code, capsys.readouterr().err) == (2, f"tfgrpo: error: {message}\n"), command
    with pytest.raises(ConfigError) as refused:
        tfgrpo.learn(dataset=ROWS, model="openai:x", run_dir=tmp_path / "run", **{name: bad})
    assert str(refused.value) == message
    graphs = served_graphs(name)
    assert graphs, name
    for graph in graphs:
        with pytest.raises(ConfigError) as refused:
            SERVED[graph](run({name: bad}))
        assert str(refused.value) == message, graph


@pytest.mark.parametrize("name", [f.name for f in fields(Context)])
def test_every_setting_s_default_is_accepted_everywhere(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("tfgrpo.learner.run_learning", _reached)
    default = default_of(name)
    assert getattr(Context(**{name: default}), name) == default
    for graph in served_graphs(name):
        assert SERVED[graph](run({name: default})) is not None
    given = {"dataset": ROWS, "model": "openai:x", "run_dir": tmp_path / "run", name: default}
    with pytest.raises(Reached):
        tfgrpo.learn(**given)
    learn_fields = {f.name for f in fields(cli.COMMAND_CONTEXTS["learn"])}
    if name in learn_fields and default not in (None, False) and name not in ("model", "dataset"):
        with pytest.raises(Reached):
            cli.main([*COMMANDS["learn"], cli.option_of(name), str(default)])


def test_a_cap_below_the_group_is_refused_everywhere(tmp_path: Path) -> None:
    message = "--max-group-size must be at least --group-size (5) or 0 (no extra attempts), got 3"
    with pytest.raises(ConfigError, match=re.escape(message)):
        Context(max_group_size=3)
    with pytest.raises(ConfigError, match=re.escape(message)):
        served.learn(run({"max_group_size": 3, "group_size": 5}))
    with pytest.raises(ConfigError, match=re.escape(message)):
        tfgrpo.learn(dataset=ROWS, model="openai:x", run_dir=tmp_path / "run", max_group_size=3)


def test_learn_help_shows_every_option_with_help_in_groups(capsys: pytest.CaptureFixture[str]) -> None:
    parser = cli.build_parser()
    learn = next(a for a in parser._actions if a.dest == "command").choices["learn"]  # type: ignore[union-attr]
    undescribed = [a.option_strings[0] for a in learn._actions if a.option_strings and not a.help]
    assert undescribed == []
    titles = [g.title for g in learn._action_groups]
    assert {"Spending and retries", "The learning loop: epochs, batches and the validation gate"} <= set(
        titles
    )
    # every setting of the learn graph is an option of `tfgrpo learn`
    options = {s for a in learn._actions for s in a.option_strings}
    assert {cli.option_of(f.name) for f in fields(cli.COMMAND_CONTEXTS["learn"])} <= options


def test_infer_takes_the_ledger_settings() -> None:
    args = cli.parse_args(["infer", "--question", "q", "--max-retries", "1", "--budget-usd", "0.5"])
    assert (args.max_retries, args.budget_usd) == (1, 0.5)


def test_the_configuration_page_lists_every_option_of_learn() -> None:
    page = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text(encoding="utf-8")
    parser = cli.build_parser()
    learn = next(a for a in parser._actions if a.dest == "command").choices["learn"]  # type: ignore[union-attr]
    options = {s for a in learn._actions for s in a.option_strings if s.startswith("--")} - {"--help"}
    assert sorted(o for o in options if f"`{o}`" not in page) == []


@pytest.mark.parametrize("graph", sorted(SERVED))
def test_studio_describes_every_input_field(graph: str) -> None:
    from tfgrpo.graphs.evaluate import graph as eval_graph
    from tfgrpo.graphs.inference import graph as inference_graph
    from tfgrpo.graphs.learn import graph as learn_graph
    from tfgrpo.graphs.step import graph as step_graph

    compiled = {"learn": learn_graph, "step": step_graph, "eval": eval_graph, "inference": inference_graph}
    props = compiled[graph].get_input_jsonschema()["properties"]
    assert props and sorted(name for name, spec in props.items() if not spec.get("description")) == []
