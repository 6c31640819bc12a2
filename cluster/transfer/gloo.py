"""r1ray's ``gloo`` weight-transfer engine for vLLM: the learner's weights to every rollout engine on CPU.

vLLM drives a transfer with ``init_weight_transfer_engine`` once, then ``start_weight_update`` /
``update_weights`` / ``finish_weight_update`` each step, inside its worker processes. GPUs use
vLLM's own ``nccl`` engine; on CPU r1ray registers this ``gloo`` engine (the worker and trainer
halves below). Registration has to happen inside every vLLM process (main, EngineCore,
workers), which is what the ``vllm.general_plugins`` entry point in pyproject.toml does.

The trainer side streams the parameters in flat buckets (``buckets``): ``DTensor.full_tensor()``
on every learner rank (a collective) per parameter, then one broadcast from rank 0 per bucket, so
memory stays bounded by a bucket (or the largest tensor) rather than the model.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Self

import torch
from vllm.distributed.utils import stateless_init_torch_distributed_process_group
from vllm.distributed.weight_transfer.base import (
    TrainerInitInfo,
    TrainerWeightTransferEngine,
    VLLMWeightSyncClient,
    WeightSource,
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
)
from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory, WeightTransferTrainerFactory

logger = logging.getLogger(__name__)

GLOO = "gloo"


@dataclass
class GlooInitInfo(WeightTransferInitInfo):
    """Worker side: where the trainer's store listens and which group ranks this engine takes."""

    master_address: str
    master_port: int
    rank_offset: int
    world_size: int


@dataclass
class GlooUpdateInfo(WeightTransferUpdateInfo):
    """One round: the parameters that follow on the wire, in order. Dtypes travel as strings."""

    names: list[str]
    dtype_names: list[str]
    shapes: list[list[int]]

    def __post_init__(self) -> None:
        if not len(self.names) == len(self.dtype_names) == len(self.shapes):
            raise ValueError(
                f"names, dtype_names and shapes differ in length: "
                f"{len(self.names)}, {len(self.dtype_names)}, {len(self.shapes)}"
            )


BUCKET_BYTES = 32 << 20
"""Parameters travel in flat buckets of up to this many bytes (a larger tensor alone): one gloo round per bucket
instead of one per tensor (the demo model has 50, each round a loopback exchange), while memory beyond the
model stays bounded by a bucket or the largest tensor."""


def buckets(dtype_names: list[str], shapes: list[list[int]], limit: int = BUCKET_BYTES) -> list[list[int]]:
    """Consecutive runs of parameter indices that travel as one flat tensor: one dtype each, at most ``limit``
    bytes unless a single tensor is larger. Both sides compute it from the round's metadata."""
    out: list[list[int]] = []
    size = 0
    for i, (dtype_name, shape) in enumerate(zip(dtype_names, shapes, strict=True)):
        dtype = getattr(torch, dtype_name)
        nbytes = dtype.itemsize * int(torch.Size(shape).numel())
        if out and dtype_names[out[-1][0]] == dtype_name and size + nbytes <= limit:
            out[-1].append(i)
            size += nbytes
        else:
            out.append([i])
            size = nbytes
    return out


def _open_group(address: str, port: int, rank: int, world_size: int):
    return stateless_init_torch_distributed_process_group(address, port, rank, world_size, backend="gloo")


class GlooWeightTransferEngine(WeightTransferEngine[GlooInitInfo, GlooUpdateInfo]):
    """Receives parameters over a gloo broadcast and loads them with vLLM's layerwise reload."""

    init_info_cls = GlooInitInfo
    update_info_cls = GlooUpdateInfo

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.group = None

    def init_transfer_engine(self, init_info: GlooInitInfo) -> None:
        rank = init_info.rank_offset + self.parallel_config.rank
        self.group = _open_group(init_info.master_address, init_info.master_port, rank, init_info.world_size)

    def start_weight_update(self) -> None:
        # vLLM-CPU pre-packs linear weights after loading; layerwise reload restores the
        # checkpoint layout, takes the new values and re-packs.
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        initialize_layerwise_reload(self.model)

    def update_weights(self, update_info: dict[str, Any]) -> None:
        # The base class ends with torch.accelerator.synchronize(), which raises on CPU torch.
        self.receive_weights(self.parse_update_info(update_info))

    def receive_weights(self, update_info: GlooUpdateInfo) -> None:
        # One loader call for the whole round: each call walks every module of the model (tied-embedding
        # lookups), which per tensor cost more than loading a small model's weights.
        self.model.load_weights(self.received(update_info))

    def received(self, update_info: GlooUpdateInfo) -> Iterator[tuple[str, torch.Tensor]]:
        """The round's ``(name, tensor)`` pairs, in order, as each bucket arrives."""
        if self.group is None:
            raise RuntimeError("gloo weight transfer used before init_weight_transfer_engine")
        names, dtype_names, shapes = update_info.names, update_info.dtype_names, update_info.shapes
        for bucket in buckets(dtype_names, shapes):
            sizes = [int(torch.Size(shapes[i]).numel()) for i in bucket]
            # A fresh buffer per bucket: the loader may keep a reference to what it is given.
            flat = torch.empty(sum(sizes), dtype=getattr(torch, dtype_names[bucket[0]]), device=self.device)
            self.group.broadcast(flat, 0).wait()
            for i, part in zip(bucket, flat.split(sizes), strict=True):
                yield names[i], part.view(shapes[i])

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        finalize_layerwise_reload(self.model, self.model_config)
        repack_embeddings(self.model)

    def shutdown(self) -> None:
        self.group = None


