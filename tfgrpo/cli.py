"""``tfgrpo`` command line: learn (resumable), demo, eval, infer, prompts, and library show/diff."""

from __future__ import annotations

import argparse
import difflib
import json
import os
import signal
import sqlite3
import sys
import tempfile
import time
from dataclasses import asdict, fields
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal, cast, get_args, get_origin

from tfgrpo.checks import check_command_options
from tfgrpo.context import (
    GROUPS,
    Context,
    EvalContext,
    InferenceContext,
    LearnContext,
    option,
    setting_fields,
)
from tfgrpo.errors import ProviderError, RunFailed, RunInterrupted, TfgrpoError
from tfgrpo.models.ledger import BudgetStopped
from tfgrpo.runs.backends import database_url

if TYPE_CHECKING:
    from collections.abc import Callable

    from tfgrpo.models.ledger import Ledger
    from tfgrpo.state.library import Library

# The embedded default model's main job: learn on one reasoning-gym set, evaluate on another of the same
# kind (items are seeded seed + index: a far-away seed gives other questions; seed=2 would repeat 7 of 8).
EMBEDDED_TRAIN = "rg:basic_arithmetic:size=8:seed=1:max_terms=3:max_digits=2"
EMBEDDED_HELDOUT = "rg:basic_arithmetic:size=50:seed=1000:max_terms=3:max_digits=2"
# ... and, when no dataset is given either, a terse policy prompt (one calculation per line, with a worked
# example: without one the 0.5B model writes ~130 tokens of prose per answer, ~35 with it) and a matching
# cap, so that learning plus 400 held-out runs fit in 15 minutes on 2 cores. `--prompts` / `--max-tokens`
# override them.
MAIN_JOB_PROMPTS = str(Path(__file__).resolve().parent / "main_job_prompts")
MAIN_JOB_MAX_TOKENS = 96
# ... and a grammar holding its answers to that format (calculation lines, then \boxed{number}, then the
# end): ~140 of 400 held-out answers wrote prose into the 96-token cap instead, ~70 % of all tokens.
# `--grammar ''` drops it.
MAIN_JOB_GRAMMAR = str(Path(MAIN_JOB_PROMPTS) / "answer.gbnf")
# ... and the shape of its lessons, which llama.cpp turns into the grammar of the learner's lesson text:
# "When <situation>, <what to do>." in lower-case words and operators, no digits (so no numbers of one
# problem), at most ~190 characters (within the 35-word cap), or empty (NONE). Without it the 0.5B learner
# wrote calculations ("Step-by-step calculation: 2 + (-8) = -6") and the lesson gate left E empty.
# `--lesson-pattern ''` drops it.
# ... and no NONE in its extract schema: with the pattern alone the 0.5B learner answered NONE for every
# kept group (8 of 8 in two runs, one other ADD a copy of the prompt's example); each kept group has a right
# and a wrong attempt, and the lesson gate and the update step judge what it proposes. `--extract-ops ''`.
MAIN_JOB_EXTRACT_OPS = "ADD,UPDATE"
# Word by word, single spaces: with a character class that allowed spaces the 0.5B learner padded its
# lesson with runs of spaces ("When subtracting      , ..."). At most 35 words: "When", 3-14 words of
# situation (no commas), then 3-20 of rule (commas, semicolons allowed), ending with a full stop.
_WORD, _RULE_WORD = r"[a-z()'+*/=-]+", r"[a-z()'+*/=-]+[,;:]?"
MAIN_JOB_LESSON_PATTERN = rf"^(When {_WORD}( {_WORD}){{2,13}}, {_RULE_WORD}( {_RULE_WORD}){{2,19}}[.])?$"

# Sizes used when not given: the paper's shape for a configured model, something that finishes in minutes
# on a CPU for the embedded 135M model, and a small run for the scripted demo.
PRESETS: dict[str, dict[str, Any]] = {
    "model": {
        "dataset": "rg:basic_arithmetic:size=20:seed=1",
        "epochs": 3,
        "batch_size": 8,
        "group_size": 5,
        "max_tokens": 1024,
        "learner_max_tokens": 4096,
    },
    "embedded": {
        "dataset": EMBEDDED_TRAIN,
        "epochs": 1,
        "batch_size": 4,
        "group_size": 4,
        "max_tokens": 160,
        # extract / update need room for an analysis and their JSON, a summary for its diagnosis: with 256 a
        # summary lost its diagnosis and a consolidation chunk held one proposal (issue 27)
        "learner_max_tokens": 1024,
    },
    "demo": {
        "dataset": "rg:basic_arithmetic:size=20:seed=1",
        "epochs": 2,
        "batch_size": 4,
        "group_size": 4,
        "max_tokens": 1024,
        "learner_max_tokens": 4096,
    },
}
# The held-out evaluation `tfgrpo learn` runs after learning (E against the baseline, paired): by default
# only when no model is given, where it makes the README's main job show whether learning helped.
HELDOUT_K = 4


def apply_main_job_defaults(args: argparse.Namespace) -> bool:
    """``tfgrpo learn`` with no model, agent or dataset is the README's main job: its prompt, token cap and
    answer grammar unless ``--prompts`` / ``--max-tokens`` / ``--grammar`` are given. True when it is the
    main job."""
    if args.model or getattr(args, "agent", "") or args.dataset is not None:
        return False
    args.prompts = args.prompts or MAIN_JOB_PROMPTS
    args.max_tokens = MAIN_JOB_MAX_TOKENS if args.max_tokens is None else args.max_tokens
    if getattr(args, "grammar", None) is None:
        args.grammar = MAIN_JOB_GRAMMAR
    if getattr(args, "lesson_pattern", None) is None:
        args.lesson_pattern = MAIN_JOB_LESSON_PATTERN
    if getattr(args, "extract_ops", None) is None:
        args.extract_ops = MAIN_JOB_EXTRACT_OPS
    # its prompt, grammar and README figures are built on boxed answers checked by math-verify
    args.reward = args.reward or "math"
    return True


