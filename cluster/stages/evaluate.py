"""Held-out evaluation as the R1 paper reports it: pass@1 averaged over samples, plus greedy accuracy.

``evaluate`` samples ``data.eval_samples`` completions per held-out problem at the rollout
temperature and one greedy completion, scores both with the run's reward scorers, and returns an
``EvalResult``: the one record every stage, checkpoint and summary uses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from cluster.config import RunConfig
from cluster.data.prompts import Prompts
from cluster.stages.common import sampling_spec


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

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(row: dict) -> EvalResult:
        return EvalResult(**row)

    def text(self) -> str:
        return f"pass@1 {self.accuracy:.3f}  greedy {self.greedy_accuracy:.3f}  format {self.format_rate:.3f}"


def evaluate(fleet, prompts: Prompts, cfg: RunConfig, step: int) -> EvalResult:
    key = cfg.reward.accuracy_key
    n = cfg.data.eval_samples
    sampled = fleet.generate(prompts.eval_ids, n, sampling_spec(cfg, "eval"))
    sampled_scores = fleet.score(sampled.texts, [ex.answer for ex in prompts.eval for _ in range(n)])
    greedy = fleet.generate(prompts.eval_ids, 1, sampling_spec(cfg, "greedy"))
    greedy_scores = fleet.score(greedy.texts, [ex.answer for ex in prompts.eval])
    return EvalResult(
        step=step,
        accuracy=float(sampled_scores.components[key].mean()),
        greedy_accuracy=float(greedy_scores.components[key].mean()),
        format_rate=float(sampled_scores.components["format"].mean()),
        response_length=float(sampled.lengths.mean()),
    )
