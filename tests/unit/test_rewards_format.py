"""format_reward (R1-Zero's format rule), with and without a prompt that already opened <think>.

Run: .venv/bin/python -m pytest tests/unit/test_rewards_format.py
"""

from __future__ import annotations

import time

import pytest

from rewards.format import format_reward

# (completion, expected reward with think_opened=False)
CASES = [
    ("<think>reason</think><answer>42</answer>", 1.0),
    ("<think>reason</think>\n<answer>42</answer>", 1.0),
    ("  \n<think>\nreason\n</think>\n\n<answer>\n42\n</answer>\n  ", 1.0),
    ("<think>line one\nline two</think> <answer>x = \\frac{1}{2}</answer>", 1.0),
    ("<think>reason</think><answer>42</answer>.", 0.0),
    ("<think>reason</think><answer>42</answer> Hope this helps!", 0.0),
    ("Sure! <think>reason</think><answer>42</answer>", 0.0),
    ("<think>reason</think> so <answer>42</answer>", 0.0),
    ("<answer>42</answer><think>reason</think>", 0.0),
    ("<think>reason</think>", 0.0),
    ("<answer>42</answer>", 0.0),
    ("reason</think><answer>42</answer>", 0.0),
    ("<think>reason</think><answer>42", 0.0),
    ("<think>reason<answer>42</answer></think>", 0.0),
    ("<think>reason</think><answer><think>42</think></answer>", 0.0),
    ("<think>a</think><think>b</think><answer>42</answer>", 0.0),
    ("<think>reason</think><answer>41</answer><answer>42</answer>", 0.0),
    ("<think>reason <think> more</think><answer>42</answer>", 0.0),
    ("<think></think><answer>42</answer>", 0.0),
    ("<think>reason</think><answer>  </answer>", 0.0),
    ("<think>reason</answer></think><answer>42", 0.0),
    ("<THINK>reason</THINK><ANSWER>42</ANSWER>", 0.0),
    ("", 0.0),
]


@pytest.mark.parametrize(("completion", "expected"), CASES)
def test_format(completion: str, expected: float) -> None:
    assert format_reward(completion) == expected


# Completions generated after a prompt ending in "<think>" (the R1-Zero template).
OPENED_CASES = [
    ("reason</think><answer>42</answer>", 1.0),
    ("\nreason\n</think>\n<answer>42</answer>\n", 1.0),
    ("<think>reason</think><answer>42</answer>", 0.0),  # opened twice
    ("reason</think><answer>42</answer> extra", 0.0),
    ("</think><answer>42</answer>", 0.0),
    ("reason<answer>42</answer>", 0.0),
    ("reason</think>", 0.0),
]


@pytest.mark.parametrize(("completion", "expected"), OPENED_CASES)
def test_format_think_opened(completion: str, expected: float) -> None:
    assert format_reward(completion, think_opened=True) == expected


@pytest.mark.parametrize("completion", ["<think>" * 50_000, "<think>" + "x" * 200_000 + "</think><answer>1</answer>"])
def test_long_inputs_are_fast(completion: str) -> None:
    start = time.monotonic()
    format_reward(completion)
    assert time.monotonic() - start < 0.5
