"""Every setting of a run, declared once: its type, ``Literal`` choices, bounds, default, help and group.

The settings are pydantic dataclasses passed to the graphs as LangGraph ``context`` (not checkpointed),
plain values so that LangGraph Studio can render, describe and edit them. One mixin per group of settings
(:class:`ModelSettings`, :class:`AgentSettings`, ...); each graph's ``context_schema`` is the composition
of the groups it uses (:class:`InferenceContext`, :class:`EvalContext`, :class:`StepContext`,
:class:`LearnContext`), and :class:`Context` holds them all. Constructing any of them checks every value
(unknown names, types, bounds, choices) with one line naming the setting, the same line in Studio, the
CLI (whose options are generated from these fields) and :func:`tfgrpo.learn`. Models are named by spec
(``openai:NAME``) and built lazily by :mod:`tfgrpo.models.spec`; importing this module needs no API key.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, fields, is_dataclass
from typing import Any, Literal, TypeVar, cast, get_args, get_type_hints

from annotated_types import Ge, Gt, Le, Lt
from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.dataclasses import dataclass
from typing_extensions import dataclass_transform

from tfgrpo.errors import ConfigError
from tfgrpo.state.library import OP_NAMES

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
# Run-defining settings added after runs were started without them: in a run's fingerprint only when not
# at this default, so those runs still resume (and a resume that changes one is refused).
LATER_RUN_DEFINING: dict[str, object] = {"candidates": 1}
# Upper bounds of the settings counted in seconds or retries: a value beyond them is a typo, and a
# huge one would only fail later, mid-run and paid for (1e12 s overflows the clock: OverflowError).
MAX_SECONDS = 86_400.0  # a day per LLM call or Python run
MAX_BACKOFF = 3_600.0
MAX_RETRIES = 100
Domain = Literal["direct", "math", "search"]
StructuredMethod = Literal["function_calling", "json_mode", "json_schema"]
OPERATIONS = OP_NAMES  # the operations on E, spelled once in state.library.OpName
# the command-line option of a setting, where it is not --NAME (--grammar takes a file; the field its text)
OPTION_NAMES = {"answer_grammar": "--grammar"}

# strict: "4" is not an integer, nor 1 a boolean (Studio's JSON is taken as typed); no inf / nan
_CONFIG = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)
T = TypeVar("T")


def option(name: str) -> str:
    """The command-line option of setting ``name`` (``group_size``: ``--group-size``)."""
    return OPTION_NAMES.get(name, "--" + name.replace("_", "-"))


@dataclass_transform(kw_only_default=True, field_specifiers=(Field,))
def settings(cls: type[T]) -> type[T]:
    """A settings class: a pydantic dataclass whose construction raises one :class:`ConfigError` line
    (unknown names with a did-you-mean hint, the first wrong value) instead of pydantic's report."""
    made: Any = dataclass(kw_only=True, config=_CONFIG)(cls)
    init = made.__init__
    names = [f.name for f in fields(made)]

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **values: Any) -> None:
        check_names(values, names)
        try:
            init(self, *args, **values)
        except ValidationError as exc:
            raise ConfigError(_sentence(made, exc)) from None

    made.__init__ = __init__
    return cast("type[T]", made)


def _env(name: str) -> Callable[[], str]:
    return lambda: os.environ.get(name, "")


# -- the groups of settings (each a CLI option group, titled by its docstring's first line) ---------------


@settings
class LedgerSettings:
    """Spending and retries.

    The CLI's and Python API's ledger is built from them; under the LangGraph server they make one
    ledger per thread, persisted in the store."""

    budget_usd: float | None = Field(
        default=None,
        gt=0,
        description="Stop (resumably) before spending more dollars than this; null: no cap.",
    )
    budget_tokens: int | None = Field(
        default=None, gt=0, description="Stop (resumably) before using more tokens than this; null: no cap."
    )
    prices: str = Field(
        default="",
        description='Model prices: a JSON file or inline JSON {"MODEL": {"input": USD per 1M tokens, '
        '"output": USD per 1M}} (built-in list prices otherwise).',
    )
    max_retries: int = Field(
        default=4, ge=0, le=MAX_RETRIES, description="Retries of a transient LLM error (429, 5xx, timeout)."
    )
    retry_backoff: float = Field(default=1.0, ge=0, le=MAX_BACKOFF, description="First retry delay, seconds.")

    @field_validator("prices", mode="before")
    @classmethod
    def _prices_as_json(cls, value: Any) -> Any:
        # Studio's JSON: an object is what a user writes for prices; the field holds its JSON text
        if isinstance(value, Mapping):
            try:
                return json.dumps(value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"not a JSON object ({exc})") from None
        return value


