"""Reward-model training: the Bradley-Terry pairwise loss on preference pairs (InstructGPT, Llama 2).

A batch holds pairs as consecutive rows, row ``2i`` the chosen response and row ``2i + 1`` the
rejected one to the same prompt; the learner's scalar head gives one reward per row (at the
sequence's last token) and ``PairwiseObjective`` pushes ``r_chosen - r_rejected`` up. Held-out
evaluation measures the same two numbers with ``pairwise_metrics``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cluster.algo.objective import LossInputs, Objective


def bradley_terry_loss(chosen: Tensor, rejected: Tensor) -> Tensor:
    """Mean of ``-log sigmoid(r_chosen - r_rejected)``: the negative log-likelihood that each chosen response
    wins under the Bradley-Terry model."""
    if chosen.shape != rejected.shape or chosen.ndim != 1:
        raise ValueError(f"chosen {tuple(chosen.shape)} and rejected {tuple(rejected.shape)} must be the same (P,)")
    return -torch.nn.functional.logsigmoid(chosen - rejected).mean()


def chosen_and_rejected(values: Tensor) -> tuple[Tensor, Tensor]:
    """Interleaved rewards (2P,) -> chosen (P,), rejected (P,)."""
    if values.ndim != 1 or values.shape[0] % 2:
        raise ValueError(f"pairwise rewards must be (2P,), chosen and rejected interleaved; got {tuple(values.shape)}")
    return values[0::2], values[1::2]


def pairwise_metrics(values: Tensor) -> tuple[Tensor, dict[str, float]]:
    """The Bradley-Terry loss of interleaved rewards, and its metrics: the loss, the pairwise accuracy (share of
    pairs whose chosen response scores strictly higher) and the mean reward margin."""
    chosen, rejected = chosen_and_rejected(values)
    loss = bradley_terry_loss(chosen, rejected)
    with torch.no_grad():
        metrics = {
            "loss": loss.item(),
            "accuracy": (chosen > rejected).float().mean().item(),
            "reward_margin": (chosen - rejected).mean().item(),
        }
    return loss, metrics


@dataclass(frozen=True, kw_only=True)
class PairwiseObjective(Objective):
    """Bradley-Terry loss over a batch of preference pairs; every pair of the global batch weighs the same."""

    @property
    def head(self) -> str:
        return "reward"

    @property
    def group_rows(self) -> int:
        return 2

    @property
    def token_weighted(self) -> bool:
        return False

    def loss(self, inputs: LossInputs) -> tuple[Tensor, dict[str, float]]:
        if inputs.values is None:
            raise ValueError("PairwiseObjective needs the scalar head's values (a learner with head 'reward')")
        return pairwise_metrics(inputs.values)
