"""Where an r1ray step's time goes, by a profiler: cProfile in the rollout worker, the learner rank and the driver.

The same driver loop as ``e2e_trl.py`` (real actors, the stage's own step functions) runs a warm-up step,
``--steps`` plain steps (timed) and as many profiled ones. In each process the profiled steps' self
time (cProfile's ``tottime``) is summed by where the code lives:

- ``torch kernels``: torch's C functions (the ops themselves, the autograd engine's backward): the work
  the floor (``floor.py``'s plain PyTorch training and ``generate``) does too;
- ``torch Python`` / ``transformers Python``: module calls, hooks, the model code's Python;
- ``vLLM scheduler`` / ``vLLM engine`` / ``vLLM model runner`` / ``vLLM sampler`` / ``vLLM other``;
- ``Ray``: actor calls, serialisation, object store; ``r1ray``: this project's Python (``actors/``,
  ``cluster/``, ``rewards/``); ``waiting``: blocking on locks, sockets, ``ray.get``, sleeps;
- ``other``: numpy, the standard library, the rest.

cProfile slows Python-heavy code more than kernels, so the profiled steps are slower than the plain ones
and the Python shares are upper bounds; the table shows both step times. Ratio line:
``profile: <workload> kernels x<share> of the rollout worker, x<share> of the learner``.

    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/step_profile.py [--workloads demo,40m] [--steps 3]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

from e2e_trl import R1RaySide
from workloads import WORKLOADS, init_ray, median, table

AREAS = (
    ("vllm/v1/core/", "vLLM scheduler"),
    ("vllm/v1/engine/", "vLLM engine"),
    ("vllm/v1/sample/", "vLLM sampler"),
    ("vllm/v1/worker/", "vLLM model runner"),
    ("vllm/model_executor/", "vLLM model runner"),
    ("vllm/", "vLLM other"),
    ("transformers/", "transformers Python"),
    ("torch/", "torch Python"),
    ("ray/", "Ray"),
    ("/actors/", "r1ray"),
    ("/cluster/", "r1ray"),
    ("/rewards/", "r1ray"),
)
BLOCKING = ("get_objects", "wait", "get")
"""Ray's own Python functions that block on other processes (their Cython callees are invisible to cProfile)."""
WAITING = ("acquire", "sleep", "select.", "epoll", "recv", "wait", "get_objects")
ORDER = ["torch kernels", "torch Python", "transformers Python", "vLLM scheduler", "vLLM engine",
         "vLLM model runner", "vLLM sampler", "vLLM other", "Ray", "r1ray", "waiting", "other"]  # fmt: skip


def area(file: str, name: str) -> str:
    """Where a profiled function lives (see the module docstring)."""
    if file == "~":  # a C function: cProfile names it after its object
        if any(w in name for w in WAITING):
            return "waiting"
        if "torch" in name or "run_backward" in name:
            return "torch kernels"
        if "ray." in name or "_raylet" in name:
            return "Ray"
        return "other"
    if file.endswith(("threading.py", "selectors.py", "queue.py")) or (name in BLOCKING and "ray/" in file):
        return "waiting"
    for part, label in AREAS:
        if part in file:
            return label
    return "other"


def top(stats: dict, n: int) -> list[tuple[str, str, float]]:
    """The ``n`` functions of most self time: (area, ``file:line(name)`` shortened, seconds)."""
    rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[:n]
    out = []
    for (file, line, name), (_, _, tottime, _, _) in rows:
        where = name if file == "~" else f"{file.split('site-packages/')[-1].split('/work/')[-1]}:{line}({name})"
        out.append((area(file, name), where, tottime))
    return out


def by_area(stats: dict) -> dict[str, float]:
    """pstats' raw table ((file, line, name) -> (calls, ncalls, tottime, cumtime, callers)) summed by area."""
    out: dict[str, float] = {}
    for (file, _, name), (_, _, tottime, _, _) in stats.items():
        key = area(file, name)
        out[key] = out.get(key, 0.0) + tottime
    return out


# Run inside an actor's process by ``__ray_call__`` (defined here, in __main__, so Ray ships them by value).
# A synchronous actor runs every call on one thread, so the profiler started by one call sees the next ones.
def _start_profile(actor) -> bool:
    import cProfile as profiler

    actor._r1ray_profile = profiler.Profile()
    actor._r1ray_profile.enable()
    return True


def _stop_profile(actor) -> dict:
    import pstats as stats

    actor._r1ray_profile.disable()
    table = stats.Stats(actor._r1ray_profile).stats
    return {key: value[:4] + ({},) for key, value in table.items()}  # callers dropped: smaller to ship


def run(name: str, steps: int, n_top: int) -> dict:
    import ray

    side = R1RaySide(WORKLOADS[name])
    actors = {"rollout worker": side.fleet.rollouts[0], "learner rank 0": side.fleet.learners[0]}
    try:
        side.step()  # warm-up
        plain = [side.step()["step_s"] for _ in range(steps)]
        ray.get([a.__ray_call__.remote(_start_profile) for a in actors.values()])
        driver = cProfile.Profile()
        began = time.perf_counter()
        driver.enable()
        profiled = [side.step() for _ in range(steps)]
        driver.disable()
        wall = time.perf_counter() - began
        tables = {role: ray.get(a.__ray_call__.remote(_stop_profile)) for role, a in actors.items()}
    finally:
        side.close()
    tables["driver"] = pstats.Stats(driver).stats
    per_step = {role: {k: v / steps for k, v in by_area(t).items()} for role, t in tables.items()}
    tops = {role: [(a, w, s / steps) for a, w, s in top(t, n_top)] for role, t in tables.items()}
    phases = {k: median([p[k] for p in profiled]) for k in ("sample_s", "train_s", "sync_s", "step_s")}
    return {
        "plain_step_s": median(plain),
        "profiled_wall_s": wall / steps,
        "phases": phases,
        "areas": per_step,
        "top": tops,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="demo,40m")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=6, help="functions of most self time to list per process")
    args = parser.parse_args()
    init_ray()
    results = {name: run(name, args.steps, args.top) for name in args.workloads.split(",")}
    lines = []
    for name, r in results.items():
        p = r["phases"]
        roles = list(r["areas"])
        rows = []
        for key in ORDER:
            values = [r["areas"][role].get(key, 0.0) for role in roles]
            if max(values) >= 0.005:
                rows.append([key, *values])
        rows.append(["total self time", *[sum(r["areas"][role].values()) for role in roles]])
        table(
            f"{name}: self time per step by area, s (step {r['plain_step_s']:.3g} s unprofiled, "
            f"{p['step_s']:.3g} s profiled: sample+score {p['sample_s']:.3g}, train {p['train_s']:.3g}, "
            f"sync {p['sync_s']:.3g})",
            ["area", *roles],
            rows,
        )
        for role, rows_top in r["top"].items():
            table(f"{name}, {role}: most self time per step", ["area", "function", "s"], [list(t) for t in rows_top])
        shares = []
        for role in ("rollout worker", "learner rank 0"):
            total = sum(r["areas"][role].values())
            shares.append(r["areas"][role].get("torch kernels", 0.0) / total if total else float("nan"))
        lines.append(f"{name} kernels x{shares[0]:.2f} of the rollout worker, x{shares[1]:.2f} of the learner")
    print("\nprofile: " + "; ".join(lines))


if __name__ == "__main__":
    main()