@settings
class ModelSettings:
    """Calling the policy model."""

    model: str = Field(
        default_factory=_env("TFGRPO_MODEL"),
        description="Policy model, e.g. openai:gpt-4o-mini (default: $TFGRPO_MODEL).",
    )
    base_url: str = Field(
        default_factory=_env("OPENAI_BASE_URL"),
        description="OpenAI-compatible endpoint (default: $OPENAI_BASE_URL).",
    )
    temperature: float = Field(default=0.7, ge=0, le=2, description="Sampling temperature of rollouts.")
    top_p: float | None = Field(
        default=None, gt=0, le=1, description="Nucleus sampling of the policy (null: the server's default)."
    )
    max_tokens: int = Field(default=1024, ge=1, description="Cap on tokens per policy completion.")
    answer_grammar: str = Field(
        default="",
        description="GBNF grammar (text) constraining the policy's tool-less answers on llama.cpp servers "
        "(the embedded model, or --base-url); empty: none.",
    )
    prompts: str = Field(
        default="", description="Directory of NAME.txt files replacing prompts (see `tfgrpo prompts`)."
    )
    request_timeout: float = Field(default=120.0, gt=0, le=MAX_SECONDS, description="Seconds per LLM call.")
    max_concurrency: int = Field(default=4, ge=1, description="Cap on LLM calls in flight at once (per run).")


@settings
class UserAgentSettings:
    """Your own agent as the policy."""

    agent: str = Field(
        default="",
        description="Your own agent as the policy: module:attr or file.py:attr of a compiled create_agent "
        "graph with ExperienceMiddleware, or of a factory taking middleware=.",
    )


@settings
class AgentSettings:
    """The policy agent: its answer format, tools and caps."""

    reward: str = Field(
        default="math",
        description="math | exact_match | f1 | rg (a reasoning_gym task's own scorer; the CLI's and Python "
        "API's default for rg: datasets) | judge | majority | module:function returning a float in [0,1] "
        "or a (score, reason) pair.",
    )
    domain: Domain = Field(
        default="direct", description="direct (no tools) | math (Python tool) | search (search tools)."
    )
    corpus: str = Field(
        default="", description="Comma-separated JSONL corpus files for the offline search tool."
    )
    max_model_calls: int = Field(default=8, ge=1, description="Agent: model calls per question.")
    max_tool_calls: int = Field(default=6, ge=0, description="Agent: tool calls per question.")
    python_timeout: float = Field(
        default=10.0, gt=0, le=MAX_SECONDS, description="Python tool: seconds per run of model-written code."
    )
    tool_max_chars: int = Field(
        default=2000, ge=1, description="Tools: cap on the characters of a tool result the model reads."
    )
    unsafe_python: bool = Field(
        default=False, description="Run the Python tool without its OS sandbox (bubblewrap): unsafe."
    )


@settings
class LibrarySettings:
    """Where the inference agent's E comes from."""

    library: str = Field(
        default="", description="Inference: library.json or a run directory whose E is injected."
    )
    library_run: str = Field(
        default="",
        description="Inference/eval: the run id of a learn run (its output's run_id) whose latest E, "
        "published in the store after every step, is injected.",
    )
    library_namespace: str = Field(
        default="", description="Inference: store namespace (a/b) holding E under key 'library'."
    )


@settings
class JudgeSettings:
    """The LLM judge (reward judge)."""

    judge_model: str = Field(
        default_factory=_env("TFGRPO_JUDGE_MODEL"),
        description="Model for LLM-judge rewards (default: $TFGRPO_JUDGE_MODEL, else model).",
    )
    judge_temperature: float = Field(
        default=0.0, ge=0, le=2, description="Sampling temperature of the LLM judge."
    )
    judge_max_tokens: int = Field(default=64, ge=1, description="Cap on tokens per judge verdict.")


