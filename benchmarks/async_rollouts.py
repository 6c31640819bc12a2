"""Asynchronous rollouts vs synchronous on the same two cores, on the demo workload, and whether it learns.

Three modes by default, one fleet each (actor names prefixed), taking turns in blocks of steps after two warm-up
steps each, the actors' threads pinned at each switch; an asynchronous mode's pipeline stays full from one of
its blocks to the next (see ``Modes.steps``):

- sync, shared: engines and learner take turns, each with both cores, in the demo's layout (two engines of one
  thread each, side by side): engines and learners sharing their hardware;
- sync, split: one engine and the reference actor pinned to core 0, the learner to core 1, one thread each, taking
  turns: the two-CPU-set analog of a cluster whose engines and learners have GPUs of their own;
- async, split: the same placement with ``grpo.async_rollouts`` (the next batch is sampled with the weights one
  step old while the learner trains on this one).

``--all-modes`` adds one engine of two threads (sync, shared) and async with the reference forward on the
learner's core; earlier runs measured both slower than their counterparts. The reward across the run shows the
policy still improves when its samples are one step off-policy. Each core's own seconds (sampling with its
reference forward; training) bound an async step: at least the busier core, plus the broadcast. On two cores
the overlap can only win back what a synchronous step leaves idle: against sync, split, the idle core of each
phase; against sync, shared, only what the shared phases do not spread over both cores.

The speed-up is taken in work per second (completion tokens of the measured steps over their seconds), not in
seconds per step: every fleet's policy learns to answer longer as it trains, each at its own pace (one step off
policy learns more slowly, so its answers stay shorter and its steps cheaper), and a step's generation and
training grow with its tokens. The seconds-per-step ratio is printed beside it. For the same reason, compare a
mode's seconds with another benchmark's only at the same step of training.

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
    """Asynchronous rollouts: the next batch is sampled (with the weights one step old) while the learner trains."""
    split: bool
    """The rollout worker (and the reference actor) pinned to core 0, the learner to core 1, one thread each: the
    two-CPU-set analog of a cluster whose engines and learners have GPUs of their own. Otherwise every actor may
    use both cores (each engine with its configured threads), as engines and learners sharing GPUs."""
    overrides: tuple[str, ...] = ()
    """The fleet's layout, over the demo config (two engines of one thread each, a learner of two threads)."""


