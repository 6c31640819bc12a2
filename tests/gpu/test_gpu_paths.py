"""GPU paths through a real fleet: vLLM's NCCL and ipc weight transfer, FSDP2 on CUDA, bf16, activation
checkpointing, tensor parallelism, CUDA graphs, colocation, checkpoints. Skipped without a CUDA GPU; each
layout skips, saying how many GPUs it needs, where there are fewer.

Run on a GPU machine with ``make gpu-test`` (``make gpu-check`` is the short one-line-per-check version).
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

SPLIT = {"rollout": {"gpus_per_worker": 1}, "learner": {"gpus_per_rank": 1}, "cluster": {"weight_sync": "nccl"}}
# (id, GPUs needed, config changes, largest logprob gap allowed after a push)
LAYOUTS = [
    ("colocated-ipc", 1, {"cluster": {"placement": "colocated"}, "rollout": {"gpus_per_worker": 1}}, 1e-4),
    ("split-fp32-cuda-graphs", 2, {**SPLIT, "rollout": {"gpus_per_worker": 1, "enforce_eager": False}}, 1e-4),
    (
        "split-bf16-mixed-precision-checkpointing",
        2,
        {
            **SPLIT,
            "model": {"dtype": "bfloat16"},
            "learner": {"gpus_per_rank": 1, "mixed_precision": "bf16", "activation_checkpointing": True},
        },
        2e-2,
    ),
    ("two-engines-rank-offsets", 3, {**SPLIT, "rollout": {"gpus_per_worker": 1, "num_workers": 2}}, 1e-4),
    ("tensor-parallel-2", 3, {**SPLIT, "rollout": {"gpus_per_worker": 2}}, 1e-4),
    ("two-learner-ranks", 3, {**SPLIT, "learner": {"gpus_per_rank": 1, "world_size": 2}}, 1e-4),
]


@pytest.fixture(scope="module")
def gpu_ray(tmp_path_factory):
    import os

    os.environ["RAY_AUTH_MODE"] = "disabled"
    import ray

    from cluster.data.builtin_model import save_random_model

    ray.init(address="local", include_dashboard=False)
    yield save_random_model(tmp_path_factory.mktemp("gpu-model"), tie=True)
    ray.shutdown()


def _config(changes: dict):
    from cluster.config import RunConfig

    tree = {
        "model": {"max_prompt_len": 32, "max_response_len": 16},
        "rollout": {"num_workers": 1, "gpu_memory_utilization": 0.25, "stop": []},
        "learner": {"world_size": 1, "lr": 1e-2, "micro_batch_size": 4},
        "grpo": {"prompts_per_step": 4, "group_size": 4},
        "reward": {"weights": {"format": 1.0}, "accuracy_key": "format"},
    }
    for section, fields in changes.items():
        tree[section] = {**tree.get(section, {}), **fields}
    if tree.get("cluster", {}).get("placement") == "colocated":
        tree["learner"]["gpus_per_rank"] = 1
    return RunConfig.model_validate(tree)


@pytest.mark.parametrize(("gpus", "changes", "limit"), [row[1:] for row in LAYOUTS], ids=[row[0] for row in LAYOUTS])
def test_grpo_step_push_and_checkpoint(gpu_ray, tmp_path, gpus, changes, limit):
    import ray

    from cluster.data.builtin_model import build_tokenizer
    from cluster.payloads import SamplingSpec, TrainBatch
    from cluster.runtime.fleet import Fleet
    from cluster.stages.rl import grpo_objective

    if torch.cuda.device_count() < gpus:
        pytest.skip(f"needs {gpus} GPUs, {torch.cuda.device_count()} present")
    cfg = _config(changes)
    fleet = Fleet(cfg, str(gpu_ray), str(gpu_ray), optimizer_steps=2, reference=True)
    try:
        tok = build_tokenizer()
        prompts = [np.array(tok.encode(f"{100 + i}+{200 + i}="), dtype=np.int32) for i in range(4)]
        rollouts = fleet.generate(prompts, 4, SamplingSpec(max_tokens=16))
        batch = TrainBatch.from_rollouts(rollouts, np.linspace(-1, 1, 16).astype(np.float32))
        assert fleet.weights.check(batch)["rollout/logprob_diff_max"] < limit
        metrics = fleet.train(batch, grpo_objective(cfg))
        assert np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"])
        sync = fleet.sync_weights(1, probe=batch)
        assert sync["rollout/logprob_diff_max"] < limit
        assert ray.get([w.get_policy_version.remote() for w in fleet.rollouts]) == [1] * cfg.rollout.num_workers
        fleet.save_checkpoint(str(tmp_path / "ck"))
        want = fleet.logprobs(batch)
        fleet.load_checkpoint(str(tmp_path / "ck"))
        np.testing.assert_array_equal(fleet.logprobs(batch), want)
    finally:
        fleet.shutdown()
