"""What travels between the driver and the actors: small dataclasses that check themselves.

Token data are numpy arrays (they go through the Ray object store without pickling Python ints);
dtypes travel as strings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingSpec:
    """How one generate call samples."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 48
    stop: tuple[str, ...] = ()
    logprobs: bool = True
    """Ask the engine for per-token logprobs (they cost about half the decode throughput on CPU)."""

    def __post_init__(self) -> None:
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.max_tokens < 1:
            raise ValueError(f"invalid sampling spec: {self}")


@dataclass
class Rollouts:
    """Completions for P prompts x G samples, row ``i * G + j`` is sample j of prompt i."""

    group_size: int
    prompt_ids: list[np.ndarray]
    """One int32 array per prompt."""
    tokens: np.ndarray
    """(P*G, T) int32 completion tokens, right-padded with 0."""
    lengths: np.ndarray
    """(P*G,) int32 completion lengths."""
    logprobs: np.ndarray | None
    """(P*G, T) float32 engine logprobs of the sampled tokens, 0 on padding; None if not asked for."""
    texts: list[str]
    finish_reasons: list[str]
    policy_version: int
    gen_seconds: float = 0.0

    def __post_init__(self) -> None:
        rows = len(self.prompt_ids) * self.group_size
        if self.tokens.ndim != 2 or self.tokens.shape[0] != rows:
            raise ValueError(f"tokens must be ({rows}, T), got {self.tokens.shape}")
        if self.lengths.shape != (rows,) or len(self.texts) != rows or len(self.finish_reasons) != rows:
            raise ValueError("lengths, texts and finish_reasons need one entry per completion")
        if self.logprobs is not None and self.logprobs.shape != self.tokens.shape:
            raise ValueError(f"logprobs {self.logprobs.shape} do not match tokens {self.tokens.shape}")

    @property
    def num_completions(self) -> int:
        return self.tokens.shape[0]

    @staticmethod
    def concat(parts: list[Rollouts]) -> Rollouts:
        """Join the shards of several workers, padding to the longest completion."""
        width = max(p.tokens.shape[1] for p in parts)

        def pad(a: np.ndarray) -> np.ndarray:
            return np.pad(a, ((0, 0), (0, width - a.shape[1])))

        has_lp = all(p.logprobs is not None for p in parts)
        return Rollouts(
            group_size=parts[0].group_size,
            prompt_ids=[ids for p in parts for ids in p.prompt_ids],
            tokens=np.concatenate([pad(p.tokens) for p in parts]),
            lengths=np.concatenate([p.lengths for p in parts]),
            logprobs=np.concatenate([pad(p.logprobs) for p in parts]) if has_lp else None,
            texts=[t for p in parts for t in p.texts],
            finish_reasons=[f for p in parts for f in p.finish_reasons],
            policy_version=min(p.policy_version for p in parts),
            gen_seconds=max(p.gen_seconds for p in parts),
        )


@dataclass
class TrainBatch:
    """Sequences for the learner: prompt and completion concatenated, right-padded."""

    input_ids: np.ndarray
    """(B, L) int64 prompt + completion tokens."""
    prompt_lens: np.ndarray
    """(B,) int64."""
    response_lens: np.ndarray
    """(B,) int64; the loss covers positions [prompt_len, prompt_len + response_len)."""
    advantages: np.ndarray
    """(B,) float32 group-relative advantages."""
    rollout_logprobs: np.ndarray | None = None
    """(B, R) float32 engine logprobs of the response tokens, for the sync check."""

    def __post_init__(self) -> None:
        b = self.input_ids.shape[0]
        for name in ("prompt_lens", "response_lens", "advantages"):
            if getattr(self, name).shape != (b,):
                raise ValueError(f"{name} must have shape ({b},), got {getattr(self, name).shape}")
        if (self.prompt_lens + self.response_lens > self.input_ids.shape[1]).any():
            raise ValueError("a sequence is longer than input_ids")
        if (self.prompt_lens < 1).any():
            raise ValueError("every sequence needs at least one prompt token")

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def max_response_len(self) -> int:
        return int(self.response_lens.max(initial=0))

    def select(self, rows: np.ndarray | slice) -> TrainBatch:
        return TrainBatch(
            input_ids=self.input_ids[rows],
            prompt_lens=self.prompt_lens[rows],
            response_lens=self.response_lens[rows],
            advantages=self.advantages[rows],
            rollout_logprobs=None if self.rollout_logprobs is None else self.rollout_logprobs[rows],
        )

    @staticmethod
    def from_rollouts(rollouts: Rollouts, advantages: np.ndarray) -> TrainBatch:
        g = rollouts.group_size
        prompts = [rollouts.prompt_ids[i // g] for i in range(rollouts.num_completions)]
        prompt_lens = np.array([len(p) for p in prompts], dtype=np.int64)
        lengths = rollouts.lengths.astype(np.int64)
        ids = np.zeros((len(prompts), int((prompt_lens + lengths).max())), dtype=np.int64)
        for row, (prompt, n) in enumerate(zip(prompts, lengths, strict=True)):
            ids[row, : len(prompt)] = prompt
            ids[row, len(prompt) : len(prompt) + n] = rollouts.tokens[row, :n]
        return TrainBatch(
            input_ids=ids,
            prompt_lens=prompt_lens,
            response_lens=lengths,
            advantages=advantages.astype(np.float32),
            rollout_logprobs=rollouts.logprobs,
        )
