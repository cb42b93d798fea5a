"""What does the Python tool's OS sandbox (bubblewrap) cost per call?

Runs the same snippets through ``run_python`` in the sandbox and unsandboxed (``unsafe=True``, the
``--unsafe-python`` path), interleaved, and prints the median and 90th percentile wall time per call and
the sandbox's overhead. Needs ``bwrap`` (``apt-get install bubblewrap``).

    python benchmarks/python_sandbox.py [calls per snippet, default 20]
"""

from __future__ import annotations

import statistics
import sys
import time

from tfgrpo.tools.python_exec import run_python, sandbox_problem

SNIPPETS = {
    "print(1)": "print(1)",
    "import sympy": "import sympy\nprint(sympy.factor('x**2 - 1'))",
}


def main() -> int:
    problem = sandbox_problem()
    if problem is not None:
        print(f"no sandbox here: {problem}")
        return 1
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    print(f"{n} calls per snippet and mode, interleaved; seconds per call (median / p90)")
    print(f"{'snippet':<14} {'sandbox':>15} {'unsafe':>15} {'overhead (median)':>18}")
    for label, code in SNIPPETS.items():
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(n):
            for unsafe in (False, True):
                t0 = time.perf_counter()
                r = run_python(code, unsafe=unsafe)
                times[unsafe].append(time.perf_counter() - t0)
                if not r.ok:
                    print(f"{label}: failed ({r.error})")
                    return 1
        cells = []
        for unsafe in (False, True):
            ts = sorted(times[unsafe])
            cells.append(f"{statistics.median(ts):.3f} / {ts[int(0.9 * (len(ts) - 1))]:.3f}")
        overhead = statistics.median(times[False]) - statistics.median(times[True])
        print(f"{label:<14} {cells[0]:>15} {cells[1]:>15} {overhead:>+17.3f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
