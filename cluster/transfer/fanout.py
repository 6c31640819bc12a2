"""The learner's side of the weight broadcast: vLLM's sync client over several rollout actors.

vLLM's trainer-side weight-transfer engines talk to one ``VLLMWeightSyncClient``;
``RolloutFanoutClient`` is that client for N rollout actors, so every call reaches all engines at
once. ``trainer_init_info`` builds the trainer-side init info of a backend (``gloo`` or ``nccl``).
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

        calls = []
        for i, worker in enumerate(self.workers):
            info = dict(init_info, rank_offset=1 + i * self.ranks_per_engine)
            calls.append(worker.init_weight_transfer_engine.remote(info))
        ray.get(calls)

    def start_weight_update(self) -> None:
        self._all("start_weight_update")

    def update_weights(self, update_info: dict[str, Any] | list[dict[str, Any]]) -> None:
        self.last_receive_s = max(self._all("update_weights", update_info))

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self._all("finish_weight_update", weight_version or str(self.next_version))


def trainer_init_info(kind: str, master_address: str, master_port: int, world_size: int, rank: int) -> TrainerInitInfo:
    """The trainer-side init info of a backend: ``gloo`` (r1ray's, CPU) or ``nccl`` (vLLM's, GPU)."""
    if kind == GLOO:
        return GlooTrainerInitInfo(master_address, master_port, world_size, rank=rank)
    if kind == "nccl":
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

        return NCCLTrainerInitInfo(master_address, master_port, world_size, rank=rank)
    raise ValueError(f"unknown weight sync backend {kind!r}: expected 'gloo' or 'nccl'")
