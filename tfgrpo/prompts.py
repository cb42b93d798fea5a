"""Every prompt tfgrpo sends, in one place: what ``tfgrpo prompts`` prints and ``--prompts DIR`` replaces.

    from tfgrpo.prompts import default_prompts, rendered_prompts, validate_prompts

    validate_prompts("my_prompts")              # one-line ConfigError on a bad file, before any call
    for p in rendered_prompts(Context(prompts="my_prompts", domain="math")):
        print(p.name, p.text)

The texts live beside their nodes (policy, summarize, extract, update_library, retry_lesson, reward);
each prompt is declared once in :data:`tfgrpo.nodes._prompts.PROMPTS` (name, role, kind, where its
default lives, its placeholders). A rendered prompt is
what the model receives: system prompts filled in from the settings (K, the word cap, the answer format,
the domain's tool hint, E), user templates with the per-call values left as ``{question}``-style placeholders.
"""

from __future__ import annotations

import importlib
import string
from dataclasses import dataclass
from pathlib import Path

from tfgrpo.context import Context
from tfgrpo.errors import ConfigError
from tfgrpo.nodes import extract, policy
from tfgrpo.nodes._prompts import PROMPTS, PromptKind, PromptRole, PromptSpec, prompt_text, validate_prompts
from tfgrpo.nodes.consolidation_budget import capacity_text
from tfgrpo.state.library import (
    Library,
    empty_library,
    render_library,
    render_library_for_review,
)

__all__ = ["RenderedPrompt", "default_prompts", "rendered_prompts", "validate_prompts", "write_prompts"]


def default_text(spec: PromptSpec) -> str:
    """The built-in template of ``spec``, read where it lives (``spec.default``: ``"module:ATTRIBUTE"``)."""
    module, attribute = spec.default.split(":")
    text = getattr(importlib.import_module(module), attribute)
    if not isinstance(text, str):
        raise TypeError(f"{spec.name}: {spec.default} is not a text")
    return text


def default_prompts() -> dict[str, str]:
    """name -> the built-in template (the text a ``NAME.txt`` override replaces)."""
    return {name: default_text(spec) for name, spec in PROMPTS.items()}


@dataclass(frozen=True)
class RenderedPrompt:
    name: str
    role: PromptRole
    kind: PromptKind
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
        "capacity": capacity_text(lib, ctx.max_library_items, ctx.max_library_tokens),
    }
    out = [
        RenderedPrompt(
            "policy_system",
            PROMPTS["policy_system"].role,
            PROMPTS["policy_system"].kind,
            policy.policy_system_prompt(ctx, experiences, with_tools=with_tools),
        )
    ]
    for name, spec in PROMPTS.items():
        if name == "policy_system":
            continue
        text = _fill(prompt_text(ctx.prompts, name, default_text(spec)), fixed)
        out.append(RenderedPrompt(name, spec.role, spec.kind, text))
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
