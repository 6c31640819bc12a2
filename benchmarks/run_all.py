"""``make bench``: every benchmark in turn, each printing its own tables, then how long each took.

Each runs as its own process (its own Ray cluster), in this order, with these arguments; a benchmark that
fails stops the run with its exit status. The last table is the wall time of each and of the whole.

    RAY_AUTH_MODE=disabled ../.venv/bin/python run_all.py [--only e2e_trl,async_rollouts]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from workloads import table

HERE = Path(__file__).resolve().parent
BENCHMARKS = [
    # The 40M TRL step takes ~4 demo steps of both sides together: one measured step fewer there.
    ("e2e_trl", ["--steps", "demo=4,40m=3"]),
    ("rollout_gen", ["--rounds", "2"]),
    ("learner_step", ["--steps", "2"]),
    # The ~100M model the issue names; the demo model's broadcast is e2e_trl's sync column, in the demo's layout.
    ("weight_sync", ["--rounds", "2", "--sizes", "100m"]),
    ("async_rollouts", ["--steps", "6"]),
    ("step_profile", ["--steps", "1"]),
]
"""Sized to run in about 12 minutes on this project's 2-core machine at its usual speed (16.0 on a day it ran
1.15-2.7x slower); each script's own defaults (``--help``) measure longer."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated benchmark names (default: all)")
    args = parser.parse_args()
    names = {name for name, _ in BENCHMARKS}
    only = [n for n in args.only.split(",") if n]
    unknown = set(only) - names
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {sorted(unknown)}: expected some of {sorted(names)}")
    walls: list[list] = []
    start = time.perf_counter()
    for name, extra in BENCHMARKS:
        if only and name not in only:
            continue
        print(f"\n=== {name} {' '.join(extra)}".rstrip(), flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run([sys.executable, str(HERE / f"{name}.py"), *extra], cwd=HERE).returncode
        walls.append([name, time.perf_counter() - t0])
        if rc != 0:
            raise SystemExit(f"benchmark {name} failed with exit status {rc}")
    total = time.perf_counter() - start
    table("wall time per benchmark, s", ["benchmark", "wall s"], [*walls, ["all", total]])
    print(f"\nmake bench: {total / 60:.1f} min")


if __name__ == "__main__":
    main()
