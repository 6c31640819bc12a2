"""Asynchronous rollouts vs synchronous on the same two cores, on the demo workload, and whether it learns.

Synchronous (the default): the rollout worker and the learner take turns, each with both cores (two
threads). Asynchronous (``grpo.async_rollouts``: the next batch is sampled with the previous weights
while the learner trains): the rollout worker's process is pinned to core 0 and the learner's to core 1,
one thread each, the two-CPU-set placement a machine with separate hardware for each role would give.
Each mode runs twice: with the reference model on the learner (``learner.reference: rank``) and in the
reference actor (``actor``; pinned beside the rollout worker when asynchronous, so the learner's core only
trains). Two fleets (one per reference placement) switch between the modes in blocks of steps (medians after
two warm-up steps each), pinning the actors' threads at each switch; the reward across the run shows the
policy still improves when its samples are one step off-policy. Each core's own seconds (sampling with its
reference forward; training) give the bound of the split: an async step is at least the busier core, plus the
broadcast. The speed-up is set against the faster synchronous layout.

    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/async_rollouts.py [--steps 8]
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Mode:
    name: str
    ahead: bool
    """Asynchronous rollouts (one step off-policy), each role on its own core."""
    reference_actor: bool
    """The reference forward in the reference actor (on the rollout's core when ``ahead``), not the learner."""


MODES = [
    Mode("sync, reference on the learner (cores 0+1)", ahead=False, reference_actor=False),
    Mode("sync, reference actor (cores 0+1)", ahead=False, reference_actor=True),
    Mode("async, reference on the learner (rollout core 0, learner core 1)", ahead=True, reference_actor=False),
    Mode("async, reference actor (rollout + reference core 0, learner core 1)", ahead=True, reference_actor=True),
]


class Modes:
    """Two fleets in one Ray cluster (the learner's own reference; the reference actor), each switched between the
    synchronous and the asynchronous schedule between blocks of steps."""

    def __init__(self) -> None:
        from cluster.stages.rl import RolloutSchedule

        # Asynchronous rollouts need the engine's logprobs as the behaviour policy; the synchronous steps use
        # them too (one update on fresh samples: the same computation as the learner's own, plus one table).
        extra = ["grpo.async_rollouts=true"]
        self.sides = {
            False: R1RaySide(WORKLOADS["demo"], extra, prefix="rank-"),
            True: R1RaySide(WORKLOADS["demo"], [*extra, "learner.reference=actor"], prefix="actor-"),
        }
        self.sample_s: dict[Mode, list[float]] = {mode: [] for mode in MODES}
        self.schedules = {mode: RolloutSchedule(self._timed_sample(mode), ahead=mode.ahead) for mode in MODES}
        self.times: dict[Mode, list[float]] = {mode: [] for mode in MODES}
        self.rewards: dict[Mode, list[float]] = {mode: [] for mode in MODES}
        self.staleness: dict[Mode, list[int]] = {mode: [] for mode in MODES}
        # Each role's own seconds per step: generation (inside the engine), training, broadcast.
        self.phases: dict[Mode, dict[str, list[float]]] = {mode: {} for mode in MODES}

    def _timed_sample(self, mode: Mode):
        """The side's sampling (generate, score, and the reference forward with the reference actor), timed."""

        def sample():
            t0 = time.perf_counter()
            sampled = self.sides[mode.reference_actor].sample()
            self.sample_s[mode].append(time.perf_counter() - t0)
            return sampled

        return sample

    def steps(self, mode: Mode, n: int, keep: bool) -> None:
        side = self.sides[mode.reference_actor]
        fleet = side.fleet
        place(fleet.rollouts[0], {0} if mode.ahead else {0, 1})
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
    args = parser.parse_args()
    init_ray(num_cpus=16)
    modes = Modes()
    try:
        for mode in MODES:
            modes.steps(mode, 2, keep=False)  # warm-up: the first async step has nothing sampled ahead yet
        for _ in range(2):
            for mode in MODES:
                modes.steps(mode, args.steps // 2, keep=True)
    finally:
        modes.close()
    rows = []
    for mode in MODES:
        r, p = modes.rewards[mode], {key: median(v) for key, v in modes.phases[mode].items()}
        reward = f"{r[0]:.3f} -> {r[-1]:.3f}"
        rows.append([mode.name, median(modes.times[mode]), p["gen_s"], p["sample_s"], p["train_s"], p["wait_s"]])
        rows[-1] += [p["sync_s"], reward, max(modes.staleness[mode])]
    header = ["mode", "median s/step", "generate", "sample", "train", "wait", "sync", "reward first -> last", "stale"]
    table(
        f"async vs sync rollouts, demo workload, {args.steps} measured steps each (blocks of {args.steps // 2})",
        header,
        rows,
    )
    block = args.steps // 2
    for mode in MODES[2:]:
        print(f"{mode.name}: reward of the last block {sum(modes.rewards[mode][-block:]) / block:.3f}")
    sync = min(median(modes.times[mode]) for mode in MODES if not mode.ahead)  # the faster synchronous layout
    for mode in MODES[2:]:
        # The best an overlap can do with one core per role: the slower core's work, then the broadcast.
        p = {key: median(v) for key, v in modes.phases[mode].items()}
        print(
            f"{mode.name}: sampling core {p['sample_s']:.2f} s (generate {p['gen_s']:.2f}), learner core"
            f" {p['train_s']:.2f} s, broadcast {p['sync_s']:.2f} s; async/sync x{sync / median(modes.times[mode]):.2f}"
        )
    best = MODES[3]
    print(
        f"\nasync/sync speed-up: x{sync / median(modes.times[best]):.2f} (reference actor, against the faster "
        "synchronous layout)"
    )


if __name__ == "__main__":
    main()