def repack_embeddings(model) -> None:
    """After an in-place reload of ``model`` (an engine's): vLLM-CPU keeps the output head's old packed weights
    when the embeddings are tied ("ParallelLMHead: Failed to load weights"): the reload re-packs the input
    embedding (whose packed copy nothing uses: lookups read the weight), not the head that shares its weight.
    Re-packing those heads fixes it; only those: on a 32k vocabulary each re-pack of the head costs as much as
    every decoder layer's together."""
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding

    modules = list(model.modules())
    inputs = [m for m in modules if isinstance(m, VocabParallelEmbedding) and not isinstance(m, ParallelLMHead)]
    heads = [m for m in modules if isinstance(m, ParallelLMHead) and hasattr(m, "quant_method")]
    for head in heads:
        if any(head.weight is embedding.weight for embedding in inputs):
            head.quant_method.process_weights_after_loading(head)


@dataclass
class GlooTrainerInitInfo(TrainerInitInfo):
    """Trainer side: rank 0 of the transfer group hosts the rendezvous store."""

    backend: ClassVar[str] = GLOO

    master_address: str
    master_port: int
    world_size: int


class GlooTrainerWeightTransferEngine(TrainerWeightTransferEngine[GlooTrainerInitInfo]):
    """Learner side of the gloo transfer: every rank gathers, rank 0 broadcasts."""

    init_info_cls = GlooTrainerInitInfo

    def __init__(self, *, client: VLLMWeightSyncClient, source: WeightSource, is_sender: bool) -> None:
        super().__init__(client=client, source=source, is_sender=is_sender)
        self.group = None

    @classmethod
    def trainer_init(
        cls, init_info: GlooTrainerInitInfo, *, client: VLLMWeightSyncClient, source: WeightSource | None = None
    ) -> Self:
        if source is None:
            raise ValueError("the gloo trainer engine needs a WeightSource")
        engine = cls(client=client, source=source, is_sender=init_info.is_sender)
        if not engine.is_sender:
            return engine
        # rank_offset 1 (after the learner) for a single engine; RolloutFanoutClient sets one per engine.
        worker_info = GlooInitInfo(init_info.master_address, init_info.master_port, 1, init_info.world_size)
        # Engines block in init until every rank of the group has joined, so run them beside us.
        pool = ThreadPoolExecutor(max_workers=1)
        try:
            pending = pool.submit(client.init_weight_transfer_engine, asdict(worker_info))
            engine.group = _open_group(init_info.master_address, init_info.master_port, 0, init_info.world_size)
            pending.result()
        finally:
            pool.shutdown(wait=False)  # if our side failed, the engines wait at the rendezvous: do not join them
        return engine

    def send_weights(self) -> None:
        meta = self.source.metadata()
        if not self.is_sender:
            for _ in self.source:  # join the full_tensor() gathers, in the sender's order
                pass
            return
        info = GlooUpdateInfo(
            names=[m.name for m in meta],
            dtype_names=[str(m.dtype).removeprefix("torch.") for m in meta],
            shapes=[list(m.shape) for m in meta],
        )
        self.client.start_weight_update()
        pool = ThreadPoolExecutor(max_workers=1)
        try:
            receiving = pool.submit(self.client.update_weights, asdict(info))
            tensors = iter(zip(self.source, meta, strict=True))
            for bucket in buckets(info.dtype_names, info.shapes):
                parts = []
                for (name, tensor), expected in (next(tensors) for _ in bucket):
                    if name != expected.name:
                        raise RuntimeError(f"weight source yielded {name!r}, metadata announced {expected.name!r}")
                    parts.append(tensor.detach().reshape(-1))
                flat = parts[0].contiguous() if len(parts) == 1 else torch.cat(parts)
                self.group.broadcast(flat, 0).wait()
            receiving.result()
        finally:
            # Never join a receiver stuck in a broadcast that will not complete: raise instead.
            pool.shutdown(wait=False)
        self.client.finish_weight_update()

    def shutdown(self) -> None:
        self.group = None


def register_vllm_plugin() -> None:
    """Entry point of the ``vllm.general_plugins`` group: make ``gloo`` a known backend in this process."""
    if GLOO not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(GLOO, GlooWeightTransferEngine)
    if GLOO not in WeightTransferTrainerFactory._registry:
        WeightTransferTrainerFactory.register_engine(GLOO, GlooTrainerWeightTransferEngine)
