"""Asynchronous rollouts vs synchronous on the same two cores, on the demo workload, and whether it learns.

Synchronous: the rollout engines and the learner take turns, each with both cores, in the demo's layout (two
engines of one thread each, side by side; ``--all-modes`` adds one engine of two threads, which
``rollout_gen.py`` and earlier runs of this benchmark measured slower: the baseline is the faster of those run).
Asynchronous (``grpo.async_rollouts``: the next batch is sampled with the previous weights while the learner
trains): one engine pinned to core 0 and the learner to core 1, one thread each, the two-CPU-set placement a
machine with separate hardware for each role would give; once with the reference model on the learner
(``learner.reference: rank``) and once in the reference actor (``actor``, pinned beside the engine, so the
learner's core only trains). One fleet per mode (actor names prefixed), the modes taking turns in blocks of
steps (medians after two warm-up steps each), pinning the actors' threads at each switch; the reward across
the run shows the policy still improves when its samples are one step off-policy. Each core's own seconds
(sampling with its reference forward; training) give the bound of the split: an async step is at least the
busier core, plus the broadcast. Every fleet's policy learns to answer longer as it trains (the mean response
length column), and its steps grow with it: compare modes within this table, at the same steps, not with
another benchmark's earlier steps.

    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/async_rollouts.py [--steps 8] [--all-modes]
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

from e2e_trl import R1RaySide
from workloads import WORKLOADS, init_ray, median, table


def place(actor, cores: set[int], threads: int | None = -1) -> None:
    """Every thread of ``actor``'s process (and any it starts later) on ``cores``, with ``threads`` torch threads
    (-1: one per core; None: as the actor set them)."""
    import ray

    def set_affinity(_self, cores=cores, threads=threads):
        import torch

        for tid in os.listdir("/proc/self/task"):
            os.sched_setaffinity(int(tid), cores)
        # vLLM's CPU worker replaces ``torch.set_num_threads`` in the engine's process with a no-op that only
        # logs; without the original the engine kept its 2 OpenMP threads on one core (sampling x13 slower).
        if threads is not None:
            torch._C.set_num_threads(len(cores) if threads == -1 else threads)

    ray.get(actor.__ray_call__.remote(set_affinity))


@dataclass(frozen=True)
class Mode:
    name: str
    ahead: bool
    """Asynchronous rollouts (one step off-policy), rollout worker(s) and learner each on a core of its own."""
    overrides: tuple[str, ...] = ()
    """The fleet's layout, over the demo config (two engines of one thread each, a learner of two threads)."""


ONE_ENGINE = ("rollout.num_workers=1", "rollout.cpus_per_worker=2")
SYNC_ONE_ENGINE = Mode("sync, 1 engine x 2 threads", ahead=False, overrides=ONE_ENGINE)
"""Only with ``--all-modes``: slower than the demo's layout in every run so far (3.72 s against 3.15 s a step)."""
MODES = [
    Mode("sync, 2 engines x 1 thread (the demo's layout)", ahead=False),
    Mode("async, reference on the learner (rollout core 0, learner core 1)", ahead=True, overrides=ONE_ENGINE),
    Mode(
        "async, reference actor (rollout + reference core 0, learner core 1)",
        ahead=True,
        overrides=(*ONE_ENGINE, "learner.reference=actor"),
    ),
]


