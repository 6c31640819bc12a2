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
from collections.abc import Callable, Mapping

from rewards.countdown import countdown_reward
from rewards.exact import exact_match_reward
from rewards.format import format_reward
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


def _language(completion: str, answer: str) -> float:
    return consistency_reward(completion, "en")


REWARDS: dict[str, RewardFn] = {
    "accuracy": accuracy_reward,
    "accuracy_tagged": accuracy_tagged_reward,
    "format": _format,
    "format_think_opened": _format_think_opened,
    "countdown": countdown_reward,
    "language": _language,
    "exact": exact_match_reward,
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


class WeightedReward:
    """A weighted sum of named rewards that also reports each component's raw score."""

    def __init__(self, weights: Mapping[str, float], *, think_opened: bool = False) -> None:
        if not weights:
            raise ValueError("WeightedReward needs at least one reward")
        for name, weight in weights.items():
            if not math.isfinite(weight):
                raise ValueError(f"reward {name!r} has a non-finite weight {weight}")
        self._weights = dict(weights)
        self._think_opened = think_opened
        self._fns = {name: get_reward(name, think_opened=think_opened) for name in weights}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._weights)

    def __call__(self, completion: str, answer: str) -> tuple[float, dict[str, float]]:
        scores = {name: float(fn(completion, answer)) for name, fn in self._fns.items()}
        return sum(self._weights[name] * score for name, score in scores.items()), scores

    def __reduce__(self):
        # Ship the weights only; the receiving process resolves the names itself.
        return _rebuild, (self._weights, self._think_opened)


def _rebuild(weights: dict[str, float], think_opened: bool) -> WeightedReward:
    return WeightedReward(weights, think_opened=think_opened)


def score_rows(reward: WeightedReward, completions: list[str], answers: list[str]) -> list[dict[str, float]]:
    """Each completion's raw component scores (what a scorer's deadline worker runs for a chunk)."""
    return [reward(c, a)[1] for c, a in zip(completions, answers, strict=True)]


def score_one(name: str, think_opened: bool, completion: str, answer: str) -> float:
    """One reward of one completion (a scorer's deadline worker, after a chunk failed)."""
    return float(get_reward(name, think_opened=think_opened)(completion, answer))
