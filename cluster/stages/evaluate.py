"""Held-out evaluation as the R1 paper reports it: pass@1 averaged over samples, plus greedy accuracy.

``evaluate`` samples ``data.eval_samples`` completions per held-out problem at the rollout
temperature and one greedy completion, scores both with the run's reward scorers, and returns an
``EvalResult``: the one record every stage, checkpoint and summary uses. Beside accuracy it
reports what tells reasoning from sharpening: greedy accuracy, the lengths of correct and of
incorrect answers, and how often the model writes a chain of thought at all (``long_share``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from cluster.algo.passk import majority_answer, mean_pass_at_k
from cluster.config import RunConfig
from cluster.data.prompts import Prompts, reward_info
from cluster.payloads import Rollouts, Scores
from cluster.progress import reports_progress
from cluster.stages.common import sampling_spec
from rewards.language import chain_of_thought
from rewards.tags import last_block


@dataclass(frozen=True, kw_only=True)
class EvalResult:
    step: int
    accuracy: float
    """Sampled pass@1: the mean accuracy over ``data.eval_samples`` samples per problem, then problems."""
    greedy_accuracy: float
    format_rate: float
    """Share of sampled completions in the R1-Zero format."""
    response_length: float
    """Mean tokens per sampled completion."""
    length_correct: float | None = None
    """Mean tokens of the correct sampled completions (None when there are none)."""
    length_incorrect: float | None = None
    long_share: float = 0.0
    """Share of sampled completions that write a non-empty chain of thought (``<think>`` block)."""
    greedy_length: float = 0.0
    greedy_long_share: float = 0.0
    pass_at_k: dict[str, float] | None = None
    """Unbiased pass@k for k = 1, 2, 4, ... up to the samples per problem."""
    cons_at_k: float | None = None
    """Majority vote over the samples' extracted ``<answer>`` (same string), scored by the accuracy reward."""

    def __post_init__(self) -> None:
        for name in ("accuracy", "greedy_accuracy", "format_rate", "long_share", "greedy_long_share", "cons_at_k"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"EvalResult.{name} must be a share in [0, 1], got {value}")

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(row: dict) -> EvalResult:
        return EvalResult(**row)

    def text(self) -> str:
        return (
            f"pass@1 {self.accuracy:.3f}  greedy {self.greedy_accuracy:.3f}  format {self.format_rate:.3f}  "
            f"len {self.response_length:.1f}  long {self.long_share:.2f}"
        )


def thinks(texts: list[str]) -> np.ndarray:
    """Per completion: does it write a non-empty chain of thought?"""
    return np.array([bool(chain_of_thought(t).strip()) for t in texts])


def mean_or_none(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None


@reports_progress("eval")
def evaluate(fleet, prompts: Prompts, cfg: RunConfig, step: int) -> EvalResult:
    n = cfg.data.eval_samples
    sampled = fleet.generate(prompts.eval_ids, n, sampling_spec(cfg, "eval"), seed=f"eval/{step}")
    answers = [ex.answer for ex in prompts.eval for _ in range(n)]
    sampled_scores = fleet.score(sampled.texts, answers, reward_info(prompts.eval, cfg.data, n, prompts.format))
    greedy = fleet.generate(prompts.eval_ids, 1, sampling_spec(cfg, "greedy"))
    greedy_scores = fleet.score(
        greedy.texts, [ex.answer for ex in prompts.eval], reward_info(prompts.eval, cfg.data, 1, prompts.format)
    )
    return eval_result(step, cfg.reward.accuracy_key, sampled, sampled_scores, greedy, greedy_scores)


def eval_result(
    step: int, accuracy_key: str, sampled: Rollouts, sampled_scores: Scores, greedy: Rollouts, greedy_scores: Scores
) -> EvalResult:
    correct = sampled_scores.components[accuracy_key] > 0.5
    lengths = sampled.lengths.astype(np.float64)
    n = sampled.group_size
    table = correct.reshape(-1, n)
    voted = [_majority_correct(sampled.texts[i * n : (i + 1) * n], table[i]) for i in range(len(table))]
    return EvalResult(
        step=step,
        accuracy=float(sampled_scores.components[accuracy_key].mean()),
        greedy_accuracy=float(greedy_scores.components[accuracy_key].mean()),
        format_rate=float(sampled_scores.components["format"].mean()),
        response_length=float(lengths.mean()),
        length_correct=mean_or_none(lengths[correct]),
        length_incorrect=mean_or_none(lengths[~correct]),
        long_share=float(thinks(sampled.texts).mean()),
        greedy_length=float(greedy.lengths.mean()),
        greedy_long_share=float(thinks(greedy.texts).mean()),
        pass_at_k={str(k): mean_pass_at_k(table.tolist(), k) for k in _powers_of_two(n)},
        cons_at_k=float(np.mean(voted)),
    )


def _powers_of_two(n: int) -> list[int]:
    return [2**i for i in range(n.bit_length()) if 2**i <= n]


def _majority_correct(texts: list[str], correct: np.ndarray) -> bool:
    answers = [None if (a := last_block(t, "answer")) is None else a.strip() for t in texts]
    top = majority_answer(answers)
    return top is not None and bool(correct[answers.index(top)])
