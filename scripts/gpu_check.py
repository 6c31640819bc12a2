"""The GPU paths, checked on the GPUs of this machine: ``make gpu-check`` (after ``make install-gpu``).

One line per check, ``PASS``/``FAIL``/``SKIP``, then exit 1 if any failed. About 5-8 minutes on one GPU
(most of it vLLM engine starts); checks that need more GPUs than present say so and skip. Exits 2 with
a clear message where CUDA is absent. Real Ray, real vLLM, real FSDP2 over NCCL, on r1ray's random
tiny model (no downloads).

1. learner step, mixed ``cpu:gloo,cuda:nccl`` group: one GRPO step on a CUDA rank (the token count and
   metric all-reduces are CPU tensors); 2 ranks where 2 GPUs exist.
2. bf16 mixed precision + activation checkpointing step: finite loss and grad norm, peak GPU memory.
3. NCCL weight broadcast to one engine (needs 2 GPUs): the logprob gap after a push, fp32 (< 1e-4) and
   bf16 (< 2e-2).
4. colocated: learner and engine on one GPU, engine asleep while training, woken for the ipc push; the gap.
5. checkpoint save / load over NCCL: a resumed rank takes exactly the uninterrupted next step.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BATCH_PROMPTS, GROUP = 4, 4


def _config(**sections):
    from cluster.config import RunConfig

    tree = {
        "model": {"max_prompt_len": 32, "max_response_len": 16},
        "rollout": {"num_workers": 1, "gpus_per_worker": 1, "gpu_memory_utilization": 0.25, "stop": []},
        "learner": {"world_size": 1, "gpus_per_rank": 1, "lr": 1e-2, "micro_batch_size": 4},
        "grpo": {"prompts_per_step": BATCH_PROMPTS, "group_size": GROUP, "kl_coef": 0.05},
        "reward": {"weights": {"format": 1.0}, "accuracy_key": "format"},
    }
    for name, fields in sections.items():
        tree[name] = {**tree.get(name, {}), **fields}
    return RunConfig.model_validate(tree)


def _batch(rows: int = BATCH_PROMPTS * GROUP, seed: int = 0):
    import numpy as np

    from cluster.payloads import TrainBatch

    rng = np.random.default_rng(seed)
    prompt_lens, response_lens = rng.integers(3, 8, rows), rng.integers(4, 16, rows)
    ids = np.zeros((rows, int((prompt_lens + response_lens).max())), dtype=np.int64)
    for i in range(rows):
        ids[i, : prompt_lens[i] + response_lens[i]] = rng.integers(2, 25, prompt_lens[i] + response_lens[i])
    advantages = rng.standard_normal(rows).astype(np.float32)
    return TrainBatch(input_ids=ids, prompt_lens=prompt_lens, response_lens=response_lens, advantages=advantages)


def _learners(cfg, model: Path, optimizer_steps: int = 2):
    from cluster.runtime.fleet import Fleet

    return Fleet(cfg, str(model), str(model), optimizer_steps=optimizer_steps, reference=True, rollouts=False)


def _rollout_batch(fleet):
    """A batch the engines sampled (so the sync check compares real sequences)."""
    import numpy as np

    from cluster.data.builtin_model import build_tokenizer
    from cluster.payloads import SamplingSpec, TrainBatch

    tok = build_tokenizer()
    prompts = [np.array(tok.encode(f"{100 + 7 * i}+{200 + i}="), dtype=np.int32) for i in range(BATCH_PROMPTS)]
    rollouts = fleet.generate(prompts, GROUP, SamplingSpec(max_tokens=16))
    return TrainBatch.from_rollouts(rollouts, np.linspace(-1, 1, rollouts.num_completions).astype(np.float32))


def check_learner_step(model: Path, gpus: int) -> str:
    from cluster.stages.rl import grpo_objective

    cfg = _config(learner={"world_size": min(2, gpus)})
    fleet = _learners(cfg, model)
    try:
        metrics = fleet.train(_batch(), grpo_objective(cfg))
    finally:
        fleet.shutdown()
    _require(metrics["grad_norm"] > 0 and abs(metrics["loss"]) < 1e6, f"metrics {metrics}")
    return f"world size {cfg.learner.world_size}, loss {metrics['loss']:.4f}, grad norm {metrics['grad_norm']:.3f}"


def check_bf16_checkpointed_step(model: Path, gpus: int) -> str:
    import math

    import ray

    from cluster.stages.rl import grpo_objective

    cfg = _config(learner={"mixed_precision": "bf16", "activation_checkpointing": True, "micro_batch_size": 2})
    fleet = _learners(cfg, model)
    try:
        metrics = fleet.train(_batch(), grpo_objective(cfg))
        peak = ray.get(fleet.learners[0].peak_memory_gb.remote())
    finally:
        fleet.shutdown()
    _require(math.isfinite(metrics["grad_norm"]) and math.isfinite(metrics["loss"]), f"metrics {metrics}")
    return f"grad norm {metrics['grad_norm']:.3f} (finite), peak GPU memory {peak:.2f} GiB"


def _sync_gap(cfg, model: Path) -> tuple[float, float]:
    """The gap before and after one GRPO step and push, through a real fleet."""
    from cluster.runtime.fleet import Fleet
    from cluster.stages.rl import grpo_objective

    fleet = Fleet(cfg, str(model), str(model), optimizer_steps=2, reference=True)
    try:
        batch = _rollout_batch(fleet)
        before = fleet.weights.check(batch)["rollout/logprob_diff_max"]
        fleet.train(batch, grpo_objective(cfg))
        after = fleet.sync_weights(1, probe=_rollout_batch(fleet))["rollout/logprob_diff_max"]
    finally:
        fleet.shutdown()
    return before, after


def check_nccl_broadcast(model: Path, gpus: int) -> str:
    if gpus < 2:
        raise Skip("needs 2 GPUs: NCCL refuses two processes on one GPU (colocated mode uses ipc instead)")
    lines = []
    for dtype, limit in (("float32", 1e-4), ("bfloat16", 2e-2)):
        before, after = _sync_gap(_config(model={"dtype": dtype}, cluster={"weight_sync": "nccl"}), model)
        _require(before < limit and after < limit, f"{dtype}: gap before {before:.2e}, after {after:.2e} >= {limit}")
        lines.append(f"{dtype} gap {after:.1e} < {limit:g}")
    return "; ".join(lines)


def check_colocated_ipc(model: Path, gpus: int) -> str:
    cfg = _config(cluster={"placement": "colocated"}, model={"dtype": "bfloat16"})
    before, after = _sync_gap(cfg, model)
    _require(before < 2e-2 and after < 2e-2, f"gap before {before:.2e}, after {after:.2e} >= 2e-2 (bf16)")
    return f"sleep/wake + ipc push, bf16 gap {after:.1e} < 0.02"


def check_checkpoint(model: Path, gpus: int) -> str:
    import numpy as np

    from cluster.stages.rl import grpo_objective

    cfg = _config(learner={"world_size": min(2, gpus)})
    objective = grpo_objective(cfg)
    first, second = _batch(seed=1), _batch(seed=2)
    with tempfile.TemporaryDirectory() as folder:
        fleet = _learners(cfg, model)
        try:
            fleet.train(first, objective)
            fleet.save_checkpoint(folder)
            straight = fleet.train(second, objective)
            want = fleet.logprobs(first)
        finally:
            fleet.shutdown()
        fleet = _learners(cfg, model)
        try:
            fleet.load_checkpoint(folder)
            resumed = fleet.train(second, objective)
            got = fleet.logprobs(first)
        finally:
            fleet.shutdown()
    gap = float(np.abs(got - want).max())
    _require(gap < 1e-5, f"resumed logprobs differ by {gap:.2e}")
    _require(abs(resumed["grad_norm"] - straight["grad_norm"]) <= 1e-5 * straight["grad_norm"], "grad norm differs")
    return f"world size {cfg.learner.world_size}: resumed step = uninterrupted step (logprob gap {gap:.1e})"


class Skip(Exception):
    pass


def _require(ok: bool, why: str) -> None:
    if not ok:
        raise AssertionError(why)


CHECKS = [
    ("nccl learner step (cpu:gloo,cuda:nccl)", check_learner_step),
    ("bf16 + activation checkpointing step", check_bf16_checkpointed_step),
    ("nccl weight broadcast to one engine", check_nccl_broadcast),
    ("colocated sleep/wake + ipc sync", check_colocated_ipc),
    ("checkpoint save/load over nccl", check_checkpoint),
]


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print(
            "gpu-check: no CUDA GPU here (torch.cuda.is_available() is False); run it on a GPU machine after "
            "`make install-gpu`. Nothing was checked."
        )
        return 2
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.pop("RAY_ADDRESS", None)
    import ray

    from cluster.data.builtin_model import save_random_model

    gpus = torch.cuda.device_count()
    ray.init(
        address="local",
        include_dashboard=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"}},
    )
    print(f"gpu-check on {gpus} x {torch.cuda.get_device_name(0)}")
    failed = 0
    with tempfile.TemporaryDirectory() as folder:
        model = save_random_model(Path(folder), tie=True, seed=1)
        for name, check in CHECKS:
            start = time.perf_counter()
            try:
                detail, status = check(model, gpus), "PASS"
            except Skip as skip:
                detail, status = str(skip), "SKIP"
            except Exception as err:  # one line per check: a failure must not hide the others
                detail, status = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}", "FAIL"
                traceback.print_exc(file=sys.stderr)
                failed += 1
            print(f"{status} {name}: {detail} ({time.perf_counter() - start:.0f} s)", flush=True)
    ray.shutdown()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