def read_grammar(path: str | None) -> str:
    """The GBNF text of ``--grammar FILE`` ("" for none), or one line naming the file."""
    if not path:
        return ""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TfgrpoError(f"{path}: cannot read the --grammar file ({exc})") from None
    if "root" not in text:
        raise TfgrpoError(f"{path}: not a GBNF grammar (no 'root' rule)")
    return text


def embedded_note(model: str, doing: str = "learning") -> str:
    from tfgrpo.models.local_server import embedded_model

    title = embedded_model(model.partition(":")[2]).title
    caveat = (
        "A 135M model demonstrates the pipeline; it does not learn much."
        if "135M" in title
        else "A small model on a CPU: expect modest, noisy gains."
    )
    return (
        f"{doing} with the embedded {title}, served offline by llama.cpp on 127.0.0.1 and\n"
        f"reached through langchain-openai like any hosted model. {caveat}\n"
        "Pass --model openai:NAME (and --base-url) for a real run."
    )


# Domain presets: the tools come with the domain, and so does the default reward.
DOMAIN_REWARDS = {"direct": "math", "math": "math", "search": "judge"}

DEMO_NOTE = (
    "demo: no model given, so this run talks over real HTTP (langchain-openai) to tfgrpo's scripted\n"
    "fake OpenAI-compatible server on 127.0.0.1. It exercises every step of Training-Free GRPO; it does\n"
    "not learn (its answers are right or off by one at random). Use --model/--base-url for a real model."
)


# -- the options that set a run's settings: generated from tfgrpo.context's fields -----------------------

# The settings each command takes: the fields of the graph it runs (Studio shows the same ones).
COMMAND_CONTEXTS: dict[str, type[Any]] = {
    "learn": LearnContext,
    "demo": LearnContext,
    "eval": EvalContext,
    "attribute": EvalContext,
    "infer": InferenceContext,
}
# ... less those that are no option of it: the demo brings its own models; Studio's other ways to name E
NOT_OPTIONS = {
    "demo": {"model", "learner_model", "judge_model", "base_url", "agent"},
    "eval": {"library_run", "library_namespace"},
    "attribute": {"library_run", "library_namespace"},
    "infer": {"library_run", "library_namespace"},
}
# Defaults that differ on the command line: None is "not given", filled in by a preset (PRESETS), the
# main job, the dataset (an rg: dataset's own reward) or the domain; infer answers greedily.
_UNSET = dict.fromkeys(("dataset", "reward", "answer_grammar", "prices", "max_tokens"))
_LEARN_UNSET = dict.fromkeys(("epochs", "batch_size", "group_size", "learner_max_tokens", "lesson_pattern"))
CLI_DEFAULTS: dict[str, dict[str, Any]] = {
    "learn": {**_UNSET, **_LEARN_UNSET, "extract_ops": None},
    "eval": _UNSET,
    "infer": {"answer_grammar": None, "prices": None, "temperature": 0.0},
}
CLI_DEFAULTS["demo"] = CLI_DEFAULTS["learn"]
CLI_DEFAULTS["attribute"] = CLI_DEFAULTS["eval"]
DATASET_HELP = (
    "JSONL/JSON/CSV/Parquet file ('FILE[A:B]' for rows A..B-1), hf:NAME[:CONFIG][:SPLIT], langsmith:NAME "
    "or rg:NAME[:key=value...] (docs/datasets.md)"
)
# Help where the command line says more than the field's description (a file instead of its text, the
# default a preset or the main job gives).
CLI_HELP = {
    "dataset": DATASET_HELP,
    "model": "openai:NAME or provider:NAME (default: $TFGRPO_MODEL, else the embedded model)",
    "reward": "math | exact_match | f1 | rg | judge | majority (no ground truth) | module:function (default: "
    "rg, the task's own scorer, for an rg: dataset; else the domain's: math, or judge for search)",
    "epochs": "passes over the training set (default 3; 1 on the embedded model)",
    "batch_size": "queries per step, B (default 8; 4 on the embedded model)",
    "group_size": "G rollouts per query, at least 2 (default 5; 4 on the embedded model)",
    "max_tokens": "cap per policy completion (default 1024; 160 on the embedded model, 96 in the main job)",
    "learner_max_tokens": "cap per summarize / extract / update completion (default 4096; 1024 on the "
    "embedded model)",
    "answer_grammar": "GBNF file constraining the policy's answers when no tool is offered (llama.cpp "
    "servers only); '' = none (default: none; the main job's tfgrpo/main_job_prompts/answer.gbnf)",
    "lesson_pattern": "regular expression (^...$) every lesson must match, also sent in the learner's "
    "schemas (grammar-constrained servers write that shape); must accept ''; '' = none (default: none; "
    "the main job's: 'When <situation>, <action>.' without digits)",
    "extract_ops": "operations the extract schema offers, comma-separated (e.g. ADD,UPDATE); '' = all "
    "(default: all; the main job's: ADD,UPDATE)",
    "prices": 'JSON {"MODEL": {"input": USD/1M, "output": USD/1M}}, inline or a file (default: built-in list '
    "prices)",
    "unsafe_python": "--domain math without bubblewrap: run model-written code with in-process limits only "
    "(unsafe)",
}
COMMAND_HELP = {
    ("eval", "dataset"): DATASET_HELP + " (required)",
    ("attribute", "dataset"): DATASET_HELP + " (required)",
    ("eval", "library"): "library.json, a run directory, or a run id in --db (omit: baseline only)",
    ("attribute", "library"): "library.json, a run directory, or a run id in --db (required)",
    ("infer", "library"): "library.json, a run directory, or a run id in --db (default: no E)",
    ("infer", "reward"): "answer format: math (boxed) or other (Answer:)",
}
METAVARS = {"lesson_pattern": "REGEX", "extract_ops": "OPS", "answer_grammar": "FILE"}


