"""Learner: one r1ray learner step (world size 1 and 2, real FSDP2 actors over gloo) vs plain PyTorch.

The batch is the workload's prompts x G completed by ``generate`` from the workload's model (random
advantages); the r1ray side is ``PolicyLearner.train_step`` with the GRPO objective (one update, k3 KL
to the reference), the plain side ``floor.PlainTrainer`` in this process (forward + backward + reference
forward + AdamW, no FSDP, no Ray, every row's prompt run whole). r1ray runs each micro-batch's distinct prompts
once (``learner.share_prompts``, the default; a GRPO group's G rows share one); the bucketed table also shows it
without (``every prompt``). Both on the same two cores (W=1: one rank with 2 threads; W=2: two
ranks with 1 thread each), interleaved step by step; medians after a warm-up step.

    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/learner_step.py [--workloads demo,40m] [--steps 5]
"""

from __future__ import annotations

import argparse
import socket
import time

from workloads import WORKLOADS, Workload, init_ray, median, model_path, prompt_rows, table

BUCKET_TOKENS = 4096
"""deploy/configs/demo.yaml's learner.micro_batch_tokens."""


def start_ranks(path: str, world: int, micro: int, lr: float, tokens: int | None = None, share: bool = True):
    from actors.learner import PolicyLearner
    from cluster.config import LearnerConfig
    from cluster.payloads import LearnerSpec

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = LearnerConfig(
        world_size=world,
        cpus_per_rank=2 / world,
        lr=lr,
        micro_batch_size=micro,
        micro_batch_tokens=tokens,
        share_prompts=share,
    )
    specs = [
        LearnerSpec(
            rank=rank,
            world_size=world,
            master_addr="127.0.0.1",
            master_port=port,
            model_path=path,
            base_path=path,
            config=cfg,
            optimizer_steps=100,
            reference=True,
        )
        for rank in range(world)
    ]
    return [PolicyLearner.options(num_cpus=2 / world).remote(spec) for spec in specs]


def run(w: Workload, steps: int, warmup: int) -> dict[str, float]:
    import ray
    import torch
    from floor import PlainTrainer, plain_generate, train_batch
    from transformers import AutoModelForCausalLM

    from cluster.algo.grpo import GRPOObjective

    path = model_path(w)
    torch.set_num_threads(2)
    prompts = [r["ids"] for r in prompt_rows(w, 1)]
    stop = [] if w.fixed else [1, 5]  # <eos>, </answer> of the builtin tokenizer
    gen = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    _, completions = plain_generate(gen, prompts, w.group, w.new_tokens, w.fixed, stop)
    batch = train_batch(prompts, w.group, completions)
    objective = GRPOObjective(kl_coef=w.kl, max_tokens=w.new_tokens)
    sides = {f"W={n}": start_ranks(path, n, len(batch), w.lr) for n in (1, 2)}
    plains = {"plain": PlainTrainer(path, w.lr, w.kl)}
    if not w.fixed:  # length buckets (the demo config's learner.micro_batch_tokens) on both sides
        sides["W=1 bucketed"] = start_ranks(path, 1, len(batch), w.lr, BUCKET_TOKENS)
        sides["W=1 bucketed, every prompt"] = start_ranks(path, 1, len(batch), w.lr, BUCKET_TOKENS, share=False)
        plains["plain bucketed"] = PlainTrainer(path, w.lr, w.kl, bucket_tokens=BUCKET_TOKENS)
    ref = ray.put(batch)
    times: dict[str, list[float]] = {}
    for i in range(steps + warmup):
        for name, ranks in sides.items():
            t0 = time.perf_counter()
            ray.get([r.train_step.remote(ref, objective) for r in ranks])
            if i >= warmup:
                times.setdefault(name, []).append(time.perf_counter() - t0)
        for name, plain in plains.items():
            seconds = plain.step(batch)
            if i >= warmup:
                times.setdefault(name, []).append(seconds)
    for ranks in sides.values():
        for r in ranks:
            ray.kill(r)
    return {name: median(v) for name, v in times.items()} | {"tokens": int(batch.response_lens.sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="demo,40m")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    init_ray()
    results = {name: run(WORKLOADS[name], args.steps, args.warmup) for name in args.workloads.split(",")}
    rows = [
        [
            n,
            f"{WORKLOADS[n].prompts * WORKLOADS[n].group} x {r['tokens']} tok",
            r["plain"],
            r["W=1"],
            r["W=2"],
            r["W=1"] / r["plain"],
            r["W=2"] / r["plain"],
        ]
        for n, r in results.items()
    ]
    header = ["workload", "batch", "plain s", "r1ray W=1 s", "W=2 s", "W=1/plain", "W=2/plain"]
    table(f"learner step (train + reference forward), median of {args.steps}, interleaved", header, rows)
    bucketed = {n: r for n, r in results.items() if "W=1 bucketed" in r}
    table(
        f"the same with length buckets of <= {BUCKET_TOKENS} padded tokens (learner.micro_batch_tokens), s",
        [
            "workload",
            "plain",
            "plain bucketed",
            "r1ray W=1 bucketed",
            "(every prompt)",
            "bucketed/plain",
            "r1ray bucketed/plain",
            "(every prompt)",
        ],
        [
            [
                n,
                r["plain"],
                r["plain bucketed"],
                r["W=1 bucketed"],
                r["W=1 bucketed, every prompt"],
                r["plain bucketed"] / r["plain"],
                r["W=1 bucketed"] / r["plain bucketed"],
                r["W=1 bucketed, every prompt"] / r["plain bucketed"],
            ]
            for n, r in bucketed.items()
        ],  # fmt: skip
    )
    print(
        "\nlearner overhead vs plain PyTorch: "
        + ", ".join(
            f"{n} W=1 x{r['W=1'] / r['plain']:.2f} W=2 x{r['W=2'] / r['plain']:.2f}" for n, r in results.items()
        )
    )


if __name__ == "__main__":
    main()
