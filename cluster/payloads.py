"""What travels between the driver and the actors: small keyword-only dataclasses that check themselves.

Token data are numpy arrays (they go through the Ray object store without pickling Python ints);
dtypes travel as strings. Nothing here imports Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from cluster.config import LearnerConfig


@dataclass(frozen=True, kw_only=True)
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


@dataclass(kw_only=True)
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

    def select_groups(self, groups: list[int]) -> Rollouts:
        """The completions of the given prompts (group indices), in that order."""
        g = self.group_size
        rows = np.concatenate([np.arange(i * g, (i + 1) * g) for i in groups]) if groups else np.arange(0)
        return replace(
            self,
            prompt_ids=[self.prompt_ids[i] for i in groups],
            tokens=self.tokens[rows],
            lengths=self.lengths[rows],
            logprobs=None if self.logprobs is None else self.logprobs[rows],
            texts=[self.texts[r] for r in rows],
            finish_reasons=[self.finish_reasons[r] for r in rows],
        )

    @staticmethod
    def concat(parts: list[Rollouts]) -> Rollouts:
        """Join parts generated side by side (shards of several workers), padding to the longest
        completion; ``gen_seconds`` is the slowest part's."""
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


@dataclass(kw_only=True)
class Scores:
    """Weighted totals and raw components, one entry per completion, plus what went wrong scoring them."""

    total: np.ndarray
    components: dict[str, np.ndarray]
    timeouts: int = 0
    errors: int = 0
    seconds: float = 0.0
    error_messages: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name, values in self.components.items():
            if values.shape != self.total.shape:
                raise ValueError(f"reward component {name!r} has shape {values.shape}, total {self.total.shape}")

    def __len__(self) -> int:
        return self.total.shape[0]

    def select(self, rows: np.ndarray | slice) -> Scores:
        """The scores of ``rows``; the call's counters (timeouts, errors, seconds) stay with the whole call."""
        return Scores(total=self.total[rows], components={k: v[rows] for k, v in self.components.items()})

    @staticmethod
    def concat(parts: list[Scores], *, sequential: bool = False) -> Scores:
        """Join parts; ``seconds`` is the slowest part's, or the sum when ``sequential`` (one after another)."""
        names = parts[0].components
        seconds = [p.seconds for p in parts]
        return Scores(
            total=np.concatenate([p.total for p in parts]),
            components={n: np.concatenate([p.components[n] for p in parts]) for n in names},
            timeouts=sum(p.timeouts for p in parts),
            errors=sum(p.errors for p in parts),
            seconds=sum(seconds) if sequential else max(seconds),
            error_messages=[m for p in parts for m in p.error_messages][:10],
        )


@dataclass(kw_only=True)
class SampledBatch:
    """One step's groups, sampled and scored, as the RL stage trains on them."""

    rollouts: Rollouts
    scores: Scores
    prompts_sampled: int
    """Prompts drawn to fill the batch (more than its groups when dynamic sampling dropped some)."""
    data_position: int
    """The prompt stream's position after this batch was drawn (what a checkpoint stores)."""
    ref_logprobs: np.ndarray | None = None
    """(P*G, R) float32 reference-model logprobs of the response tokens, from the reference actor
    (``learner.reference: actor``); None where the learner ranks compute them."""
    reference_seconds: float = 0.0
    """How long the reference actor took to compute them (as the driver waited for it)."""

    def __post_init__(self) -> None:
        if len(self.scores) != self.rollouts.num_completions:
            raise ValueError(f"{len(self.scores)} scores for {self.rollouts.num_completions} completions")
        _check_response_table("ref_logprobs", self.ref_logprobs, self.rollouts.lengths)


Behaviour = Literal["rollout", "learner"]