@settings
class LearnerSettings:
    """The learner model (summarize, extract, update)."""

    learner_model: str = Field(
        default_factory=_env("TFGRPO_LEARNER_MODEL"),
        description="Model for summarize/extract/update (default: $TFGRPO_LEARNER_MODEL, else model).",
    )
    learner_temperature: float = Field(
        default=0.3, ge=0, le=2, description="Sampling temperature of summarize / extract / update."
    )
    learner_max_tokens: int = Field(
        default=4096, ge=1, description="Cap on tokens per summarize / extract / update completion."
    )
    whole_attempt_tokens: int = Field(
        default=300,
        ge=0,
        description="A kept group whose attempts are all at most this many output tokens, with no tool "
        "call, is read whole by the extractor, with no summarize call; 0: summarize every attempt.",
    )
    structured_retries: int = Field(
        default=2, ge=0, description="Extra attempts when structured output cannot be parsed."
    )
    structured_method: StructuredMethod = Field(
        default="function_calling",
        description="function_calling | json_mode | json_schema for extract/update.",
    )


@settings
class StepSettings:
    """One Training-Free GRPO step: the group, K, E's caps and the lessons' shape."""

    group_size: int = Field(
        default=5, ge=2, description="G rollouts per query (a group of 1 has no relative advantage)."
    )
    max_group_size: int = Field(
        default=0,
        ge=0,
        description="Dynamic sampling (DAPO): a group whose rewards are all equal gets G more attempts at a "
        "time until they differ or it holds this many; 0: G (no extra attempts).",
    )
    experiences_per_group: int = Field(default=2, ge=1, description="K: at most K per group.")
    max_library_items: int = Field(default=50, ge=1, description="Hard cap on |E|.")
    max_library_tokens: int = Field(
        default=4000, ge=1, description="Hard cap on E's size in every prompt (estimated tokens)."
    )
    lesson_pattern: str = Field(
        default="",
        description="Regular expression (JSON-schema `pattern`, anchored with ^ and $) every lesson must "
        "match: sent in the extract / update schemas, which grammar-constrained servers (llama.cpp) turn "
        "into the shape of the lesson, and checked by the lesson gate for any model ('off pattern'). It "
        "must accept the empty string (NONE, DELETE). Empty: none.",
    )
    extract_ops: str = Field(
        default="",
        description="Operations the extract schema offers, comma-separated (e.g. ADD,UPDATE: no NONE, so "
        "every kept group proposes a lesson for the gate and the update step to judge); empty: all. Schema "
        "only: validation still accepts all four. An empty library is offered only ADD and NONE in any "
        "case.",
    )

    candidates: int = Field(
        default=1,
        ge=1,
        le=8,
        description="Candidate updates of E per step: the learner's extract calls are sampled this many "
        "times (each with its own seed), each sample gives a candidate E, and the policy scores every "
        "distinct changed candidate on the step's questions whose groups had contrast, paired with the "
        "current E's rollouts (same seeds); the best that beats the current E by more than "
        "--candidate-margin is kept, else E stays. 1: one update, applied (no selection).",
    )
    candidate_margin: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="With --candidates above 1: a candidate E is kept only when its mean reward on the "
        "selection runs beats the current E's on the same seeds by more than this.",
    )
    selection_k: int = Field(
        default=2,
        ge=1,
        description="With --candidates above 1: runs per selection question and candidate E; run i uses "
        "the seed of the question's rollout i, so at most --group-size.",
    )

    @model_validator(mode="after")
    def _cap_holds_a_group(self) -> Any:
        if 0 < self.max_group_size < self.group_size:
            raise ValueError(
                f"--max-group-size must be at least --group-size ({self.group_size}) or 0 (no extra "
                f"attempts), got {self.max_group_size}"
            )
        if self.selection_k > self.group_size:
            raise ValueError(
                f"--selection-k must be at most --group-size ({self.group_size}): selection run i is "
                f"paired with rollout i, got {self.selection_k}"
            )
        return self

    @field_validator("lesson_pattern")
    @classmethod
    def _anchored_pattern(cls, pattern: str) -> str:
        if not pattern:
            return pattern
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"not a regular expression ({exc})") from None
        if not (pattern.startswith("^") and pattern.endswith("$")):
            # llama.cpp's schema-to-grammar converter refuses an unanchored pattern
            raise ValueError("must start with ^ and end with $")
        if not compiled.search(""):
            raise ValueError("must accept the empty string (NONE and DELETE carry no lesson)")
        return pattern

    @field_validator("extract_ops")
    @classmethod
    def _known_ops(cls, ops: str) -> str:
        names = [op.strip().upper() for op in ops.split(",") if op.strip()]
        for name in names:
            if name not in OPERATIONS:
                raise ValueError(f"unknown operation {name!r} ({', '.join(OPERATIONS)})")
        return ",".join(names)


