"""``--track``: the spec, the params (no secrets), and a one-line error without MLflow."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tfgrpo.context import Context
from tfgrpo.errors import ConfigError
from tfgrpo.runs.tracking import HINT, Tracker, metric_name, open_tracker, parse_track, settings_params


def test_track_spec() -> None:
    assert parse_track(None) is None and parse_track("") is None
    assert parse_track("mlflow") == ""  # MLflow's default URI
    assert parse_track("mlflow:sqlite:///x.db") == "sqlite:///x.db"
    assert parse_track("mlflow:http://host:5000") == "http://host:5000"
    assert parse_track("mlflow:runs/m.db") == "sqlite:///" + os.path.abspath("runs/m.db")
    with pytest.raises(ConfigError, match="expected mlflow or mlflow:URI"):
        parse_track("wandb")


def test_no_track_is_a_tracker_that_does_nothing(tmp_path: Path) -> None:
    tracker = open_tracker("", tmp_path)
    assert type(tracker) is Tracker
    tracker.finish("FINISHED")
    assert list(tmp_path.iterdir()) == []


def test_missing_mlflow_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    with pytest.raises(ConfigError) as exc:
        open_tracker("mlflow:sqlite:///x.db", tmp_path)
    assert str(exc.value) == HINT and "pip install 'tfgrpo[tracking]'" in HINT


def test_params_hold_the_settings_but_no_password() -> None:
    ctx = Context(base_url="https://user:hunter2@llm.example/v1", group_size=3, prices={"m": {"input": 1}})
    params = settings_params(ctx, seed=7, api_key="sk-x")
    assert params["group_size"] == "3" and params["seed"] == "7"
    assert params["prices"] == '{"m": {"input": 1}}'
    assert "hunter2" not in params["base_url"] and "api_key" not in params


def test_metric_names_are_mlflow_safe() -> None:
    assert metric_name("without:G1") == "without_G1"
