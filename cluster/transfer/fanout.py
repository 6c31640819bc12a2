"""The learner's side of the weight broadcast: vLLM's sync client over several rollout actors.

vLLM's trainer-side weight-transfer engines talk to one ``VLLMWeightSyncClient``;
``RolloutFanoutClient`` is that client for N rollout actors, so every call reaches all engines at
once. ``trainer_init_info`` builds the trainer-side init info of a backend (``gloo``, ``nccl`` or ``ipc``).
"""

from __future__ import annotations

from typing import Any

from vllm.distributed.weight_transfer.base import TrainerInitInfo

from cluster.transfer.gloo import GLOO, GlooTrainerInitInfo


class RolloutFanoutClient:
    """vLLM's ``VLLMWeightSyncClient`` over several rollout actors: each call reaches all of them at once.

    Each engine takes its own slice of the transfer group's ranks (``ranks_per_engine`` = its
    tensor-parallel size), after rank 0, the learner.
    """

    def __init__(self, workers: list, ranks_per_engine: int = 1) -> None:
        self.workers = workers
        self.ranks_per_engine = ranks_per_engine
        self.next_version = 1
        self.last_receive_s = 0.0

    def _all(self, method: str, *args: Any) -> list:
        import ray

        return ray.get([getattr(w, method).remote(*args) for w in self.workers])

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        import ray

        if "rank_offset" not in init_info:  # ipc: no group, each engine finds its GPU's handle
            ray.get([worker.init_weight_transfer_engine.remote(init_info) for worker in self.workers])
            return
        offsets = engine_rank_offsets(len(self.workers), self.ranks_per_engine)
        calls = [
            worker.init_weight_transfer_engine.remote(dict(init_info, rank_offset=offset))
            for worker, offset in zip(self.workers, offsets, strict=True)
        ]
        ray.get(calls)

    def start_weight_update(self) -> None:
        self._all("start_weight_update")

    def update_weights(self, update_info: dict[str, Any] | list[dict[str, Any]]) -> None:
        self.last_receive_s = max(self._all("update_weights", update_info))

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self._all("finish_weight_update", weight_version or str(self.next_version))


def engine_rank_offsets(num_engines: int, ranks_per_engine: int) -> list[int]:
    """Each engine's first rank in the transfer group: rank 0 is the learner, then every engine's
    ``ranks_per_engine`` (tensor-parallel) workers in turn; worker r of engine i is ``offset_i + r``."""
    if num_engines < 1 or ranks_per_engine < 1:
        raise ValueError(f"need at least one engine and one rank each, got {num_engines} x {ranks_per_engine}")
    return [1 + i * ranks_per_engine for i in range(num_engines)]


def transfer_world_size(num_engines: int, ranks_per_engine: int) -> int:
    """The learner's sender plus every worker of every engine."""
    return engine_rank_offsets(num_engines, ranks_per_engine)[-1] + ranks_per_engine


def trainer_init_info(kind: str, master_address: str, master_port: int, world_size: int, rank: int) -> TrainerInitInfo:
    """The trainer-side init info of a backend: ``gloo`` (r1ray's, CPU), ``nccl`` (vLLM's, GPUs apart) or
    ``ipc`` (vLLM's CUDA IPC, engines on the learners' own GPUs; no rendezvous)."""
    if kind == GLOO:
        return GlooTrainerInitInfo(master_address, master_port, world_size, rank=rank)
    if kind == "nccl":
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

        return NCCLTrainerInitInfo(master_address, master_port, world_size, rank=rank)
    if kind == "ipc":
        from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo

        return IPCTrainerInitInfo(rank=rank)
    raise ValueError(f"unknown weight sync backend {kind!r}: expected 'gloo', 'nccl' or 'ipc'")
