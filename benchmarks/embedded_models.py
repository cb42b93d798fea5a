"""Benchmark of the embedded models (``local:NAME``) on this machine, through the product path (llama.cpp's
server started by tfgrpo, langchain-openai, the inference agent, the learner's structured-output calls).

Per model it prints:

* completion tokens/s: plain chat completions (``usage.completion_tokens`` over wall time);
* accuracy on a fixed set of two-step word problems (``--domain direct``, temperature 0.7, math reward);
* the share of valid structured outputs for ``extract`` and ``update_library`` (the learner's real schemas
  and prompts on fixed groups of attempts; first try, no repair retry);
* the share of ``--domain math`` agent runs that call the ``python`` tool, and their accuracy;
* optionally (``--main-job``) the wall time of the README's main job (``tfgrpo learn`` with that model).

    python benchmarks/embedded_models.py                                  # the default 0.5B and SmolLM2
    python benchmarks/embedded_models.py --models qwen2.5-coder-1.5b-instruct --main-job

The machine's load average is printed with each model: on a shared machine every figure is pessimistic.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from tfgrpo.context import Context
from tfgrpo.evals.rewards import math_reward
from tfgrpo.models.spec import ModelSettings, get_model
from tfgrpo.nodes import extract, update_library
from tfgrpo.nodes._llm import tolerant_parse
from tfgrpo.nodes.policy import run_policy

# Two-step word problems with integer answers (fixed: the benchmark must compare like with like).
WORD_PROBLEMS: list[tuple[str, str]] = [
    ("A baker makes 4 trays of 12 muffins and sells 17 of them. How many muffins are left?", "31"),
    ("Tom has 35 marbles. He gives 8 to each of his 3 friends. How many marbles does he keep?", "11"),
    ("A book costs 7 dollars and a pen costs 3 dollars. How much do 5 books and 4 pens cost?", "47"),
    ("A train travels 60 km per hour for 3 hours, then 45 km more. How far does it travel?", "225"),
    ("Sara reads 14 pages a day for 6 days, then 9 pages on the seventh day. How many pages in all?", "93"),
    ("A farmer has 9 cows and 13 chickens. How many legs do the animals have in total?", "62"),
    ("There are 120 apples shared equally among 8 boxes; 3 boxes are sold. How many apples remain?", "75"),
    ("A shirt costs 25 dollars. Ann buys 3 shirts and pays with 100 dollars. What is her change?", "25"),
    ("A class has 28 students; 3/4 of them pass a test. How many students fail?", "7"),
    ("Mike earns 15 dollars an hour and works 6 hours a day for 4 days. How much does he earn?", "360"),
    ("A garden has 7 rows of 16 tulips and 5 tulips die. How many tulips are left?", "107"),
    ("A bus carries 42 people; 17 get off and 9 get on. How many people are on the bus now?", "34"),
    ("Lena saves 12 dollars a week. After 9 weeks she spends 40 dollars. How much has she left?", "68"),
    ("A pack holds 6 bottles. How many bottles are in 11 packs plus 4 loose bottles?", "70"),
    (
        "A rope is 90 m long. It is cut into 6 equal pieces and 2 pieces are used. How many metres remain?",
        "60",
    ),
    ("Each box has 24 pencils. A school orders 5 boxes and hands out 87 pencils. How many are left?", "33"),
    ("A car uses 8 litres of fuel per 100 km. How many litres does it use for 350 km?", "28"),
    ("Jo buys 3 kg of rice at 4 dollars per kg and 2 kg of beans at 5 dollars per kg. Total cost?", "22"),
    ("A cinema has 18 rows of 22 seats; 250 seats are taken. How many seats are free?", "146"),
    ("Pat runs 5 km every weekday and 8 km on each weekend day. How many km does Pat run in a week?", "41"),
]

# Fixed learner inputs: (question, answer, [(reward, attempt summary)]).
GROUPS: list[tuple[str, str, list[tuple[float, str]]]] = [
    (
        "What is 17 * 23 - 45?",
        "346",
        [
            (1.0, "Computed 17*23 = 391 first, then subtracted 45 to get 346. Final answer 346."),
            (0.0, "Subtracted first: 23 - 45 = -22, then 17 * -22 = -374. Ignored operator precedence."),
            (0.0, "Computed 17*23 = 381 (arithmetic slip), then 381 - 45 = 336."),
        ],
    ),
    (
        "A shop sells 3 pens for 2 dollars. How much do 18 pens cost?",
        "12",
        [
            (1.0, "Found the number of groups of 3 pens: 18 / 3 = 6, then 6 * 2 = 12 dollars."),
            (0.0, "Multiplied 18 * 2 = 36 dollars, forgetting that the price is for 3 pens."),
        ],
    ),
    (
        "What is (8 + 4) / 3 * 5?",
        "20",
        [
            (1.0, "Evaluated the parentheses (12), then left to right: 12 / 3 = 4, 4 * 5 = 20."),
            (0.0, "Computed 3 * 5 = 15 first, then 12 / 15 = 0.8: multiplied before dividing."),
            (1.0, "12 / 3 = 4 and 4 * 5 = 20; answer 20."),
        ],
    ),
    (
        "Tom is 3 times as old as Ann. In 5 years their ages will sum to 30. How old is Ann now?",
        "5",
        [
            (0.0, "Set Ann = x, Tom = 3x, and solved x + 3x = 30 without the 5 years: x = 7.5."),
            (1.0, "Wrote (x + 5) + (3x + 5) = 30, so 4x = 20 and x = 5. Checked: 5 and 15 -> 10 + 20 = 30."),
        ],
    ),
    (
        "What is the remainder of 2^10 divided by 7?",
        "2",
        [
            (1.0, "Computed 2^10 = 1024 and 1024 = 7 * 146 + 2, so the remainder is 2."),
            (0.0, "Guessed the remainder from 10 mod 7 = 3 without computing the power."),
        ],
    ),
]


def load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def tokens_per_second(spec: str, n: int) -> tuple[float, int]:
    model = get_model(ModelSettings(spec=spec, temperature=0.7, max_tokens=128))
    tokens, seconds = 0, 0.0
    for i in range(n):
        started = time.monotonic()
        reply = model.invoke(
            [HumanMessage(f"Explain in a few sentences why the sky looks blue. ({i})")], seed=i
        )
        seconds += time.monotonic() - started
        usage = getattr(reply, "usage_metadata", None) or {}
        tokens += int(usage.get("output_tokens", 0))
    return tokens / seconds if seconds else 0.0, tokens


def agent_runs(spec: str, domain: str, n: int, max_tokens: int) -> tuple[float, float, float]:
    """(accuracy, share of runs with a tool call, seconds per run) over the first n word problems."""
    ctx = Context(model=spec, domain=domain, reward="math", temperature=0.7, max_tokens=max_tokens)
    right = tooled = 0
    started = time.monotonic()
    for i, (question, answer) in enumerate(WORD_PROBLEMS[:n]):
        messages, error, _calls = run_policy(ctx, question, "", seed=1000 + i, node="benchmark")
        if error is None:
            final = next(
                (m for m in reversed(messages) if isinstance(m, AIMessage) and not m.tool_calls), None
            )
            right += math_reward(str(final.content) if final else "", answer) == 1.0
        tooled += any(isinstance(m, AIMessage) and m.tool_calls for m in messages)
    return right / n, tooled / n, (time.monotonic() - started) / n


def structured_validity(spec: str, max_tokens: int) -> tuple[float, float, float, float]:
    """Shares of valid extract and update outputs: (extract first try, extract with the tolerant parse,
    update first try, update with the tolerant parse)."""
    model = get_model(ModelSettings(spec=spec, temperature=0.3, max_tokens=max_tokens))
    results: dict[str, list[tuple[bool, bool]]] = {"extract": [], "update": []}
    proposals = []
    for question, answer, attempts in GROUPS:
        text = "\n\n".join(
            f"--- Attempt {i + 1} (reward {r:g}) ---\n{s}" for i, (r, s) in enumerate(attempts)
        )
        messages = [
            SystemMessage(extract.SYSTEM_PROMPT.format(k=2)),
            HumanMessage(
                extract.USER_TEMPLATE.format(
                    question=question, answer=answer, library="(empty)", attempts=text
                )
            ),
        ]
        ok, repaired, parsed = _structured(model, extract.ExtractedExperiences, messages)
        results["extract"].append((ok, repaired))
        if parsed is not None:
            proposals += [{**op.model_dump(), "sources": [question]} for op in parsed.operations]
    library = "[G1] Respect operator precedence: multiply and divide before adding and subtracting."
    for i in range(len(GROUPS)):
        batch = proposals[i : i + 3] or [{"op": "NONE", "id": None, "content": "", "reason": "nothing"}]
        messages = [
            SystemMessage(update_library.SYSTEM_PROMPT),
            HumanMessage(
                update_library.USER_TEMPLATE.format(library=library, proposals=json.dumps(batch, indent=1))
            ),
        ]
        ok, repaired, _ = _structured(model, update_library.LibraryUpdate, messages)
        results["update"].append((ok, repaired))

    def share(kind: str, idx: int) -> float:
        return sum(r[idx] for r in results[kind]) / len(results[kind])

    return share("extract", 0), share("extract", 1), share("update", 0), share("update", 1)


def _structured(model, schema, messages):  # type: ignore[no-untyped-def]
    out = model.with_structured_output(schema, method="function_calling", include_raw=True).invoke(messages)
    parsed = out.get("parsed")
    if isinstance(parsed, schema):
        return True, True, parsed
    repaired = tolerant_parse(schema, out.get("raw"))
    return False, repaired is not None, repaired


def main_job(spec: str) -> float:
    """Wall time of the README's main job (``tfgrpo learn``: learning, then the held-out comparison)."""
    with tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "tfgrpo.cli", "learn", "--model", spec, "--run-dir", tmp, "--no-progress"],
            capture_output=True,
            text=True,
        )
        seconds = time.monotonic() - started
        print(done.stdout[-1500:])
        if done.returncode:
            print(done.stderr[-1500:])
        return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="qwen2.5-coder-0.5b-instruct,smollm2-135m-instruct")
    parser.add_argument("--speed-requests", type=int, default=4)
    parser.add_argument("--problems", type=int, default=len(WORD_PROBLEMS))
    parser.add_argument("--tool-problems", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--main-job", action="store_true", help="also time the README's main job (minutes)")
    parser.add_argument("--parts", default="speed,word,structured,tools", help="which measurements to run")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    from tfgrpo.models.local_server import stop_local_server

    rows = []
    for name in args.models.split(","):
        spec = f"local:{name}"
        row: dict[str, object] = {"model": name, "load": load()}
        if "speed" in parts:
            started = time.monotonic()
            tps, tokens = tokens_per_second(spec, args.speed_requests)
            row["tokens/s"] = (
                f"{tps:.1f} ({tokens} tokens; first call incl. loading {time.monotonic() - started:.0f} s)"
            )
        if "word" in parts:
            acc, _, per_run = agent_runs(spec, "direct", args.problems, args.max_tokens)
            row["word problems"] = f"{acc:.0%} of {args.problems} ({per_run:.1f} s/run)"
        if "structured" in parts:
            e1, e2, u1, u2 = structured_validity(spec, 512)
            row["extract valid"] = f"{e1:.0%} ({e2:.0%} after repair)"
            row["update valid"] = f"{u1:.0%} ({u2:.0%} after repair)"
        if "tools" in parts:
            acc, tool_share, per_run = agent_runs(spec, "math", args.tool_problems, args.max_tokens)
            row["runs calling a tool"] = f"{tool_share:.0%} of {args.tool_problems} (accuracy {acc:.0%})"
        stop_local_server()  # one model in memory at a time
        if args.main_job:
            row["main job"] = f"{main_job(spec):.0f} s"
        row["load after"] = load()
        rows.append(row)
        print(json.dumps(row), flush=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    print("\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |")


if __name__ == "__main__":
    main()