ONE_ENGINE = ("rollout.num_workers=1", "rollout.cpus_per_worker=2")
SPLIT = (*ONE_ENGINE, "learner.reference=actor")
MODES = [
    Mode("sync, shared: 2 engines x 1 thread (the demo's layout)", ahead=False, split=False),
    Mode("sync, split: rollout + reference actor core 0, learner core 1", ahead=False, split=True, overrides=SPLIT),
    Mode("async, split: rollout + reference actor core 0, learner core 1", ahead=True, split=True, overrides=SPLIT),
]
MORE_MODES = [
    Mode("sync, shared: 1 engine x 2 threads", ahead=False, split=False, overrides=ONE_ENGINE),
    Mode("async, split: rollout core 0, learner (+ reference) core 1", ahead=True, split=True, overrides=ONE_ENGINE),
]
"""Only with ``--all-modes``: earlier runs measured both slower than their counterparts above (one engine of two
threads against the demo's two engines; the reference forward on the learner's core against the actor)."""


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
        self.tokens: dict[Mode, list[int]] = {mode: [] for mode in modes}
        """Completion tokens of each measured step's batch: the work of a step grows with them."""
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
        """One block: the mode's actors pinned, then ``n`` steps (measured if ``keep``).

        Every asynchronous step samples the next batch ahead, the block's last one too: the sampling ends within
        the step (the learner waits for it before the push, ``settle``), so nothing runs on into the other modes'
        blocks, and the mode's next block starts on a batch sampled one step ahead, as every step of a real run
        but its first does. So each measured step is a steady one: neither a first step, which samples and then
        trains, nor a last one, which only trains."""
        side = self.sides[mode]
        fleet = side.fleet
        for worker in fleet.rollouts:
            place(worker, {0} if mode.split else {0, 1}, threads=1 if mode.split else None)
        place(fleet.learners[0], {1} if mode.split else {0, 1})
        if fleet.reference is not None:
            place(fleet.reference, {0} if mode.split else {0, 1})
        schedule = self.schedules[mode]
        for _ in range(n):
            t0 = time.perf_counter()
            sampled = schedule.batch(prefetch=True)
            _, phases = side.learn(sampled, settle=schedule.settle)
            self.rewards[mode].append(phases["reward"])
            self.staleness[mode].append(side.version - 1 - sampled.rollouts.policy_version)
            if keep:
                self.times[mode].append(time.perf_counter() - t0)
                self.tokens[mode].append(int(sampled.rollouts.lengths.sum()))
                # The sampling this step did: the next batch where it samples ahead (finished: settled), else this one.
                made = schedule.pending.result() if schedule.pending else sampled
                own = {key: phases[key] for key in ("train_s", "wait_s", "sync_s")}
                own |= {"gen_s": made.rollouts.gen_seconds, "sample_s": self.sample_s[mode][-1]}
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
    parser.add_argument(
        "--all-modes",
        action="store_true",
        help="also sync, shared with one engine of two threads, and async with the reference forward on the learner",
    )
    args = parser.parse_args()
    run_modes = [*MODES, *MORE_MODES] if args.all_modes else MODES
    init_ray(num_cpus=8 * len(run_modes))  # logical: each fleet reserves its own; they take turns
    modes = Modes(run_modes)
    try:
        for mode in run_modes:
            # Warm-up: the first asynchronous step samples, then trains; the second is the first to prove the push
            # with a probe (the learner's and the engines' first logprob-only forwards).
            modes.steps(mode, 2, keep=False)
        for _ in range(2):
            for mode in run_modes:
                modes.steps(mode, args.steps // 2, keep=True)
    finally:
        modes.close()
    rows = []
    # Work per second: the completion tokens of the measured steps over their seconds. Each fleet's policy learns
    # at its own pace (a one-step-stale one more slowly) and answers longer as it learns, and a step's generation
    # and training grow with its tokens: seconds per step alone would credit a mode whose answers stayed short.
    rate = {mode: sum(modes.tokens[mode]) / sum(modes.times[mode]) for mode in run_modes}
    step = {mode: median(modes.times[mode]) for mode in run_modes}
    for mode in run_modes:
        r, p = modes.rewards[mode], {key: median(v) for key, v in modes.phases[mode].items()}
        reward = f"{r[0]:.3f} -> {r[-1]:.3f}"
        rows.append([mode.name, step[mode], rate[mode], p["length"], p["gen_s"], p["sample_s"], p["train_s"]])
        rows[-1] += [p["wait_s"], p["sync_s"], reward, max(modes.staleness[mode])]
    header = ["mode", "median s/step", "tokens/s", "mean len", "generate", "sample", "train", "wait", "sync"]
    header += ["reward first -> last", "stale"]
    table(
        f"async vs sync rollouts, demo workload, {args.steps} measured steps each (blocks of {args.steps // 2})",
        header,
        rows,
    )
    block = args.steps // 2
    for mode in run_modes:
        print(f"{mode.name}: reward of the last block {sum(modes.rewards[mode][-block:]) / block:.3f}")
    best_sync = max((m for m in run_modes if not m.ahead), key=rate.get)
    for mode in run_modes:
        if mode.ahead:  # each core's work per step: the busier one, then the broadcast, bounds the step
            p = {key: median(v) for key, v in modes.phases[mode].items()}
            print(
                f"{mode.name}: sampling core {p['sample_s']:.2f} s (generate {p['gen_s']:.2f}), learner core"
                f" {p['train_s']:.2f} s, broadcast {p['sync_s']:.2f} s"
            )
    # The overlap's own gain: against synchronous steps on the same split placement (a cluster whose engines and
    # learners own their hardware); and against the fastest synchronous mode of all, whatever its placement.
    fast = max((m for m in run_modes if m.ahead), key=rate.get)
    twin = next((m for m in run_modes if m.split and not m.ahead and m.overrides == fast.overrides), None)
    if twin is not None:
        print(
            f"\nasync/sync speed-up, same split placement (tokens/s): x{rate[fast] / rate[twin]:.2f}"
            f" (per step x{step[twin] / step[fast]:.2f})"
        )
    print(
        f"async/sync speed-up against the fastest sync (tokens/s): x{rate[fast] / rate[best_sync]:.2f}"
        f" ({fast.name} against {best_sync.name}; per step x{step[best_sync] / step[fast]:.2f})"
    )


if __name__ == "__main__":
    main()
