"""Does a learning step cost little more than the HTTP calls it makes?

Starts tfgrpo's own fake OpenAI-compatible server (``python -m tfgrpo.testing.fake_openai``, the
rule-based ``grpo_responder``) twice as separate processes: one with a fixed latency per call, one with
none; both with a listen backlog large enough for the fan-out. Then, in a fresh interpreter per
measurement (so the first step pays for the cold imports, as a user's does), it measures:

* **P1** -- ``run_learning`` (the CLI's path: SQLite checkpoints and store, real HTTP through
  langchain-openai) for 2 steps of B=32, G=5, direct domain, math reward, unlimited concurrency, at
  ``--latency`` seconds per call. The critical path of a step is one latency per LLM stage that has calls
  (rollout, summarize, extract, update: 4). Ratio = step wall time / critical path; goal <= 1.15,
  first step included. The *P1 floor* replays that step's recorded requests stage by stage with bare
  ``ChatOpenAI.invoke`` in a thread pool: the same schedule without any engine, timed the same way.
* **Overhead** -- the same learning run at zero latency: calls/s and CPU ms per call (process CPU time,
  all threads plus the math-verify helper processes), against the *floor*: the very same request bodies
  (recorded by the server) replayed with ``ChatOpenAI.invoke`` in a thread pool, and with ``ainvoke``
  under asyncio. Goals: engine calls/s >= 0.7 x the thread-pool floor; <= 4 ms CPU per call.
* **Eval** -- ``run_eval`` of 32 questions x k=4 (128 one-call runs) at concurrency 16 and ``--latency``:
  time of the eval graph (report writing excluded) / the ideal schedule ceil(128 / 16) x latency;
  goal <= 1.1.
* **Checkpoints** -- bytes per step after 4, 8 and 16 steps (B=4, G=2, zero latency): the live bytes of
  ``checkpoints.sqlite`` with ``--keep-checkpoints``, and all bytes the process wrote (``wchar``:
  checkpoints, store, reports); goal: independent of the number of steps.

Each of P1, overhead and eval is repeated ``--repeats`` times (default 3); the table gives the min and the
median of every ratio. The machine's load matters: ratios are more stable than absolute figures.

    python benchmarks/engine.py                    # about 3-4 minutes
    python benchmarks/engine.py --repeats 1 --skip-eval --skip-checkpoints
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import io
import json
import math
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESPONDER = "tfgrpo.testing.responders:grpo_responder"
UNLIMITED = 1024  # "unlimited" concurrency: more than any stage's fan-out
LLM_NODES = ("rollout", "summarize", "extract", "update_library")


# ---------------------------------------------------------------------------------------------------------
# measuring helpers
# ---------------------------------------------------------------------------------------------------------


def _proc_cpu_seconds(pid: int) -> float:
    """utime + stime of one process from /proc (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                out += [int(c) for c in (task / "children").read_text().split()]
    return out


def tree_cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its live descendants (math-verify helpers)."""
    total = time.process_time()
    stack = _children(os.getpid())
    while stack:
        pid = stack.pop()
        total += _proc_cpu_seconds(pid)
        stack += _children(pid)
    return total


def bytes_written() -> int:
    """Bytes this process passed to write() so far (``wchar`` of /proc/self/io)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


@contextlib.contextmanager
def gc_clock() -> Iterator[list[float]]:
    """CPU seconds spent in the cyclic garbage collector during the block (all threads), in ``[0]``: a
    collection runs in the thread that triggered it, holding the GIL, so its thread's CPU clock counts it."""
    spent = [0.0]
    started: list[float] = []

    def clock(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started.append(time.thread_time())
        elif started:
            spent[0] += time.thread_time() - started.pop()

    gc.callbacks.append(clock)
    try:
        yield spent
    finally:
        gc.callbacks.remove(clock)


class StampedLines(io.TextIOBase):
    """A stdout stand-in that remembers when each line was printed."""

    def __init__(self) -> None:
        self.lines: list[tuple[float, str]] = []
        self._buf = ""

    def write(self, text: str) -> int:
        self._buf += text
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            self.lines.append((time.perf_counter(), line))
        return len(text)

    def step_rows(self) -> list[float]:
        """Times at which the per-step table rows were printed."""
        from tfgrpo.runs.rundir import REPORT_COLUMNS

        return [
            t
            for t, line in self.lines
            if len(line.split()) == len(REPORT_COLUMNS) and line.split()[0].isdigit()
        ]


def learn_context(url: str, *, size: int, batch: int, group: int, epochs: int, concurrency: int) -> Any:
    from tfgrpo.context import Context

    return Context(
        model="openai:fake",
        base_url=url,
        dataset=f"rg:basic_arithmetic:size={size}:seed=1",
        epochs=epochs,
        batch_size=batch,
        group_size=group,
        max_concurrency=concurrency,
    )


def learn(ctx: Any, run_dir: Path, *, keep_checkpoints: bool = False) -> tuple[StampedLines, dict[str, Any]]:
    from tfgrpo.learner import run_learning

    out = StampedLines()
    with contextlib.redirect_stdout(out):  # the tables, time-stamped line by line; a failure raises
        result = run_learning(ctx, run_dir=run_dir, seed=0, progress=False, keep_checkpoints=keep_checkpoints)
    return out, result.report


def split_waves(record: Path, offset: int, counts: list[list[int]]) -> list[list[list[dict[str, Any]]]]:
    """The request bodies recorded since ``offset``, cut into steps and their stages' waves by the
    calls each stage made (stages never overlap, so a stage's requests are consecutive)."""
    with record.open(encoding="utf-8") as f:
        f.seek(offset)
        bodies = [json.loads(line) for line in f if line.strip()]
    steps, at = [], 0
    for step in counts:
        waves = []
        for n in step:
            waves.append(bodies[at : at + n])
            at += n
        steps.append(waves)
    if at != len(bodies):
        raise SystemExit(f"P1 recorded {len(bodies)} requests, its report counts {at}")
    return steps


def stages_with_calls(step: dict[str, Any]) -> int:
    return sum(1 for node in LLM_NODES if step["usage"].get(node, {}).get("calls"))


# ---------------------------------------------------------------------------------------------------------
# children: one fresh interpreter per measurement
# ---------------------------------------------------------------------------------------------------------


def child_p1(args: argparse.Namespace) -> dict[str, Any]:
    ctx = learn_context(args.url, size=args.batch, batch=args.batch, group=args.group, epochs=2,
                        concurrency=UNLIMITED)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        out, report = learn(ctx, Path(tmp) / "run")
    rows = out.step_rows()
    steps = report["steps"]
    return {
        "first": rows[0] - t0,
        "warm": rows[1] - rows[0],
        "critical_first": stages_with_calls(steps[0]) * args.latency,
        "critical_warm": stages_with_calls(steps[1]) * args.latency,
        "calls": [s["calls"] for s in steps],
        # per step, the calls of each LLM stage in order: how the recorded requests split into waves
        "waves": [[s["usage"].get(node, {}).get("calls", 0) for node in LLM_NODES] for s in steps],
    }


def child_p1_floor(args: argparse.Namespace) -> dict[str, Any]:
    """The P1 step's own requests, wave by wave, with bare ``ChatOpenAI.invoke`` in a thread pool.

    What any engine built on langchain-openai pays on this machine for the same schedule: each stage's
    requests sent at once, the next stage started when the last reply is in. The first step is timed from
    before the ``langchain_openai`` import, as the engine's first step is timed from before its imports."""
    t0 = time.perf_counter()
    from langchain_openai import ChatOpenAI

    steps = json.loads(Path(args.record).read_text())["steps"]
    model = ChatOpenAI(model="fake", base_url=args.url, api_key="not-needed", temperature=0.7,  # type: ignore[arg-type]
                       max_completion_tokens=1024, extra_body={"max_tokens": 1024}, max_retries=0,
                       timeout=120)  # fmt: skip
    widest = max(len(wave) for step in steps for wave in step)
    ends: list[float] = []
    with ThreadPoolExecutor(max_workers=widest) as pool:
        for step in steps:
            for wave in step:
                jobs = [_replay_args(body) for body in wave]
                list(pool.map(lambda job: model.invoke(job[0], **job[1]), jobs))
            ends.append(time.perf_counter())
    return {
        "first": ends[0] - t0,
        "warm": ends[1] - ends[0],
        "critical_first": sum(1 for wave in steps[0] if wave) * args.latency,
        "critical_warm": sum(1 for wave in steps[1] if wave) * args.latency,
    }


def _replay_args(body: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    extra: dict[str, Any] = {k: body[k] for k in ("tools", "tool_choice", "seed") if k in body}
    return body["messages"], extra


def child_overhead(args: argparse.Namespace) -> dict[str, Any]:
    from langchain_openai import ChatOpenAI

    record = Path(args.record)
    with tempfile.TemporaryDirectory() as tmp:
        # warm-up (imports, the math-verify helpers, HTTP client): not measured
        warm = learn_context(args.url, size=8, batch=8, group=args.group, epochs=1, concurrency=UNLIMITED)
        learn(warm, Path(tmp) / "warm")
        ctx = learn_context(args.url, size=args.batch, batch=args.batch, group=args.group, epochs=2,
                            concurrency=UNLIMITED)  # fmt: skip
        offset = record.stat().st_size
        with gc_clock() as in_gc:
            cpu0, t0 = tree_cpu_seconds(), time.perf_counter()
            _, report = learn(ctx, Path(tmp) / "run")
            wall, cpu = time.perf_counter() - t0, tree_cpu_seconds() - cpu0
    with record.open(encoding="utf-8") as f:
        f.seek(offset)
        bodies = [json.loads(line) for line in f if line.strip()]
    calls = report["totals"]["calls"]
    result: dict[str, Any] = {"calls": calls, "requests": len(bodies), "engine_cps": calls / wall,
                              "engine_cpu_ms": 1000 * cpu / calls,
                              "engine_gc_ms": 1000 * in_gc[0] / calls}  # fmt: skip

    model = ChatOpenAI(model="fake", base_url=args.url, api_key="not-needed", temperature=0.7,  # type: ignore[arg-type]
                       max_completion_tokens=1024, extra_body={"max_tokens": 1024}, max_retries=0,
                       timeout=120)  # fmt: skip
    jobs = [_replay_args(b) for b in bodies]
    model.invoke(*jobs[0][:1], **jobs[0][1])  # warm the client

    cpu0, t0 = tree_cpu_seconds(), time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.floor_threads) as pool:
        list(pool.map(lambda job: model.invoke(job[0], **job[1]), jobs))
    wall, cpu = time.perf_counter() - t0, tree_cpu_seconds() - cpu0
    result.update(threads_cps=len(jobs) / wall, threads_cpu_ms=1000 * cpu / len(jobs))

    async def replay_async() -> None:
        limit = asyncio.Semaphore(args.floor_threads)

        async def one(job: tuple[list[dict[str, Any]], dict[str, Any]]) -> None:
            async with limit:
                await model.ainvoke(job[0], **job[1])

        await asyncio.gather(*(one(job) for job in jobs))

    cpu0, t0 = tree_cpu_seconds(), time.perf_counter()
    asyncio.run(replay_async())
    wall, cpu = time.perf_counter() - t0, tree_cpu_seconds() - cpu0
    result.update(async_cps=len(jobs) / wall, async_cpu_ms=1000 * cpu / len(jobs))
    return result


def child_eval(args: argparse.Namespace) -> dict[str, Any]:
    import tfgrpo.evaluator as evaluator
    from tfgrpo.context import Context

    drive = evaluator._drive
    spent: list[float] = []

    def timed_drive(*a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return drive(*a, **kw)
        finally:
            spent.append(time.perf_counter() - t0)

    evaluator._drive = timed_drive  # the eval graph's run, without the report writing after it
    ctx = Context(model="openai:fake", base_url=args.url, dataset="rg:basic_arithmetic:size=32:seed=2",
                  max_concurrency=args.eval_concurrency)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        evaluator.run_eval(ctx, eval_dir=Path(tmp) / "eval", k=4, seed=0, baseline=True, progress=False)
    runs = 32 * 4
    ideal = math.ceil(runs / args.eval_concurrency) * args.latency
    return {"seconds": spent[0], "runs": runs, "ideal": ideal}


def live_checkpoint_bytes(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        cp = conn.execute("SELECT COALESCE(SUM(LENGTH(checkpoint) + LENGTH(metadata)), 0) FROM checkpoints")
        wr = conn.execute("SELECT COALESCE(SUM(LENGTH(value)), 0) FROM writes")
        return int(cp.fetchone()[0]) + int(wr.fetchone()[0])
    finally:
        conn.close()


def child_checkpoints(args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        learn(learn_context(args.url, size=4, batch=4, group=2, epochs=1, concurrency=UNLIMITED),
              Path(tmp) / "warm")  # fmt: skip
        for steps in (4, 8, 16):
            run_dir = Path(tmp) / f"run{steps}"
            ctx = learn_context(args.url, size=4, batch=4, group=2, epochs=steps, concurrency=UNLIMITED)
            w0 = bytes_written()
            learn(ctx, run_dir, keep_checkpoints=True)
            written = bytes_written() - w0
            live = live_checkpoint_bytes(run_dir / "checkpoints.sqlite")
            rows.append({"steps": steps, "live_per_step": live / steps, "written_per_step": written / steps})
    return {"rows": rows}


CHILDREN: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "p1": child_p1,
    "p1floor": child_p1_floor,
    "overhead": child_overhead,
    "eval": child_eval,
    "checkpoints": child_checkpoints,
}


# ---------------------------------------------------------------------------------------------------------
# parent: servers, repeats, the table
# ---------------------------------------------------------------------------------------------------------


def with_path(path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(path), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@contextlib.contextmanager
def fake_server(latency: float, backlog: int, record: Path | None = None) -> Iterator[str]:
    cmd = [sys.executable, "-m", "tfgrpo.testing.fake_openai", "--latency", str(latency),
           "--backlog", str(backlog), "--responder", RESPONDER]  # fmt: skip
    if record is not None:
        cmd += ["--record", str(record)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=with_path(ROOT))
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("listening on "):
            raise SystemExit(f"fake server did not start: {line!r}")
        yield line.split()[-1]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def run_child(kind: str, args: argparse.Namespace, url: str, record: Path | None = None) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", kind, "--url", url, "--latency", str(args.latency),
           "--batch", str(args.batch), "--group", str(args.group), "--floor-threads", str(args.floor_threads),
           "--eval-concurrency", str(args.eval_concurrency)]  # fmt: skip
    if record is not None:
        cmd += ["--record", str(record)]
    # the measured tfgrpo: this checkout's, or another one's for an A/B (the servers stay this one's)
    env = with_path(args.engine_path or ROOT)
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if done.returncode:
        raise SystemExit(f"{kind} measurement failed:\n{done.stdout}\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def row(name: str, goal: str, values: list[float], fmt: str = "{:.2f}") -> str:
    shown = ", ".join(fmt.format(v) for v in values)
    return (f"| {name} | {goal} | {fmt.format(min(values))} | {fmt.format(statistics.median(values))} "
            f"| {shown} |")  # fmt: skip


def load_note() -> str:
    one, five, _ = os.getloadavg()
    return f"{os.cpu_count()} cores, load average {one:.1f} (1 min) / {five:.1f} (5 min)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--latency", type=float, default=1.0, help="seconds per call for P1 and eval")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--group", type=int, default=5)
    p.add_argument("--floor-threads", type=int, default=32, help="thread pool / asyncio limit of the floor")
    p.add_argument("--eval-concurrency", type=int, default=16)
    p.add_argument("--backlog", type=int, default=1024, help="listen backlog of the fake servers")
    p.add_argument("--skip-eval", action="store_true")
    p.add_argument("--skip-checkpoints", action="store_true")
    p.add_argument("--json", type=Path, help="also write the raw measurements here")
    p.add_argument("--engine-path", type=Path, help="import the measured tfgrpo from this directory (A/B)")
    p.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--record", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        print(json.dumps(CHILDREN[args.child](args)), flush=True)
        return 0

    print(f"engine benchmark: B={args.batch} G={args.group}, latency {args.latency:g} s, "
          f"{args.repeats} repeats; {load_note()}", flush=True)  # fmt: skip
    kinds = ("p1", "p1floor", "overhead", "eval", "checkpoints")
    raw: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "requests.jsonl"
        record.touch()
        slow_record = Path(tmp) / "slow-requests.jsonl"
        slow_record.touch()
        waves = Path(tmp) / "p1-waves.json"
        with (
            fake_server(args.latency, args.backlog, slow_record) as slow,
            fake_server(0.0, args.backlog, record) as fast,
        ):
            for r in range(args.repeats):
                offset = slow_record.stat().st_size
                raw["p1"].append(run_child("p1", args, slow))
                steps = split_waves(slow_record, offset, raw["p1"][-1]["waves"])
                waves.write_text(json.dumps({"steps": steps}))
                raw["p1floor"].append(run_child("p1floor", args, slow, waves))
                raw["overhead"].append(run_child("overhead", args, fast, record))
                if not args.skip_eval:
                    raw["eval"].append(run_child("eval", args, slow))
                print(f"  repeat {r + 1}/{args.repeats} done", file=sys.stderr, flush=True)
            if not args.skip_checkpoints:
                raw["checkpoints"].append(run_child("checkpoints", args, fast))
    if args.json:
        args.json.write_text(json.dumps(raw, indent=2) + "\n")

    p1, ov, ev = raw["p1"], raw["overhead"], raw["eval"]
    print(f"\nload after the run: {load_note()}\n")
    print("| measure | goal | min | median | repeats |")
    print("|---|---|---|---|---|")
    print(row("P1 first step / critical path", "<= 1.15", [x["first"] / x["critical_first"] for x in p1]))
    print(row("P1 warm step / critical path", "<= 1.15", [x["warm"] / x["critical_warm"] for x in p1]))
    fl = raw["p1floor"]
    print(row("P1 floor first step / critical path", "", [x["first"] / x["critical_first"] for x in fl]))
    print(row("P1 floor warm step / critical path", "", [x["warm"] / x["critical_warm"] for x in fl]))
    print(
        row(
            "engine / thread-pool floor, calls/s", ">= 0.70", [x["engine_cps"] / x["threads_cps"] for x in ov]
        )
    )
    print(row("engine / asyncio floor, calls/s", "", [x["engine_cps"] / x["async_cps"] for x in ov]))
    print(row("engine CPU ms per call", "<= 4", [x["engine_cpu_ms"] for x in ov]))
    if all("engine_gc_ms" in x for x in ov):
        print(row("  of which in the garbage collector", "", [x["engine_gc_ms"] for x in ov]))
    print(row("thread-pool floor CPU ms per call", "", [x["threads_cpu_ms"] for x in ov]))
    print(row("asyncio floor CPU ms per call", "", [x["async_cpu_ms"] for x in ov]))
    print(row("engine calls/s (zero latency)", "", [x["engine_cps"] for x in ov], "{:.0f}"))
    print(row("thread-pool floor calls/s", "", [x["threads_cps"] for x in ov], "{:.0f}"))
    print(row("asyncio floor calls/s", "", [x["async_cps"] for x in ov], "{:.0f}"))
    if ev:
        print(row(f"eval ({ev[0]['runs']} runs, concurrency {args.eval_concurrency}) / ideal", "<= 1.10",
                  [x["seconds"] / x["ideal"] for x in ev]))  # fmt: skip
    if raw["checkpoints"]:
        rows = raw["checkpoints"][0]["rows"]
        print("\ncheckpoint bytes per step (B=4, G=2, --keep-checkpoints); goal: flat in the number of steps")
        print("| steps | live checkpoint bytes / step | bytes written / step (all files) |")
        print("|---|---|---|")
        for x in rows:
            print(f"| {x['steps']} | {x['live_per_step']:,.0f} | {x['written_per_step']:,.0f} |")
    calls = ov[0]["calls"] if ov else 0
    per_step = p1[0]["calls"] if p1 else "-"
    print(f"\n(zero-latency run: {calls} LLM calls in 2 steps; P1 calls per step: {per_step})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
