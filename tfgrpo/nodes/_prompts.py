"""Prompt overrides: any prompt of the policy, the learner or the judge can be replaced from a directory.

``--prompts DIR`` (``Context.prompts``) names a directory of ``NAME.txt`` files, one per prompt to
replace (``tfgrpo prompts --write DIR`` writes the defaults there to start from). The default texts live
beside their nodes; this module declares each prompt once (:data:`PROMPTS`: name, role, kind, where
its default lives, the placeholders it may use), loads the directory and validates it as a whole: an
unknown file name, an unknown placeholder or a broken ``{`` is a one-line error naming the file, raised
before any model call (the CLI and the Python API validate at start; every node reading a prompt goes
through the same check).
"""

from __future__ import annotations

import string
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tfgrpo.bounded import BoundedDict
from tfgrpo.errors import ConfigError

PromptRole = Literal["policy", "summarize", "extract", "update", "retry", "judge"]
PromptKind = Literal["system", "user"]


@dataclass(frozen=True)
class PromptSpec:
    """One prompt a run may send: what ``tfgrpo prompts`` lists and ``--prompts DIR/NAME.txt`` replaces.
    ``default``: where its built-in text lives, ``"module:ATTRIBUTE"`` (beside its node, which this module
    may not import: :func:`tfgrpo.prompts.default_prompts` reads it). ``placeholders``: the ``{name}``
    fields its template may use (write ``{{`` and ``}}`` for literal braces)."""

    name: str
    role: PromptRole
    kind: PromptKind
    default: str
    placeholders: frozenset[str] = frozenset()


# Every prompt, declared once, in the order ``tfgrpo prompts`` lists them
PROMPTS: dict[str, PromptSpec] = {
    spec.name: spec
    for spec in (
        PromptSpec(
            "policy_system",
            "policy",
            "system",
            "tfgrpo.nodes.policy:BASE_PROMPT",
            frozenset({"answer_format"}),
        ),
        # E's header goes into the policy's system message, after the policy prompt, whenever E has items
        PromptSpec("experience_header", "policy", "system", "tfgrpo.state.library:INJECTION_HEADER"),
        PromptSpec("summarize_system", "summarize", "system", "tfgrpo.nodes.summarize:SYSTEM_PROMPT"),
        PromptSpec(
            "summarize_user",
            "summarize",
            "user",
            "tfgrpo.nodes.summarize:USER_TEMPLATE",
            frozenset(
                {
                    "question",
                    "answer",
                    "reward",
                    "reward_reason",
                    "answer_read",
                    "ending",
                    "library",
                    "trajectory",
                }
            ),
        ),
        PromptSpec(
            "extract_system",
            "extract",
            "system",
            "tfgrpo.nodes.extract:SYSTEM_PROMPT",
            frozenset({"k", "word_cap"}),
        ),
        PromptSpec(
            "extract_user",
            "extract",
            "user",
            "tfgrpo.nodes.extract:USER_TEMPLATE",
            frozenset({"question", "answer", "library", "evidence", "attempts"}),
        ),
        PromptSpec(
            "update_system",
            "update",
            "system",
            "tfgrpo.nodes.update_library:SYSTEM_PROMPT",
            frozenset({"word_cap"}),
        ),
        PromptSpec(
            "update_user",
            "update",
            "user",
            "tfgrpo.nodes.update_library:USER_TEMPLATE",
            frozenset({"library", "proposals", "capacity"}),
        ),
        PromptSpec(
            "retry_system",
            "retry",
            "system",
            "tfgrpo.nodes.retry_lesson:SYSTEM_PROMPT",
            frozenset({"word_cap"}),
        ),
        PromptSpec(
            "retry_user",
            "retry",
            "user",
            "tfgrpo.nodes.retry_lesson:USER_TEMPLATE",
            frozenset({"question", "lesson", "reason"}),
        ),
        PromptSpec("judge_system", "judge", "system", "tfgrpo.nodes.reward:JUDGE_SYSTEM"),
        PromptSpec(
            "judge_user",
            "judge",
            "user",
            "tfgrpo.nodes.reward:JUDGE_USER",
            frozenset({"question", "answer", "response"}),
        ),
    )
}

# a directory's overrides by its files' names and times (a new entry only when a file changes)
_cache: BoundedDict[tuple[str, tuple[tuple[str, float], ...]], dict[str, str]] = BoundedDict(32)
_lock = threading.Lock()


def placeholders_of(text: str, where: str) -> set[str]:
    """The ``{name}`` fields of a template; a one-line ConfigError when it is not a valid template."""
    names: set[str] = set()
    try:
        for _, field, _, _ in string.Formatter().parse(text):
            if field is None:
                continue
            if not field.isidentifier():
                raise ConfigError(
                    f"{where}: placeholder {{{field}}} is not a name (write {{{{ and }}}} for literal braces)"
                )
            names.add(field)
    except ValueError as exc:
        raise ConfigError(f"{where}: not a valid template ({exc}; write {{{{ and }}}} for braces)") from None
    return names


# what a trial formatting fills in: the values' types decide which format specs work ({reward:g})
_SAMPLES: dict[str, object] = {"reward": 1.0, "k": 1, "word_cap": 35}


def check_template(name: str, text: str, where: str) -> None:
    allowed = PROMPTS[name].placeholders
    unknown = sorted(placeholders_of(text, where) - allowed)
    if unknown:
        shown = ", ".join("{" + n + "}" for n in sorted(allowed)) or "none"
        raise ConfigError(f"{where}: unknown placeholder {{{unknown[0]}}} (allowed in {name}: {shown})")
    try:
        text.format(**{n: _SAMPLES.get(n, "text") for n in allowed})
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise ConfigError(f"{where}: not a valid template ({exc})") from None


def _signature(folder: Path) -> tuple[tuple[str, float], ...]:
    try:
        return tuple(sorted((p.name, p.stat().st_mtime) for p in folder.iterdir() if p.suffix == ".txt"))
    except OSError as exc:
        raise ConfigError(f"{folder}: cannot read the prompts directory ({exc.strerror})") from None


def load_prompt_dir(path: str) -> dict[str, str]:
    """The overrides in ``path`` (name -> text), validated; cached until a file changes."""
    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError(f"{path}: --prompts must be a directory of NAME.txt files")
    key = (str(folder.resolve()), _signature(folder))
    with _lock:
        if key in _cache:
            return _cache[key]
    overrides: dict[str, str] = {}
    for file_name, _ in key[1]:
        name = file_name[: -len(".txt")]
        where = str(folder / file_name)
        if name not in PROMPTS:
            raise ConfigError(f"{where}: unknown prompt name {name!r} (known: {', '.join(PROMPTS)})")
        try:
            text = (folder / file_name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{where}: cannot read ({exc})") from None
        if not text.strip():
            raise ConfigError(f"{where}: empty prompt")
        check_template(name, text, where)
        overrides[name] = text.rstrip("\n")
    with _lock:
        _cache[key] = overrides
    return overrides


def validate_prompts(path: str) -> None:
    """Call at start: a bad prompts directory fails before anything is paid for."""
    if path:
        load_prompt_dir(path)


def prompt_text(prompts_dir: str, name: str, default: str) -> str:
    """Prompt ``name``: the override in ``prompts_dir`` when there is one, else ``default``."""
    if name not in PROMPTS:
        raise KeyError(name)
    if not prompts_dir:
        return default
    return load_prompt_dir(prompts_dir).get(name, default)
