"""Runtime settings of a learning run, passed as LangGraph ``context`` (not checkpointed).

Everything here is a plain value so LangGraph Studio can render and edit it. Models are named by spec
(``openai:NAME``) and built lazily by :mod:`tfgrpo.models.spec`; importing this module needs no API key.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

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
        metadata={"description": "math | exact_match | f1 | module:function returning a float in [0,1]."},
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
    python_timeout: float = 10.0
    tool_max_chars: int = 2000
    unsafe_python: bool = field(
        default=False,
        metadata={"description": "Run the Python tool without its OS sandbox (bubblewrap): unsafe."},
    )
    # The paper's hyper-parameters
    epochs: int = 3
    batch_size: int = 8
    group_size: int = field(default=5, metadata={"description": "G rollouts per query."})
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
    learner_temperature: float = 0.3
    judge_temperature: float = 0.0
    max_tokens: int = field(default=1024, metadata={"description": "Cap on tokens per policy completion."})
    top_p: float | None = field(
        default=None, metadata={"description": "Nucleus sampling of the policy (None: the server's default)."}
    )
    learner_max_tokens: int = field(
        default=4096,
        metadata={"description": "Cap on tokens per summarize / extract / update completion."},
    )
    judge_max_tokens: int = field(default=64, metadata={"description": "Cap on tokens per judge verdict."})
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
    request_timeout: float = 120.0
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

    def settings_fingerprint(self) -> str:
        """Hash of the run-defining settings, stored in state to refuse an inconsistent resume."""
        data = {k: asdict(self)[k] for k in RUN_DEFINING}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def run_defining(self) -> dict[str, object]:
        return {k: asdict(self)[k] for k in RUN_DEFINING}


def as_context(value: Any) -> Context:
    """The run's :class:`Context` from what LangGraph hands a node or tool (a dict from Studio, or None)."""
    if value is None:
        return Context()
    if isinstance(value, dict):
        return Context(**value)
    if isinstance(value, Context):
        return value
    raise ConfigError(f"unsupported context type {type(value).__name__}")
