"""The user's guide runs as written: the cheap commands of README.md and docs/*.md (``--help``, ``demo``,
``prompts``) exit 0, every relative link and every repository path they name exists, README.md stays a
guide (<= 350 lines), and docs/ARCHITECTURE.md names every room of the package."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "RESULTS.md"]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE = re.compile(r"(?<!`)`([^`]+)`(?!`)")  # a code span may wrap a line
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def commands(page: Path, *, inline: bool = True) -> list[str]:
    """Every ``tfgrpo ...`` command of a page: lines of shell blocks (continuations joined, comments
    and ``VAR=...`` prefixes dropped) and, with ``inline``, code spans that start with ``tfgrpo``."""
    text = page.read_text(encoding="utf-8")
    found: list[str] = []
    for lang, body in FENCE.findall(text):
        if lang not in ("bash", "sh", ""):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                if not re.match(r"\s*([A-Z_]+=\S+\s+)*tfgrpo\b", part):
                    continue  # another program, or a program's output
                words = shlex.split(part, comments=True)
                while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
                    words.pop(0)
                if words[:1] == ["tfgrpo"]:
                    found.append(shlex.join(words))
    if inline:
        for span in INLINE.findall(FENCE.sub("", text)):
            span = " ".join(span.split())
            if span.startswith("tfgrpo ") and "..." not in span and "|" not in span:
                found.append(span)
    return found


def cheap(command: str) -> bool:
    """Needs no network, no model and no earlier run, and ends in seconds."""
    words = shlex.split(command)
    if "--help" in words or "-h" in words:
        return True
    if words[1] == "prompts":
        return "--library" not in words
    return words[1] == "demo" and "--model" not in words and "--base-url" not in words


CHEAP = sorted({c for page in PAGES for c in commands(page) if cheap(c)})


def test_the_guide_has_cheap_commands_to_run() -> None:
    assert any(c.startswith("tfgrpo demo") for c in CHEAP), CHEAP
    assert any(c.startswith("tfgrpo prompts") for c in CHEAP), CHEAP


@pytest.mark.parametrize("command", CHEAP)
def test_cheap_command_runs_as_written(command: str, tmp_path: Path) -> None:
    # a fresh directory (demo writes runs/, prompts --write a directory) that sees the repository's files
    for entry in ("tfgrpo", "configs", "examples", "benchmarks", "tests"):
        (tmp_path / entry).symlink_to(ROOT / entry)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and k != "TFGRPO_MODEL"}
    env.update(PYTHONPATH=str(ROOT), LANGSMITH_TRACING="false")
    argv = [sys.executable, "-m", "tfgrpo.cli", *shlex.split(command)[1:]]
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{command}: exit {done.returncode}\n{done.stderr[-2000:]}"


SHOWN = sorted({c for page in PAGES for c in commands(page, inline=False) if "..." not in c})
MENTIONED = sorted({c for page in PAGES for c in commands(page)})


@pytest.mark.parametrize("command", SHOWN)
def test_every_command_shown_parses(command: str) -> None:
    """Every ``tfgrpo`` command of a shell block (also those that need a key or a server) parses: argparse
    exits 2 on an unknown subcommand or option, a missing required one, or a bad value."""
    from tfgrpo.cli import build_parser

    try:
        build_parser().parse_args(shlex.split(command)[1:])
    except SystemExit as stop:
        assert stop.code == 0, f"{command}: argparse refused it"


def test_every_option_mentioned_exists() -> None:
    """Commands quoted in the text (`tfgrpo eval --grammar`) name subcommands and options that exist."""
    from tfgrpo.cli import build_parser

    wrong = []
    for command in MENTIONED:
        parser, words = build_parser(), shlex.split(command)[1:]
        # down the subcommands (`library show`) to the parser that takes the options
        while words and (subs := [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]):
            if words[0] not in subs[0].choices:
                break
            parser, words = subs[0].choices[words[0]], words[1:]
        if words and not words[0].startswith("-") and parser.prog == "tfgrpo":
            wrong.append(f"{command}: no subcommand {words[0]!r}")
        known = parser._option_string_actions
        wrong += [f"{command}: {w}" for w in words if w.startswith("-") and w.split("=")[0] not in known]
    assert not wrong, wrong


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", page.read_text(encoding="utf-8")).splitlines():
        match = re.match(r"#{1,6} (.+)", line)
        if match:
            base = slug(match.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_a_file_and_anchor(page: Path) -> None:
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading '#{anchor}' in {dest.name}")
    assert not broken, "\n".join(broken)


REPO_PATH = re.compile(r"^(?:tfgrpo|tests|benchmarks|examples|configs|\.ci)/[\w./-]*$")
MODULE_PATH = re.compile(r"^[a-z_]+/[a-z_]+\.py$")  # a module inside the package: `models/cache.py`


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_repository_path_named_exists(page: Path) -> None:
    """A path in code quotes (`tfgrpo/models/cache.py`) exists: modules move, and the docs must follow."""
    text = page.read_text(encoding="utf-8")
    named = {span for span in INLINE.findall(text) if REPO_PATH.match(span) or MODULE_PATH.match(span)}
    missing = sorted(
        p
        for p in named
        if not (ROOT / p.rstrip("/")).exists()
        and not (MODULE_PATH.match(p) and (ROOT / "tfgrpo" / p).exists())
    )
    assert not missing, f"{page.name} names paths that do not exist: {missing}"


def test_readme_is_a_guide_not_a_notebook() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= 350, f"README.md has {lines} lines; long explanations go to docs/, figures to benchmarks/"


def test_every_doc_page_says_what_the_reader_can_do() -> None:
    for page in [*sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "RESULTS.md"]:
        first = [ln for ln in page.read_text(encoding="utf-8").splitlines()[1:] if ln.strip()][0]
        assert first.startswith("After reading this page you"), f"{page.name}: {first}"


def test_architecture_names_every_room() -> None:
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    package = ROOT / "tfgrpo"
    rooms = sorted(d.name for d in package.iterdir() if d.is_dir() and any(d.glob("*.py")))
    assert rooms, "no subpackages found"
    missing = [r for r in rooms if f"tfgrpo/{r}/" not in text]
    assert not missing, f"docs/ARCHITECTURE.md does not name: {missing}"
    roots = sorted(p.stem for p in package.glob("*.py") if p.stem != "__init__")
    unnamed = [m for m in roots if f"{m}.py" not in text]
    assert not unnamed, f"docs/ARCHITECTURE.md does not name the root modules: {unnamed}"


FILE_SUFFIXES = {
    ".py",
    ".md",
    ".json",
    ".jsonl",
    ".toml",
    ".txt",
    ".png",
    ".sqlite",
    ".gbnf",
    ".parquet",
    ".arrow",
    ".csv",
}
DOTTED = re.compile(r"^(?:tfgrpo\.)?([a-z_]+)\.([A-Za-z_][\w.]*)$")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_dotted_name_resolves(page: Path) -> None:
    """`runs.rundir.check_resume` or `tfgrpo.testing.scripted`: the module exists and holds the name."""
    import importlib

    rooms = {p.stem for p in (ROOT / "tfgrpo").iterdir() if p.suffix == ".py" or p.is_dir()}
    wrong = []
    for span in set(INLINE.findall(page.read_text(encoding="utf-8"))):
        match = DOTTED.match(span)
        if not match or match.group(1) not in rooms or Path(span).suffix in FILE_SUFFIXES:
            continue
        parts = ["tfgrpo", match.group(1), *match.group(2).split(".")]
        for cut in range(len(parts), 0, -1):  # the longest importable prefix, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            try:
                for attr in parts[cut:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                wrong.append(span)
            break
        else:
            wrong.append(span)
    assert not wrong, f"{page.name}: names that do not resolve: {sorted(wrong)}"
