"""Reward functions by name, and weighted sums of them.

Every reward has the signature ``fn(completion: str, answer: str) -> float``. A name is one of
``REWARD_NAMES`` or a ``package.module:function`` import path to a user reward of that signature.
``format`` is the R1-Zero format check; with ``think_opened=True`` (the prompt template ends with
``<think>``, as r1zero's does) it resolves to ``format_think_opened``, so callers that know the
template never pick between the two by hand.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from rewards.countdown import countdown_reward
from rewards.exact import exact_match_reward
from rewards.format import format_reward
from rewards.harmless import harmless_reward
from rewards.language import consistency_reward
from rewards.math import accuracy_reward

RewardFn = Callable[[str, str], float]


def accuracy_tagged_reward(completion: str, answer: str) -> float:
    """``accuracy_reward`` counting only the ``<answer>`` block (R1-Zero's rule)."""
    return accuracy_reward(completion, answer, require_answer_tag=True)


def _format(completion: str, answer: str) -> float:
    return format_reward(completion)


def _format_think_opened(completion: str, answer: str) -> float:
    return format_reward(completion, think_opened=True)


def _language(completion: str, answer: str, language: str = "en") -> float:
    return consistency_reward(completion, language)


REWARDS: dict[str, RewardFn] = {
    "accuracy": accuracy_reward,
    "accuracy_tagged": accuracy_tagged_reward,
    "format": _format,
    "format_think_opened": _format_think_opened,
    "countdown": countdown_reward,
    "language": _language,
    "exact": exact_match_reward,
    "harmless": harmless_reward,
}
REWARD_NAMES: tuple[str, ...] = tuple(REWARDS)


def get_reward(name: str, *, think_opened: bool = False) -> RewardFn:
    """The reward called ``name``: a built-in name or a ``package.module:function`` path.

    ``think_opened``: the prompt already opened ``<think>``; ``format`` then checks the completion as the
    rest of that thought."""
    if name == "format" and think_opened:
        return _format_think_opened
    if name in REWARDS:
        return REWARDS[name]
    module_name, _, attribute = name.partition(":")
    if not module_name or not attribute:
        known = ", ".join(REWARD_NAMES)
        raise ValueError(f"unknown reward {name!r}; known rewards: {known}, or a 'package.module:function' path")
    try:
        fn = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load reward {name!r}: {exc}") from exc
    if not callable(fn):
        raise ValueError(f"reward {name!r} is not callable")
    return fn


@dataclass(frozen=True)
class RowInfo:
    """What a reward may need beyond the completion and the gold answer."""

    language: str = "en"
    """Target language of the chain of thought (the ``language`` reward)."""
    task: str = ""
    """The prompt's task; a reward limited to other tasks (``only``) scores 0 on it."""
    prompt: str = ""
    """The question (reward models judge the completion after it)."""


def call_reward(name: str, fn: RewardFn, completion: str, answer: str, row: RowInfo) -> float:
    if name == "language":
        return float(fn(completion, answer, language=row.language))
    return float(fn(completion, answer))


class WeightedReward:
    """A weighted sum of named rewards that also reports each component's raw score.

    ``only`` maps a reward name to the tasks it applies to (DeepSeek-R1's last phase: rule rewards for
    reasoning prompts only); on a row of another task that reward scores 0."""

    def __init__(
        self,
        weights: Mapping[str, float],
        *,
        think_opened: bool = False,
        only: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        if not weights:
            raise ValueError("WeightedReward needs at least one reward")
        for name, weight in weights.items():
            if not math.isfinite(weight):
                raise ValueError(f"reward {name!r} has a non-finite weight {weight}")
        self._weights = dict(weights)
        self._think_opened = think_opened
        self._only = {name: tuple(tasks) for name, tasks in (only or {}).items()}
        self._fns = {name: get_reward(name, think_opened=think_opened) for name in weights}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._weights)

    def applies(self, name: str, row: RowInfo) -> bool:
        return name not in self._only or row.task in self._only[name]

    def __call__(self, completion: str, answer: str, row: RowInfo = RowInfo()) -> tuple[float, dict[str, float]]:
        scores = {
            name: call_reward(name, fn, completion, answer, row) if self.applies(name, row) else 0.0
            for name, fn in self._fns.items()
        }
        return sum(self._weights[name] * score for name, score in scores.items()), scores

    def __reduce__(self):
        # Ship the weights only; the receiving process resolves the names itself.
        return _rebuild, (self._weights, self._think_opened, self._only)


def _rebuild(weights: dict[str, float], think_opened: bool, only: dict[str, tuple[str, ...]]) -> WeightedReward:
    return WeightedReward(weights, think_opened=think_opened, only=only)


def score_rows(
    reward: WeightedReward, completions: list[str], answers: list[str], rows: list[RowInfo] | None = None
) -> list[dict[str, float]]:
    """Each completion's raw component scores (what a scorer's deadline worker runs for a chunk)."""
    rows = rows or [RowInfo()] * len(completions)
    return [reward(c, a, r)[1] for c, a, r in zip(completions, answers, rows, strict=True)]


def score_one(name: str, think_opened: bool, completion: str, answer: str, row: RowInfo = RowInfo()) -> float:
    """One reward of one completion (a scorer's deadline worker, after a chunk failed)."""
    return call_reward(name, get_reward(name, think_opened=think_opened), completion, answer, row)