def option_of(name: str) -> str:
    """The option that sets setting ``name`` (``--group-size``; ``--grammar`` for ``answer_grammar``)."""
    return option(name)


def _dest(name: str) -> str:
    return option(name).removeprefix("--").replace("-", "_")


def option_settings(command: str) -> list[str]:
    """The settings ``tfgrpo COMMAND`` takes as options."""
    skip = NOT_OPTIONS.get(command, set())
    return [f.name for f in fields(COMMAND_CONTEXTS[command]) if f.name not in skip]


class _HelpFormatter(argparse.HelpFormatter):
    """Help that names a given default (not an unset None, a False flag or an empty string)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default not in (None, False, "", argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def add_settings(p: argparse.ArgumentParser, command: str) -> None:
    """One option per setting of ``command``'s graph, in the groups of tfgrpo.context, each with its type,
    choices, default and help from the field's declaration."""
    names = set(option_settings(command))
    declared = setting_fields(COMMAND_CONTEXTS[command])
    defaults = CLI_DEFAULTS.get(command, {})
    for group in GROUPS:
        own = [name for name in group.__annotations__ if name in names]
        if not own:
            continue
        section = p.add_argument_group((group.__doc__ or group.__name__).splitlines()[0].rstrip("."))
        for name in own:
            info = declared[name]
            hint = info.annotation
            text = COMMAND_HELP.get((command, name)) or CLI_HELP.get(name) or info.description or ""
            kwargs: dict[str, Any] = {
                "dest": _dest(name),
                "help": text.replace("%", "%%"),
                "default": defaults.get(name, info.get_default(call_default_factory=True)),
            }
            if hint is bool:
                kwargs["action"] = "store_true"
            elif get_origin(hint) is Literal:  # checked by Context, so the line is the one Studio shows
                kwargs["metavar"] = "{" + ",".join(get_args(hint)) + "}"
            else:
                kinds = [k for k in get_args(hint) if k is not type(None)] or [hint]
                if kinds[0] in (int, float):
                    kwargs["type"] = kinds[0]
                if name in METAVARS:
                    kwargs["metavar"] = METAVARS[name]
            section.add_argument(option(name), **kwargs)


def settings_from_args(args: argparse.Namespace, **override: Any) -> dict[str, Any]:
    """The settings of ``args.command`` as its options give them; a None (not given) is left out, so the
    field's default applies, and what the command line holds in another form becomes the field's value
    (``--grammar FILE``: the grammar's text)."""
    values = {name: getattr(args, _dest(name)) for name in option_settings(args.command)}
    if "answer_grammar" in values:
        values["answer_grammar"] = read_grammar(values["answer_grammar"])
    values = {name: value for name, value in values.items() if value is not None}
    values.update(override)
    return values


def _add_run_args(p: argparse.ArgumentParser) -> None:
    """Options of a learn or eval command that are not settings of the run."""
    p.add_argument("--seed", type=int, default=0, help="shuffle and sampling seed")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (tables only)")
    _add_config_arg(p)


def _add_config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="JSON or TOML file of option values (flags override)")


def _add_db_args(p: argparse.ArgumentParser, *, run_id: bool) -> None:
    """``--db`` (and ``--run-id``): where checkpoints and the store live (see tfgrpo.runs.backends)."""
    p.add_argument(
        "--db",
        default=None,
        help="a SQLite file or postgresql://USER@HOST/DB shared by several runs (default: "
        "$TFGRPO_DATABASE_URL, else SQLite files in the run directory)",
    )
    if run_id:
        p.add_argument(
            "--run-id", default=None, help="the run's name in a shared --db (default: the directory's name)"
        )


def _add_field_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--question-field",
        default=None,
        metavar="PATH",
        help="the dataset's field holding the question (nested: inputs.question; default: question, or "
        "LangSmith's inputs.question / inputs.input)",
    )
    p.add_argument(
        "--answer-field",
        default=None,
        metavar="PATH",
        help="the dataset's field holding the reference answer (default: answer, or outputs.answer / "
        "outputs.output)",
    )


def map_fields(args: argparse.Namespace, spec: str) -> str:
    """``spec`` with ``--question-field`` / ``--answer-field`` (tfgrpo.data.with_fields)."""
    from tfgrpo.data import with_fields

    if not spec or not (getattr(args, "question_field", None) or getattr(args, "answer_field", None)):
        return spec
    return with_fields(spec, args.question_field, args.answer_field)


def _add_track_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--track",
        default=None,
        metavar="mlflow[:URI]",
        help="log settings, per-step metrics, E after every step, evaluation metrics and plots to MLflow "
        "(URI: sqlite:///FILE, http://HOST:PORT, ...; default: MLflow's; pip install 'tfgrpo[tracking]')",
    )
    p.add_argument(
        "--track-traces",
        action="store_true",
        help="with --track: also record every model call as MLflow traces (mlflow.langchain.autolog)",
    )


