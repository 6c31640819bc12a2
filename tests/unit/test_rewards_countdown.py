"""countdown_reward (TinyZero's countdown task): parsing, number use, arithmetic and malformed equations.

Run: .venv/bin/python -m pytest tests/unit/test_rewards_countdown.py
"""

from __future__ import annotations

import json
import time

import pytest

from rewards.countdown import countdown_answer, countdown_reward

GOLD_24 = countdown_answer(24, [1, 2, 3, 4])
THINK = "<think>Try combinations.</think>"

# (equation inside <answer>, gold, expected reward)
CASES = [
    ("1 * 2 * 3 * 4", GOLD_24, 1.0),
    ("(1 + 2 + 3) * 4", GOLD_24, 1.0),
    ("4 * 3 * 2 / 1", GOLD_24, 1.0),
    ("((4)) * (3 * (2 * 1))", GOLD_24, 1.0),
    ("  4*3*2*1  ", GOLD_24, 1.0),
    ("4 * (3 + 2 + 1)", GOLD_24, 1.0),
    ("4 * 3 * 2", GOLD_24, 0.0),  # 1 unused
    ("4 * 3 * 2 * 1 * 1", GOLD_24, 0.0),  # 1 used twice
    ("4 * 6", GOLD_24, 0.0),  # 6 is not given
    ("12 * 2", GOLD_24, 0.0),  # digits glued into another number
    ("1 + 2 + 3 + 4", GOLD_24, 0.0),  # wrong value
    ("1 * 2 * 3 * 4 = 24", GOLD_24, 0.0),  # expression only
    ("-1 + 2 * 3 * 4 + 1", GOLD_24, 0.0),  # unary minus
    ("4 ** 3 - 2 - 1", GOLD_24, 0.0),
    ("4 * 3 * 2 ^ 1", GOLD_24, 0.0),
    ("4 x 3 x 2 x 1", GOLD_24, 0.0),
    ("(1 + 2 + 3 * 4", GOLD_24, 0.0),
    ("1 + 2 + 3) * 4", GOLD_24, 0.0),
    ("()1 * 2 * 3 * 4", GOLD_24, 0.0),
    ("1 2 3 4", GOLD_24, 0.0),
    ("", GOLD_24, 0.0),
    ("__import__('os')", GOLD_24, 0.0),
    ("1.0 * 2 * 3 * 4", GOLD_24, 0.0),
    ("24", GOLD_24, 0.0),
    ("4 / (1 - 1) + 2 * 3", countdown_answer(6, [4, 1, 1, 2, 3]), 0.0),  # division by zero
    ("(4 / (1 - 3 / 4)) + 0 * 2", countdown_answer(16, [4, 1, 3, 4, 0, 2]), 1.0),  # exact fractions
    ("6 / (1 - 3 / 4)", countdown_answer(24, [6, 1, 3, 4]), 1.0),
    ("3 / 7 * 7", countdown_answer(3, [3, 7, 7]), 1.0),  # no float error
    ("100 - 75 + 3 * 25", countdown_answer(100, [75, 25, 3, 100]), 1.0),
    ("99 - 98 - 1", countdown_answer(0, [99, 98, 1]), 1.0),
    ("7 - 9", countdown_answer(-2, [9, 7]), 1.0),
    ("3 / 2", json.dumps({"target": 1.5, "numbers": [2, 3]}), 1.0),
    ("(" * 150 + "1+2" + ")" * 150, countdown_answer(3, [1, 2]), 0.0),  # over the length cap
]


@pytest.mark.parametrize(("equation", "answer", "expected"), CASES)
def test_countdown(equation: str, answer: str, expected: float) -> None:
    assert countdown_reward(f"{THINK}<answer>{equation}</answer>", answer) == expected


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<answer>1*2*3*4</answer>", 1.0),
        ("<answer>1+2+3+4</answer>", 0.1),
        ("<answer>nonsense</answer>", 0.1),
        ("<answer>1+2</answer><answer>1*2*3*4</answer>", 1.0),
        ("<answer>1*2*3*4</answer><answer>1+2</answer>", 0.1),
        ("<think>1*2*3*4</think>", 0.0),
        ("1*2*3*4", 0.0),
        ("<answer>1*2*3*4", 0.0),
    ],
)
def test_format_score_and_last_answer_block(completion: str, expected: float) -> None:
    assert countdown_reward(completion, GOLD_24, format_score=0.1) == expected


def test_answer_encoding() -> None:
    assert json.loads(countdown_answer(24, [1, 2, 3, 4])) == {"target": 24, "numbers": [1, 2, 3, 4]}


def test_bad_gold_is_a_dataset_error() -> None:
    with pytest.raises(ValueError):
        countdown_reward("<answer>1</answer>", "24: 1 2 3 4")


@pytest.mark.parametrize("equation", ["(" * 100_000, "1+" * 50_000 + "1", "9" * 100_000])
def test_huge_equations_are_fast(equation: str) -> None:
    start = time.monotonic()
    assert countdown_reward(f"<answer>{equation}</answer>", GOLD_24) == 0.0
    assert time.monotonic() - start < 0.5