@settings
class DataSettings:
    """The questions."""

    dataset: str = Field(
        default="rg:basic_arithmetic:size=20:seed=1",
        description="JSONL/CSV path with question/answer, or rg:NAME:key=value spec.",
    )


@settings
class LearnSettings:
    """The learning loop: epochs, batches and the validation gate."""

    epochs: int = Field(default=3, ge=1, description="Passes over the training set.")
    batch_size: int = Field(default=8, ge=1, description="Queries per step (B).")
    validation: str = Field(
        default="",
        description="Held-out set (like dataset): keep a step's E only if it does not score lower on it "
        "than E before the step (else roll back).",
    )
    validation_k: int = Field(default=1, ge=1, description="Runs per validation question and E.")
    validation_tolerance: float = Field(
        default=0.0, ge=0, le=1, description="Roll back when after < before - tolerance."
    )


# -- each graph's context schema (Studio's form): the groups it uses --------------------------------------
# Bases in one global order (Ledger, Model, UserAgent, Agent, Library, Judge, Learner, Step, Learn, Data)
# so that Context can inherit them all; the last base's fields come first in Studio's form.


@settings
class InferenceContext(LedgerSettings, ModelSettings, AgentSettings, LibrarySettings):
    """Settings of the inference agent: its model, tools, caps and learned library E."""


@settings
class EvalContext(
    LedgerSettings,
    ModelSettings,
    UserAgentSettings,
    AgentSettings,
    LibrarySettings,
    JudgeSettings,
    DataSettings,
):
    """Settings of an evaluation: the agent's, the questions (dataset) and the judge's."""


@settings
class StepContext(
    LedgerSettings,
    ModelSettings,
    UserAgentSettings,
    AgentSettings,
    JudgeSettings,
    LearnerSettings,
    StepSettings,
):
    """Settings of one Training-Free GRPO step: the policy, the learner, G, K and E's caps."""


@settings
class LearnContext(
    LedgerSettings,
    ModelSettings,
    UserAgentSettings,
    AgentSettings,
    JudgeSettings,
    LearnerSettings,
    StepSettings,
    LearnSettings,
    DataSettings,
):
    """Settings of a learning run: the dataset, epochs and batch size, the step's settings, the budget."""


@settings
class Context(LearnContext, EvalContext, StepContext, InferenceContext):
    """Every setting of a run (the CLI's and Python API's; the nodes read this through :func:`as_context`)."""

    def settings_fingerprint(self) -> str:
        """Hash of the run-defining settings, stored in state to refuse an inconsistent resume."""
        return hashlib.sha256(json.dumps(self.run_defining(), sort_keys=True).encode()).hexdigest()[:16]

    def run_defining(self) -> dict[str, object]:
        values = asdict(self)
        later = {k: values[k] for k, default in LATER_RUN_DEFINING.items() if values[k] != default}
        return {**{k: values[k] for k in RUN_DEFINING}, **later}


GRAPH_CONTEXTS: dict[str, type[Any]] = {
    "learn": LearnContext,
    "step": StepContext,
    "eval": EvalContext,
    "inference": InferenceContext,
}
GROUPS = (
    DataSettings,
    LearnSettings,
    StepSettings,
    LearnerSettings,
    JudgeSettings,
    ModelSettings,
    AgentSettings,
    UserAgentSettings,
    LibrarySettings,
    LedgerSettings,
)


