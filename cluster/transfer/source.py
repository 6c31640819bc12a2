"""What the learner sends to the engines: its parameters, gathered one at a time, in the engines' dtype.

The learner keeps float32 master weights; an engine serving bfloat16 would cast on load anyway, so
casting before the wire halves the bytes of every push.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from vllm.distributed.weight_transfer.base import ModuleSource, ParamMeta, WeightSource


class CastSource(WeightSource):
    """vLLM's ``ModuleSource`` (``full_tensor()`` per parameter, a collective on every rank) cast to ``dtype``."""

    def __init__(self, module: torch.nn.Module, dtype: torch.dtype) -> None:
        if not dtype.is_floating_point:
            raise ValueError(f"weights travel in a floating-point dtype, not {dtype}")
        self.inner = ModuleSource(module)
        self.dtype = dtype

    def metadata(self) -> list[ParamMeta]:
        return [ParamMeta(m.name, self.dtype, m.shape) for m in self.inner.metadata()]

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in self.inner:
            yield name, tensor.detach().to(self.dtype)
