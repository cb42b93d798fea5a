"""Dynamic sampling: how many groups keep contrast with G attempts alone, and with ``--max-group-size``?

One learning step's graph (rollout -> reward -> variance_gate, looping back for all-equal groups) over a
batch of arithmetic questions, with a scripted policy right about one time in ten
(``tfgrpo.testing.responders.rarely_right_responder``: no model, no server, a few seconds). Prints, per
cap, the share of groups whose rewards differ (the only groups the learner learns from), the attempts
drawn, and the share expected when every attempt is right with probability 1/10 independently:
1 - 0.9^N - 0.1^N for a group of N.

    python benchmarks/dynamic_sampling.py [--questions 100] [--group-size 4] [--caps 4,8,16]
"""

from __future__ import annotations

import argparse
import sys
import uuid
from typing import Any

from langgraph.store.memory import InMemoryStore

from tfgrpo.context import Context
from tfgrpo.graphs.step import compile_step_graph
from tfgrpo.models.spec import register_provider
from tfgrpo.state.types import Query
from tfgrpo.testing.responders import rarely_right_responder
from tfgrpo.testing.scripted import ScriptedChatModel

RIGHT = 0.1  # the scripted policy's chance of a right answer


def questions(n: int) -> list[Query]:
    return [
        {"id": f"q{i}", "question": f"Calculate {i} + {2 * i + 7}.", "answer": str(3 * i + 7)}
        for i in range(n)
    ]


def one_step(batch: list[Query], group_size: int, cap: int) -> dict[str, Any]:
    """The step's report with ``max_group_size=cap`` (the scripted learner answers instantly)."""
    prefix = "bench" + uuid.uuid4().hex[:8]
    register_provider(prefix, lambda name, settings: ScriptedChatModel(responder=rarely_right_responder))
    ctx = Context(
        model=f"{prefix}:m",
        reward="exact_match",
        group_size=group_size,
        max_group_size=0 if cap == group_size else cap,
        batch_size=len(batch),
        max_concurrency=8,
    )
    out = compile_step_graph(store=InMemoryStore()).invoke(
        {"batch": batch, "run_id": "bench", "step": 0}, context=ctx, config={"recursion_limit": 1000}
    )
    return out["report"]


def expected_share(n: int) -> float:
    return 1 - (1 - RIGHT) ** n - RIGHT**n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--caps", default="4,8,16", help="max group sizes to compare (G = no extra attempts)")
    args = parser.parse_args(argv)
    batch = questions(args.questions)
    caps = [int(c) for c in args.caps.split(",")]
    print(f"{args.questions} questions, G = {args.group_size}, policy right 1 time in {round(1 / RIGHT)}")
    print(
        f"{'cap':>4}  {'with contrast':>13}  {'share':>6}  {'expected':>8}  {'attempts':>8}  {'rescued':>7}"
    )
    for cap in caps:
        report = one_step(batch, args.group_size, cap)
        kept, n = report["groups_kept"], report["queries"]
        print(
            f"{cap:>4}  {kept:>6} of {n:<4}  {kept / n:>6.0%}  {expected_share(cap):>8.0%}  "
            f"{report['rollouts']:>8}  {report.get('groups_rescued', 0):>7}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
