"""The run directory: checkpoints, the trajectory store, and the human-readable outputs of a run.

RUN_DIR/checkpoints.sqlite   LangGraph checkpoints (resume); does not grow with B x G
RUN_DIR/store.sqlite         LangGraph store: rollouts, summaries and LLM results of every step
RUN_DIR/run.json             the settings the run started with (no secrets)
RUN_DIR/library.json|.md     the current experience library E
RUN_DIR/libraries/step-NNNN.json   E after step NNNN (for ``library show/diff --step``)
RUN_DIR/report.json|.md      the per-step report
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Any

from langgraph.errors import GraphDrained
from langgraph.runtime import RunControl

from tfgrpo.context import Context
from tfgrpo.errors import ConfigError, StopRequested
from tfgrpo.ledger import BudgetExceeded, Ledger, role_of, use_ledger
from tfgrpo.state.library import Library, empty_library, library_markdown
from tfgrpo.state.types import StepReport

REPORT_COLUMNS = (
    ("step", 4),
    ("epoch", 5),
    ("batch", 5),
    ("reward", 6),
    ("kept", 4),
    ("skip", 4),
    ("prop", 4),
    ("final", 5),
    ("appl", 4),
    ("rej", 3),
    ("drop", 4),
    ("gate", 4),
    ("calls", 5),
    ("retry", 5),
    ("tok_in", 7),
    ("tok_out", 7),
    ("usd", 8),
    ("secs", 6),
    ("|E|", 3),
)


def atomic_write(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one step: a crash leaves the old file or the new one, never half."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def open_sqlite(path: Path) -> sqlite3.Connection:
    # The savers serialize access with their own lock; autocommit keeps every write durable at once.
    return sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)


def report_row(r: StepReport) -> list[str]:
    reward = "-" if r["mean_reward"] is None else f"{r['mean_reward']:.3f}"
    return [
        str(r["step"]),
        str(r["epoch"]),
        str(r["batch_index"]),
        reward,
        str(r["groups_kept"]),
        str(r["groups_skipped"]),
        str(r["operations_proposed"]),
        str(r.get("operations_final", r["operations_proposed"])),
        str(r["operations_applied"]),
        str(r["operations_rejected"]),
        str(sum(r["dropped"].values())),
        "-" if "validation" not in r else "keep" if r["validation"]["kept"] else "undo",
        str(r["calls"]),
        str(r.get("retries", 0)),
        str(r["input_tokens"]),
        str(r["output_tokens"]),
        f"{r.get('cost_usd', 0.0):.4f}",
        f"{r['seconds']:.1f}",
        str(r["library_size"]),
    ]


def table_header() -> str:
    return "  ".join(name.rjust(width) for name, width in REPORT_COLUMNS)


def table_line(r: StepReport) -> str:
    return "  ".join(v.rjust(w) for v, (_, w) in zip(report_row(r), REPORT_COLUMNS, strict=True))


def totals(history: list[StepReport]) -> dict[str, Any]:
    dropped: dict[str, int] = {}
    for r in history:
        for stage, n in r["dropped"].items():
            dropped[stage] = dropped.get(stage, 0) + n
    by_role: dict[str, dict[str, float]] = {}
    for r in history:
        for node, u in r.get("usage", {}).items():
            agg = by_role.setdefault(
                role_of(node),
                {"calls": 0, "retries": 0, "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0},
            )
            for key in agg:
                agg[key] += u[key]  # type: ignore[literal-required]
    return {
        "steps": len(history),
        "calls": sum(r["calls"] for r in history),
        "retries": sum(r.get("retries", 0) for r in history),
        "cost_usd": round(sum(r.get("cost_usd", 0.0) for r in history), 6),
        "by_role": by_role,
        "input_tokens": sum(r["input_tokens"] for r in history),
        "output_tokens": sum(r["output_tokens"] for r in history),
        "seconds": round(sum(r["seconds"] for r in history), 3),
        "rollouts": sum(r["rollouts"] for r in history),
        "rollouts_failed": sum(r["rollouts_failed"] for r in history),
        "groups_kept": sum(r["groups_kept"] for r in history),
        "groups_skipped": sum(r["groups_skipped"] for r in history),
        "operations_applied": sum(r["operations_applied"] for r in history),
        "operations_rejected": sum(r["operations_rejected"] for r in history),
        "validation_rollbacks": sum(1 for r in history if "validation" in r and not r["validation"]["kept"]),
        "dropped": dropped,
        "malformed": dict(sum((Counter(r.get("malformed", {})) for r in history), Counter())),
    }


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints.sqlite"

    @property
    def store(self) -> Path:
        return self.path / "store.sqlite"

    def create(self) -> None:
        (self.path / "libraries").mkdir(parents=True, exist_ok=True)

    def write_settings(self, ctx: Context, seed: int) -> None:
        atomic_write(
            self.path / "run.json", json.dumps({"seed": seed, "context": asdict(ctx)}, indent=2) + "\n"
        )

    def write_outputs(self, values: dict[str, Any]) -> None:
        """Library, per-step snapshot and report from the graph state (idempotent)."""
        library: Library = values.get("library") or empty_library()
        history: list[StepReport] = values.get("history") or []
        atomic_write(self.path / "library.json", json.dumps(library, indent=2, ensure_ascii=False) + "\n")
        atomic_write(self.path / "library.md", library_markdown(library))
        if history:
            snap = self.path / "libraries" / f"step-{history[-1]['step']:04d}.json"
            if not snap.exists():
                atomic_write(snap, json.dumps(library, indent=2, ensure_ascii=False) + "\n")
        report: dict[str, Any] = {"totals": totals(history), "steps": history}
        atomic_write(self.path / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        lines = ["# Training-Free GRPO run report", "", "```", table_header()]
        lines += [table_line(r) for r in history]
        lines += ["```", "", "## Totals", ""]
        lines += [f"- {k}: {v}" for k, v in report["totals"].items()]
        checked = [r for r in history if "validation" in r]
        if checked:
            lines += ["", "## Validation-gated updates", ""]
            lines += [f"- step {r['step']}: {r['validation']['reason']} ({r['validation']['runs']} runs, "
                      f"{r['validation']['failed']} failed)" for r in checked]  # fmt: skip
        rejected = [(r["step"], x) for r in history for x in r["rejected"]]
        if rejected:
            lines += ["", "## Rejected operations", ""]
            lines += [
                f"- step {s}: {x['operation'].get('op')} {x['operation'].get('id') or ''} — {x['why']}"
                for s, x in rejected
            ]
        atomic_write(self.path / "report.md", "\n".join(lines) + "\n")

    # -- reading, for `tfgrpo library show|diff`
    def require(self) -> None:
        if not (self.path / "library.json").exists():
            raise ConfigError(f"{self.path}: not a tfgrpo run directory (no library.json)")

    def steps(self) -> list[int]:
        return sorted(int(p.stem.split("-")[1]) for p in (self.path / "libraries").glob("step-*.json"))

    def library_at(self, step: int | None) -> Library:
        self.require()
        if step is None:
            path = self.path / "library.json"
        elif step < 0:
            return empty_library()
        else:
            path = self.path / "libraries" / f"step-{step:04d}.json"
            if not path.exists():
                raise ConfigError(f"{self.path}: no library for step {step} (have {self.steps() or 'none'})")
        data: Library = json.loads(path.read_text(encoding="utf-8"))
        return data


def prune_checkpoints(saver: Any, thread_id: str, latest_checkpoint_id: str) -> int:
    """Delete a thread's checkpoints and writes older than ``latest_checkpoint_id``.

    ``SqliteSaver`` stores full channel values at every superstep, so an unpruned run grows with the
    number of supersteps. Resume needs only the latest checkpoint (and its pending writes); per-step
    libraries and reports are kept as files. Checkpoint ids are time-ordered, so ``<`` is "older".
    """
    with saver.lock:
        cur = saver.conn.execute(
            "DELETE FROM checkpoints WHERE thread_id = ? AND checkpoint_id < ?",
            (thread_id, latest_checkpoint_id),
        )
        saver.conn.execute(
            "DELETE FROM writes WHERE thread_id = ? AND checkpoint_id < ?",
            (thread_id, latest_checkpoint_id),
        )
        saver.conn.commit()
    return int(cur.rowcount or 0)


def _hard_stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextmanager
def ctrl_c_drains() -> Iterator[RunControl]:
    """A RunControl that the first Ctrl-C asks to drain (the graph stops at the next superstep, map branches
    not yet started refuse to start: :func:`tfgrpo.nodes._llm.stop_if_draining`); a second one aborts."""
    control = RunControl()

    def drain(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGINT, _hard_stop)
        print(
            "\nstopping: calls in flight finish, no new one starts (Ctrl-C again to abort)...",
            file=sys.stderr,
            flush=True,
        )
        control.request_drain("Ctrl-C")

    previous = signal.signal(signal.SIGINT, drain)
    try:
        yield control
    finally:
        signal.signal(signal.SIGINT, previous)


def run_stoppably(
    drive: Callable[[RunControl], None], ledger: Ledger, *, on_stop: Callable[[], None], stopped: str
) -> int:
    """Run ``drive`` under ``ledger`` and Ctrl-C: 0 when it finishes, 3 on a budget stop, 130 on Ctrl-C.
    Before a stop is reported, ``on_stop`` saves what the run has so far; ``stopped`` says how to resume."""
    try:
        with use_ledger(ledger), ctrl_c_drains() as control:
            drive(control)
    except BudgetExceeded as exc:
        on_stop()
        print(f"tfgrpo: stopped: {exc}", file=sys.stderr)
        print(f"spent so far: {ledger.spent_tokens} tokens, ${ledger.spent_usd:.4f}", file=sys.stderr)
        return 3
    except (GraphDrained, StopRequested):
        on_stop()
        print(stopped, file=sys.stderr)
        return 130
    return 0
