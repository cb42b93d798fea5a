"""Every prompt tfgrpo sends, in one place: what ``tfgrpo prompts`` prints and ``--prompts DIR`` replaces.

    from tfgrpo.prompts import default_prompts, rendered_prompts, validate_prompts

    validate_prompts("my_prompts")              # one-line ConfigError on a bad file, before any call
    for p in rendered_prompts(Context(prompts="my_prompts", domain="math")):
        print(p.name, p.text)

The texts live beside their nodes (policy, summarize, extract, update_library, retry_lesson, reward);
the names and the placeholders each may use are in :mod:`tfgrpo.nodes._prompts`. A rendered prompt is
what the model receives: system prompts filled in from the settings (K, the word cap, the answer format,
the domain's tool hint, E), user templates with the per-call values left as ``{question}``-style placeholders.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

from tfgrpo.context import Context
from tfgrpo.errors import ConfigError
from tfgrpo.nodes import extract, policy, retry_lesson, reward, summarize, update_library
from tfgrpo.nodes._prompts import PROMPT_ROLES, prompt_text, validate_prompts
from tfgrpo.state.library import (
    INJECTION_HEADER,
    Library,
    empty_library,
    render_library,
    render_library_for_review,
)

__all__ = ["RenderedPrompt", "default_prompts", "rendered_prompts", "validate_prompts", "write_prompts"]


def default_prompts() -> dict[str, str]:
    """name -> the built-in template (the text a ``NAME.txt`` override replaces)."""
    return {
        "policy_system": policy.BASE_PROMPT,
        "experience_header": INJECTION_HEADER,
        "summarize_system": summarize.SYSTEM_PROMPT,
        "summarize_user": summarize.USER_TEMPLATE,
        "extract_system": extract.SYSTEM_PROMPT,
        "extract_user": extract.USER_TEMPLATE,
        "update_system": update_library.SYSTEM_PROMPT,
        "update_user": update_library.USER_TEMPLATE,
        "retry_system": retry_lesson.SYSTEM_PROMPT,
        "retry_user": retry_lesson.USER_TEMPLATE,
        "judge_system": reward.JUDGE_SYSTEM,
        "judge_user": reward.JUDGE_USER,
    }


@dataclass(frozen=True)
class RenderedPrompt:
    name: str
    role: str  # policy | summarize | extract | update | retry | judge
    kind: str  # system | user
    text: str


def _fill(template: str, values: dict[str, str]) -> str:
    """Fill the placeholders in ``values``; leave the others as ``{name}`` (format specs dropped)."""
    out = []
    for literal, field, _, _ in string.Formatter().parse(template):
        out.append(literal)
        if field is not None:
            out.append(values.get(field, "{" + field + "}"))
    return "".join(out)


def rendered_prompts(ctx: Context, library: Library | None = None) -> list[RenderedPrompt]:
    """Every prompt as the model receives it under ``ctx`` (its ``prompts`` overrides applied), with E =
    ``library`` (default: empty, as at the first step)."""
    validate_prompts(ctx.prompts)
    lib = library or empty_library()
    experiences = render_library(lib)
    with_tools = bool(policy.DOMAIN_TOOLS.get(ctx.domain))
    review = render_library_for_review(lib)
    fixed = {
        "k": str(ctx.experiences_per_group),
        "word_cap": str(extract.WORD_CAP),
        "library": review,
        "capacity": update_library.capacity_text(lib, ctx.max_library_items, ctx.max_library_tokens),
    }
    out = [
        RenderedPrompt(
            "policy_system",
            "policy",
            "system",
            policy.policy_system_prompt(ctx, experiences, with_tools=with_tools),
        )
    ]
    for name, default in default_prompts().items():
        if name == "policy_system":
            continue
        text = _fill(prompt_text(ctx.prompts, name, default), fixed)
        # E's header goes into the policy's system message, after the policy prompt, whenever E has items
        kind = "system" if name.endswith("_system") or name == "experience_header" else "user"
        out.append(RenderedPrompt(name, PROMPT_ROLES[name], kind, text))
    return out


def format_listing(prompts: list[RenderedPrompt]) -> str:
    """The listing ``tfgrpo prompts`` prints: one ``=== name (role, kind message) ===`` header each."""
    blocks = [f"=== {p.name} ({p.role}, {p.kind} message) ===\n{p.text}\n" for p in prompts]
    return "\n".join(blocks)


def write_prompts(folder: str | Path) -> list[Path]:
    """Write every default template to ``folder/NAME.txt`` (never overwrites): a start for ``--prompts``."""
    path = Path(folder)
    files = {path / f"{name}.txt": text for name, text in default_prompts().items()}
    existing = [file for file in files if file.exists()]
    if existing:
        raise ConfigError(f"{existing[0]}: already exists (remove it or write to another directory)")
    path.mkdir(parents=True, exist_ok=True)
    for file, text in files.items():
        file.write_text(text + "\n", encoding="utf-8")
    return list(files)