def check_python_sandbox(args: argparse.Namespace) -> None:
    """``--domain math`` runs model-written code: no OS sandbox, no run (``--unsafe-python``: a warning)."""
    if getattr(args, "domain", None) != "math":
        return
    if getattr(args, "unsafe_python", False):
        print(
            "tfgrpo: warning: --unsafe-python: model-written Python runs WITHOUT the OS sandbox, with your "
            "user's rights over files, processes and network (only time/memory limits and Python guards)",
            file=sys.stderr,
            flush=True,
        )
        return
    from tfgrpo.tools.python_exec import sandbox_problem

    problem = sandbox_problem()
    if problem is not None:
        raise TfgrpoError(
            f"--domain math runs model-written Python in a sandbox, but {problem}; "
            "or pass --unsafe-python to run it without one"
        )


def _add_learn_args(p: argparse.ArgumentParser, *, demo: bool) -> None:
    p.add_argument(
        "--run-dir",
        default=None,
        help="where checkpoints, E and reports go (default: runs/RUN_ID with --run-id, else "
        f"runs/{'demo' if demo else 'learn'})",
    )
    if not demo:
        p.add_argument(
            "--heldout",
            default=None,
            help="after learning, evaluate E against the baseline on this held-out set (paired; results in "
            "RUN_DIR/heldout); '' = none (default: none; with no model given, the main job's held-out set)",
        )
        p.add_argument("--heldout-k", type=int, default=None, help="runs per held-out question and arm (4)")
    p.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep every checkpoint (time travel) instead of only those needed to resume",
    )
    _add_run_args(p)
    _add_db_args(p, run_id=True)
    _add_track_arg(p)
    _add_field_args(p)
    add_settings(p, "demo" if demo else "learn")


def _add_eval_args(p: argparse.ArgumentParser, *, attribute: bool = False) -> None:
    if not attribute:
        p.add_argument("--baseline", action="store_true", help="also run the same model without E, paired")
    p.add_argument("--k", type=int, default=4, help="runs per question and arm (the paper: 32)")
    p.add_argument(
        "--eval-dir",
        default=None,
        help="where checkpoints, results and reports go (default: runs/eval-RUN_ID with --run-id, else "
        "runs/eval)",
    )
    p.add_argument(
        "--retry-failed", action="store_true", help="run the failed runs of a finished evaluation again"
    )
    p.add_argument(
        "--exclude-failed",
        action="store_true",
        help="leave failed runs (API error after retries) out of Mean@k / Pass@k instead of scoring them 0",
    )
    _add_run_args(p)
    _add_db_args(p, run_id=True)
    _add_track_arg(p)
    _add_field_args(p)
    add_settings(p, "attribute" if attribute else "eval")


def _subparser(sub: Any, name: str, text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=text, formatter_class=_HelpFormatter)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfgrpo", description="Training-Free GRPO with LangGraph")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_learn_args(_subparser(sub, "learn", "learn an experience library (resumable)"), demo=False)
    _add_learn_args(
        _subparser(sub, "demo", "learn against the built-in scripted server (offline)"), demo=True
    )
    inf = _subparser(sub, "infer", "answer a question with the agent and a learned library")
    inf.add_argument("--question", required=True, help="the question to answer")
    inf.add_argument("--trajectory", action="store_true", help="print every message and tool call")
    _add_config_arg(inf)
    _add_db_args(inf, run_id=False)
    add_settings(inf, "infer")

    _add_eval_args(_subparser(sub, "eval", "Mean@k / Pass@k with and without E (resumable)"))
    _add_eval_args(
        _subparser(sub, "attribute", "leave-one-out contribution of each experience (resumable)"),
        attribute=True,
    )
    d = Context()
    pr = sub.add_parser("prompts", help="print every prompt as the model receives it (or --write them)")
    pr.add_argument("--prompts", default="", help="directory of NAME.txt overrides to apply (validated)")
    pr.add_argument(
        "--write", default=None, metavar="DIR", help="write the default templates to DIR/NAME.txt"
    )
    declared = setting_fields()
    pr.add_argument(
        "--domain", default=d.domain, choices=sorted(DOMAIN_REWARDS), help=declared["domain"].description
    )
    pr.add_argument("--reward", default=None, help="answer format of the policy prompt (as for learn)")
    pr.add_argument(
        "--dataset", default=None, help="as for learn: an rg: dataset's own scorer sets the answer format"
    )
    pr.add_argument("--library", default="", help="show E from this library.json or run directory")
    pr.add_argument("--experiences-per-group", type=int, default=d.experiences_per_group, help="K")
    for name in ("max_library_items", "max_library_tokens"):
        pr.add_argument(option(name), type=int, default=getattr(d, name), help=declared[name].description)
    pr.add_argument("--config", default=None, help="JSON or TOML file of option values (flags override)")

    rep = sub.add_parser("report", help="rebuild the reports and plots of a run or eval directory")
    rep.add_argument("dir", help="a learning run directory or an eval directory")
    rep.add_argument("--out", default=None, help="write the reports here instead (e.g. DIR is read-only)")

    runs = sub.add_parser("runs", help="the runs of a shared database (--db): list them, remove one")
    runs_sub = runs.add_subparsers(dest="runs_command", required=True)
    listing = runs_sub.add_parser("list", help="runs, steps, |E|, cost and last update")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    _add_db_args(listing, run_id=False)
    rm = runs_sub.add_parser("rm", help="delete a run's checkpoints and store items")
    rm.add_argument("run_id", help="the run's id (see tfgrpo runs list)")
    rm.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    _add_db_args(rm, run_id=False)

    lib = sub.add_parser("library", help="inspect a run's experience library")
    lib_sub = lib.add_subparsers(dest="library_command", required=True)
    for name, text in (("show", "print the library"), ("diff", "print the change made by a step")):
        p = lib_sub.add_parser(name, help=text)
        p.add_argument("run_dir", help="a run directory, or a run id with --db")
        p.add_argument("--step", type=int, default=None, help="step number (default: the latest)")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        _add_db_args(p, run_id=False)
    return parser


