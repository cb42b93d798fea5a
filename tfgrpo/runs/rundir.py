"""The run directory: checkpoints, the trajectory store, and the human-readable outputs of a run.

RUN_DIR/checkpoints.sqlite   LangGraph checkpoints (resume); does not grow with B x G
RUN_DIR/store.sqlite         LangGraph store: rollouts, summaries and LLM results of every step
RUN_DIR/run.json             the settings the run started with (no secrets)
RUN_DIR/library.json|.md     the current experience library E
RUN_DIR/libraries/step-NNNN.json   E after step NNNN (for ``library show/diff --step``)
RUN_DIR/report.json|.md      the per-step report (written when the run stops; the history is in the store)
"""

from __future__ import annotations

import _thread
import json
import os
import signal
import sqlite3
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any, cast

from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.errors import GraphDrained
from langgraph.runtime import RunControl
from langgraph.store.base import BaseStore
from langgraph.store.sqlite import SqliteStore

from tfgrpo.context import LATER_RUN_DEFINING, Context
from tfgrpo.data import dataset_fingerprint
from tfgrpo.errors import ConfigError, RunInterrupted, StopRequested
from tfgrpo.models.ledger import BudgetExceeded, BudgetStopped, Ledger, role_of, use_ledger
from tfgrpo.models.spec import resolve_spec
from tfgrpo.state.library import Library, empty_library, library_markdown
from tfgrpo.state.published import library_value
from tfgrpo.state.types import Query, StepReport