# -- one line for what a user gave wrong (Studio's JSON, a dict, keyword arguments, an option) ------------

_EXPECTED = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "true or false",
}
# what a string field holds, where "a string" alone would not tell a user what to write
_EXPECTED_TEXT = {
    "prices": 'an object {"MODEL": {"input": USD per 1M tokens, "output": USD per 1M}}, that object as '
    "JSON text, or the path of such a JSON file",
}
_BOUND_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}
_TYPE_ERRORS = {"int_type", "float_type", "string_type", "bool_type", "none_required", "int_from_float"}


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


def _expected(cls: type[Any], name: str) -> str:
    if name in _EXPECTED_TEXT:
        return _EXPECTED_TEXT[name]
    hint = get_type_hints(cls)[name]
    kinds = [k for k in get_args(hint) if k is not type(None)] or [hint]
    text = _EXPECTED.get(kinds[0], "a string")
    return f"{text} or null" if type(None) in get_args(hint) else text


def bounds(cls: type[Any], name: str) -> str:
    """What the bounds of setting ``name`` accept, in words ("at least 1", "between 0 and 2"), or ""."""
    low = high = ""
    for mark in cls.__pydantic_fields__[name].metadata:
        if isinstance(mark, Ge):
            low = f"at least {mark.ge:g}"
        elif isinstance(mark, Gt):
            low = f"more than {mark.gt:g}"
        elif isinstance(mark, Le):
            high = f"at most {mark.le:g}"
        elif isinstance(mark, Lt):
            high = f"less than {mark.lt:g}"
    if low.startswith("at least") and high.startswith("at most"):
        return f"between {low.split()[-1]} and {high.split()[-1]}"
    return " and ".join(part for part in (low, high) if part)


def _sentence(cls: type[Any], exc: ValidationError) -> str:
    """The first of pydantic's errors as one line naming the setting (its option, as the CLI spells it)."""
    error = exc.errors()[0]
    name = str(error["loc"][0]) if error["loc"] else ""
    value, kind = error["input"], error["type"]
    if not name:  # a check across settings: its own sentence
        return str(error.get("ctx", {}).get("error") or error["msg"])
    if kind == "finite_number" or (
        kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal")
    ):
        return f"{option(name)} must be {bounds(cls, name)}, got {value!r}"
    if kind == "literal_error":
        return f"{option(name)} must be one of {error['ctx']['expected']}, got {value!r}"
    if kind == "value_error":
        return f"{option(name)}: {error['ctx']['error']}"
    if kind in _TYPE_ERRORS or len(error["loc"]) > 1:
        return f"context field {name!r}: expected {_expected(cls, name)}, got {_shown(value)}"
    return f"{option(name)}: {error['msg']}, got {value!r}"


def check_names(given: Iterable[str], known: Iterable[str]) -> None:
    """Refuse settings the graph does not take, suggesting the field a near miss meant."""
    names = list(known)
    unknown = [name for name in given if name not in names]
    if not unknown:
        return
    close = difflib.get_close_matches(unknown[0], names, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    listed = ", ".join(repr(n) for n in unknown)
    raise ConfigError(f"unknown context field{'s' if len(unknown) > 1 else ''} {listed}{hint}")


def context_from(values: Mapping[str, Any]) -> Context:
    """A :class:`Context` from plain values (Studio's JSON, a dict): unknown names and wrong values are
    one-line errors."""
    return Context(**values)


def as_context(value: Any) -> Context:
    """The run's :class:`Context` from what LangGraph hands a node or tool (a dict from Studio, a graph's
    own context schema, or None)."""
    if value is None:
        return Context()
    if isinstance(value, Context):
        return value
    if isinstance(value, dict):
        return context_from(value)
    if is_dataclass(value) and not isinstance(value, type):
        return context_from({f.name: getattr(value, f.name) for f in fields(value)})
    raise ConfigError(f"unsupported context type {type(value).__name__}")


def setting_fields(cls: type[Any] = Context) -> dict[str, Any]:
    """The pydantic field info of every setting of ``cls`` (type, default, bounds, description)."""
    return dict(cls.__pydantic_fields__)
