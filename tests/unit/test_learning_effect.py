"""The learning study's runner (benchmarks/learning_effect.py): plan parsing, the control's data and
reward, and the table. No model, no /work/shared: datasets are only named by the plan, never read here."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


le = _load("learning_effect")
rewards = _load("learning_effect_rewards")
PLAN = ROOT / "benchmarks" / "learning_effect_plan.toml"


def test_the_committed_plan_meets_the_issue():
    plan = le.load_plan(PLAN)
    assert len(plan.tasks) >= 6
    assert any(t.control for t in plan.tasks.values()), "a positive control"
    assert any(t.domain == "search" and t.corpus for t in plan.tasks.values()), "a search task with a corpus"
    assert {"0.5b", "1.5b"} <= set(plan.models)
    learners = {c.learner for c in plan.cells if c.arm == "learn"}
    assert {"0.5b", "1.5b"} <= learners
    assert {c.gate for c in plan.cells if c.arm == "learn"} == {True, False}
    # every task has a ceiling cell, and the first cells are ceilings
    assert {c.task for c in plan.cells if c.arm == "ceiling"} == set(plan.tasks)
    assert plan.cells[0].arm == "ceiling"
    # confirmation seeds differ from every dataset the grid uses (exploratory tasks are outside the grid)
    tasks = [t for t in plan.tasks.values() if not t.exploratory]
    grid = {t.data[k] for t in tasks for k in ("train", "heldout", "validation")}
    assert not grid & {t.data[k] for t in tasks for k in ("confirm_train", "confirm_heldout")}


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "plan.toml"
    path.write_text(text, encoding="utf-8")
    return path


_TASK = """
[study]
results = "r.jsonl"
work_dir = "/tmp/x"
[models]
small = "local:m"
[defaults]
k = 2
[tasks.t]
why = "w"
train = "a.jsonl"
heldout = "b.jsonl"
validation = "c.jsonl"
confirm_train = "d.jsonl"
confirm_heldout = "e.jsonl"
domain = "direct"
reward = "math"
max_tokens = 64
lessons = ["L"]
"""


@pytest.mark.parametrize(
    ("cells", "message"),
    [
        (
            '[[cells]]\nid = "c"\ntask = "nope"\narm = "ceiling"\npolicy = "small"\n',
            "cell 'c': unknown task 'nope'",
        ),
        ('[[cells]]\nid = "c"\ntask = "t"\narm = "learn"\npolicy = "small"\n', "needs field 'learner'"),
        ('[[cells]]\nid = "c"\ntask = "t"\narm = "ceiling"\npolicy = "big"\n', "unknown policy model 'big'"),
        ('[[cells]]\nid = "c"\ntask = "t"\narm = "grid"\npolicy = "small"\n', "arm must be one of"),
        (
            '[[cells]]\nid = "c"\ntask = "t"\narm = "ceiling"\npolicy = "small"\n' * 2,
            "cell 'c': duplicate id",
        ),
    ],
)
def test_a_bad_plan_is_one_line_naming_the_cell(tmp_path, cells, message):
    path = _write(tmp_path, _TASK + cells)
    with pytest.raises(le.PlanError) as exc:
        le.load_plan(path)
    assert message in str(exc.value) and str(path) in str(exc.value)
    assert "\n" not in str(exc.value)


def test_a_learn_cell_needs_its_settings(tmp_path):
    cell = '[[cells]]\nid = "c"\ntask = "t"\narm = "learn"\npolicy = "small"\nlearner = "small"\n'
    with pytest.raises(le.PlanError, match="cell 'c': field 'batch_size' is missing"):
        le.load_plan(_write(tmp_path, _TASK + cell))
    with pytest.raises(le.PlanError, match="field 'k' must be a positive integer, not 0"):
        le.load_plan(_write(tmp_path, _TASK + cell.replace('arm = "learn"', 'arm = "ceiling"\nk = 0')))


def test_a_task_without_lessons_is_refused(tmp_path):
    path = _write(tmp_path, _TASK.replace('lessons = ["L"]', "lessons = []"))
    with pytest.raises(le.PlanError, match=r"\[tasks.t\]: field 'lessons'"):
        le.load_plan(path)


IN_MINUTES = "the duration in minutes, not in decimal hours"


def test_the_control_data_is_deterministic_and_answered_in_decimal_hours():
    rows = le.durations(22, 30)
    assert rows == le.durations(22, 30)
    assert rows != le.durations(23, 30)
    for row in rows:
        minutes = int(row["question"].split(" minutes")[0].split()[-1])
        assert float(row["answer"]) == pytest.approx(minutes / 60, abs=1e-9)
        assert minutes % 60, "never whole hours: those need no convention"
        assert rewards.decimal_hours(f"Answer: {row['answer']}", row["answer"])[0] == 1.0
        score, reason = rewards.decimal_hours(f"Answer: {minutes} minutes", row["answer"])
        assert score == 0.0
        assert reason == f"read '{minutes} minutes'; expected '{row['answer']}': {IN_MINUTES}"


@pytest.mark.parametrize(
    ("response", "reward", "why"),
    [
        ("147 / 60 = 2.45\nAnswer: 2.45 hours", 1.0, "the duration in decimal hours"),
        ("Answer: **2.45**.", 1.0, "the duration in decimal hours"),
        ("Answer: 147 minutes", 0.0, IN_MINUTES),
        ("Answer: 2:27", 0.0, "hours:minutes, not decimal hours"),
        ("Answer: 2 hours and 27 minutes", 0.0, "a different number"),
        ("It lasted a while.", 0.0, "no number in the answer"),
    ],
)
def test_decimal_hours_rewards_only_the_convention(response, reward, why):
    score, reason = rewards.decimal_hours(response, "2.45")
    assert score == reward and reason.endswith(f"expected '2.45': {why}")


def test_reasoning_gym_rewards_use_the_tasks_own_scorer():
    pytest.importorskip("reasoning_gym")
    gold = "They, WARRANTY, niggard"
    assert rewards.rg_word_sorting(f"Answer: {gold}", gold)[0] == 1.0
    score, reason = rewards.rg_word_sorting("Answer: niggard, They, WARRANTY", gold)
    assert score == pytest.approx(0.2)  # partial credit
    assert reason == f"read 'niggard, They, WARRANTY'; expected '{gold}': the task's scorer gave 0.2"
    assert rewards.rg_family_relationships("Answer: Mother-in-law", "mother-in-law")[0] == 1.0
    assert rewards.rg_fraction_simplification("Answer: 99/196", "$\\dfrac{99}{196}$")[0] == 1.0


def test_the_table_shows_every_row_failures_included():
    ok = {
        "cell": "t.ceiling.p0.5b",
        "status": "ok",
        "arm": "ceiling",
        "learner": "-",
        "gate": None,
        "baseline": 0.1,
        "library": 0.35,
        "diff": 0.25,
        "ci_low": 0.1,
        "ci_high": 0.4,
        "p": 0.001,
        "library_size": 1,
        "learn_s": 0,
        "eval_s": 321,
        "load_before": "1.00 1.00 1.00",
        "load_after": "2.00 1.50 1.00",
    }
    learned = {
        **ok,
        "cell": "t.learn.p1.5b.l1.5b.gate",
        "arm": "learn",
        "learner": "1.5b",
        "gate": True,
        "proposed": 5,
        "lessons_rejected": {"problem-specific": 2},
        "validation_rollbacks": 1,
    }
    failed = {
        "cell": "t.learn.x",
        "status": "failed",
        "arm": "learn",
        "error": "exit 2: error: boom",
        "learn_s": 3306.8,
        "library_size": 0,
        "proposed": 0,
    }
    skipped = {"cell": "u.learn.x", "status": "skipped", "error": "ceiling u.ceiling.p0.5b not measured"}
    table = le.format_table([ok, learned, failed, skipped]).splitlines()
    assert len(table) == 5
    assert "+0.250 [+0.100 .. +0.400]" in table[1] and "1.00 1.00 1.00 -> 2.00 1.50 1.00" in table[1]
    assert "5/2 (problem-specific 2) rollbacks 1" in table[2] and " on " in table[2]
    assert table[3].startswith("t.learn.x") and "FAILED: exit 2: error: boom" in table[3]
    assert "learned |E| 0, proposed 0, learn 3307 s" in table[3]  # a failed eval keeps what learning gave
    assert "SKIPPED: ceiling u.ceiling.p0.5b not measured" in table[4]


def test_a_learn_cell_is_skipped_when_its_ceiling_is_not_above_zero(tmp_path):
    results = tmp_path / "r.jsonl"
    path = _write(
        tmp_path,
        _TASK.replace('"r.jsonl"', f'"{results}"')
        + '[[cells]]\nid = "t.learn"\ntask = "t"\narm = "learn"\npolicy = "small"\nlearner = "small"\n'
        'requires = "ceiling"\nbatch_size = 2\ngroup_size = 2\nepochs = 1\nexperiences_per_group = 1\n'
        "validation_k = 1\n",
    )
    plan = le.load_plan(path)
    row = le.run_cell(plan, plan.cells[0])
    assert row["status"] == "skipped" and "not measured" in row["error"]
    le.append_result(results, {"cell": "t.ceiling.psmall", "status": "ok", "ci_low": -0.05})
    row = le.run_cell(plan, plan.cells[0])
    assert row["status"] == "skipped" and "-0.050 is not above zero" in row["error"]


def test_a_cell_can_set_its_own_token_cap(tmp_path, monkeypatch):
    cell = '[[cells]]\nid = "c"\ntask = "t"\narm = "ceiling"\npolicy = "small"\n'
    plan = le.load_plan(_write(tmp_path, _TASK + cell.replace('"small"\n', '"small"\nmax_tokens = 128\n', 1)))
    assert le._common(plan, plan.tasks["t"], plan.cells[0], "local:m")[6:8] == ["--max-tokens", "128"]
    plan = le.load_plan(_write(tmp_path, _TASK + cell))
    assert le._common(plan, plan.tasks["t"], plan.cells[0], "local:m")[6:8] == ["--max-tokens", "64"]
    with pytest.raises(le.PlanError, match="cell 'c': field 'max_tokens' must be a positive integer"):
        le.load_plan(_write(tmp_path, _TASK + cell + "max_tokens = 0\n"))


def test_a_learn_row_says_how_many_groups_the_learner_saw(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    steps = [{"groups_kept": 0, "groups_skipped": 8, "operations_proposed": 0}]
    report = {"totals": {"groups_kept": 0, "groups_skipped": 8}, "steps": steps}
    (run / "report.json").write_text(json.dumps(report))
    (run / "library.json").write_text('{"items": []}')
    row = {"cell": "t.learn", "status": "ok", "arm": "learn", "learner": "1.5b", "gate": False}
    row.update(le._learn_summary(run))
    row.update(baseline=0.0, library=0.0, diff=0.0, ci_low=0.0, ci_high=0.0, p=1.0)
    assert "0/0 groups 0/8" in le.format_table([row]).splitlines()[1]


def test_the_second_control_names_the_unit_but_not_the_form(tmp_path):
    rows = le.durations(61, 5, "hours")
    assert all(" How many hours did it " in r["question"] for r in rows)
    assert [r["answer"] for r in rows] == [r["answer"] for r in le.durations(61, 5)]
    path = le.resolve_dataset("gen:durations:seed=61:size=5:ask=hours", tmp_path)
    assert path.endswith("-hours.jsonl") and "How many hours" in Path(path).read_text()
    with pytest.raises(le.PlanError, match="ask must be long or hours, not 'days'"):
        le.resolve_dataset("gen:durations:seed=61:size=5:ask=days", tmp_path)


def test_a_learn_cell_whose_e_is_empty_is_not_evaluated(tmp_path, monkeypatch):
    path = _write(
        tmp_path,
        _TASK.replace('"r.jsonl"', f'"{tmp_path / "r.jsonl"}"').replace('"/tmp/x"', f'"{tmp_path}"')
        + '[[cells]]\nid = "t.learn"\ntask = "t"\narm = "learn"\npolicy = "small"\nlearner = "small"\n'
        "batch_size = 2\ngroup_size = 2\nepochs = 1\nexperiences_per_group = 1\nvalidation_k = 1\n",
    )
    plan = le.load_plan(path)
    commands = []

    def fake_run(cmd, log, timeout):  # `tfgrpo learn` that skipped every group
        commands.append(cmd[3])
        run = Path(cmd[cmd.index("--run-dir") + 1])
        run.mkdir(parents=True)
        report = {"totals": {"groups_kept": 0, "groups_skipped": 2}, "steps": [{"operations_proposed": 0}]}
        (run / "report.json").write_text(json.dumps(report))
        (run / "library.json").write_text('{"items": []}')
        return 1.0, None

    monkeypatch.setattr(le, "_run", fake_run)
    row = le.run_cell(plan, plan.cells[0])
    assert commands == ["learn"]  # no `tfgrpo eval` of an empty E against itself
    assert row["status"] == "empty" and "the learner saw 0 of 2 groups" in row["error"]
    line = le.format_table([row]).splitlines()[1]
    assert "EMPTY: learned E is empty" in line and "learned |E| 0, proposed 0" in line


_EXPLORATORY = """
[tasks.x]
exploratory = true
why = "w"
heldout = "b.jsonl"
domain = "direct"
reward = "math"
max_tokens = 64
lessons = ["L"]
"""


def test_an_exploratory_task_is_fixed_lessons_only_and_never_confirmed(tmp_path, monkeypatch, capsys):
    ceiling = '[[cells]]\nid = "x.c"\ntask = "x"\narm = "ceiling"\npolicy = "small"\n'
    results = tmp_path / "r.jsonl"
    text = _TASK.replace('"r.jsonl"', f'"{results}"').replace('"/tmp/x"', f'"{tmp_path}"') + _EXPLORATORY
    plan = le.load_plan(_write(tmp_path, text + ceiling))  # needs no train/validation/confirmation data
    assert plan.tasks["x"].exploratory and not plan.tasks["t"].exploratory
    learn = ceiling.replace('"ceiling"', '"learn"') + 'learner = "small"\n'
    with pytest.raises(le.PlanError, match="cell 'x.c': task 'x' is exploratory: only the ceiling arm"):
        le.load_plan(_write(tmp_path, text + learn))
    path = _write(tmp_path, text + ceiling)
    assert le.main(["--plan", str(path), "--confirm", "x.c"]) == 2
    assert "cell 'x.c' is exploratory: it has no confirmation seeds" in capsys.readouterr().err
    # its row says so, and so does the table
    monkeypatch.setattr(le, "_run", lambda cmd, log, timeout: (1.0, "exit 1: stop here"))
    row = le.run_cell(plan, plan.cells[0])
    assert row["exploratory"] is True and row["heldout"].endswith("b.jsonl") and row["train"] == ""
    ok = {**row, "status": "ok", "baseline": 0.1, "library": 0.2, "diff": 0.1, "ci_low": -0.1, "ci_high": 0.3}
    assert "x.c (exploratory)" in le.format_table([{**ok, "p": 0.5}]).splitlines()[1]


probe = _load("learning_effect_probe")


def test_the_probe_policy_is_right_in_exactly_one_of_eight_attempts():
    question = "A flight took 147 minutes. How long did it take?"
    body = {"messages": [{"role": "user", "content": question}]}
    replies = [probe.one_in_eight(body) for _ in range(16)]
    scores = [rewards.decimal_hours(reply, "2.45")[0] for reply in replies]
    assert scores.count(1.0) == 2 and scores[0] == scores[8] == 1.0  # one in each group of eight
    wrong = {reply.rsplit("Answer: ", 1)[1] for reply, s in zip(replies, scores, strict=True) if not s}
    assert wrong == {"147 minutes", "2 hours 27 minutes", "2:27"}  # the forms the learner must rule out


def test_a_probe_cell_learns_with_the_scripted_policy_and_evaluates_with_the_real_one(tmp_path, monkeypatch):
    path = _write(
        tmp_path,
        _TASK.replace('"r.jsonl"', f'"{tmp_path / "r.jsonl"}"').replace('"/tmp/x"', f'"{tmp_path}"')
        + '[[cells]]\nid = "t.probe"\ntask = "t"\narm = "probe"\npolicy = "small"\nlearner = "small"\n'
        "batch_size = 2\ngroup_size = 8\nepochs = 1\nexperiences_per_group = 1\nvalidation_k = 1\n"
        "max_group_size = 16\nlearner_max_tokens = 1024\n",
    )
    plan = le.load_plan(path)
    commands: list[list[str]] = []

    def fake_run(cmd, log, timeout):
        commands.append(cmd)
        if cmd[3] == "learn":
            run = Path(cmd[cmd.index("--run-dir") + 1])
            run.mkdir(parents=True)
            (run / "report.json").write_text(json.dumps({"totals": {"groups_kept": 2}, "steps": [{}]}))
            (run / "library.json").write_text('{"items": [{"text": "Answer in decimal hours."}]}')
        else:
            return 1.0, "exit 1: stop here"
        return 1.0, None

    monkeypatch.setattr(le, "_run", fake_run)
    row = le.run_cell(plan, plan.cells[0])
    learn, evaluate = commands
    assert learn[learn.index("--model") + 1].startswith("openai:probe")
    assert learn[learn.index("--base-url") + 1].startswith("http://127.0.0.1:")
    assert learn[learn.index("--max-group-size") + 1] == "16"
    assert learn[learn.index("--learner-max-tokens") + 1] == "1024"
    assert evaluate[evaluate.index("--model") + 1] == "local:m"  # the real policy judges the learned E
    assert row["learner"] == "small" and row["lessons"] == ["Answer in decimal hours."]


def test_a_learn_row_keeps_the_text_of_every_proposed_and_rejected_lesson(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    proposed = [{"op": "ADD", "content": "Answer in decimal hours."}, {"op": "ADD", "content": "Use 2.45."}]
    rejected = [{"operation": proposed[1], "why": "answer leak"}]
    step = {"proposed": proposed, "rewrites": [], "rejected": rejected}
    (run / "report.json").write_text(json.dumps({"totals": {}, "steps": [step]}))
    (run / "library.json").write_text('{"items": [{"text": "Answer in decimal hours."}]}')
    row = le._learn_summary(run)
    assert row["proposed_lessons"] == ["Answer in decimal hours.", "Use 2.45."]
    assert row["rejected_lessons"] == [{"text": "Use 2.45.", "why": "answer leak"}]