REPORT_COLUMNS = (
    ("step", 4),
    ("epoch", 5),
    ("batch", 5),
    ("reward", 6),
    ("kept", 4),
    ("skip", 4),
    ("more", 4),  # attempts drawn for all-equal groups (dynamic sampling)
    ("resc", 4),  # groups that got contrast from them
    ("prop", 4),
    ("final", 5),
    ("appl", 4),
    ("rej", 3),
    ("drop", 4),
    ("gate", 4),
    ("cand", 4),  # --candidates: calls beyond one update (the other candidates, the selection runs)
    ("calls", 5),
    ("cached", 6),
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


class DamagedRun(ConfigError):
    """A run database that cannot be read: refused in one line, never replaced by a new run."""


class ReadOnlyRun(ConfigError):
    """A run directory (or one of its databases) this process cannot write: a good run, not a damaged one."""


def writable(path: Path) -> bool:
    """``path`` (a directory or a file that exists) can be written by this process (permissions, a
    read-only mount)."""
    return os.access(path, os.W_OK)


def read_only_message(run_dir: Path, what: str) -> str:
    return (
        f"{run_dir} is read-only: {what}. Still works: `tfgrpo library show {run_dir}`, `tfgrpo eval "
        f"--library {run_dir}`, `tfgrpo report {run_dir} --out DIR`; to continue the run, copy it "
        f"(cp -r {run_dir} NEW) and pass --run-dir NEW"
    )


def open_sqlite_read_only(path: Path) -> sqlite3.Connection:
    """A connection that writes nothing (not even WAL files): for reading a read-only run directory."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        conn.execute("PRAGMA quick_check").fetchone()
    except sqlite3.OperationalError:  # no -shm file and no right to create it: nobody writes here anyway
        conn = sqlite3.connect(f"file:{path}?immutable=1", uri=True, check_same_thread=False)
    return conn


def open_sqlite(path: Path, *, option: str = "--run-dir") -> sqlite3.Connection:
    """A connection for a saver or store, checked first (``PRAGMA quick_check``) so that a damaged file
    is a one-line error instead of a traceback in the middle of a run, in WAL mode. The connection is
    in autocommit mode: the saver and the store below open one explicit transaction per call.

    WAL with ``synchronous=NORMAL``: a commit is durable when the process is killed (the WAL is in the
    OS's hands); only a power cut can lose the last commits, and never corrupts the file."""
    where = path.parent
    fresh = f"start fresh with another {option} (or delete {where})"
    if path.is_dir():
        raise DamagedRun(f"{path} is a directory, not a database: {fresh}")
    try:
        conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        verdict = str(conn.execute("PRAGMA quick_check").fetchone()[0])
        if verdict == "ok":
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
    except sqlite3.DatabaseError as exc:
        verdict = str(exc)
    if verdict != "ok":
        reason = verdict.splitlines()[0]
        raise DamagedRun(f"{path} is damaged ({reason}): this run cannot resume from it; {fresh}")
    return conn


def refuse_emptied(run_dir: Path, files: list[Path], option: str = "--run-dir") -> None:
    """A 0-byte database beside a run's other database or outputs was emptied (``: > store.sqlite``):
    refused before anything is written into it, so that the file is left as it was."""
    sizes = {f: f.stat().st_size for f in files if f.is_file()}
    emptied = [f for f, size in sizes.items() if size == 0]
    if not emptied:
        return
    outputs = any((run_dir / name).exists() for name in ("library.json", "report.json", "run.json"))
    if outputs or any(size > 0 for size in sizes.values()):
        raise DamagedRun(
            f"{emptied[0]} is damaged (0 bytes: emptied): this run cannot resume from it; start fresh "
            f"with another {option} (or delete {run_dir})"
        )


@contextmanager
def _transaction(conn: sqlite3.Connection, transaction: bool) -> Iterator[sqlite3.Cursor]:
    """A cursor whose statements commit together (``transaction``) or roll back together on an error."""
    cur = conn.cursor()
    if transaction:
        cur.execute("BEGIN IMMEDIATE")
    try:
        yield cur
    except BaseException:
        if transaction:
            conn.rollback()
        raise
    else:
        if transaction:
            conn.commit()
    finally:
        cur.close()


class TransactionalSqliteSaver(SqliteSaver):
    """``SqliteSaver`` whose every call is one SQLite transaction: a kill in the middle of ``put_writes``
    keeps all of a task's writes or none (on an autocommit connection each row was committed alone, so a
    resumed step could silently miss some of a fan-out's sends), and an error rolls back."""

    @contextmanager
    def cursor(self, transaction: bool = True) -> Iterator[sqlite3.Cursor]:
        with self.lock:
            self.setup()
            with _transaction(self.conn, transaction) as cur:
                yield cur


class TransactionalSqliteStore(SqliteStore):
    """``SqliteStore`` (one transaction per batch of operations) that rolls a failed batch back instead
    of committing the part that ran."""

    @contextmanager
    def _cursor(self, *, transaction: bool = True) -> Iterator[sqlite3.Cursor]:
        if not self.is_setup:
            self.setup()
        with self.lock, _transaction(self.conn, transaction) as cur:
            yield cur


class ReadOnlySqliteStore(SqliteStore):
    """A run's store opened to read only (``tfgrpo report`` of a read-only run directory): no setup, no
    write transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        super().__init__(conn)
        self.is_setup = True

    @contextmanager
    def _cursor(self, *, transaction: bool = True) -> Iterator[sqlite3.Cursor]:
        with self.lock, _transaction(self.conn, False) as cur:
            yield cur


def open_store_to_read(path: Path) -> SqliteStore:
    """A run's store for reading its history: read-only when this process cannot write there (a good run in
    a read-only directory is not a damaged one)."""
    if writable(path.parent) and writable(path):
        return open_store(path)
    return ReadOnlySqliteStore(open_sqlite_read_only(path))


def open_checkpointer(path: Path, *, option: str = "--run-dir") -> TransactionalSqliteSaver:
    saver = TransactionalSqliteSaver(open_sqlite(path, option=option))
    saver.setup()
    return saver


def open_store(path: Path, *, option: str = "--run-dir") -> TransactionalSqliteStore:
    store = TransactionalSqliteStore(open_sqlite(path, option=option))
    store.setup()
    return store


def operation_line(op: Mapping[str, Any]) -> str:
    """An operation as report.md lists it: op, id, and the lesson's text in quotes (when it has one)."""
    parts = [str(op.get("op") or "?"), str(op.get("id") or "")]
    text = " ".join(str(op.get("content") or "").split())
    if text:
        parts.append(json.dumps(text, ensure_ascii=False))
    return " ".join(p for p in parts if p)


def report_row(r: StepReport) -> list[str]:
    reward = "-" if r["mean_reward"] is None else f"{r['mean_reward']:.3f}"
    return [
        str(r["step"]),
        str(r["epoch"]),
        str(r["batch_index"]),
        reward,
        str(r["groups_kept"]),
        str(r["groups_skipped"]),
        str(r.get("extra_rollouts", 0)),
        str(r.get("groups_rescued", 0)),
        str(r["operations_proposed"]),
        str(r.get("operations_final", r["operations_proposed"])),
        str(r["operations_applied"]),
        str(r["operations_rejected"]),
        str(sum(r["dropped"].values())),
        "-" if "validation" not in r else "keep" if r["validation"]["kept"] else "undo",
        str(r["selection"]["extra_calls"]) if "selection" in r else "-",
        str(r["calls"]),
        str(r.get("cached_calls", 0)),
        str(r.get("retries", 0)),
        str(r["input_tokens"]),
        str(r["output_tokens"]),
        f"{r.get('cost_usd', 0.0):.4f}",
        f"{r['seconds']:.1f}",
        str(r["library_size"]),
    ]


def selection_lines(r: StepReport) -> list[str]:
    """report.md's lines for a step's selection among candidates: the verdict, then one per candidate."""
    selection = r["selection"]
    lines = [
        f"- step {r['step']}: {selection['reason']} ({len(selection['questions'])} questions x "
        f"{selection['k']}; {selection['extra_calls']} calls beyond one update)"
    ]
    for c in selection["candidates"]:
        gain = "" if c["delta"] is None else f" {c['mean']:.3f} vs {c['current']:.3f} ({c['delta']:+.3f})"
        mark = " **kept**" if c["chosen"] else ""
        lessons = "; ".join(c["lessons"]) or "nothing applied"
        lines.append(f"  - c{c['candidate']} {c['status']}{gain}{mark}, {c['calls']} calls: {lessons}")
    return lines


def table_header() -> str:
    return "  ".join(name.rjust(width) for name, width in REPORT_COLUMNS)


def table_line(r: StepReport) -> str:
    return "  ".join(v.rjust(w) for v, (_, w) in zip(report_row(r), REPORT_COLUMNS, strict=True))


def totals(history: list[StepReport], paid: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's totals. ``paid`` (from the run's result cache): what the server was paid for, kills
    and unfinished steps included; its calls and tokens are then the totals' (the steps' own figures book
    only the calls of finished steps)."""
    out = _totals(history)
    out["cached_calls"] = sum(r.get("cached_calls", 0) for r in history)
    out["cached_tokens"] = sum(r.get("cached_tokens", 0) for r in history)
    if paid is not None:
        out["booked_in_steps"] = {k: out[k] for k in ("calls", "input_tokens", "output_tokens", "cost_usd")}
        out["calls"], out["input_tokens"], out["output_tokens"] = (
            paid["calls"],
            paid["input_tokens"],
            paid["output_tokens"],
        )
        if paid["cost_usd"] or not out["cost_usd"]:
            out["cost_usd"] = paid["cost_usd"]
        # timed out, possibly billed: attempts the client gave up on, at their reservations
        out["timed_out"] = paid.get("timed_out", {"calls": 0, "tokens": 0, "cost_usd": 0.0})
    return out


def _totals(history: list[StepReport]) -> dict[str, Any]:
    dropped: dict[str, int] = {}
    for r in history:
        for stage, n in r["dropped"].items():
            dropped[stage] = dropped.get(stage, 0) + n
    by_role: dict[str, dict[str, float]] = {}
    for r in history:
        for node, u in r.get("usage", {}).items():
            agg = by_role.setdefault(
                role_of(node),
                {
                    "calls": 0,
                    "cached": 0,
                    "retries": 0,
                    "input_tokens": 0,
                    "output_tokens": 0,
                    "cost_usd": 0.0,
                },
            )
            for key in agg:
                agg[key] += cast(float, u.get(key, 0))
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
        "extra_rollouts": sum(r.get("extra_rollouts", 0) for r in history),
        "groups_rescued": sum(r.get("groups_rescued", 0) for r in history),
        "operations_applied": sum(r["operations_applied"] for r in history),
        "operations_rejected": sum(r["operations_rejected"] for r in history),
        "validation_rollbacks": sum(1 for r in history if "validation" in r and not r["validation"]["kept"]),
        **selection_totals(history),
        "dropped": dropped,
        "lessons_rejected": dict(sum((Counter(r.get("lessons_rejected", {})) for r in history), Counter())),
        "lessons_retried": dict(sum((Counter(r.get("lessons_retried", {})) for r in history), Counter())),
        "malformed": dict(sum((Counter(r.get("malformed", {})) for r in history), Counter())),
    }


def selection_totals(history: list[StepReport]) -> dict[str, Any]:
    """With ``--candidates``: the steps that kept a candidate, and the calls and tokens the selection cost
    beyond one update per step; nothing without it."""
    chosen = [r["selection"] for r in history if "selection" in r]
    if not chosen:
        return {}
    return {
        "candidates_kept": sum(1 for s in chosen if s["chosen"] is not None),
        "candidate_steps": len(chosen),
        "candidate_extra_calls": sum(s["extra_calls"] for s in chosen),
        "candidate_extra_tokens": sum(s["extra_tokens"] for s in chosen),
        "candidate_extra_cost_usd": round(sum(s["extra_cost_usd"] for s in chosen), 6),
    }


def recorded_context(ctx: Context) -> dict[str, Any]:
    """The run's settings as ``run.json`` keeps them: the models that answered named as resolved (no
    model given is the embedded default, as ``eval.json`` says), not as ''. A user's agent brings its own
    policy model, so ``model`` stays as given there."""
    context = asdict(ctx)
    if not ctx.agent:
        context["model"] = resolve_spec(ctx.model)
    context["learner_model"] = resolve_spec(ctx.learner_model or ctx.model)
    if ctx.reward == "judge":
        context["judge_model"] = resolve_spec(ctx.judge_model or ctx.model)
    return context


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]


def totals_markdown(totals: dict[str, Any]) -> list[str]:
    """report.md's totals as tables, never a Python dict: the scalars in one table, then one table per
    breakdown (``by_role``: a row per role; counts by reason: a row per reason)."""
    scalars = [[k, v] for k, v in totals.items() if not isinstance(v, dict)]
    lines = markdown_table(["total", "value"], scalars)
    for name, value in totals.items():
        if not isinstance(value, dict) or not value:
            continue
        lines += ["", f"### {name}", ""]
        nested = [v for v in value.values() if isinstance(v, dict)]
        if nested:
            columns = list(dict.fromkeys(c for v in nested for c in v))
            rows = [
                [k, *(v.get(c, "") if isinstance(v, dict) else v for c in columns)] for k, v in value.items()
            ]
            lines += markdown_table([name.removeprefix("by_") or "key", *columns], rows)
        else:
            lines += markdown_table(["key", "count"], [[k, v] for k, v in value.items()])
    return lines


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        # who made E (tfgrpo.state.published.make_provenance), written beside it in library.json
        self.provenance: dict[str, Any] | None = None

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints.sqlite"

    @property
    def store(self) -> Path:
        return self.path / "store.sqlite"

    def create(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"--run-dir {self.path} is a file, not a directory: pass a directory")
        unwritable = [p for p in (self.path, self.checkpoints, self.store) if p.exists() and not writable(p)]
        if unwritable:
            raise ReadOnlyRun(read_only_message(self.path, "a run cannot learn or resume there"))
        try:
            (self.path / "libraries").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--run-dir {self.path}: cannot create it ({exc.strerror or exc})") from None

    def has_outputs(self) -> bool:
        """Whether a run already wrote its library or report here (written only after a checkpoint)."""
        return any((self.path / name).exists() for name in ("library.json", "report.json")) or any(
            (self.path / "libraries").glob("step-*.json")
        )

    def refuse_new_run_over_outputs(self, checkpoints: str = "") -> None:
        """A run directory with outputs but no checkpoint (deleted, emptied) must not be overwritten;
        ``checkpoints`` says where the checkpoint was looked for (default: this directory's file)."""
        if self.has_outputs():
            where = checkpoints or f"{self.checkpoints.name} is missing or empty"
            raise ConfigError(
                f"{self.path} holds the outputs of an earlier run but no checkpoint to resume it "
                f"({where}): start fresh with another --run-dir (or delete {self.path})"
            )

    def write_settings(self, ctx: Context, seed: int, *, db: str = "", run_id: str = "") -> None:
        """``run.json``: the settings, and the database (no password) and run id of a run in a shared
        database ("" for a run directory's own files), so that a resume naming another database or none
        says exactly that (:func:`check_same_database`)."""
        recorded = {"seed": seed, "database": database_label(db), "run_id": run_id if db else ""}
        atomic_write(
            self.path / "run.json",
            json.dumps({**recorded, "context": recorded_context(ctx)}, indent=2) + "\n",
        )

    def write_library(self, library: Library, step: int | None = None) -> None:
        """E now (``library.json``, ``library.md``) and, after step ``step``, its snapshot (idempotent)."""
        data: dict[str, Any] = dict(library)
        if self.provenance is not None:
            if step is not None:
                self.provenance["step"] = step
            data["provenance"] = dict(self.provenance)
        atomic_write(self.path / "library.json", json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        atomic_write(self.path / "library.md", library_markdown(library))
        if step is not None:
            snap = self.path / "libraries" / f"step-{step:04d}.json"
            if not snap.exists():
                atomic_write(snap, json.dumps(library, indent=2, ensure_ascii=False) + "\n")

    def write_outputs(
        self, values: dict[str, Any], history: list[StepReport], paid: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Library and report from the graph state and the run's step history (idempotent). The reports
        are rewritten whole: the CLI does it when a run stops, not after every step (that would write
        O(steps^2) bytes over a run). Returns the report (report.json's content)."""
        self.write_library(values.get("library") or empty_library())
        report: dict[str, Any] = {"totals": totals(history, paid), "steps": history}
        atomic_write(self.path / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        lines = ["# Training-Free GRPO run report", "", "```", table_header()]
        lines += [table_line(r) for r in history]
        lines += ["```", "", "## Totals", ""]
        lines += totals_markdown(report["totals"])
        checked = [r for r in history if "validation" in r]
        if checked:
            lines += ["", "## Validation-gated updates", ""]
            lines += [f"- step {r['step']}: {r['validation']['reason']} ({r['validation']['runs']} runs, "
                      f"{r['validation']['failed']} failed)" for r in checked]  # fmt: skip
        chosen = [r for r in history if "selection" in r]
        if chosen:
            lines += ["", "## Candidates (--candidates)", ""]
            lines += [line for r in chosen for line in selection_lines(r)]
        proposed = [(r["step"], op) for r in history for op in r.get("proposed", [])]
        if proposed:
            lines += ["", "## Proposed operations", ""]
            lines += [f"- step {s}: {operation_line(op)}" for s, op in proposed]
        rewrites = [(r["step"], op) for r in history for op in r.get("rewrites", [])]
        if rewrites:
            lines += ["", "## Rewrites that passed the lesson gate", ""]
            lines += [f"- step {s}: {operation_line(op)}" for s, op in rewrites]
        rejected = [(r["step"], x) for r in history for x in r["rejected"]]
        if rejected:
            lines += ["", "## Rejected operations", ""]
            lines += [f"- step {s}: {operation_line(x['operation'])} — {x['why']}" for s, x in rejected]
        atomic_write(self.path / "report.md", "\n".join(lines) + "\n")
        return report

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
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: cannot read the experience library ({exc})") from None
        return library_value(data, str(path))  # a hand-edited file: its items checked


def prune_checkpoints(saver: Any, thread_id: str, latest_checkpoint_id: str) -> int:
    """Delete a thread's checkpoints and writes older than ``latest_checkpoint_id``.

    ``SqliteSaver`` stores full channel values at every superstep, so an unpruned run grows with the
    number of supersteps. Resume needs only the latest checkpoint (and its pending writes); per-step
    libraries and reports are kept as files. Checkpoint ids are time-ordered, so ``<`` is "older".
    """
    with saver.cursor() as cur:
        cur.execute(
            "DELETE FROM checkpoints WHERE thread_id = ? AND checkpoint_id < ?",
            (thread_id, latest_checkpoint_id),
        )
        deleted = int(cur.rowcount or 0)
        cur.execute(
            "DELETE FROM writes WHERE thread_id = ? AND checkpoint_id < ?",
            (thread_id, latest_checkpoint_id),
        )
    return deleted


def _hard_stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


# What stops a run gracefully: Ctrl-C, and what ``docker stop``, systemd, CI cancellation (SIGTERM) and a
# closed terminal (SIGHUP) send. Without a handler the last two end the process at once, like SIGKILL.
DRAIN_SIGNALS = {"SIGINT": "Ctrl-C", "SIGTERM": "SIGTERM", "SIGHUP": "SIGHUP"}
# A drain that takes longer than this (a call stuck in flight) aborts like a second signal: a service
# manager would otherwise wait for it, then kill the process anyway.
DRAIN_SECONDS = 60.0


@contextmanager
def ctrl_c_drains(bound: float = DRAIN_SECONDS) -> Iterator[RunControl]:
    """A RunControl that the first Ctrl-C, SIGTERM or SIGHUP asks to drain (the graph stops at the next
    superstep, map branches not yet started refuse to start: :func:`tfgrpo.nodes._llm.stop_if_draining`);
    a second one, or a drain longer than ``bound`` seconds, aborts."""
    control = RunControl()
    if threading.current_thread() is not threading.main_thread():
        yield control  # a run in another thread (two learn() at once): signals are the main thread's
        return
    # (no SIGHUP on Windows)
    signals = [getattr(signal, name) for name in DRAIN_SIGNALS if hasattr(signal, name)]
    timer: list[threading.Timer] = []

    def drain(signum: int, frame: FrameType | None) -> None:
        for sig in signals:
            signal.signal(sig, _hard_stop)
        name = DRAIN_SIGNALS.get(signal.Signals(signum).name, signal.Signals(signum).name)
        again = "Ctrl-C again" if name == "Ctrl-C" else "send it again"
        print(
            f"\nstopping ({name}): calls in flight finish, no new one starts ({again} to abort)...",
            file=sys.stderr,
            flush=True,
        )
        control.request_drain(name)
        timer.append(threading.Timer(bound, _thread.interrupt_main))
        timer[0].daemon = True
        timer[0].start()

    previous = {sig: signal.signal(sig, drain) for sig in signals}
    try:
        yield control
    finally:
        for t in timer:
            t.cancel()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_stoppably(
    drive: Callable[[RunControl], None], ledger: Ledger, *, on_stop: Callable[[], None], stopped: str
) -> None:
    """Run ``drive`` under ``ledger`` and Ctrl-C (or SIGTERM, SIGHUP). A stop saves what the run has so
    far (``on_stop``) and raises :class:`BudgetStopped` (the budget) or :class:`RunInterrupted` (a
    signal); ``stopped`` says how to resume."""
    try:
        with use_ledger(ledger), ctrl_c_drains() as control:
            drive(control)
    except BudgetExceeded as exc:
        on_stop()
        raise BudgetStopped(
            exc.reason, spent_tokens=ledger.spent_tokens, spent_usd=ledger.spent_usd, resume=stopped
        ) from exc
    except (GraphDrained, StopRequested):
        on_stop()
        raise RunInterrupted(stopped) from None


def show_progress(enabled: bool) -> bool:
    """Progress bars on a terminal, and in Jupyter (``tqdm.auto`` draws widgets there)."""
    if not enabled:
        return False
    if sys.stderr.isatty():
        return True
    try:
        from IPython import get_ipython  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def check_resume(values: dict[str, Any], ctx: Context, queries: list[Query]) -> None:
    """Raise a one-line error when a run would continue with another dataset or other settings."""
    fingerprint = values.get("dataset_fingerprint")
    if fingerprint and fingerprint != dataset_fingerprint(queries):
        raise ConfigError(f"dataset {ctx.dataset!r} differs from the one this run started with")
    settings = values.get("settings_fingerprint")
    if settings and settings != ctx.settings_fingerprint():
        changed = changed_settings(values.get("run_settings"), ctx.run_defining())
        raise ConfigError(
            "settings differ from the ones this run started with"
            + (f": {changed}" if changed else "")
            + f" ({', '.join({**ctx.run_defining(), **LATER_RUN_DEFINING})} must stay the same to resume)"
        )


def identity_namespace(run_id: str) -> tuple[str, ...]:
    return ("tfgrpo", run_id or "default", "run")


def mark_run(store: BaseStore, run_id: str) -> None:
    """Put the run's identity in its store before its first step, so that a resume can tell the run's
    store from an emptied one or another run's (:func:`check_store_holds_run`); an identity already
    there (:func:`claim_run`) is kept."""
    if not run_identity(store, run_id):
        store.put(identity_namespace(run_id), "identity", {"run_id": run_id}, index=False)


def run_identity(store: BaseStore, run_id: str) -> dict[str, Any]:
    item = store.get(identity_namespace(run_id), "identity")
    return dict(item.value) if item is not None else {}


def claim_run(store: BaseStore, run_id: str, run_dir: Path, *, derived: bool, where: str) -> None:
    """In a shared database, two directories never silently share a run: a run id derived from the
    directory's name (no ``--run-id``) that the database holds for another directory is refused, naming
    both (an explicit ``--run-id`` may resume its run from anywhere: another machine, another
    directory). The first directory is recorded in the run's identity (``tfgrpo runs rm`` deletes its
    outputs too)."""
    identity = run_identity(store, run_id)
    owner = identity.get("run_dir")
    here = str(Path(run_dir).resolve())
    if derived and isinstance(owner, str) and owner != here:
        raise ConfigError(
            f"run id {run_id!r} in {where} is the run of {owner}; {here} would share it (a run id "
            "defaults to the directory's name): pass --run-id NAME for a run of its own, or "
            f"--run-id {run_id} to resume that run from here"
        )
    if not isinstance(owner, str):
        identity |= {"run_id": run_id, "run_dir": here, "derived": derived}
        store.put(identity_namespace(run_id), "identity", identity, index=False)


OUTPUT_FILES = (
    "run.json",
    "library.json",
    "library.md",
    "report.json",
    "report.md",
    "learning_curve.png",
    "eval.json",
    "results.json",
    "thread.txt",
)


@dataclass
class RunOutputs:
    """The files a run of a shared database wrote in its directory (for ``tfgrpo runs rm``)."""

    directory: Path
    files: list[Path]


def run_outputs(store: BaseStore, run_id: str, db: str) -> RunOutputs | None:
    """The output files of run ``run_id`` in the directory its identity names, when that directory's
    ``run.json`` (or ``eval.json``) says it is this run in this database; None otherwise."""
    owner = run_identity(store, run_id).get("run_dir")
    if not isinstance(owner, str):
        return None
    directory = Path(owner)
    if recorded_run(directory) != {"database": database_label(db), "run_id": run_id}:
        return None
    files = [directory / name for name in OUTPUT_FILES if (directory / name).is_file()]
    files += sorted((directory / "libraries").glob("step-*.json"))
    files += sorted(directory.glob("*.png"))
    return RunOutputs(directory, sorted(set(files)))


def delete_run_outputs(outputs: RunOutputs | None) -> int:
    """Delete the files :func:`run_outputs` found (and the directories they leave empty); how many."""
    if outputs is None:
        return 0
    for file in outputs.files:
        file.unlink(missing_ok=True)
    for directory in (outputs.directory / "libraries", outputs.directory):
        with suppress(OSError):
            (directory / ".lock").unlink(missing_ok=True)
            directory.rmdir()  # only when empty: a user's own files stay
    return len(outputs.files)


def database_label(url: str) -> str:
    """How run.json names a run's database: "" (the run directory's own files), a SQLite file's absolute
    path, or a PostgreSQL URL without its password."""
    from tfgrpo.runs.pglock import redacted

    if not url:
        return ""
    if url.startswith(("postgresql://", "postgres://")):
        return redacted(url)
    return str(Path(url.removeprefix("sqlite:///")).resolve())


def recorded_run(directory: Path) -> dict[str, Any] | None:
    """The database and run id a directory's ``run.json`` / ``eval.json`` records (None: no such file,
    or written before they were recorded)."""
    for name in ("run.json", "eval.json"):
        try:
            data = json.loads((directory / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and "database" in data and "run_id" in data:
            return {"database": data["database"], "run_id": data["run_id"]}
    return None


def check_same_database(directory: Path, db: str, run_id: str, option: str = "--run-dir") -> None:
    """A directory whose run lives in another database (or under another run id) than this command
    names, and this command finds no checkpoint: say exactly that, instead of blaming a missing file."""
    recorded = recorded_run(directory)
    if recorded is None:
        return
    now = {"database": database_label(db), "run_id": run_id}
    if recorded["database"] != now["database"]:
        was = f"--db {recorded['database']}" if recorded["database"] else "no --db (its own SQLite files)"
        given = f"--db {now['database']}" if now["database"] else "no --db and no $TFGRPO_DATABASE_URL"
        raise ConfigError(
            f"{option} {directory} is run {recorded['run_id']!r} in {was}, but this command names {given}: "
            f"pass the same --db to resume it, or use another {option} for a new run"
        )
    if now["database"] and recorded["run_id"] != run_id:
        raise ConfigError(
            f"{option} {directory} is run {recorded['run_id']!r} in --db {now['database']}, not run "
            f"{run_id!r}: pass --run-id {recorded['run_id']} to resume it, or use another {option}"
        )


def check_store_holds_run(store: BaseStore, run_id: str, where: str, fresh: str) -> None:
    """A checkpoint names its run; the store beside it must hold something of that run (its identity,
    E, step reports, the result memo). An emptied store (``: > store.sqlite``) or another run's would
    make a finished run look like 0 steps and rewrite its reports, or a running one die mid-step: refused
    in one line, like a damaged checkpoints.sqlite."""
    if store.search(("tfgrpo", run_id or "default"), limit=1):
        return
    raise DamagedRun(
        f"{where} is damaged (it holds nothing of this run: emptied, or another run's store): this run "
        f"cannot resume from it; {fresh}"
    )


def changed_settings(started: Any, now: dict[str, object]) -> str:
    """``name: old -> new`` for each run-defining setting that changed; '' when the run did not store its
    settings (runs from before they were kept in state)."""
    if not isinstance(started, dict):
        return ""
    # a later run-defining setting at its default is left out of both (LATER_RUN_DEFINING)
    names = [*now, *(name for name in LATER_RUN_DEFINING if name in started and name not in now)]
    was = {**LATER_RUN_DEFINING, **started}
    is_ = {**LATER_RUN_DEFINING, **now}
    return ", ".join(
        f"{name}: {was[name]!r} -> {is_[name]!r}" for name in names if name in was and was[name] != is_[name]
    )


def history_namespace(run_id: str) -> tuple[str, ...]:
    return ("tfgrpo", run_id or "default", "history")


def step_history(store: BaseStore, run_id: str) -> list[StepReport]:
    """The reports of a run's finished steps, in order (from the store, where ``advance`` puts them)."""
    reports: list[StepReport] = []
    while True:
        page = store.search(history_namespace(run_id), limit=500, offset=len(reports))
        reports += [item.value for item in page]  # type: ignore[misc]
        if len(page) < 500:
            return sorted(reports, key=lambda r: r["step"])
