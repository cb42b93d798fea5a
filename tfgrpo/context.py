"""Runtime settings of a learning run, passed as LangGraph ``context`` (not checkpointed).

Everything here is a plain value so LangGraph Studio can render and edit it. Models are named by spec
(``openai:NAME``) and built lazily by :mod:`tfgrpo.models.spec`; importing this module needs no API key.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import Field, asdict, dataclass, field, fields, is_dataclass, make_dataclass
from typing import Any, get_type_hints

from tfgrpo.errors import ConfigError

# Settings that change the meaning of a run: a resumed run must use the same values.
RUN_DEFINING = (
    "dataset",
    "domain",
    "group_size",
    "batch_size",
    "epochs",
    "reward",
    "experiences_per_group",
    "validation",
    "validation_k",
    "validation_tolerance",
)


@dataclass(kw_only=True)
class Context:
    """Settings for the learning graphs (``context_schema``)."""

    # What to learn from
    dataset: str = field(
        default="rg:basic_arithmetic:size=20:seed=1",
        metadata={"description": "JSONL/CSV path with question/answer, or rg:NAME:key=value spec."},
    )
    reward: str = field(
        default="math",
        metadata={
            "description": "math | exact_match | f1 | rg (a reasoning_gym task's own scorer; the CLI's "
            "and Python API's default for rg: datasets) | judge | majority | module:function returning a "
            "float in [0,1] or a (score, reason) pair."
        },
    )
    domain: str = field(
        default="direct",
        metadata={"description": "direct (no tools) | math (Python tool) | search (search tools)."},
    )
    corpus: str = field(
        default="",
        metadata={"description": "Comma-separated JSONL corpus files for the offline search tool."},
    )
    validation: str = field(
        default="",
        metadata={
            "description": "Held-out set (like dataset): keep a step's E only if it does not score lower "
            "on it than E before the step (else roll back)."
        },
    )
    validation_k: int = field(default=1, metadata={"description": "Runs per validation question and E."})
    validation_tolerance: float = field(
        default=0.0, metadata={"description": "Roll back when after < before - tolerance."}
    )
    library: str = field(
        default="",
        metadata={"description": "Inference: library.json or a run directory whose E is injected."},
    )
    library_namespace: str = field(
        default="",
        metadata={"description": "Inference: store namespace (a/b) holding E under key 'library'."},
    )
    agent: str = field(
        default="",
        metadata={
            "description": "Your own agent as the policy: module:attr or file.py:attr of a compiled "
            "create_agent graph with ExperienceMiddleware, or of a factory taking middleware=."
        },
    )
    library_run: str = field(
        default="",
        metadata={
            "description": "Inference/eval: the run id of a learn run (its output's run_id) whose latest "
            "E, published in the store after every step, is injected."
        },
    )
    max_model_calls: int = field(default=8, metadata={"description": "Agent: model calls per question."})
    max_tool_calls: int = field(default=6, metadata={"description": "Agent: tool calls per question."})
    python_timeout: float = field(
        default=10.0, metadata={"description": "Python tool: seconds per run of model-written code."}
    )
    tool_max_chars: int = field(
        default=2000,
        metadata={"description": "Tools: cap on the characters of a tool result the model reads."},
    )
    unsafe_python: bool = field(
        default=False,
        metadata={"description": "Run the Python tool without its OS sandbox (bubblewrap): unsafe."},
    )
    # The paper's hyper-parameters
    epochs: int = field(default=3, metadata={"description": "Passes over the training set."})
    batch_size: int = field(default=8, metadata={"description": "Queries per step (B)."})
    group_size: int = field(default=5, metadata={"description": "G rollouts per query."})
    max_group_size: int = field(
        default=0,
        metadata={
            "description": "Dynamic sampling (DAPO): a group whose rewards are all equal gets G more "
            "attempts at a time until they differ or it holds this many; 0: G (no extra attempts)."
        },
    )
    temperature: float = field(default=0.7, metadata={"description": "Sampling temperature of rollouts."})
    experiences_per_group: int = field(default=2, metadata={"description": "K: at most K per group."})
    max_library_items: int = field(default=50, metadata={"description": "Hard cap on |E|."})
    max_library_tokens: int = field(
        default=4000, metadata={"description": "Hard cap on E's size in every prompt (estimated tokens)."}
    )
    # Models
    model: str = field(
        default_factory=lambda: os.environ.get("TFGRPO_MODEL", ""),
        metadata={"description": "Policy model, e.g. openai:gpt-4o-mini (default: $TFGRPO_MODEL)."},
    )
    learner_model: str = field(
        default_factory=lambda: os.environ.get("TFGRPO_LEARNER_MODEL", ""),
        metadata={"description": "Model for summarize/extract/update (default: model)."},
    )
    judge_model: str = field(
        default_factory=lambda: os.environ.get("TFGRPO_JUDGE_MODEL", ""),
        metadata={"description": "Model for LLM-judge rewards (default: model)."},
    )
    base_url: str = field(
        default_factory=lambda: os.environ.get("OPENAI_BASE_URL", ""),
        metadata={"description": "OpenAI-compatible endpoint (default: $OPENAI_BASE_URL)."},
    )
    learner_temperature: float = field(
        default=0.3, metadata={"description": "Sampling temperature of summarize / extract / update."}
    )
    judge_temperature: float = field(
        default=0.0, metadata={"description": "Sampling temperature of the LLM judge."}
    )
    max_tokens: int = field(default=1024, metadata={"description": "Cap on tokens per policy completion."})
    top_p: float | None = field(
        default=None, metadata={"description": "Nucleus sampling of the policy (None: the server's default)."}
    )
    learner_max_tokens: int = field(
        default=4096,
        metadata={"description": "Cap on tokens per summarize / extract / update completion."},
    )
    judge_max_tokens: int = field(default=64, metadata={"description": "Cap on tokens per judge verdict."})
    whole_attempt_tokens: int = field(
        default=300,
        metadata={
            "description": "A kept group whose attempts are all at most this many output tokens, with no "
            "tool call, is read whole by the extractor, with no summarize call; 0: summarize every attempt."
        },
    )
    prompts: str = field(
        default="",
        metadata={"description": "Directory of NAME.txt files replacing prompts (see `tfgrpo prompts`)."},
    )
    answer_grammar: str = field(
        default="",
        metadata={
            "description": "GBNF grammar (text) constraining the policy's tool-less answers on llama.cpp "
            "servers (the embedded model, or --base-url); empty: none."
        },
    )
    lesson_pattern: str = field(
        default="",
        metadata={
            "description": "Regular expression (JSON-schema `pattern`, anchored with ^ and $) every lesson "
            "must match: sent in the extract / update schemas, which grammar-constrained servers "
            "(llama.cpp) turn into the shape of the lesson, and checked by the lesson gate for any model "
            "('off pattern'). It must accept the empty string (NONE, DELETE). Empty: none."
        },
    )
    extract_ops: str = field(
        default="",
        metadata={
            "description": "Operations the extract schema offers, comma-separated (e.g. ADD,UPDATE: no "
            "NONE, so every kept group proposes a lesson for the gate and the update step to judge); "
            "empty: all. Schema only: validation still accepts all four. An empty library is offered "
            "only ADD and NONE in any case."
        },
    )
    request_timeout: float = field(default=120.0, metadata={"description": "Seconds per LLM call."})
    # Robustness
    structured_retries: int = field(
        default=2, metadata={"description": "Extra attempts when structured output cannot be parsed."}
    )
    structured_method: str = field(
        default="function_calling",
        metadata={"description": "function_calling | json_mode | json_schema for extract/update."},
    )
    max_concurrency: int = field(
        default=4, metadata={"description": "Cap on LLM calls in flight at once (per run)."}
    )
    # Spending and retries (the CLI's --budget-usd/--budget-tokens/--prices/--max-retries set its ledger;
    # under the LangGraph server these fields make one ledger per thread, persisted in the store)
    budget_usd: float = field(
        default=0.0,
        metadata={"description": "Stop (resumably) before spending more dollars than this; 0: no cap."},
    )
    budget_tokens: int = field(
        default=0,
        metadata={"description": "Stop (resumably) before using more tokens than this; 0: no cap."},
    )
    prices: str = field(
        default="",
        metadata={
            "description": 'Model prices: a JSON file or inline JSON {"MODEL": {"input": USD per 1M '
            'tokens, "output": USD per 1M}} (built-in list prices otherwise).'
        },
    )
    max_retries: int = field(
        default=4, metadata={"description": "Retries of a transient LLM error (429, 5xx, timeout)."}
    )
    retry_backoff: float = field(default=1.0, metadata={"description": "First retry delay, seconds."})

    def __post_init__(self) -> None:
        check_fields(self)

    def settings_fingerprint(self) -> str:
        """Hash of the run-defining settings, stored in state to refuse an inconsistent resume."""
        data = {k: asdict(self)[k] for k in RUN_DEFINING}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def run_defining(self) -> dict[str, object]:
        return {k: asdict(self)[k] for k in RUN_DEFINING}


# -- checking values a user gives (Studio's JSON, a dict, keyword arguments) ----------------------------

_EXPECTED = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "float | None": "a number or null",
}
# what a string field holds, where "a string" alone would not tell a user what to write
_EXPECTED_TEXT = {
    "prices": 'an object {"MODEL": {"input": USD per 1M tokens, "output": USD per 1M}}, that object as '
    "JSON text, or the path of such a JSON file",
}


def _kind(name: str) -> str:
    hint = _hints()[name]
    return {int: "int", float: "float", str: "str", bool: "bool"}.get(hint, "float | None")


def _hints() -> dict[str, Any]:
    global _HINTS
    if not _HINTS:
        _HINTS = get_type_hints(Context)
    return _HINTS


_HINTS: dict[str, Any] = {}


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, str):
        return f"the string {json.dumps(value)[:60]}"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    return "null" if value is None else f"{type(value).__name__} {str(value)[:40]}"


def check_field(name: str, value: Any) -> None:
    """One line naming the field when ``value`` is not of its type (an int is a fine float)."""
    kind = _kind(name)
    number = isinstance(value, int | float) and not isinstance(value, bool)
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": number,
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
        "float | None": value is None or number,
    }[kind]
    if not ok:
        expected = _EXPECTED_TEXT.get(name, _EXPECTED[kind])
        raise ConfigError(f"context field {name!r}: expected {expected}, got {_shown(value)}")


def check_fields(settings: Any) -> None:
    """Check every field of a :class:`Context` (or a graph's schema); a price table given as an object
    (Studio's JSON) becomes the JSON text the field holds."""
    if isinstance(getattr(settings, "prices", None), Mapping):
        try:
            settings.prices = json.dumps(settings.prices)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"context field 'prices': not a JSON object ({exc})") from None
    for f in fields(settings):
        check_field(f.name, getattr(settings, f.name))


def check_names(given: Iterable[str], known: Iterable[str]) -> None:
    """Refuse context fields the graph does not take, suggesting the field a near miss meant."""
    names = list(known)
    unknown = [name for name in given if name not in names]
    if not unknown:
        return
    close = difflib.get_close_matches(unknown[0], names, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    listed = ", ".join(repr(n) for n in unknown)
    raise ConfigError(f"unknown context field{'s' if len(unknown) > 1 else ''} {listed}{hint}")


def context_from(values: Mapping[str, Any], known: Iterable[str] | None = None) -> Context:
    """A :class:`Context` from plain values (Studio's JSON, a dict): unknown names and wrong types are
    one-line errors. ``known``: the fields the graph takes (default: all)."""
    check_names(values, known if known is not None else _hints())
    return Context(**values)


class GraphContext:
    """Base of the per-graph context schemas: the fields one graph uses, checked like :class:`Context`."""

    def __post_init__(self) -> None:
        check_fields(self)

    def to_context(self) -> Context:
        return Context(**{f.name: getattr(self, f.name) for f in fields(self)})  # type: ignore[arg-type]


def graph_context(name: str, names: Iterable[str], doc: str) -> type[GraphContext]:
    """A dataclass with only ``names`` of :class:`Context`'s fields (same defaults and descriptions): the
    ``context_schema`` of one graph, so Studio shows what that graph uses."""
    wanted = set(names)
    unknown = wanted - set(_hints())
    if unknown:
        raise ValueError(f"not Context fields: {sorted(unknown)}")
    spec: list[tuple[str, Any, Field[Any]]] = []
    for f in fields(Context):
        if f.name in wanted:
            copy: Field[Any] = field(
                default=f.default, default_factory=f.default_factory, metadata=f.metadata
            )
            spec.append((f.name, _hints()[f.name], copy))
    cls = make_dataclass(name, spec, bases=(GraphContext,), kw_only=True)
    cls.__doc__ = doc
    cls.__module__ = __name__
    return cls


def as_context(value: Any) -> Context:
    """The run's :class:`Context` from what LangGraph hands a node or tool (a dict from Studio, a graph's
    own context schema, or None)."""
    if value is None:
        return Context()
    if isinstance(value, Context):
        return value
    if isinstance(value, GraphContext):
        return value.to_context()
    if isinstance(value, dict):
        return context_from(value)
    if is_dataclass(value) and not isinstance(value, type):
        return context_from(asdict(value))
    raise ConfigError(f"unsupported context type {type(value).__name__}")


# -- what each graph of langgraph.json uses: its context schema (Studio's form) -------------------------

# calling a model: every graph
_MODEL_FIELDS = (
    "model", "base_url", "temperature", "max_tokens", "top_p", "answer_grammar", "request_timeout",
    "prompts", "max_concurrency", "budget_usd", "budget_tokens", "prices", "max_retries", "retry_backoff",
)  # fmt: skip
# the policy agent (its tools and answer format): every graph; learning and evaluation may use the
# user's own agent instead ("agent")
_AGENT_FIELDS = (
    "reward", "domain", "corpus", "max_model_calls", "max_tool_calls", "python_timeout",
    "tool_max_chars", "unsafe_python",
)  # fmt: skip
# where the inference agent's E comes from
_LIBRARY_FIELDS = ("library", "library_run", "library_namespace")
_JUDGE_FIELDS = ("judge_model", "judge_temperature", "judge_max_tokens")
# one step of Training-Free GRPO: the learner, the group, E's caps and the learner's output
_STEP_FIELDS = (
    *_JUDGE_FIELDS, "learner_model", "learner_temperature", "learner_max_tokens", "whole_attempt_tokens",
    "group_size", "max_group_size", "experiences_per_group", "max_library_items", "max_library_tokens",
    "lesson_pattern", "extract_ops", "structured_retries", "structured_method",
)  # fmt: skip
_LEARN_FIELDS = ("dataset", "epochs", "batch_size", "validation", "validation_k", "validation_tolerance")

InferenceContext = graph_context(
    "InferenceContext",
    (*_MODEL_FIELDS, *_AGENT_FIELDS, *_LIBRARY_FIELDS),
    "Settings of the inference agent: its model, tools, caps and learned library E.",
)
EvalContext = graph_context(
    "EvalContext",
    (*_MODEL_FIELDS, *_AGENT_FIELDS, *_LIBRARY_FIELDS, *_JUDGE_FIELDS, "dataset", "agent"),
    "Settings of an evaluation: the agent's, the questions (dataset) and the judge's.",
)
StepContext = graph_context(
    "StepContext",
    (*_MODEL_FIELDS, *_AGENT_FIELDS, *_STEP_FIELDS, "agent"),
    "Settings of one Training-Free GRPO step: the policy, the learner, G, K and E's caps.",
)
LearnContext = graph_context(
    "LearnContext",
    (*_MODEL_FIELDS, *_AGENT_FIELDS, *_STEP_FIELDS, *_LEARN_FIELDS, "agent"),
    "Settings of a learning run: the dataset, epochs and batch size, the step's settings, the budget.",
)
