"""Supervised fine-tuning: masked next-token loss on the response tokens only (the prompt is context)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from cluster.algo.logprobs import masked_mean
from cluster.algo.objective import LossInputs, Objective


def sft_loss(logprobs: Tensor, mask: Tensor) -> Tensor:
    """Mean negative log-likelihood over the masked (response) tokens; 0 when there are none."""
    if logprobs.shape != mask.shape:
        raise ValueError(f"logprobs {tuple(logprobs.shape)} and mask {tuple(mask.shape)} differ")
    return masked_mean(-logprobs, mask)


@dataclass(frozen=True, kw_only=True)
class SFTObjective(Objective):
    """Token-mean cross-entropy of the response; every token of the global batch weighs the same."""

    def loss(self, inputs: LossInputs) -> tuple[Tensor, dict[str, float]]:
        loss = sft_loss(inputs.logprobs, inputs.mask)
        return loss, {"loss": loss.item()}
