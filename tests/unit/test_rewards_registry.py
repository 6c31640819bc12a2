"""The reward registry: names, import paths, WeightedReward, pickling, and the no-torch/no-Ray rule.

Run: .venv/bin/python -m pytest tests/unit/test_rewards_registry.py
"""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest

from rewards import REWARD_NAMES, WeightedReward, get_reward
from rewards.countdown import countdown_answer

GOOD = "<think>2 plus 2 is 4</think><answer>4</answer>"
OPENED = "2 plus 2 is 4</think><answer>4</answer>"


def double_length(completion: str, answer: str) -> float:
    """A user reward, loaded by import path in the tests below."""
    return 2.0 * len(completion)


not_callable = 3


# (name, completion, answer, expected): every built-in has the uniform (completion, answer) signature.
CASES = [
    ("accuracy", GOOD, "4", 1.0),
    ("accuracy", "<think>\\boxed{4}</think>", "4", 1.0),
    ("accuracy_tagged", "<think>\\boxed{4}</think>", "4", 0.0),
    ("accuracy_tagged", GOOD, "4", 1.0),
    ("format", GOOD, "ignored", 1.0),
    ("format", OPENED, "ignored", 0.0),
    ("format_think_opened", OPENED, "ignored", 1.0),
    ("format_think_opened", GOOD, "ignored", 0.0),
    ("countdown", "<answer>(1 + 3) * 2</answer>", countdown_answer(8, [1, 2, 3]), 1.0),
    ("language", GOOD, "ignored", 1.0),
    ("language", "<think>二加二等于四</think><answer>4</answer>", "ignored", 0.0),
    ("exact", GOOD, "4", 1.0),
    ("exact", GOOD, "4.0", 0.0),
    ("harmless", GOOD, "ignored", 1.0),
    ("harmless", "<think>!</think><answer>4</answer>", "4", 0.0),
    (f"{__name__}:double_length", "ab", "", 4.0),
]


@pytest.mark.parametrize(("name", "completion", "answer", "expected"), CASES)
def test_get_reward(name: str, completion: str, answer: str, expected: float) -> None:
    assert get_reward(name)(completion, answer) == expected


def test_reward_names() -> None:
    assert REWARD_NAMES == (
        "accuracy",
        "accuracy_tagged",
        "format",
        "format_think_opened",
        "countdown",
        "language",
        "exact",
        "harmless",
    )


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("acuracy", "unknown reward 'acuracy'; known rewards: accuracy, accuracy_tagged, format"),
        ("", "unknown reward ''"),
        ("no_such_module_xyz:fn", "cannot load reward 'no_such_module_xyz:fn': No module named"),
        (f"{__name__}:missing", f"cannot load reward '{__name__}:missing'"),
        (f"{__name__}:not_callable", "is not callable"),
        (":fn", "unknown reward"),
        ("rewards.math:", "unknown reward"),
    ],
)
def test_bad_names_raise_value_error(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        get_reward(name)


def test_weighted_reward() -> None:
    reward = WeightedReward({"accuracy": 1.0, "format": 0.5, "exact": 0.0})
    assert reward.names == ("accuracy", "format", "exact")
    assert reward(GOOD, "4") == (1.5, {"accuracy": 1.0, "format": 1.0, "exact": 1.0})
    assert reward("<answer>5</answer>", "4") == (0.0, {"accuracy": 0.0, "format": 0.0, "exact": 0.0})


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({}, "at least one reward"),
        ({"accuracy": 1.0, "bogus": 1.0}, "unknown reward 'bogus'"),
        ({"accuracy": float("nan")}, "non-finite weight"),
        ({"accuracy": float("inf")}, "non-finite weight"),
    ],
)
def test_weighted_reward_validates_at_construction(weights: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WeightedReward(weights)


def test_weighted_reward_pickles() -> None:
    reward = WeightedReward({"accuracy": 1.0, f"{__name__}:double_length": 0.25})
    clone = pickle.loads(pickle.dumps(reward))
    assert clone.names == reward.names
    assert clone("<answer>4</answer>", "4") == reward("<answer>4</answer>", "4")


@pytest.mark.parametrize("name", REWARD_NAMES)
def test_registered_rewards_pickle(name: str) -> None:
    assert pickle.loads(pickle.dumps(get_reward(name))) is get_reward(name)


def test_importing_rewards_loads_no_torch_ray_or_sympy() -> None:
    # A fresh interpreter: this one may have imported them for other tests.
    probe = "import sys, rewards; print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'ray', 'sympy'}))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