def reward_of(args: argparse.Namespace, *datasets: str) -> str:
    """``--reward``, else the task's own scorer for reasoning_gym datasets, else the domain's."""
    from tfgrpo.evals.rewards import default_reward

    # an unknown domain is refused by Context, in the line Studio and the Python API give
    return args.reward or default_reward(DOMAIN_REWARDS.get(args.domain, "math"), *datasets)


def context_from_args(args: argparse.Namespace, *, preset: str, **override: Any) -> Context:
    """``learn`` / ``demo``'s settings: the options given, the preset's sizes for those not given."""
    values = settings_from_args(args, **override)
    for name, value in PRESETS[preset].items():
        values.setdefault(name, value)
    values["reward"] = reward_of(args, values["dataset"], values.get("validation", ""))
    for name in ("dataset", "validation"):  # the field mapping goes with the spec, into the graph
        values[name] = map_fields(args, values.get(name, ""))
    return Context(**values)


def ledger_from_args(args: argparse.Namespace, ctx: Context) -> Ledger:
    """The run's ledger, from its settings (budgets, prices, retries, concurrency)."""
    from tfgrpo.models.ledger import ledger_from_context

    return ledger_from_context(ctx)


def check_agent(ctx: Context) -> None:
    """Load ``--agent`` now: a one-line error before anything is paid for."""
    if ctx.agent:
        from tfgrpo.integrations.user_agent import prepare_agent

        prepare_agent(ctx.agent)


def cmd_learn(args: argparse.Namespace, ctx: Context) -> int:
    from tfgrpo.learner import run_learning

    check_agent(ctx)
    run_learning(
        ctx,
        run_dir=Path(args.run_dir),
        seed=args.seed,
        progress=not args.no_progress,
        keep_checkpoints=args.keep_checkpoints,
        ledger=ledger_from_args(args, ctx),
        db=database_url(args.db),
        run_id=args.run_id or "",
        track=args.track or "",
        track_traces=args.track_traces,
    )
    return 0


def resolve_model(model: str) -> str:
    from tfgrpo.models.spec import resolve_spec

    return resolve_spec(model)


def require_learner(args: argparse.Namespace) -> None:
    """``learn --agent`` learns with a model the agent does not name: refused in one line before the run
    header, as the Python API refuses ``learn(agent=...)`` without ``learner=``."""
    if args.agent and not args.model and not args.learner_model:
        raise TfgrpoError(
            "learn --agent needs the model that learns from its runs: name --model or --learner-model "
            "(the agent brings its own model)"
        )


def is_embedded(model: str) -> bool:
    """No model given (the embedded default) or ``local:NAME``: CPU-sized presets apply."""
    return resolve_model(model).startswith("local:")


def cmd_heldout(args: argparse.Namespace, ctx: Context, *, default: str) -> int:
    """After learning: E against the same model without it on a held-out set, paired (``tfgrpo eval
    --baseline``), so one command shows whether learning helped."""
    from dataclasses import replace

    from tfgrpo.evaluator import run_eval

    dataset = map_fields(args, args.heldout) if args.heldout is not None else default
    if not dataset:
        return 0
    k = HELDOUT_K if args.heldout_k is None else args.heldout_k  # 0 is refused, never replaced
    run_dir = Path(args.run_dir)
    eval_ctx = replace(
        ctx, dataset=dataset, reward=reward_of(args, dataset), library=str(run_dir), validation=""
    )
    print(
        f"\nheld-out evaluation: E against the baseline (same model without E), paired, k={k}, on {dataset}"
    )
    started = time.monotonic()
    try:
        run_eval(
            eval_ctx,
            eval_dir=run_dir / "heldout",
            k=k,
            seed=args.seed,
            baseline=True,
            progress=not args.no_progress,
            ledger=ledger_from_args(args, eval_ctx),
            track=args.track or "",
            track_traces=args.track_traces,
        )
    finally:
        print(f"held-out evaluation: {time.monotonic() - started:.0f} s", flush=True)
    if default:  # the embedded main job (no --model): its last line
        print(main_job_closing(run_dir / "heldout" / "report.json"), flush=True)
    return 0


LEARNING_EFFECT_DOC = "docs/learning-effect.md"


def main_job_closing(report_path: Path) -> str:
    """The main job's last line: whether this run showed an effect, said plainly, and where the study of
    where lessons help at this scale is (issue 19: nothing may suggest an effect that was not measured)."""
    try:
        comparison = json.loads(report_path.read_text()).get("comparison") or {}
    except (OSError, ValueError):
        comparison = {}
    doc = f"where lessons help at this scale: {LEARNING_EFFECT_DOC} in the tfgrpo repository"
    if not comparison or "error" in comparison or not comparison.get("reliable", True):
        return f"This run measured no effect of learning (no usable comparison); {doc}."
    if comparison.get("spans_zero", True):
        return f"This run showed no effect of learning: the interval of the difference spans zero; {doc}."
    if comparison["diff"] > 0:
        return (
            f"This run's library did better than the baseline beyond the 95% interval "
            f"({comparison['diff']:+.3f}); one run is not a confirmed effect: {doc}."
        )
    return f"This run's library did worse than the baseline beyond the 95% interval; {doc}."


def agent_context(args: argparse.Namespace, **settings: Any) -> Context:
    """The settings of ``eval`` / ``attribute`` / ``infer``: the options given, plus ``settings``."""
    return Context(**settings_from_args(args, **settings))


