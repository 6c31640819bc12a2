"""What the GPU paths decide, checked without a GPU: the learner group's backend and which devices its
collectives may use, placement bundles for tensor parallelism and colocation, transfer-group ranks,
the weight-sync backend, the serving-dtype weight stream, and the config's placement rules."""

import pytest
import torch

from actors.learner_model import MIXED_BACKEND, backend_devices, check_collective_device, group_backend
from actors.rollout import engine_parallel_args
from cluster.config import RunConfig
from cluster.errors import ConfigError
from cluster.runtime.placement import colocated_bundles, gpu_share, learner_bundles, rollout_bundles
from cluster.runtime.weight_sync import weight_sync_backend
from cluster.transfer.fanout import engine_rank_offsets, transfer_world_size
from cluster.transfer.source import CastSource

GPU_SPLIT = {
    "rollout": {"num_workers": 3, "gpus_per_worker": 2, "resources": {"rollout": 1}},
    "learner": {"world_size": 4, "gpus_per_rank": 1, "resources": {"learner": 1}},
    "grpo": {"prompts_per_step": 8, "group_size": 4},
}
COLOCATED = {
    "rollout": {"num_workers": 2, "gpus_per_worker": 1, "cpus_per_worker": 2, "resources": {"gpu_node": 1}},
    "learner": {"world_size": 2, "gpus_per_rank": 1, "cpus_per_rank": 3, "resources": {"gpu_node": 1}},
    "grpo": {"prompts_per_step": 8, "group_size": 4},
    "cluster": {"placement": "colocated"},
}


@pytest.mark.parametrize(
    ("config", "devices"),
    [
        ("gloo", {"cpu", "cuda"}),
        ("nccl", {"cuda"}),
        ("cuda:nccl", {"cuda"}),
        (MIXED_BACKEND, {"cpu", "cuda"}),
        ("cpu:gloo, cuda:nccl", {"cpu", "cuda"}),
    ],
)
def test_backend_devices(config, devices):
    assert backend_devices(config) == devices


def test_a_cpu_tensor_in_an_nccl_only_group_is_refused_and_the_learners_gpu_group_serves_it():
    token_count = torch.tensor(12.0)  # what the learner all-reduces: CPU tensors
    with pytest.raises(RuntimeError, match="no backend serves"):
        check_collective_device(token_count, "cuda:nccl")
    check_collective_device(token_count, dist_config := group_backend("cuda"))
    assert dist_config == "cpu:gloo,cuda:nccl"
    check_collective_device(token_count, group_backend("cpu"))
    with pytest.raises(ValueError, match="cpu or cuda"):
        group_backend("mps")


def test_tensor_parallel_engines_hold_one_bundle_of_k_gpus_and_run_vllms_own_workers():
    cfg = RunConfig.model_validate(GPU_SPLIT)
    assert rollout_bundles(cfg) == [{"CPU": 1.0, "GPU": 2, "rollout": 1}] * 3
    assert learner_bundles(cfg) == [{"CPU": 1.0, "GPU": 1, "learner": 1}] * 4
    assert gpu_share(cfg, "rollout") == 2 and gpu_share(cfg, "learner") == 1
    assert engine_parallel_args(2) == {"distributed_executor_backend": "mp"}
    assert engine_parallel_args(1) == {}
    assert weight_sync_backend(cfg) == "nccl"


def test_transfer_ranks_of_several_tensor_parallel_engines():
    # Learner = rank 0; engine i's TP workers follow one another, no gaps, no overlap.
    assert engine_rank_offsets(3, 2) == [1, 3, 5]
    assert transfer_world_size(3, 2) == 7
    assert engine_rank_offsets(1, 1) == [1] and transfer_world_size(1, 1) == 2
    ranks = [offset + r for offset in engine_rank_offsets(4, 4) for r in range(4)]
    assert ranks == list(range(1, transfer_world_size(4, 4)))
    with pytest.raises(ValueError):
        engine_rank_offsets(0, 1)


def test_colocated_bundles_share_a_gpu_between_a_rank_and_an_engine():
    cfg = RunConfig.model_validate(COLOCATED)
    assert colocated_bundles(cfg) == [{"CPU": 5.0, "GPU": 1, "gpu_node": 2.0}] * 2
    assert gpu_share(cfg, "rollout") == gpu_share(cfg, "learner") == 0.5
    assert weight_sync_backend(cfg) == "ipc"
    cpu = RunConfig.model_validate({"cluster": {"placement": "colocated"}})
    assert colocated_bundles(cpu) == [{"CPU": 2.0}] and weight_sync_backend(cpu) == "gloo"


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"rollout": {"num_workers": 1}}, "rollout.num_workers (1) = learner.world_size (2)"),
        ({"rollout": {"gpus_per_worker": 2}}, "rollout.gpus_per_worker (2) = learner.gpus_per_rank (1)"),
        ({"cluster": {"weight_sync": "nccl"}}, "cannot connect two processes on one GPU"),
        ({"grpo": {"async_rollouts": True}}, "grpo.async_rollouts needs cluster.placement 'split'"),
    ],
)
def test_bad_colocated_configs_name_the_field(change, needle):
    tree = {key: dict(value) for key, value in COLOCATED.items()}
    for section, fields in change.items():
        tree[section] = {**tree.get(section, {}), **fields}
    with pytest.raises(ValueError) as err:
        RunConfig.model_validate(tree)
    assert needle in str(err.value)


def test_ipc_needs_colocated_gpus():
    with pytest.raises(ValueError, match="'ipc' needs cluster.placement 'colocated'"):
        RunConfig.model_validate({**GPU_SPLIT, "cluster": {"weight_sync": "ipc"}})


def test_load_config_reports_a_bad_placement_in_one_line(tmp_path):
    from cluster.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("cluster: {placement: hybrid}\n")
    with pytest.raises(ConfigError, match="cluster.placement"):
        load_config(path)


def test_weights_travel_in_the_serving_dtype():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    source = CastSource(model, torch.bfloat16)
    meta = source.metadata()
    sent = list(source)
    assert [m.name for m in meta] == [name for name, _ in sent] == [n for n, _ in model.named_parameters()]
    assert {m.dtype for m in meta} == {t.dtype for _, t in sent} == {torch.bfloat16}
    for (name, tensor), m in zip(sent, meta, strict=True):
        assert tuple(tensor.shape) == m.shape
        assert torch.equal(tensor, dict(model.named_parameters())[name].detach().to(torch.bfloat16))
    assert next(iter(CastSource(model, torch.float32)))[1].dtype == torch.float32
    with pytest.raises(ValueError, match="floating-point"):
        CastSource(model, torch.int64)
