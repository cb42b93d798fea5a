"""The learning study of issue 19: does a library E lift the embedded models, and does tfgrpo find one?

    python benchmarks/learning_effect.py --plan benchmarks/learning_effect_plan.toml            # every cell
    python benchmarks/learning_effect.py --plan benchmarks/learning_effect_plan.toml --only CELL # one cell
    python benchmarks/learning_effect.py --plan ... --confirm CELL   # CELL again on its task's confirm seeds
    python benchmarks/learning_effect.py --plan ... --table          # print the table of the results file
    python benchmarks/learning_effect.py --plan ... --skip-done      # go on with the cells not run yet

Each cell is one paired comparison on its task's held-out set, through the CLI only (``tfgrpo.cli``):

* ``ceiling``: the task's hand-written lessons (written to a library.json) against the empty library;
* ``learn``: ``tfgrpo learn`` on the task's training set (optionally with ``--validation``), then the learned
  E against the empty library.

Each finished cell appends one JSON line to the plan's results file (failures and skipped cells too), with
the machine load before and after; the table of every row of that file is printed at the end. A learning
cell whose E comes out empty ends with status ``empty`` (E empty is the baseline: nothing to evaluate). A
cell may set its own ``max_tokens`` (else its task's).
A task marked ``exploratory = true`` answers a question the results raised, outside the decision rule:
it needs only a held-out set, has only ceiling cells (fixed lessons), is never confirmed, and its rows
say so in the table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ARMS = ("ceiling", "learn", "probe")
# optional per-cell learn settings, passed only when a cell sets them (older cells ran without them)
_OPTIONAL = ("max_group_size", "learner_max_tokens")
TASK_DATA = ("train", "heldout", "validation", "confirm_train", "confirm_heldout")


class PlanError(ValueError):
    """A one-line problem of the plan file, naming the file and the field."""


# ------------------------------------------------------------------------------------------------ plan


@dataclass(frozen=True)
class Task:
    name: str
    why: str
    data: dict[str, str]
    domain: str
    reward: str
    max_tokens: int
    lessons: list[str]
    control: bool = False
    corpus: str = ""
    max_model_calls: int | None = None
    max_tool_calls: int | None = None
    # outside the decision rule: fixed lessons evaluated to answer a question the results raised; such a
    # task needs only ``heldout``, has only ceiling cells and is never confirmed
    exploratory: bool = False


@dataclass(frozen=True)
class Cell:
    id: str
    task: str
    arm: str
    policy: str
    learner: str = ""
    gate: bool = False
    requires: str = ""
    settings: dict[str, int] = field(default_factory=dict)
    max_tokens: int | None = None  # the cell's own cap, else the task's
    # learn/probe: --max-group-size, --learner-max-tokens when the cell sets them
    options: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    path: Path
    results: Path
    work_dir: Path
    eval_seed: int
    learn_seed: int
    temperature: float
    request_timeout: float | None
    models: dict[str, str]
    tasks: dict[str, Task]
    cells: list[Cell]

    def cell(self, cell_id: str) -> Cell:
        for cell in self.cells:
            if cell.id == cell_id:
                return cell
        known = ", ".join(c.id for c in self.cells)
        raise PlanError(f"{self.path}: no cell {cell_id!r} (cells: {known})")


def _need(where: str, table: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in table:
        raise PlanError(f"{where}: field {key!r} is missing")
    value = table[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise PlanError(f"{where}: field {key!r} has the wrong type ({type(value).__name__})")
    return value


def _positive_int(where: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PlanError(f"{where}: field {key!r} must be a positive integer, not {value!r}")
    return value


def load_plan(path: str | Path) -> Plan:
    """The plan, validated: every problem is a one-line PlanError naming the file and the field."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlanError(f"{path}: file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise PlanError(f"{path}: invalid TOML ({exc})") from None
    study = _need(f"{path}: [study]", raw, "study", dict)
    models = _need(f"{path}", raw, "models", dict)
    defaults = raw.get("defaults", {})
    tasks: dict[str, Task] = {}
    for name, t in _need(f"{path}", raw, "tasks", dict).items():
        where = f"{path}: [tasks.{name}]"
        lessons = _need(where, t, "lessons", list)
        if not lessons or not all(isinstance(x, str) and x.strip() for x in lessons):
            raise PlanError(f"{where}: field 'lessons' must be a non-empty list of non-empty strings")
        exploratory = _need(where, t, "exploratory", bool) if "exploratory" in t else False
        needed = ("heldout",) if exploratory else TASK_DATA
        tasks[name] = Task(
            name=name,
            why=_need(where, t, "why", str),
            data={key: _need(where, t, key, str) if key in needed else "" for key in TASK_DATA},
            domain=_need(where, t, "domain", str),
            reward=_need(where, t, "reward", str),
            max_tokens=_need(where, t, "max_tokens", int),
            lessons=list(lessons),
            control=bool(t.get("control", False)),
            corpus=str(t.get("corpus", "")),
            max_model_calls=t.get("max_model_calls"),
            max_tool_calls=t.get("max_tool_calls"),
            exploratory=exploratory,
        )
        if tasks[name].domain == "search" and not tasks[name].corpus:
            raise PlanError(f"{where}: a search task needs field 'corpus'")
    cells: list[Cell] = []
    seen: set[str] = set()
    for n, c in enumerate(_need(f"{path}", raw, "cells", list), start=1):
        where = f"{path}: cell {n}"
        cell_id = _need(where, c, "id", str)
        where = f"{path}: cell {cell_id!r}"
        if cell_id in seen:
            raise PlanError(f"{where}: duplicate id")
        seen.add(cell_id)
        task = _need(where, c, "task", str)
        if task not in tasks:
            raise PlanError(f"{where}: unknown task {task!r}")
        arm = _need(where, c, "arm", str)
        if arm not in ARMS:
            raise PlanError(f"{where}: arm must be one of {', '.join(ARMS)}, not {arm!r}")
        if tasks[task].exploratory and arm != "ceiling":
            raise PlanError(f"{where}: task {task!r} is exploratory: only the ceiling arm (fixed lessons)")
        policy = _need(where, c, "policy", str)
        learner = str(c.get("learner", ""))
        for role, name in (("policy", policy), ("learner", learner)):
            if name and name not in models:
                raise PlanError(f"{where}: unknown {role} model {name!r} (models: {', '.join(models)})")
        if arm in ("learn", "probe") and not learner:
            raise PlanError(f"{where}: a {arm} cell needs field 'learner'")
        settings: dict[str, int] = {}
        for key in _SETTINGS if arm in ("learn", "probe") else ("k",):
            value = c.get(key, defaults.get(key))
            if value is None:
                raise PlanError(f"{where}: field {key!r} is missing (in the cell or in [defaults])")
            settings[key] = _positive_int(where, key, value)
        max_tokens = c.get("max_tokens")
        if max_tokens is not None:
            _positive_int(where, "max_tokens", max_tokens)
        options = {key: _positive_int(where, key, c[key]) for key in _OPTIONAL if key in c}
        cells.append(
            Cell(
                id=cell_id,
                task=task,
                arm=arm,
                policy=policy,
                learner=learner,
                gate=bool(c.get("gate", False)),
                requires=str(c.get("requires", "")),
                settings=settings,
                max_tokens=max_tokens,
                options=options,
            )
        )
    base = path.resolve().parents[1] if path.resolve().parent.name == "benchmarks" else Path.cwd()
    results = Path(_need(f"{path}: [study]", study, "results", str))
    return Plan(
        path=path,
        results=results if results.is_absolute() else base / results,
        work_dir=Path(_need(f"{path}: [study]", study, "work_dir", str)),
        eval_seed=int(study.get("eval_seed", 0)),
        learn_seed=int(study.get("learn_seed", 0)),
        temperature=float(study.get("temperature", 0.7)),
        request_timeout=float(study["request_timeout"]) if "request_timeout" in study else None,
        models={str(k): str(v) for k, v in models.items()},
        tasks=tasks,
        cells=cells,
    )


