"""Rollout: r1ray's rollout worker (a real vLLM engine in its Ray actor, as training runs it) vs
``transformers`` ``generate`` in one process, tokens per second on the same prompts x G. On the demo workload
also the demo config's layout: two workers of one thread each, half the prompts each, side by side.

Both sample at T = 1 with the workload's stop (``</answer>`` for the demo; fixed-length completions for
the 40M model) on the same two cores, the worker with the engine's logprobs (what training asks for);
interleaved call by call, medians after a warm-up call.

    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/rollout_gen.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from workloads import WORKLOADS, Workload, init_ray, median, model_path, prompt_rows, table

ROLLOUT = {"demo": WORKLOADS["demo"], "40m": replace(WORKLOADS["40m"], prompts=8, group=8)}


def run(w: Workload, rounds: int) -> dict[str, float]:
    import numpy as np
    import ray
    import torch
    from floor import plain_generate
    from transformers import AutoModelForCausalLM

    from actors.rollout import RolloutWorker
    from cluster.payloads import SamplingSpec

    path = model_path(w)
    torch.set_num_threads(2)
    prompts = [r["ids"] for r in prompt_rows(w, 1)]
    stop = () if w.fixed else ("</answer>",)

    def start(threads: int):
        env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "OMP_NUM_THREADS": str(threads), "VLLM_LOGGING_LEVEL": "ERROR"}
        return RolloutWorker.options(num_cpus=threads, runtime_env={"env_vars": env}).remote(
            path, max_model_len=128, gpu_memory_utilization=0.05, weight_sync=None
        )

    worker = start(2)
    # The demo's layout: two engines of one thread each, every one with half the prompts, side by side.
    pair = [start(1), start(1)] if w.name == "demo" else []
    spec = SamplingSpec(max_tokens=w.new_tokens, stop=stop)
    gen = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    arrays = [np.asarray(p, dtype=np.int32) for p in prompts]
    rates: dict[str, list[float]] = {}
    for i in range(rounds + 1):
        t0 = time.perf_counter()
        out = ray.get(worker.generate.remote(arrays, w.group, spec, seed=i))
        engine = (int(out.lengths.sum()), time.perf_counter() - t0)
        seconds, completions = plain_generate(gen, prompts, w.group, w.new_tokens, w.fixed, [1, 5])
        if pair:
            t0 = time.perf_counter()
            half = len(arrays) // 2
            calls = [pair[0].generate.remote(arrays[:half], w.group, spec, seed=i)]
            calls.append(pair[1].generate.remote(arrays[half:], w.group, spec, seed=i + 1))
            tokens = sum(int(o.lengths.sum()) for o in ray.get(calls))
            if i:
                rates.setdefault("pair", []).append(tokens / (time.perf_counter() - t0))
        if i:
            rates.setdefault("worker", []).append(engine[0] / engine[1])
            rates.setdefault("generate", []).append(sum(len(c) for c in completions) / seconds)
            rates.setdefault("tokens", []).append(engine[0])
    for actor in [worker, *pair]:
        ray.kill(actor)
    return {k: median(v) for k, v in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="demo,40m")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    init_ray()
    results = {name: run(ROLLOUT[name], args.rounds) for name in args.workloads.split(",")}
    rows = [
        [
            n,
            f"{ROLLOUT[n].prompts} x {ROLLOUT[n].group}",
            r["tokens"],
            r["worker"],
            r.get("pair", float("nan")),
            r["generate"],
            r["worker"] / r["generate"],
            r.get("pair", float("nan")) / r["generate"],
        ]
        for n, r in results.items()
    ]
    header = ["workload", "prompts x G", "tokens/call", "worker tok/s", "2 x 1-thread tok/s", "generate tok/s"]
    header += ["worker/generate", "2 workers/generate"]
    table(f"rollout, median of {args.rounds} calls after a warm-up (interleaved)", header, rows)
    print(
        "\nrollout worker / generate: "
        + ", ".join(f"{n} x{r['worker'] / r['generate']:.2f}" for n, r in results.items())
        + "; the demo's two 1-thread workers / generate: "
        + ", ".join(f"{n} x{r['pair'] / r['generate']:.2f}" for n, r in results.items() if "pair" in r)
    )


if __name__ == "__main__":
    main()
