"""What a learner optimises: an ``Objective`` turns one micro-batch's model outputs into a loss.

The learner is objective-agnostic: for a language model (``head == "causal"``) it computes the
response tokens' logprobs once per micro-batch (at ``objective.temperature``) and hands them to
``objective.loss``: GRPO (``algo/grpo.py``) and SFT (``algo/sft.py``); for a scalar head
(``head == "reward"``) it hands over one value per sequence: the Bradley-Terry reward model
(``algo/pairwise.py``). Objectives are small frozen dataclasses sent with every ``train_step``
call, so the learner holds no schedule of its own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from torch import Tensor


@dataclass(kw_only=True)
class LossInputs:
    """One micro-batch on the learner's device: (B, R) token tables from a language model, or (B,) ``values``
    from a scalar head."""

    logprobs: Tensor | None = None
    """The trained model's logprobs of the response tokens (with gradient)."""
    mask: Tensor | None = None
    """1.0 on response tokens, 0.0 on padding."""
    advantages: Tensor | None = None
    """(B,) per-sequence advantages."""
    old_logprobs: Tensor | None = None
    """Behaviour policy's logprobs; None means the batch is on-policy (the trained forward itself)."""
    ref_logprobs: Tensor | None = None
    """The frozen reference model's logprobs, when the objective asks for them."""
    values: Tensor | None = None
    """(B,) the scalar head's output at each sequence's last token (a reward model's rewards, with gradient);
    given instead of the token tables."""

    def __post_init__(self) -> None:
        tables = ("logprobs", "mask", "advantages", "old_logprobs", "ref_logprobs")
        if self.values is not None:
            given = [name for name in tables if getattr(self, name) is not None]
            if given or self.values.ndim != 1:
                raise ValueError(f"values must be (B,) and come alone, got {tuple(self.values.shape)} with {given}")
            return
        if self.logprobs is None or self.mask is None or self.advantages is None:
            raise ValueError("LossInputs needs logprobs, mask and advantages (or values, from a scalar head)")
        shape = tuple(self.logprobs.shape)
        if len(shape) != 2 or tuple(self.mask.shape) != shape:
            raise ValueError(f"logprobs {shape} and mask {tuple(self.mask.shape)} must be the same (B, R)")
        if tuple(self.advantages.shape) != shape[:1]:
            raise ValueError(f"advantages must be ({shape[0]},), got {tuple(self.advantages.shape)}")
        for name in ("old_logprobs", "ref_logprobs"):
            table = getattr(self, name)
            if table is not None and tuple(table.shape) != shape:
                raise ValueError(f"{name} {tuple(table.shape)} != logprobs {shape}")


@dataclass(frozen=True, kw_only=True)
class Objective(ABC):
    epochs: int = 1
    """Passes over each batch."""
    mini_batches: int = 1
    """Optimizer steps per pass."""
    temperature: float = 1.0
    """Logprobs are of ``softmax(logits / temperature)``: the sampling temperature for RL, 1 for SFT."""

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.mini_batches < 1 or self.temperature <= 0:
            raise ValueError(f"invalid objective {self}")

    @property
    def updates(self) -> int:
        return self.epochs * self.mini_batches

    @property
    def uses_reference(self) -> bool:
        """Whether ``loss`` needs ``ref_logprobs``."""
        return False

    @property
    def uses_old_logprobs(self) -> bool:
        """Whether ``loss`` needs the behaviour policy's logprobs (a ratio to the sampling policy)."""
        return False

    @property
    def token_metrics(self) -> frozenset[str]:
        """Metrics that are means over tokens (combined weighted by tokens whatever the loss's weighting)."""
        return frozenset()

    @property
    def token_weighted(self) -> bool:
        """Micro-batches (and ranks) combine weighted by tokens (True) or by sequences (False)."""
        return True

    @property
    def head(self) -> str:
        """What the learner's model outputs for ``loss``: ``causal`` token logprobs, or ``reward`` per-sequence
        ``values`` (the learner's ``LearnerSpec.head`` must match)."""
        return "causal"

    @property
    def group_rows(self) -> int:
        """Consecutive rows that belong together (a preference pair: 2); rank shards and micro-batches never
        split a group."""
        return 1

    @abstractmethod
    def loss(self, inputs: LossInputs) -> tuple[Tensor, dict[str, float]]:
        """The scalar loss of one micro-batch and its metrics."""
