"""GRPO step benchmark: where a demo step's time goes, with vLLM's engine inside the rollout actor or in
its usual child processes (``rollout.engine_in_actor``).

Real Ray actors, a real vLLM engine, a real FSDP2 learner: the demo config (builtin model, 32 prompts x
G = 8, four mini-batches), one step = sample + score + train + broadcast, as the driver runs it. For
each placement prints the median seconds of each phase and the CPU time the rollout actor's processes
burn while the learner trains (they should be idle then), and the ratios between the two placements.

    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/grpo_step.py [--steps 12] [--warmup 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path


def _tree_cpu_s(root: int) -> float:
    """User + system CPU seconds of a process and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    stats: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry.name), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        stats[pid] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += stats.get(pid, 0.0)
        todo += children.get(pid, [])
    return total


def bench(in_actor: bool, steps: int, warmup: int) -> dict[str, float]:
    import ray
    import torch

    from cluster.algo.grpo import group_advantages
    from cluster.config import load_config
    from cluster.data.prompts import Prompts
    from cluster.payloads import TrainBatch
    from cluster.runtime.fleet import Fleet
    from cluster.stages.common import resolve_model
    from cluster.stages.rl import behaviour_policy, collect, grpo_objective

    cfg = load_config(None, [f"rollout.engine_in_actor={str(in_actor).lower()}", f"grpo.steps={steps + warmup}"])
    model = resolve_model(cfg)
    from transformers import AutoTokenizer

    prompts = Prompts(cfg, AutoTokenizer.from_pretrained(model))
    objective, behaviour = grpo_objective(cfg), behaviour_policy(cfg)
    steps_total = (steps + warmup) * objective.updates
    fleet = Fleet(cfg, model, model, optimizer_steps=steps_total, reference=objective.uses_reference)
    try:
        rollout_pid = ray.get(fleet.rollouts[0].__ray_call__.remote(lambda _: os.getpid()))
        phases: dict[str, list[float]] = {
            k: [] for k in ("sample_score_s", "train_s", "sync_s", "step_s", "idle_cpu_s")
        }
        for step in range(1, steps + warmup + 1):
            t0 = time.perf_counter()
            sampled = collect(fleet, prompts, cfg)
            adv = group_advantages(torch.as_tensor(sampled.scores.total), cfg.grpo.group_size).numpy()
            batch = TrainBatch.from_rollouts(sampled.rollouts, adv, behaviour)
            t1 = time.perf_counter()
            cpu0 = _tree_cpu_s(rollout_pid)
            fleet.train(batch, objective)
            cpu1 = _tree_cpu_s(rollout_pid)
            t2 = time.perf_counter()
            fleet.sync_weights(step, probe=batch)
            t3 = time.perf_counter()
            if step > warmup:
                for key, value in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t3 - t0, cpu1 - cpu0), strict=True):
                    phases[key].append(value)
    finally:
        fleet.shutdown()
    return {key: statistics.median(values) for key, values in phases.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    results = {}
    for label, in_actor in (("in actor", True), ("children", False)):
        r = results[label] = bench(in_actor, args.steps, args.warmup)
        print(
            f"engine {label:>8}: step {r['step_s']:.2f} s = sample+score {r['sample_score_s']:.2f} + train"
            f" {r['train_s']:.2f} + sync {r['sync_s']:.2f} | rollout processes' CPU while the learner"
            f" trains: {r['idle_cpu_s']:.2f} core-s",
            flush=True,
        )
    ray.shutdown()
    a, c = results["in actor"], results["children"]
    print(
        f"children / in actor: step x{c['step_s'] / a['step_s']:.2f},"
        f" sample+score x{c['sample_score_s'] / a['sample_score_s']:.2f}, train x{c['train_s'] / a['train_s']:.2f}"
    )


if __name__ == "__main__":
    main()
