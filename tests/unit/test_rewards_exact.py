"""exact_match_reward: the last <answer> block, stripped, against the gold string.

Run: .venv/bin/python -m pytest tests/unit/test_rewards_exact.py
"""

from __future__ import annotations

import pytest

from rewards.exact import exact_match_reward


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("<think>7+5=12</think><answer>632</answer>", "632", 1.0),
        ("<answer> 632 \n</answer>", "632", 1.0),
        ("<answer>632</answer>", " 632\n", 1.0),
        ("<answer>0632</answer>", "632", 0.0),
        ("<answer>632.0</answer>", "632", 0.0),
        ("<answer>6 3 2</answer>", "632", 0.0),
        ("<answer>631</answer><answer>632</answer>", "632", 1.0),
        ("<answer>632</answer><answer>631</answer>", "632", 0.0),
        ("<answer>632", "632", 0.0),
        ("632", "632", 0.0),
        ("\\boxed{632}", "632", 0.0),
        ("<answer></answer>", "", 0.0),
        ("<answer> </answer>", " ", 0.0),
        ("<answer>Paris</answer>", "paris", 0.0),
    ],
)
def test_exact_match(completion: str, answer: str, expected: float) -> None:
    assert exact_match_reward(completion, answer) == expected
