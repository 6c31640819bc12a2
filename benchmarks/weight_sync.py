"""Weight-broadcast benchmark: seconds per learner -> vLLM sync for the tiny demo model and a ~100M model.

Real Ray actors, real vLLM engines (1 and 2) and r1ray's gloo weight-transfer engine (CPU). Prints one line
per model size and engine count with parameter count, MiB moved, sync seconds (median of the rounds after a
warm-up round; the engine's own receive + load time beside it, the floor of vLLM loading these weights in its
process), the floor of moving the same bytes once (an in-process ``copy_``) and the logprob agreement after the
sync. The warm-up round's sync is printed apart: a fleet's first push is slower than the next ones (a run makes
it before its first step), and a median of two rounds with it would be their mean.

    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/weight_sync.py [--rounds 5] [--sizes tiny,100m]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

SIZES = {"tiny": {"hidden": 128, "layers": 4}, "100m": {"hidden": 768, "layers": 11}}


def bench(name: str, rounds: int, workdir: Path, engines: int = 1, warmup: int = 1) -> dict:
    import numpy as np
    from safetensors.torch import load_file

    from cluster.config import RunConfig
    from cluster.data.builtin_model import build_tokenizer, save_random_model
    from cluster.payloads import SamplingSpec, TrainBatch
    from cluster.runtime.fleet import Fleet
    from cluster.stages.rl import grpo_objective

    path = save_random_model(workdir / name, tie=True, **SIZES[name])
    params = sum(int(np.prod(t.shape)) for t in load_file(path / "model.safetensors").values())
    cfg = RunConfig.model_validate(
        {
            "model": {"max_prompt_len": 32, "max_response_len": 16},
            "rollout": {"stop": [], "gpu_memory_utilization": 0.1, "num_workers": engines},
            "learner": {"lr": 1e-4, "micro_batch_size": 16, "cpus_per_rank": 2},
            "grpo": {"prompts_per_step": 4, "group_size": 4, "kl_coef": 0.0},
            "reward": {"weights": {"format": 1.0}, "accuracy_key": "format"},
        }
    )
    objective = grpo_objective(cfg)
    fleet = Fleet(cfg, str(path), str(path), optimizer_steps=rounds + warmup, reference=objective.uses_reference)
    try:
        tok = build_tokenizer()
        prompts = [np.array(tok.encode(f"{100 + i}+{200 + i}="), dtype=np.int32) for i in range(4)]
        seconds, receive, diffs = [], [], []
        for version in range(1, warmup + rounds + 1):
            rollouts = fleet.generate(prompts, 4, SamplingSpec(max_tokens=16))
            batch = TrainBatch.from_rollouts(rollouts, np.linspace(-1, 1, 16).astype(np.float32))
            fleet.train(batch, objective)
            sync = fleet.sync_weights(version, probe=batch)
            diffs.append(sync["rollout/logprob_diff_max"])
            seconds.append(sync["time/weight_sync_s"])
            receive.append(sync["time/weight_receive_s"])
    finally:
        fleet.shutdown()
    return {
        "model": name,
        "engines": engines,
        "copy_s": copy_floor(path / "model.safetensors", rounds),
        "params_m": params / 1e6,
        "mib": params * 4 / 2**20,
        "sync_s": statistics.median(seconds[warmup:]),
        "receive_s": statistics.median(receive[warmup:]),
        "first_sync_s": seconds[0] if warmup else float("nan"),
        "logprob_diff_max": max(diffs),
    }


def copy_floor(weights: Path, rounds: int) -> float:
    """Median seconds of an in-process ``copy_`` of the same tensors into preallocated ones, after one unmeasured
    copy (the first touches the fresh pages): the floor of moving these bytes once on this machine."""
    import time

    import torch
    from safetensors.torch import load_file

    src = list(load_file(weights).values())
    dst = [torch.empty_like(t) for t in src]
    seconds = []
    for _ in range(rounds + 1):
        start = time.perf_counter()
        for a, b in zip(src, dst, strict=True):
            b.copy_(a)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds per model size and engine count")
    parser.add_argument("--warmup", type=int, default=1, help="rounds before them, not in the median")
    parser.add_argument("--sizes", default="tiny,100m")
    parser.add_argument("--engines", default="1,2", help="engine counts to broadcast to")
    args = parser.parse_args()
    if args.warmup < 0 or args.rounds < 1:
        raise SystemExit(f"--warmup must be >= 0 and --rounds >= 1, got {args.warmup} and {args.rounds}")
    import ray
    from workloads import init_ray

    init_ray()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sizes.split(","):
            for engines in map(int, args.engines.split(",")):
                r = bench(name, args.rounds, Path(tmp), engines, args.warmup)
                results.append(r)
                print(
                    f"{r['model']:>5} -> {engines} engine(s): {r['params_m']:7.1f} M params, {r['mib']:7.1f} MiB | "
                    f"sync {r['sync_s']:.3f} s (engine receive+load {r['receive_s']:.3f} s) | "
                    f"{r['mib'] / r['sync_s']:7.0f} MiB/s | copy_ floor {r['copy_s']:.3f} s | "
                    f"logprob diff after sync {r['logprob_diff_max']:.1e} | first sync {r['first_sync_s']:.3f} s",
                    flush=True,
                )
    big = [r for r in results if r["model"] == results[-1]["model"]]
    print(
        f"weight broadcast / copy_ floor ({big[0]['model']}): "
        + ", ".join(f"{r['engines']} engine(s) x{r['sync_s'] / r['copy_s']:.1f}" for r in big)
    )
    ray.shutdown()


if __name__ == "__main__":
    main()