_SETTINGS = ("k", "batch_size", "group_size", "epochs", "experiences_per_group", "validation_k")


# ------------------------------------------------------------------------------------------------ data

_ITEMS = (
    ("A movie", "lasted", "last"),
    ("A meeting", "lasted", "last"),
    ("A flight", "took", "take"),
    ("A hike", "took", "take"),
    ("A lecture", "lasted", "last"),
    ("A concert", "lasted", "last"),
    ("A train ride", "took", "take"),
    ("A workout", "lasted", "last"),
    ("A podcast episode", "ran for", "run"),
    ("A board game", "lasted", "last"),
)


def durations(seed: int, size: int, ask: str = "long") -> list[dict[str, str]]:
    """The positive controls' rows: a duration in minutes, answered (by convention) in decimal hours.

    ``ask="long"`` asks "How long did it last?" (the unit is never named); ``ask="hours"`` asks "How many
    hours did it last?" (the unit is named, the decimal form is not). Minutes are multiples of 3 (so the
    hours have at most two decimals) and never whole hours."""
    if ask not in ("long", "hours"):
        raise PlanError(f"gen:durations: ask must be long or hours, not {ask!r}")
    rng = random.Random(seed)
    rows = []
    for i in range(size):
        minutes = rng.choice([m for m in range(21, 300, 3) if m % 60])
        subject, past, verb = rng.choice(_ITEMS)
        hours = f"{minutes / 60:.2f}".rstrip("0").rstrip(".")
        how = "How long" if ask == "long" else "How many hours"
        question = f"{subject} {past} {minutes} minutes. {how} did it {verb}?"
        rows.append({"id": f"dur-{seed}-{i}", "question": question, "answer": hours})
    return rows


