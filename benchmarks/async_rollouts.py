"""Asynchronous rollouts vs synchronous on the same two cores, on the demo workload, and whether it learns.

Synchronous (the default): the rollout worker and the learner take turns, each with both cores (two
threads). Asynchronous (``grpo.async_rollouts``: the next batch is sampled with the previous weights
while the learner trains): the rollout worker's process is pinned to core 0 and the learner's to core 1,
one thread each, the two-CPU-set placement a machine with separate hardware for each role would give.
One fleet switches between the modes in blocks of steps (sync, async, sync, async; medians after two warm-up
steps each), pinning the actors' threads at each switch; the reward across the run shows the policy still
improves when its samples are one step off-policy. Each role's own seconds (generation inside the engine,
training, broadcast) give the bound of the split: an async step is at least the slower role on its one core,
plus the broadcast.

    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/async_rollouts.py [--steps 8]
"""

from __future__ import annotations

import argparse
import os
import time

from e2e_trl import R1RaySide
from workloads import WORKLOADS, init_ray, median, table


def place(actor, cores: set[int]) -> None:
    """Every thread of ``actor``'s process (and any it starts later) on ``cores``, one torch thread per core."""
    import ray

    def set_affinity(_self, cores=cores):
        import torch

        for tid in os.listdir("/proc/self/task"):
            os.sched_setaffinity(int(tid), cores)
        # vLLM's CPU worker replaces ``torch.set_num_threads`` in the engine's process with a no-op that only
        # logs; without the original the engine kept its 2 OpenMP threads on one core (sampling x13 slower).
        torch._C.set_num_threads(len(cores))

    ray.get(actor.__ray_call__.remote(set_affinity))


class Modes:
    """One fleet (actor names are unique), switched between the two modes between blocks of steps."""

    def __init__(self) -> None:
        from cluster.stages.rl import RolloutSchedule

        # Asynchronous rollouts need the engine's logprobs as the behaviour policy; the synchronous steps use
        # them too (one update on fresh samples: the same computation as the learner's own, plus one table).
        self.side = R1RaySide(WORKLOADS["demo"], ["grpo.async_rollouts=true"])
        self.schedules = {ahead: RolloutSchedule(self.side.sample, ahead=ahead) for ahead in (False, True)}
        self.times: dict[bool, list[float]] = {False: [], True: []}
        self.rewards: dict[bool, list[float]] = {False: [], True: []}
        self.staleness: dict[bool, list[int]] = {False: [], True: []}
        # Each role's own seconds per step: generation (inside the engine), training, broadcast.
        self.phases: dict[bool, dict[str, list[float]]] = {False: {}, True: {}}

    def steps(self, ahead: bool, n: int, keep: bool) -> None:
        rollout, learner = self.side.fleet.rollouts[0], self.side.fleet.learners[0]
        place(rollout, {0} if ahead else {0, 1})
        place(learner, {1} if ahead else {0, 1})
        schedule = self.schedules[ahead]
        for i in range(n):
            t0 = time.perf_counter()
            sampled = schedule.batch(prefetch=i < n - 1)
            _, phases = self.side.learn(sampled, settle=schedule.settle)
            self.rewards[ahead].append(phases["reward"])
            self.staleness[ahead].append(self.side.version - 1 - sampled.rollouts.policy_version)
            if keep:
                self.times[ahead].append(time.perf_counter() - t0)
                own = {"gen_s": sampled.rollouts.gen_seconds, "train_s": phases["train_s"], "sync_s": phases["sync_s"]}
                for key, value in own.items():
                    self.phases[ahead].setdefault(key, []).append(value)

    def close(self) -> None:
        for schedule in self.schedules.values():
            schedule.close()
        self.side.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="measured steps per mode (two blocks)")
    args = parser.parse_args()
    init_ray(num_cpus=16)
    modes = Modes()
    try:
        for ahead in (False, True):
            modes.steps(ahead, 2, keep=False)  # warm-up: the first async step has nothing sampled ahead yet
        for _ in range(2):
            for ahead in (False, True):
                modes.steps(ahead, args.steps // 2, keep=True)
    finally:
        modes.close()
    names = {False: "sync (both roles on cores 0+1, 2 threads)", True: "async (rollout core 0, learner core 1)"}
    rows = []
    for ahead, name in names.items():
        r, p = modes.rewards[ahead], {key: median(v) for key, v in modes.phases[ahead].items()}
        rows.append(
            [
                name,
                median(modes.times[ahead]),
                p["gen_s"],
                p["train_s"],
                p["sync_s"],
                f"{r[0]:.3f} -> {r[-1]:.3f}",
                max(modes.staleness[ahead]),
            ]
        )
    everything = modes.rewards[False][:2] + modes.rewards[True][:2]
    header = ["mode", "median s/step", "generate", "train", "sync", "reward first -> last step", "max staleness"]
    table(
        f"async vs sync rollouts, demo workload, {args.steps} measured steps each (blocks of {args.steps // 2})",
        header,
        rows,
    )
    print(
        f"reward of the first 4 steps (warm-up) {sum(everything) / 4:.3f}; of the last async block "
        f"{sum(modes.rewards[True][-(args.steps // 2) :]) / (args.steps // 2):.3f}"
    )
    # The best an overlap can do with one core per role: the slower role's step, then the broadcast (which
    # overlaps nothing); and the best any schedule can do on two cores: every role's core-seconds packed.
    one_core = {key: median(v) for key, v in modes.phases[True].items()}
    bound = max(one_core["gen_s"], one_core["train_s"]) + one_core["sync_s"]
    sync_step = median(modes.times[False])
    print(
        f"one core per role: generate {one_core['gen_s']:.2f} s, train {one_core['train_s']:.2f} s, so an async step "
        f"takes at least {bound:.2f} s: async/sync <= x{sync_step / bound:.2f} with this split"
    )
    print(f"\nasync/sync speed-up: x{sync_step / median(modes.times[True]):.2f}")


if __name__ == "__main__":
    main()
