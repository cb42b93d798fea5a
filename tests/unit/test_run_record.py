"""``run.json`` names the models that answered, as ``eval.json`` does (issue 19, section 3)."""

from __future__ import annotations

import json
from pathlib import Path

from tfgrpo.context import Context
from tfgrpo.models.spec import DEFAULT_MODEL
from tfgrpo.runs.rundir import RunDir


def recorded(tmp_path: Path, ctx: Context) -> dict[str, object]:
    run = RunDir(tmp_path / "run")
    run.create()
    run.write_settings(ctx, seed=3)
    data = json.loads((tmp_path / "run" / "run.json").read_text())
    assert data["seed"] == 3
    context: dict[str, object] = data["context"]
    return context


def test_no_model_given_records_the_embedded_model(tmp_path: Path) -> None:
    context = recorded(tmp_path, Context())
    assert context["model"] == DEFAULT_MODEL == "local:qwen2.5-coder-0.5b-instruct"
    assert context["learner_model"] == DEFAULT_MODEL  # the learner defaults to the policy model


def test_given_models_are_recorded_as_given(tmp_path: Path) -> None:
    ctx = Context(model="openai:gpt-4o-mini", learner_model="openai:gpt-4o", reward="judge")
    context = recorded(tmp_path, ctx)
    assert context["model"] == "openai:gpt-4o-mini" and context["learner_model"] == "openai:gpt-4o"
    assert context["judge_model"] == "openai:gpt-4o-mini"  # the judge defaults to the policy model


def test_a_users_agent_keeps_its_own_model(tmp_path: Path) -> None:
    context = recorded(tmp_path, Context(agent="app.py:make_agent", learner_model="openai:gpt-4o"))
    assert context["model"] == ""  # the agent brings its model: not the embedded one
    assert context["learner_model"] == "openai:gpt-4o"