@dataclass(kw_only=True)
class TrainBatch:
    """Sequences for the learner: prompt and completion concatenated, right-padded."""

    input_ids: np.ndarray
    """(B, L) int64 prompt + completion tokens."""
    prompt_lens: np.ndarray
    """(B,) int64."""
    response_lens: np.ndarray
    """(B,) int64; the loss covers positions [prompt_len, prompt_len + response_len)."""
    advantages: np.ndarray
    """(B,) float32 group-relative advantages (zeros for objectives that use none)."""
    rollout_logprobs: np.ndarray | None = None
    """(B, R) float32 engine logprobs of the response tokens."""
    behaviour: Behaviour = "learner"
    """Where the behaviour policy's logprobs (the clipped ratio's denominator) come from: ``rollout``,
    the engine's ``rollout_logprobs`` (stale rollouts, or a free old policy); ``learner``, a forward of
    the learner's model before the batch's first update (skipped when the batch takes one update)."""
    check_engine: bool = False
    """The rows were sampled with the weights the learner holds now (synchronous rollouts): the learner compares
    the engine's ``rollout_logprobs`` with its own first forward (before any update) and reports the gap as
    the weight-sync proof (``rollout/logprob_diff_max``), at no extra forward."""
    ref_logprobs: np.ndarray | None = None
    """(B, R) float32 reference-model logprobs of the response tokens at the sampling temperature, computed
    outside the learner (the reference actor); None: the learner ranks compute them with their own reference."""

    def __post_init__(self) -> None:
        b = self.input_ids.shape[0]
        for name in ("prompt_lens", "response_lens", "advantages"):
            if getattr(self, name).shape != (b,):
                raise ValueError(f"{name} must have shape ({b},), got {getattr(self, name).shape}")
        if (self.prompt_lens + self.response_lens > self.input_ids.shape[1]).any():
            raise ValueError("a sequence is longer than input_ids")
        if (self.prompt_lens < 1).any():
            raise ValueError("every sequence needs at least one prompt token")
        if self.behaviour == "rollout" and self.rollout_logprobs is None:
            raise ValueError("behaviour 'rollout' needs the engine's rollout_logprobs in the batch")
        if self.check_engine and self.rollout_logprobs is None:
            raise ValueError("check_engine needs the engine's rollout_logprobs in the batch")
        _check_response_table("ref_logprobs", self.ref_logprobs, self.response_lens)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def max_response_len(self) -> int:
        return int(self.response_lens.max(initial=0))

    def select(self, rows: np.ndarray | slice) -> TrainBatch:
        return replace(
            self,
            input_ids=self.input_ids[rows],
            prompt_lens=self.prompt_lens[rows],
            response_lens=self.response_lens[rows],
            advantages=self.advantages[rows],
            rollout_logprobs=None if self.rollout_logprobs is None else self.rollout_logprobs[rows],
            ref_logprobs=None if self.ref_logprobs is None else self.ref_logprobs[rows],
        )

    def sequences(self) -> list[np.ndarray]:
        """Each row's prompt + response tokens, unpadded."""
        ends = self.prompt_lens + self.response_lens
        return [row[:end] for row, end in zip(self.input_ids, ends, strict=True)]

    @staticmethod
    def from_rollouts(
        rollouts: Rollouts,
        advantages: np.ndarray,
        behaviour: Behaviour = "learner",
        *,
        check_engine: bool = False,
        ref_logprobs: np.ndarray | None = None,
    ) -> TrainBatch:
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
            behaviour=behaviour,
            check_engine=check_engine and rollouts.logprobs is not None,
            ref_logprobs=ref_logprobs,
        )


def _check_response_table(name: str, table: np.ndarray | None, lengths: np.ndarray) -> None:
    """A per-response-token table: one row per sequence, at least as wide as the longest response."""
    if table is None:
        return
    if table.ndim != 2 or table.shape[0] != len(lengths) or table.shape[1] < int(lengths.max(initial=0)):
        raise ValueError(
            f"{name} must be ({len(lengths)}, >= {int(lengths.max(initial=0))}) for these responses, got {table.shape}"
        )


@dataclass(frozen=True, kw_only=True)
class LearnerSpec:
    """Everything one learner rank is built from."""

    rank: int
    world_size: int
    master_addr: str
    master_port: int
    """Rendezvous of the ranks' torch.distributed group (on rank 0's node)."""
    model_path: str
    """Weights to start from: the base model or a checkpoint."""
    base_path: str
    """The base model: tokenizer, config and the frozen reference model (a checkpoint may be rotated away)."""
    config: LearnerConfig
    optimizer_steps: int
    """Optimizer steps of the whole run, for the LR schedule."""
    reference: bool = True
    """Load the frozen reference model (objectives with a KL term need it)."""
    head: Literal["causal", "reward"] = "causal"
    """``causal``: a language model (RL, SFT); ``reward``: a sequence-classification model with one scalar
    output (Bradley-Terry reward model training, ``r1ray rm``), initialised from ``model_path``."""
    reward_score: Literal["head", "likelihood"] = "head"
    """How a ``reward`` learner scores a sequence: the scalar head at its last token, or (``likelihood``) a
    language model's mean log-probability of the response tokens (``rm.score``)."""
    seed: int = 0
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world size {self.world_size}")
        if self.optimizer_steps < 1:
            raise ValueError(f"optimizer_steps must be >= 1, got {self.optimizer_steps}")
        if self.reward_score not in ("head", "likelihood"):
            raise ValueError(f"reward_score must be 'head' or 'likelihood', got {self.reward_score!r}")
        if self.reward_score != "head" and self.head != "reward":
            raise ValueError(f"reward_score {self.reward_score!r} needs head 'reward', got {self.head!r}")