class Modes:
    """One fleet per mode in one Ray cluster (actor names prefixed), all on the same two cores; the modes take
    turns in blocks of steps."""

    def __init__(self, modes: list[Mode]) -> None:
        from cluster.stages.rl import RolloutSchedule

        # Asynchronous rollouts need the engine's logprobs as the behaviour policy; the synchronous steps use
        # them too (one update on fresh samples: the same computation as the learner's own, plus one table).
        # Each engine keeps a small KV cache: five engines share this machine's memory.
        extra = ["grpo.async_rollouts=true", "rollout.gpu_memory_utilization=0.04"]
        self.sides = {
            mode: R1RaySide(WORKLOADS["demo"], [*extra, *mode.overrides], prefix=f"m{i}-")
            for i, mode in enumerate(modes)
        }
        self.sample_s: dict[Mode, list[float]] = {mode: [] for mode in modes}
        self.schedules = {mode: RolloutSchedule(self._timed_sample(mode), ahead=mode.ahead) for mode in modes}
        self.times: dict[Mode, list[float]] = {mode: [] for mode in modes}
        self.rewards: dict[Mode, list[float]] = {mode: [] for mode in modes}
        self.staleness: dict[Mode, list[int]] = {mode: [] for mode in modes}
        # Each role's own seconds per step: generation (inside the engine), training, broadcast; the batch's mean
        # response length.
        self.phases: dict[Mode, dict[str, list[float]]] = {mode: {} for mode in modes}

    def _timed_sample(self, mode: Mode):
        """The side's sampling (generate, score, and the reference forward with the reference actor), timed."""

        def sample():
            t0 = time.perf_counter()
            sampled = self.sides[mode].sample()
            self.sample_s[mode].append(time.perf_counter() - t0)
            return sampled

        return sample

    def steps(self, mode: Mode, n: int, keep: bool) -> None:
        side = self.sides[mode]
        fleet = side.fleet
        # Synchronous: every actor may use both cores (each engine with its configured threads).
        for worker in fleet.rollouts:
            place(worker, {0} if mode.ahead else {0, 1}, threads=None if not mode.ahead else 1)
        place(fleet.learners[0], {1} if mode.ahead else {0, 1})
        if fleet.reference is not None:
            place(fleet.reference, {0} if mode.ahead else {0, 1})
        schedule = self.schedules[mode]
        for i in range(n):
            t0 = time.perf_counter()
            sampled = schedule.batch(prefetch=i < n - 1)
            _, phases = side.learn(sampled, settle=schedule.settle)
            self.rewards[mode].append(phases["reward"])
            self.staleness[mode].append(side.version - 1 - sampled.rollouts.policy_version)
            if keep:
                self.times[mode].append(time.perf_counter() - t0)
                own = {key: phases[key] for key in ("train_s", "wait_s", "sync_s")}
                own |= {"gen_s": sampled.rollouts.gen_seconds, "sample_s": self.sample_s[mode][-1]}
                own["length"] = float(sampled.rollouts.lengths.mean())
                for key, value in own.items():
                    self.phases[mode].setdefault(key, []).append(value)

    def close(self) -> None:
        for schedule in self.schedules.values():
            schedule.close()
        for side in self.sides.values():
            side.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="measured steps per mode (two blocks)")
    parser.add_argument("--all-modes", action="store_true", help="also synchronous with one engine of two threads")
    args = parser.parse_args()
    run_modes = [MODES[0], SYNC_ONE_ENGINE, *MODES[1:]] if args.all_modes else MODES
    init_ray(num_cpus=8 * len(run_modes))  # logical: each fleet reserves its own; they take turns
    modes = Modes(run_modes)
    try:
        for mode in run_modes:
            modes.steps(mode, 2, keep=False)  # warm-up: the first async step has nothing sampled ahead yet
        for _ in range(2):
            for mode in run_modes:
                modes.steps(mode, args.steps // 2, keep=True)
    finally:
        modes.close()
    rows = []
    for mode in run_modes:
        r, p = modes.rewards[mode], {key: median(v) for key, v in modes.phases[mode].items()}
        reward = f"{r[0]:.3f} -> {r[-1]:.3f}"
        rows.append([mode.name, median(modes.times[mode]), p["gen_s"], p["sample_s"], p["train_s"], p["wait_s"]])
        rows[-1] += [p["sync_s"], p["length"], reward, max(modes.staleness[mode])]
    header = ["mode", "median s/step", "generate", "sample", "train", "wait", "sync", "mean len"]
    header += ["reward first -> last", "stale"]
    table(
        f"async vs sync rollouts, demo workload, {args.steps} measured steps each (blocks of {args.steps // 2})",
        header,
        rows,
    )
    block = args.steps // 2
    for mode in run_modes:
        print(f"{mode.name}: reward of the last block {sum(modes.rewards[mode][-block:]) / block:.3f}")
    step = {mode: median(modes.times[mode]) for mode in run_modes}
    sync = min((m for m in run_modes if not m.ahead), key=step.get)  # the faster synchronous layout
    fast = min((m for m in run_modes if m.ahead), key=step.get)
    for mode in run_modes:
        if mode.ahead:  # each core's work per step: the busier one, then the broadcast, bounds the step
            p = {key: median(v) for key, v in modes.phases[mode].items()}
            print(
                f"{mode.name}: sampling core {p['sample_s']:.2f} s (generate {p['gen_s']:.2f}), learner core"
                f" {p['train_s']:.2f} s, broadcast {p['sync_s']:.2f} s; the faster sync's step / this one"
                f" x{step[sync] / step[mode]:.2f}"
            )
    print(f"\nasync/sync speed-up: x{step[sync] / step[fast]:.2f} ({fast.name} against {sync.name})")


if __name__ == "__main__":
    main()
