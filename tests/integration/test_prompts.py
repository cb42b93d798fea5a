"""``tfgrpo prompts`` and ``--prompts DIR`` as a user runs them: real subprocesses, real HTTP to the fake
server. The printed prompts are the ones the server receives; a bad override fails before any call."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, cli_env
from tfgrpo.api import experienced_agent
from tfgrpo.cli import parse_args
from tfgrpo.context import Context
from tfgrpo.errors import ConfigError
from tfgrpo.graphs.learn import compile_learn_graph
from tfgrpo.nodes._prompts import PROMPTS, check_template
from tfgrpo.prompts import default_prompts
from tfgrpo.testing.fake_openai import FakeOpenAIServer, message_text

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
HEADER = re.compile(r"^=== (\w+) \((\w+), (system|user) message\) ===$", re.MULTILINE)


def tfgrpo(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "tfgrpo.cli", *args], env=cli_env(), capture_output=True, text=True, timeout=timeout
    )


def sections(listing: str) -> dict[str, tuple[str, str]]:
    """name -> (kind, text) from the output of ``tfgrpo prompts``."""
    parts = HEADER.split(listing)
    out = {}
    for i in range(1, len(parts), 4):
        name, _, kind, text = parts[i : i + 4]
        out[name] = (kind, text.removeprefix("\n").removesuffix("\n\n").removesuffix("\n"))
    return out


def as_pattern(template: str) -> re.Pattern[str]:
    """A printed user template as a regex: each ``{placeholder}`` stands for any text."""
    pieces = re.split(r"\{\w+\}", template)
    return re.compile("(?s)" + ".*".join(re.escape(p) for p in pieces))


def received(server: FakeOpenAIServer, kind: str) -> list[str]:
    return [
        message_text(m.get("content"))
        for body in server.requests
        for m in body["messages"]
        if m["role"] == kind
    ]


def learn(server: FakeOpenAIServer, run_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return tfgrpo(
        "learn", "--dataset", "rg:basic_arithmetic:size=4:seed=3", "--model", "openai:fake",
        "--base-url", server.base_url, "--run-dir", str(run_dir), "--epochs", "1", "--batch-size", "2",
        "--group-size", "4", "--no-progress", *extra,
    )  # fmt: skip


def test_prompts_listing_is_what_the_server_receives(fake_server: FakeOpenAIServer, tmp_path: Path) -> None:
    # the fake learner's lessons do not start with "When": each goes back once (the retry prompts)
    # --whole-attempt-tokens 0: the fake's one-line replies are summarized too, so every prompt is sent
    out = learn(
        fake_server, tmp_path / "run", "--reward", "judge", "--lesson-pattern", "^(When .*)?$",
        "--whole-attempt-tokens", "0",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    listing = tfgrpo("prompts", "--reward", "judge")
    assert listing.returncode == 0, listing.stderr
    shown = sections(listing.stdout)
    # what the learner sees of an attempt (issue 27): the reward's reason, the answer read, how it ended
    assert "THAT THE WORSE DID NOT" in shown["extract_system"][1]
    assert "Every lesson is checked before it is stored, and rejected when it:" in shown["extract_system"][1]
    assert "wrong form or unit, no answer line, ran out of length" in shown["summarize_system"][1]
    for line in ("The reward's reason: {reward_reason}", "How the attempt ended: {ending}"):
        assert line in shown["summarize_user"][1]
    assert list(shown) == list(PROMPTS)  # policy, summarize, extract, update, retry, judge
    caps = {}
    for body in fake_server.requests:
        role = next(
            n for n, (k, t) in shown.items() if k == "system" and t in str(body["messages"][0]["content"])
        )
        caps.setdefault(role.removesuffix("_system"), set()).add(body["max_completion_tokens"])
    # the command's defaults: each role its own cap (learner 4096, judge 64, policy --max-tokens 1024)
    assert caps == {
        "policy": {1024},
        "summarize": {4096},
        "extract": {4096},
        "update": {4096},
        "retry": {4096},
        "judge": {64},
    }
    systems, users = set(received(fake_server, "system")), received(fake_server, "user")
    for name, (kind, text) in shown.items():
        if name == "experience_header":  # E's header, in the policy's system message from step 2 on
            assert any(re.search(re.escape(text) + r"\n\[G1\] ", s) for s in systems), name
        elif kind == "system":
            assert text in systems, name
        else:
            pattern = as_pattern(text)
            assert any(pattern.fullmatch(u) for u in users), name


def test_overridden_prompts_are_listed_and_sent(fake_server: FakeOpenAIServer, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts"
    written = tfgrpo("prompts", "--write", str(prompts))
    assert written.returncode == 0, written.stderr
    assert sorted(p.stem for p in prompts.iterdir()) == sorted(PROMPTS)
    # a user edits three of them and deletes the rest (the defaults stay)
    for p in prompts.iterdir():
        if p.stem not in ("summarize_system", "policy_system", "experience_header"):
            p.unlink()
    (prompts / "experience_header.txt").write_text("Lessons from earlier problems (use the relevant ones):\n")
    (prompts / "summarize_system.txt").write_text(
        "SUMMARIZE this attempt in three lines, and say why it failed.\n"
    )
    (prompts / "policy_system.txt").write_text("Solve it; put the final answer {answer_format}. Be brief.\n")
    out = learn(fake_server, tmp_path / "run", "--prompts", str(prompts), "--whole-attempt-tokens", "0")
    assert out.returncode == 0, out.stderr
    systems = set(received(fake_server, "system"))
    assert "SUMMARIZE this attempt in three lines, and say why it failed." in systems
    # an rg: dataset is scored by its task's own scorer, which asks for an 'Answer:' line, not a boxed one
    sent = "Solve it; put the final answer on a last line of the form 'Answer: <answer>'. Be brief."
    assert sent in systems
    # E in the second step's policy prompts, under the header from the directory, never the default
    with_e = [s for s in systems if "[G1] " in s]
    assert with_e and all(
        s.startswith(sent + "\n\nLessons from earlier problems (use the relevant ones):\n[G1] ")
        for s in with_e
    )
    assert not any("Experiences learned from earlier problems" in s for s in systems)
    listing = sections(tfgrpo("prompts", "--prompts", str(prompts)).stdout)
    assert listing["summarize_system"][1] in systems and listing["policy_system"][1] in systems
    assert listing["experience_header"] == (
        "system",
        "Lessons from earlier problems (use the relevant ones):",
    )
    again = tfgrpo("prompts", "--write", str(prompts))
    assert again.returncode == 2 and "already exists" in again.stderr


@pytest.mark.parametrize(
    ("file", "text", "message"),
    [
        (
            "extract_user.txt",
            "Problem {question}, attempts {attempts}, secret {foo}",
            "unknown placeholder {foo}",
        ),
        ("extract_sytem.txt", "Compare the attempts.", "unknown prompt name 'extract_sytem'"),
        ("judge_user.txt", "Grade {question} against {answer: }", "not a valid template"),
        ("update_system.txt", "Keep the library {tidy.", "not a valid template"),
    ],
    ids=["unknown-placeholder", "unknown-name", "bad-spec", "broken-brace"],
)
def test_a_bad_prompts_file_fails_before_any_call(
    fake_server: FakeOpenAIServer, tmp_path: Path, file: str, text: str, message: str
) -> None:
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / file).write_text(text)
    for command in (
        ["learn", "--dataset", "rg:basic_arithmetic:size=4:seed=3", "--run-dir", str(tmp_path / "run")],
        ["eval", "--dataset", "rg:basic_arithmetic:size=4:seed=3", "--eval-dir", str(tmp_path / "eval")],
        ["infer", "--question", "Calculate 2 + 3."],
        ["prompts"],
    ):
        args = [*command, "--prompts", str(prompts)]
        if command[0] != "prompts":
            args += ["--model", "openai:fake", "--base-url", fake_server.base_url]
        out = tfgrpo(*args)
        assert out.returncode == 2, (command, out.stdout, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tfgrpo: error: "), out.stderr
        assert message in lines[0] and file in lines[0]
    assert fake_server.requests == []


def test_the_python_api_validates_prompts_before_any_call(
    fake_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "summarize_user.txt").write_text("{question} {response}")  # {response} is the judge's
    with pytest.raises(ConfigError, match=r"summarize_user.txt: unknown placeholder \{response\}"):
        experienced_agent(model="openai:fake", base_url=fake_server.base_url, prompts=str(prompts))
    ctx = Context(model="openai:fake", base_url=fake_server.base_url, prompts=str(prompts))
    with pytest.raises(ConfigError, match="unknown placeholder"):
        compile_learn_graph().invoke({"seed": 0}, context=ctx)
    assert fake_server.requests == []


def test_default_templates_are_valid_and_use_their_placeholders() -> None:
    for name, text in default_prompts().items():
        check_template(name, text, name)
    assert "{k}" in default_prompts()["extract_system"] and "{word_cap}" in default_prompts()["update_system"]


def test_paper_configs_follow_the_protocol() -> None:
    def settings(command: str, config: str) -> dict:
        return vars(parse_args([command, "--config", str(REPO / "configs" / config)]))

    for config in ("paper-math-direct.toml", "paper-math-react.toml"):
        s = settings("learn", config)
        assert (s["experiences_per_group"], s["group_size"], s["epochs"], s["temperature"]) == (1, 5, 3, 0.7)
        assert s["learner_max_tokens"] == 4096 and s["max_tokens"] == 8192
    react = settings("learn", "paper-math-react.toml")
    assert (react["domain"], react["max_model_calls"], react["max_tool_calls"]) == ("math", 30, 25)
    for config in ("paper-aime-eval.toml", "paper-aime-eval-react.toml"):
        s = settings("eval", config)
        assert (s["k"], s["temperature"], s["top_p"], s["baseline"]) == (32, 0.3, 0.95, True)
    s = settings("eval", "paper-aime-eval-react.toml")
    assert (s["domain"], s["max_model_calls"], s["max_tool_calls"]) == ("math", 30, 25)
