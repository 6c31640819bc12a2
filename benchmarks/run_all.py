"""``make bench``: every benchmark in turn, each printing its own tables, then how long each took.

Each runs as its own process, in this order, with these arguments, all in one Ray cluster that this script starts
and stops (``workloads.init_ray``); a benchmark that fails stops the run with its exit status. The last table is
the wall time of each and of the whole.

    RAY_AUTH_MODE=disabled ../.venv/bin/python run_all.py [--only e2e_trl,async_rollouts]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from workloads import SHARED_CPUS, SHARED_RAY, start_local_ray, table

HERE = Path(__file__).resolve().parent
BENCHMARKS = [
    # The 40M TRL step takes ~4 demo steps of both sides together: one measured step fewer there.
    ("e2e_trl", ["--steps", "demo=4,40m=3"]),
    ("rollout_gen", ["--rounds", "2"]),
    ("learner_step", ["--steps", "2"]),
    # The ~100M model the issue names; the demo model's broadcast is e2e_trl's sync column, in the demo's layout.
    ("weight_sync", ["--rounds", "2", "--sizes", "100m"]),
    ("async_rollouts", ["--steps", "6"]),
    # The demo's profile only (step_profile.py's default profiles both workloads; --workloads 40m the 40M one).
    ("step_profile", ["--steps", "1", "--workloads", "demo"]),
]
"""Sized to run in about 14-15 minutes on this project's 2-core machine (13.8-14.7 in three runs on one day);
each script's own defaults (``--help``) measure longer."""


def shared_cluster() -> str:
    """Start the local Ray cluster every benchmark joins (as ``init_ray`` would start its own); its address."""
    import ray

    start_local_ray(SHARED_CPUS)
    return ray.get_runtime_context().gcs_address


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
    try:
        env = os.environ | {SHARED_RAY: shared_cluster()}
        for name, extra in BENCHMARKS:
            if only and name not in only:
                continue
            print(f"\n=== {name} {' '.join(extra)}".rstrip(), flush=True)
            t0 = time.perf_counter()
            rc = subprocess.run([sys.executable, str(HERE / f"{name}.py"), *extra], cwd=HERE, env=env).returncode
            walls.append([name, time.perf_counter() - t0])
            if rc != 0:
                raise SystemExit(f"benchmark {name} failed with exit status {rc}")
    finally:
        import ray

        ray.shutdown()  # stops the cluster this process started
    total = time.perf_counter() - start
    table("wall time per benchmark, s", ["benchmark", "wall s"], [*walls, ["all", total]])
    print(f"\nmake bench: {total / 60:.1f} min")


if __name__ == "__main__":
    main()