def cmd_eval(args: argparse.Namespace) -> int:
    from tfgrpo.evaluator import run_eval

    if not args.dataset:
        raise TfgrpoError("--dataset is required (on the command line or as 'dataset' in --config)")
    db = database_url(args.db)
    if db and args.library and not Path(args.library).exists():  # a learn run's id in the database
        args.library = str(fetch_published_library(db, args.library, Path(args.eval_dir)))
    embedded = is_embedded(args.model) and not args.agent
    if embedded:
        print(embedded_note(resolve_model(args.model), "evaluating"), flush=True)
    preset = PRESETS["embedded" if embedded else "model"]["max_tokens"]
    max_tokens = preset if args.max_tokens is None else args.max_tokens  # 0 is refused, never replaced
    ctx = agent_context(
        args,
        dataset=map_fields(args, args.dataset),
        reward=reward_of(args, args.dataset),
        max_tokens=max_tokens,
    )
    check_agent(ctx)
    run_eval(
        ctx,
        eval_dir=Path(args.eval_dir),
        k=args.k,
        seed=args.seed,
        baseline=getattr(args, "baseline", False),
        progress=not args.no_progress,
        ledger=ledger_from_args(args, ctx),
        retry_failed=args.retry_failed,
        exclude_failed=args.exclude_failed,
        attribute=args.command == "attribute",
        db=db,
        run_id=args.run_id or "",
        track=args.track or "",
        track_traces=args.track_traces,
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from tfgrpo.evals.report import rebuild_eval_report, verdict, write_learning_curve
    from tfgrpo.learner import stored_history, stored_paid
    from tfgrpo.runs.rundir import ReadOnlyRun, RunDir, read_only_message, writable

    path = Path(args.dir)
    out = Path(args.out) if args.out else path
    if args.out:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TfgrpoError(f"--out {out}: cannot create it ({exc.strerror or exc})") from None
    if out.is_dir() and not writable(out):
        raise ReadOnlyRun(read_only_message(out, "the reports cannot be written there"))
    if (path / "eval.json").exists():
        if not (path / "results.json").exists():
            raise TfgrpoError(f"{path}: the evaluation has not finished (no results.json); run it again")
        report = rebuild_eval_report(path, out)
        if "comparison" in report:
            print(verdict(report["comparison"]))
        print(f"wrote {out / 'report.md'}, {out / 'report.json'} and the plot")
        return 0
    run = RunDir(path)
    run.require()
    steps = stored_history(run)  # the steps a killed run finished, too
    if not steps:
        try:
            steps = json.loads((path / "report.json").read_text(encoding="utf-8"))["steps"]
        except (OSError, ValueError, KeyError) as exc:
            raise TfgrpoError(f"{path / 'report.json'}: cannot read the run report ({exc})") from None
    RunDir(out).write_outputs({"library": run.library_at(None)}, steps, stored_paid(run))
    write_learning_curve(out, steps)
    print(f"wrote {out / 'report.md'}, {out / 'report.json'}, {out / 'learning_curve.png'}")
    return 0


def cmd_prompts(args: argparse.Namespace) -> int:
    from tfgrpo.api import load_library
    from tfgrpo.prompts import format_listing, rendered_prompts, write_prompts

    if args.write:
        files = write_prompts(args.write)
        print(
            f"wrote {len(files)} prompt templates to {args.write}; edit them and pass --prompts {args.write}"
        )
        return 0
    ctx = Context(
        domain=args.domain,
        reward=reward_of(args, args.dataset or PRESETS["model"]["dataset"]),
        experiences_per_group=args.experiences_per_group,
        max_library_items=args.max_library_items,
        max_library_tokens=args.max_library_tokens,
        prompts=args.prompts,
    )
    library = load_library(args.library) if args.library else None
    print(format_listing(rendered_prompts(ctx, library)), end="")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from tfgrpo.testing.fake_openai import FakeOpenAIServer
    from tfgrpo.testing.responders import grpo_responder

    print(DEMO_NOTE, flush=True)
    with FakeOpenAIServer(grpo_responder) as server:
        ctx = context_from_args(args, preset="demo", model="openai:tfgrpo-scripted", base_url=server.base_url)
        return cmd_learn(args, ctx)


def cmd_infer(args: argparse.Namespace) -> int:
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    from tfgrpo.checks import check_context
    from tfgrpo.graphs.inference import build_inference_graph
    from tfgrpo.models.ledger import use_ledger

    db = database_url(args.db)
    if db and args.library and not Path(args.library).exists():  # a learn run's id in the database
        into = Path(tempfile.gettempdir()) / "tfgrpo-published" / args.library
        args.library = str(fetch_published_library(db, args.library, into))
    ctx = agent_context(args)
    check_context(ctx)
    if args.library:
        from tfgrpo.models.spec import resolve_spec
        from tfgrpo.runs.library_ref import other_model_note

        note = other_model_note(args.library, resolve_spec(ctx.model))
        if note:
            print(f"tfgrpo: note: {note}", file=sys.stderr)
    graph = build_inference_graph()
    with use_ledger(ledger_from_args(args, ctx)):  # --max-retries, --budget-usd, ... as for learn
        out = graph.invoke(
            {"messages": [HumanMessage(args.question)]},
            {"recursion_limit": 4 * ctx.max_model_calls + 8},
            context=ctx,
        )
    if args.trajectory:
        for msg in out["messages"]:
            if isinstance(msg, AIMessage) and msg.tool_calls:
                for call in msg.tool_calls:
                    print(f"-> {call['name']}({json.dumps(call['args'], ensure_ascii=False)})")
            elif isinstance(msg, ToolMessage):
                print(f"<- {msg.name}: {str(msg.content)[:500]}")
            elif isinstance(msg, AIMessage):
                print(f"assistant: {msg.content}")
    answer = str(out.get("answer") or "").strip()
    if not answer:  # never an empty "answer: " line
        print("no answer: the model's final reply was empty, also when asked again without tools")
        return 1
    print(f"answer: {answer}")
    return 0


def cmd_library(args: argparse.Namespace) -> int:
    from tfgrpo.runs.rundir import RunDir

    db = database_url(args.db)
    if db and not (Path(args.run_dir) / "library.json").exists():  # a run id in the database
        return _library_from_db(args, db)
    run = RunDir(args.run_dir)
    return _show_or_diff(args, run.steps, run.library_at)


def _show_or_diff(
    args: argparse.Namespace, steps: Callable[[], list[int]], library_at: Callable[[int | None], Library]
) -> int:
    """``tfgrpo library show|diff`` over one source of E per step (a run dir, or a database)."""
    from tfgrpo.state.library import diff_libraries, empty_library, library_markdown

    if args.library_command == "show":
        library = library_at(args.step)
        print(json.dumps(library, indent=2, ensure_ascii=False) if args.json else library_markdown(library))
        return 0
    finished = steps()
    step = args.step if args.step is not None else (finished[-1] if finished else None)
    if step is None:
        print("no step has finished yet")
        return 0
    before = [s for s in finished if s < step]
    lines = diff_libraries(library_at(before[-1]) if before else empty_library(), library_at(step))
    if args.json:
        print(json.dumps({"step": step, "changes": lines}, indent=2, ensure_ascii=False))
    else:
        print(f"step {step}: {sum(1 for x in lines if x[0] in '+-~')} change(s)")
        print("\n".join(lines) if lines else "(no change)")
    return 0


def fetch_published_library(db: str, run_id: str, into: Path) -> Path:
    """Write the latest E that run ``run_id`` published in ``db`` to ``into/library.json``."""
    from tfgrpo.runs.library_ref import fetch_published_library as fetch

    return fetch(db, run_id, into)


def _library_from_db(args: argparse.Namespace, db: str) -> int:
    """``tfgrpo library show|diff RUN_ID --db URL``: E as the run published it after each step."""
    from tfgrpo.runs.backends import open_backend
    from tfgrpo.state.published import LATEST, library_namespace, published_library, published_steps

    run_id = args.run_dir
    with open_backend(db, local_dir=Path(run_id), run_id=run_id) as backend:  # db given: no local files

        def library_at(step: int | None) -> Library:
            library = published_library(backend.store, run_id, step)
            latest = backend.store.get(library_namespace(run_id), LATEST) if step is None else None
            found = latest.value.get("provenance") if latest and isinstance(latest.value, dict) else None
            # the latest E as the run's library.json has it: with who made it
            return cast("Library", {**library, "provenance": found}) if isinstance(found, dict) else library

        return _show_or_diff(args, lambda: published_steps(backend.store, run_id), library_at)


def cmd_runs(args: argparse.Namespace) -> int:
    """``tfgrpo runs list`` / ``tfgrpo runs rm RUN_ID`` on ``--db`` (or ``$TFGRPO_DATABASE_URL``)."""
    from tfgrpo.runs.backends import list_runs, open_backend, redacted, remove_run
    from tfgrpo.runs.rundir import delete_run_outputs, run_outputs

    db = database_url(args.db)
    if not db:
        raise TfgrpoError(
            f"tfgrpo runs {args.runs_command} needs --db (a SQLite file or postgresql:// URL) or "
            "$TFGRPO_DATABASE_URL; a run directory without --db is one run: delete the directory"
        )
    if not is_postgres_url(db) and not Path(db.removeprefix("sqlite:///")).is_file():
        raise TfgrpoError(f"--db {db}: no such database file")
    with open_backend(db, local_dir=Path("."), run_id=getattr(args, "run_id", "runs")) as backend:
        runs = list_runs(backend)
        if args.runs_command == "list":
            print_runs(runs, json_out=args.json, where=redacted(db))
            return 0
        found = {r["run_id"]: r for r in runs}
        if args.run_id not in found:
            known = ", ".join(sorted(found)[:10]) or "none"
            raise TfgrpoError(f"no run {args.run_id!r} in {redacted(db)} (runs: {known})")
        r = found[args.run_id]
        if not args.yes:
            if not sys.stdin.isatty():
                raise TfgrpoError(
                    f"tfgrpo runs rm {args.run_id}: pass --yes to delete it (no terminal to ask)"
                )
            answer = input(
                f"delete run {args.run_id!r} ({r['kind']}, {r['steps']} steps, ${r['cost_usd']:.4f})? [y/N] "
            )
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing deleted")
                return 1
        with backend.lock():  # refused while a process runs it
            outputs = run_outputs(backend.store, args.run_id, db)
            removed = remove_run(backend, args.run_id)
    deleted_files = delete_run_outputs(outputs)
    print(
        f"deleted run {args.run_id!r}: {removed.threads} checkpoint thread(s), {removed.items} store "
        f"item(s) ({removed.cached_responses} cached response(s): the same command pays again)"
        + (f"; {deleted_files} output file(s) in {outputs.directory}" if outputs and deleted_files else "")
    )
    return 0


def print_runs(runs: list[dict[str, Any]], *, json_out: bool, where: str) -> None:
    """``tfgrpo runs list``: one row per run or evaluation (a closed pipe ends it quietly: see main)."""
    if json_out:
        print(json.dumps(runs, indent=2))
        return
    if not runs:
        print(f"no runs in {where}")
        return
    print(
        f"{'run':<24} {'kind':<8} {'status':<8} {'steps':>5} {'|E|':>4} {'calls':>6} {'tokens':>9} "
        f"{'cached':>9} {'usd':>9}  updated (UTC)"
    )
    for r in runs:
        size = "-" if r["library_size"] is None else r["library_size"]
        print(
            f"{r['run_id']:<24} {r['kind']:<8} {r['status']:<8} {r['steps']:>5} {size:>4} {r['calls']:>6} "
            f"{r['tokens']:>9} {r['cached_tokens']:>9} {r['cost_usd']:>9.4f}  {r['updated']}"
        )


def is_postgres_url(url: str) -> bool:
    from tfgrpo.runs.backends import is_postgres

    return is_postgres(url)


def load_config_file(path: str) -> dict[str, Any]:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
        if file.suffix == ".toml":
            import tomllib

            data: Any = tomllib.loads(text)
        else:
            data = json.loads(text)
    except (OSError, ValueError) as exc:
        raise TfgrpoError(f"{path}: cannot read config ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise TfgrpoError(f"{path}: expected a table of option values")
    return data


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line; values from ``--config FILE`` become defaults that flags override."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "config", None):
        return default_dirs(args)
    values = load_config_file(args.config)
    sub_action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub = sub_action.choices[args.command]
    known = {a.dest for a in sub._actions} - {"help", "config"}
    defaults = {}
    for key, value in values.items():
        dest = key.replace("-", "_")
        if dest not in known:
            close = difflib.get_close_matches(dest, sorted(known), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0].replace('_', '-')!r}?)" if close else ""
            raise TfgrpoError(f"{args.config}: unknown setting {key!r} for 'tfgrpo {args.command}'{hint}")
        defaults[dest] = value
    sub.set_defaults(**defaults)
    return default_dirs(parser.parse_args(argv))