def resolve_dataset(spec: str, work_dir: Path) -> str:
    """``gen:durations:seed=S:size=N`` -> a JSONL file written under work_dir; anything else unchanged."""
    if not spec.startswith("gen:"):
        return spec
    parts = spec.split(":")
    if len(parts) < 2 or parts[1] != "durations":
        raise PlanError(
            f"{spec}: unknown generated dataset (known: gen:durations:seed=S:size=N[:ask=long|hours])"
        )
    opts = dict(p.split("=", 1) for p in parts[2:] if "=" in p)
    seed, size, ask = int(opts.get("seed", 0)), int(opts.get("size", 20)), opts.get("ask", "long")
    rows = durations(seed, size, ask)
    out = work_dir / "data" / f"durations-seed{seed}-size{size}{'' if ask == 'long' else '-' + ask}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(out)


# ------------------------------------------------------------------------------------------------ running


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def _run(cmd: list[str], log: Path, timeout: float) -> tuple[float, str | None]:
    """Run a CLI command (the worktree's tfgrpo first on the path); seconds taken and an error or None."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with log.open("w", encoding="utf-8") as out:
        out.write("$ " + shlex.join(cmd) + "\n")
        out.flush()
        try:
            proc = subprocess.run(
                cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            return time.monotonic() - start, f"timed out after {timeout:.0f}s ({log})"
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        lines = [x for x in log.read_text(encoding="utf-8").splitlines() if x.strip()]
        return seconds, f"exit {proc.returncode}: {lines[-1] if lines else '(no output)'} ({log})"
    return seconds, None


def _common(plan: Plan, task: Task, cell: Cell, model: str) -> list[str]:
    args = ["--model", model, "--domain", task.domain, "--reward", task.reward]
    args += [
        "--max-tokens",
        str(cell.max_tokens or task.max_tokens),
        "--temperature",
        str(plan.temperature),
        "--no-progress",
    ]
    if plan.request_timeout:
        args += ["--request-timeout", str(plan.request_timeout)]
    if task.corpus:
        args += ["--corpus", task.corpus]
    if task.max_model_calls:
        args += ["--max-model-calls", str(task.max_model_calls)]
    if task.max_tool_calls:
        args += ["--max-tool-calls", str(task.max_tool_calls)]
    return args


def lessons_library(lessons: list[str]) -> dict[str, Any]:
    """A library.json holding the hand-written lessons (the ceiling arm)."""
    items = [
        {"id": f"G{i}", "text": text, "created_step": 0, "updated_step": 0, "sources": []}
        for i, text in enumerate(lessons, start=1)
    ]
    return {"version": 1, "next_id": len(items) + 1, "items": items}


def _ceiling_row(plan: Plan, cell: Cell) -> dict[str, Any] | None:
    """The latest successful ceiling row of the cell's task and policy in the results file."""
    want = f"{cell.task}.ceiling.p{cell.policy}"
    found = None
    for row in read_results(plan.results):
        if row.get("cell") == want and row.get("status") == "ok":
            found = row
    return found


