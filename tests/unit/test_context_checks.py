"""Context values a user gives (Studio's JSON, a dict) are checked with one line naming the field, unknown
fields are refused (a near miss names the field meant), and each graph's context schema shows only the
fields that graph uses, each described (issue 22, finding 2)."""

from __future__ import annotations

from typing import Any

import pytest
from langgraph.store.memory import InMemoryStore

from tfgrpo.context import Context, as_context
from tfgrpo.errors import ConfigError
from tfgrpo.graphs.evaluate import graph as eval_graph
from tfgrpo.graphs.inference import graph as inference_graph
from tfgrpo.graphs.learn import graph as learn_graph
from tfgrpo.graphs.step import graph as step_graph

BAD_VALUES = [
    ({"max_model_calls": "4"}, "context field 'max_model_calls': expected an integer, got the string \"4\""),
    ({"prices": ["m", 1]}, "context field 'prices': expected an object"),
    ({"temperature": "hot"}, "context field 'temperature': expected a number"),
    ({"unsafe_python": "yes"}, "context field 'unsafe_python': expected true or false"),
    ({"top_p": [1]}, "context field 'top_p': expected a number or null, got a list"),
]


@pytest.mark.parametrize(("values", "message"), BAD_VALUES)
def test_a_value_of_the_wrong_type_is_one_line_naming_the_field(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        as_context(values)
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)
    # the same through a graph given a dict (LangGraph builds the graph's context schema from it)
    with pytest.raises(ConfigError, match=message.split(":")[0]):
        inference_graph.invoke({"question": "Hi"}, context={"model": "scripted:m", **values})


def test_a_price_table_given_as_an_object_is_taken_as_its_json() -> None:
    # Studio's JSON: an object is what a user writes for prices (it used to raise AttributeError)
    ctx = as_context({"prices": {"m": {"input": 1, "output": 2}}})
    assert ctx.prices == '{"m": {"input": 1, "output": 2}}'


def test_numbers_stay_numbers() -> None:
    ctx = as_context({"temperature": 1, "top_p": None, "max_tokens": 64})
    assert ctx.temperature == 1 and ctx.top_p is None and ctx.max_tokens == 64


def test_unknown_fields_are_refused_and_a_near_miss_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"^unknown context field 'modle' \(did you mean 'model'\?\)$"):
        as_context({"modle": "openai:gpt-4o-mini"})
    with pytest.raises(ConfigError, match=r"^unknown context fields 'zzz', 'qqq'$"):
        as_context({"zzz": 1, "qqq": 2})


def test_the_server_factories_refuse_what_the_api_server_would_silently_drop() -> None:
    from langgraph_sdk.runtime import _ExecutionRuntime, _ReadRuntime

    from tfgrpo.graphs import served

    def run(context: dict[str, Any]) -> Any:
        return _ExecutionRuntime(access_context="threads.create_run", store=InMemoryStore(), context=context)

    with pytest.raises(ConfigError, match=r"unknown context field 'modle' \(did you mean 'model'\?\)"):
        served.inference(run({"modle": "openai:x"}))
    # a field of another graph is unknown here: the inference graph has no epochs
    with pytest.raises(ConfigError, match="unknown context field 'epochs'"):
        served.inference(run({"epochs": 2}))
    with pytest.raises(ConfigError, match="context field 'max_model_calls': expected an integer"):
        served.learn(run({"max_model_calls": "4"}))
    assert served.learn(run({"epochs": 2, "model": "openai:x"})) is learn_graph
    assert (
        served.evaluate(_ReadRuntime(access_context="assistants.read", store=InMemoryStore())) is eval_graph
    )


def test_each_graph_shows_only_the_fields_it_uses_each_described() -> None:
    shown = {}
    for name, graph in (("learn", learn_graph), ("step", step_graph), ("eval", eval_graph),
                        ("inference", inference_graph)):  # fmt: skip
        schema = graph.get_context_jsonschema()
        assert schema is not None
        props = schema["properties"]
        undescribed = sorted(k for k, v in props.items() if not v.get("description"))
        assert undescribed == [], (name, undescribed)
        shown[name] = set(props)
    learning_only = {"epochs", "batch_size", "group_size", "lesson_pattern", "experiences_per_group",
                     "learner_model", "validation", "extract_ops"}  # fmt: skip
    assert not learning_only & shown["inference"]
    assert not learning_only & shown["eval"]
    assert {"model", "base_url", "library", "library_run", "max_model_calls", "budget_usd"} <= shown[
        "inference"
    ]
    assert learning_only <= shown["learn"] and {"dataset", "epochs", "batch_size"} - shown["step"] == {
        "dataset", "epochs", "batch_size"}  # fmt: skip
    assert "library_run" not in shown["learn"] and "dataset" in shown["eval"]


def test_the_full_context_still_serves_the_cli_and_python_api() -> None:
    ctx = Context(epochs=2, library="x", model="openai:m")
    assert as_context(ctx) is ctx
    # a graph's own schema converts to the full Context the nodes read
    schema = inference_graph.context_schema
    assert schema is not None
    assert as_context(schema(model="openai:m", max_model_calls=3)) == Context(
        model="openai:m", max_model_calls=3
    )
