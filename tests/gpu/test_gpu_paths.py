"""GPU paths: vLLM's NCCL weight transfer and FSDP2 on CUDA (bf16). Skipped without a CUDA GPU.

Run on a GPU machine with ``make gpu-test``.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
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


def test_nccl_broadcast_and_cuda_fsdp2(gpu_ray):
    import ray

    from cluster.config import RunConfig
    from cluster.data.builtin_model import build_tokenizer
    from cluster.payloads import SamplingSpec, TrainBatch
    from cluster.runtime.fleet import Fleet
    from cluster.stages.rl import grpo_objective

    gpus = torch.cuda.device_count()
    cfg = RunConfig.model_validate(
        {
            "model": {"max_prompt_len": 32, "max_response_len": 16},
            "rollout": {"num_workers": 1, "gpus_per_worker": 1, "gpu_memory_utilization": 0.3, "stop": []},
            "learner": {"world_size": 1 if gpus < 2 else 2, "gpus_per_rank": 1, "lr": 1e-2, "micro_batch_size": 8},
            "grpo": {"prompts_per_step": 4, "group_size": 4},
            "reward": {"weights": {"format": 1.0}, "accuracy_key": "format"},
            "cluster": {"weight_sync": "nccl"},
        }
    )
    if gpus < cfg.learner.world_size + 1:
        # NCCL cannot connect two processes on one device; a colocated setup needs vLLM's IPC engine.
        pytest.skip("needs a GPU per learner rank plus one for the rollout engine")
    fleet = Fleet(cfg, str(gpu_ray), str(gpu_ray), optimizer_steps=2, reference=True)
    try:
        tok = build_tokenizer()
        prompts = [np.array(tok.encode(f"{100 + i}+{200 + i}="), dtype=np.int32) for i in range(4)]
        rollouts = fleet.generate(prompts, 4, SamplingSpec(max_tokens=16))
        batch = TrainBatch.from_rollouts(rollouts, np.linspace(-1, 1, 16).astype(np.float32))
        assert fleet.weights.check(batch)["rollout/logprob_diff_max"] < 1e-3
        metrics = fleet.train(batch, grpo_objective(cfg))
        assert np.isfinite(metrics["loss"])
        sync = fleet.sync_weights(1, probe=batch)
        assert sync["rollout/logprob_diff_max"] < 1e-3
        assert ray.get(fleet.rollouts[0].get_policy_version.remote()) == 1
    finally:
        fleet.shutdown()