def _probe_responder() -> Any:
    """The probe's scripted policy (benchmarks/learning_effect_probe.py), loaded by path like the rewards."""
    import importlib.util

    path = Path(__file__).with_name("learning_effect_probe.py")
    spec = importlib.util.spec_from_file_location("learning_effect_probe", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.one_in_eight


def run_cell(plan: Plan, cell: Cell, *, confirm: bool = False, timeout: float = 5400) -> dict[str, Any]:
    """Run one cell and return its row (status ok, failed, skipped, or empty: learning gave no lesson)."""
    task = plan.tasks[cell.task]
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    name = cell.id + (".confirm" if confirm else "")
    cell_dir = plan.work_dir / name / stamp
    row: dict[str, Any] = {
        "cell": name,
        "task": cell.task,
        "control": task.control,
        "exploratory": task.exploratory,
        "arm": cell.arm,
        "policy": cell.policy,
        "learner": cell.learner if cell.arm != "ceiling" else "-",
        "gate": cell.gate if cell.arm != "ceiling" else None,
        "k": cell.settings["k"],
        "max_tokens": cell.max_tokens or task.max_tokens,
        "started": stamp,
        "commit": _git_head(),
        "dir": str(cell_dir),
        "load_before": _load(),
    }
    if cell.requires == "ceiling" and not confirm:
        ceiling = _ceiling_row(plan, cell)
        if ceiling is None or not ceiling.get("ci_low", 0) > 0:
            why = (
                "not measured"
                if ceiling is None
                else f"CI lower bound {ceiling['ci_low']:+.3f} is not above zero"
            )
            row.update(status="skipped", error=f"ceiling {cell.task}.ceiling.p{cell.policy} {why}")
            return row
    try:
        learning = cell.arm != "ceiling"
        train = (
            resolve_dataset(task.data["confirm_train" if confirm else "train"], plan.work_dir)
            if learning
            else ""
        )
        heldout = resolve_dataset(task.data["confirm_heldout" if confirm else "heldout"], plan.work_dir)
        validation = resolve_dataset(task.data["validation"], plan.work_dir) if cell.gate else ""
    except (PlanError, ValueError) as exc:
        row.update(status="failed", error=str(exc), load_after=_load())
        return row
    row.update(heldout=heldout, train=train)
    cell_dir.mkdir(parents=True, exist_ok=True)
    policy = plan.models[cell.policy]
    commands: list[str] = []
    if cell.arm == "ceiling":
        library = cell_dir / "library.json"
        library.write_text(json.dumps(lessons_library(task.lessons), indent=2) + "\n", encoding="utf-8")
        row["learn_s"] = 0.0
    else:
        run_dir = cell_dir / "run"
        s = cell.settings
        cmd = [sys.executable, "-m", "tfgrpo.cli", "learn", "--dataset", train, "--run-dir", str(run_dir)]
        cmd += ["--epochs", str(s["epochs"]), "--batch-size", str(s["batch_size"])]
        cmd += [
            "--group-size",
            str(s["group_size"]),
            "--experiences-per-group",
            str(s["experiences_per_group"]),
        ]
        cmd += ["--learner-model", plan.models[cell.learner], "--seed", str(plan.learn_seed), "--heldout", ""]
        if cell.gate:
            cmd += ["--validation", validation, "--validation-k", str(s["validation_k"])]
        for key, value in sorted(cell.options.items()):
            cmd += ["--" + key.replace("_", "-"), str(value)]
        if cell.arm == "probe":
            # the scripted policy (one right attempt in eight) learns; the real policy evaluates E below
            from tfgrpo.testing.fake_openai import FakeOpenAIServer

            with FakeOpenAIServer(_probe_responder()) as server:
                cmd += _common(plan, task, cell, "openai:probe-one-in-eight")
                cmd += ["--base-url", server.base_url]
                commands.append(shlex.join(cmd))
                seconds, error = _run(cmd, cell_dir / "learn.log", timeout)
        else:
            cmd += _common(plan, task, cell, policy)
            commands.append(shlex.join(cmd))
            seconds, error = _run(cmd, cell_dir / "learn.log", timeout)
        row["learn_s"] = round(seconds, 1)
        if error is None:
            row.update(_learn_summary(run_dir))
        else:
            row.update(status="failed", error=error, commands=commands, load_after=_load())
            return row
        if row["library_size"] == 0:  # an empty E is the baseline: comparing the two measures nothing
            kept, seen = row["groups_kept"], row["groups_kept"] + row["groups_skipped"]
            why = f"learned E is empty (the learner saw {kept} of {seen} groups); held-out evaluation not run"
            row.update(status="empty", error=why, commands=commands, load_after=_load())
            return row
        library = run_dir
    eval_dir = cell_dir / "eval"
    cmd = [sys.executable, "-m", "tfgrpo.cli", "eval", "--dataset", heldout, "--library", str(library)]
    cmd += [
        "--baseline",
        "--k",
        str(cell.settings["k"]),
        "--eval-dir",
        str(eval_dir),
        "--seed",
        str(plan.eval_seed),
    ]
    cmd += _common(plan, task, cell, policy)
    commands.append(shlex.join(cmd))
    seconds, error = _run(cmd, cell_dir / "eval.log", timeout)
    row.update(eval_s=round(seconds, 1), commands=commands, load_after=_load())
    if error is not None:
        row.update(status="failed", error=error)
        return row
    try:
        row.update(_eval_summary(eval_dir))
    except (OSError, KeyError, ValueError) as exc:
        row.update(status="failed", error=f"cannot read {eval_dir}/report.json ({exc})")
        return row
    if cell.arm == "ceiling":
        row.update(library_size=len(task.lessons), lessons=list(task.lessons))
    row["status"] = "ok"
    return row


def _eval_summary(eval_dir: Path) -> dict[str, Any]:
    report = json.loads((eval_dir / "report.json").read_text(encoding="utf-8"))
    comp, arms = report["comparison"], report["arms"]
    failed = sum(arms[a].get("runs_failed", 0) for a in ("library", "baseline"))
    return {
        "baseline": arms["baseline"]["mean_at_k"],
        "library": arms["library"]["mean_at_k"],
        "diff": comp["diff"],
        "ci_low": comp["ci_low"],
        "ci_high": comp["ci_high"],
        "p": comp["p_value"],
        "n_questions": comp["n_questions"],
        "wins_losses_ties": [comp.get("wins"), comp.get("losses"), comp.get("ties")],
        "runs_failed": failed,
    }


def _learn_summary(run_dir: Path) -> dict[str, Any]:
    report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    library = json.loads((run_dir / "library.json").read_text(encoding="utf-8"))
    steps = report.get("steps", [])
    totals = report.get("totals", {})
    rejected: dict[str, int] = {}
    for step in steps:
        for reason, n in (step.get("lessons_rejected") or {}).items():
            rejected[reason] = rejected.get(reason, 0) + n
    return {
        "steps": len(steps),
        "groups_kept": totals.get("groups_kept", sum(s.get("groups_kept", 0) for s in steps)),
        "groups_skipped": totals.get("groups_skipped", sum(s.get("groups_skipped", 0) for s in steps)),
        "proposed": sum(s.get("operations_proposed", 0) for s in steps),
        "applied": sum(s.get("operations_applied", 0) for s in steps),
        "rejected_ops": sum(s.get("operations_rejected", 0) for s in steps),
        "lessons_rejected": rejected,
        "validation_rollbacks": totals.get("validation_rollbacks", 0),
        "train_reward": [s.get("mean_reward") for s in steps],
        "dropped": totals.get("dropped", {}),
        "library_size": len(library.get("items", [])),
        "lessons": [item["text"] for item in library.get("items", [])],
        # every lesson the learner proposed, rewrote after a rejection, or saw rejected, with the gate's why
        "proposed_lessons": [op.get("content", "") for s in steps for op in s.get("proposed") or []],
        "rewritten_lessons": [op.get("content", "") for s in steps for op in s.get("rewrites") or []],
        "rejected_lessons": [
            {"text": (r.get("operation") or {}).get("content", ""), "why": r.get("why", "")}
            for s in steps
            for r in s.get("rejected") or []
        ],
    }


def _git_head() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        return out.stdout.strip()
    except OSError:
        return ""


# ------------------------------------------------------------------------------------------------ results


def read_results(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise PlanError(f"{path}: line {n}: invalid JSON ({exc.msg})") from None
    return rows


def append_result(path: Path, row: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as out:
        out.write(json.dumps(row, ensure_ascii=False) + "\n")


_HEADER = (
    "cell",
    "learner",
    "gate",
    "baseline",
    "library",
    "diff [95% CI]",
    "p",
    "|E|",
    "proposed/rejected",
    "learn s",
    "eval s",
    "load (1/5/15 min)",
)


def table_rows(rows: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for r in rows:
        if r.get("status") != "ok":
            status = f"{r.get('status', '?').upper()}: {r.get('error', '')}"
            if "learn_s" in r and r.get("arm") in ("learn", "probe"):  # the learning finished: what it gave
                status += f" [learned |E| {r.get('library_size', '?')}, proposed {r.get('proposed', '?')}"
                status += (
                    f", learn {r['learn_s']:.0f} s, load {r.get('load_before')} -> {r.get('load_after')}]"
                )
            out.append((r.get("cell", "?"), status))
            continue
        gate = "-" if r.get("gate") is None else ("on" if r["gate"] else "off")
        rejected = r.get("lessons_rejected") or {}
        reasons = ",".join(f"{k} {v}" for k, v in sorted(rejected.items()))
        proposed = "-" if r.get("arm") == "ceiling" else f"{r.get('proposed', 0)}/{sum(rejected.values())}"
        if reasons:
            proposed += f" ({reasons})"
        if r.get("validation_rollbacks"):
            proposed += f" rollbacks {r['validation_rollbacks']}"
        if "groups_kept" in r:  # groups with unequal rewards: the only ones the learner sees
            proposed += f" groups {r['groups_kept']}/{r['groups_kept'] + r.get('groups_skipped', 0)}"
        out.append(
            (
                r["cell"] + (" (exploratory)" if r.get("exploratory") else ""),
                r.get("learner", "-"),
                gate,
                f"{r['baseline']:.3f}",
                f"{r['library']:.3f}",
                f"{r['diff']:+.3f} [{r['ci_low']:+.3f} .. {r['ci_high']:+.3f}]",
                f"{r['p']:.3g}",
                str(r.get("library_size", "-")),
                proposed,
                f"{r.get('learn_s', 0):.0f}",
                f"{r.get('eval_s', 0):.0f}",
                f"{r.get('load_before', '?')} -> {r.get('load_after', '?')}",
            )
        )
    return out


def format_table(rows: list[dict[str, Any]]) -> str:
    """One line per row of the results file; failed and skipped cells show their reason."""
    body = table_rows(rows)
    full = [b for b in body if len(b) == len(_HEADER)]
    widths = [max(len(x[i]) for x in [_HEADER, *full]) for i in range(len(_HEADER))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(_HEADER, widths, strict=True)).rstrip()]
    for b in body:
        if len(b) == len(_HEADER):
            lines.append("  ".join(x.ljust(w) for x, w in zip(b, widths, strict=True)).rstrip())
        else:
            lines.append(f"{b[0].ljust(widths[0])}  {b[1]}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plan", default=str(REPO / "benchmarks" / "learning_effect_plan.toml"))
    parser.add_argument("--only", action="append", default=[], help="run this cell (repeatable)")
    parser.add_argument("--confirm", help="run this cell on its task's confirmation seeds")
    parser.add_argument("--table", action="store_true", help="only print the table of the results file")
    parser.add_argument(
        "--skip-done", action="store_true", help="skip cells that already have a row in the results file"
    )
    parser.add_argument("--results", help="results file (default: the plan's)")
    parser.add_argument("--timeout", type=float, default=5400, help="seconds per CLI command")
    args = parser.parse_args(argv)
    try:
        plan = load_plan(args.plan)
        if args.results:
            plan = Plan(**{**plan.__dict__, "results": Path(args.results)})
        if args.table:
            print(format_table(read_results(plan.results)))
            return 0
        if args.confirm:
            cell = plan.cell(args.confirm)
            if plan.tasks[cell.task].exploratory:
                raise PlanError(f"{plan.path}: cell {cell.id!r} is exploratory: it has no confirmation seeds")
            todo = [(cell, True)]
        elif args.only:
            todo = [(plan.cell(c), False) for c in args.only]
        else:
            todo = [(c, False) for c in plan.cells]
        if args.skip_done:
            done = {row.get("cell") for row in read_results(plan.results)}
            todo = [
                (c, confirm) for c, confirm in todo if (c.id + (".confirm" if confirm else "")) not in done
            ]
        for cell, confirm in todo:
            print(
                f"[{datetime.now(UTC):%H:%M:%S}] {cell.id}{' (confirm)' if confirm else ''} ...", flush=True
            )
            row = run_cell(plan, cell, confirm=confirm, timeout=args.timeout)
            append_result(plan.results, row)
            print(format_table([row]).splitlines()[-1], flush=True)
        print()
        print(format_table(read_results(plan.results)))
    except PlanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