def default_dirs(args: argparse.Namespace) -> argparse.Namespace:
    """No ``--run-dir`` / ``--eval-dir``: each run id gets a directory of its own (``runs/RUN_ID``,
    ``runs/eval-RUN_ID``), so that a second run id from the same folder is not refused over the first's
    outputs; without ``--run-id``, ``runs/learn`` (``runs/demo``) and ``runs/eval``."""
    run_id = getattr(args, "run_id", None)
    if hasattr(args, "run_dir") and args.run_dir is None:
        args.run_dir = f"runs/{run_id}" if run_id else f"runs/{'demo' if args.command == 'demo' else 'learn'}"
    if hasattr(args, "eval_dir") and args.eval_dir is None:
        args.eval_dir = f"runs/eval-{run_id}" if run_id else "runs/eval"
    return args


def main(argv: list[str] | None = None) -> int:
    # A second Ctrl-C during a drain must still stop the process.
    signal.signal(signal.SIGINT, _default_sigint)
    try:
        args = parse_args(argv)
        check_command_options(args)
        check_python_sandbox(args)
        if args.command == "learn":
            require_learner(args)
            preset = "embedded" if is_embedded(args.model) else "model"
            apply_main_job_defaults(args)
            if preset == "embedded" and not args.agent:
                print(embedded_note(resolve_model(args.model)), flush=True)
            ctx = context_from_args(args, preset=preset)
            cmd_learn(args, ctx)
            default_heldout = EMBEDDED_HELDOUT if not args.model and not args.agent else ""
            return cmd_heldout(args, ctx, default=default_heldout)
        if args.command == "demo":
            return cmd_demo(args)
        if args.command == "infer":
            return cmd_infer(args)
        if args.command in ("eval", "attribute"):
            return cmd_eval(args)
        if args.command == "report":
            return cmd_report(args)
        if args.command == "prompts":
            return cmd_prompts(args)
        if args.command == "runs":
            return cmd_runs(args)
        return cmd_library(args)
    except BrokenPipeError:
        # the reader stopped early (``tfgrpo runs list | head -1``): no traceback now, nor at exit when
        # Python flushes stdout; 141 like a tool the shell's SIGPIPE ended
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except BudgetStopped as exc:  # resumable: finished work is saved
        print(f"tfgrpo: stopped: {exc.cause}", file=sys.stderr)
        print(f"spent so far: {exc.spent_tokens} tokens, ${exc.spent_usd:.4f}", file=sys.stderr)
        return 3
    except RunInterrupted as exc:  # Ctrl-C drained the run: its line says how to resume
        print(exc, file=sys.stderr)
        return 130
    except TfgrpoError as exc:
        print(f"tfgrpo: error: {exc}", file=sys.stderr)
        # a run where nothing worked or a provider's error: 1, as below; a bad setting or input: 2
        return 1 if isinstance(exc, ProviderError | RunFailed) else 2
    except sqlite3.DatabaseError as exc:  # e.g. a disk that filled up in the middle of a run
        print(f"tfgrpo: error: the run's database failed ({exc}); finished work is kept, "
              "run the same command again once the cause is fixed", file=sys.stderr)  # fmt: skip
        return 2
    except Exception as exc:
        from tfgrpo.models.ledger import explain

        sentence = explain(exc)  # a provider error (unreachable server, 401, 404, ...) as a sentence
        if sentence is None:
            raise
        print(f"tfgrpo: error: {sentence}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ntfgrpo: interrupted", file=sys.stderr)
        return 130


def _default_sigint(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def settings_for_display(ctx: Context) -> dict[str, Any]:
    return {k: v for k, v in asdict(ctx).items() if "key" not in k.lower()}


if __name__ == "__main__":
    sys.exit(main())
