"""consistency_reward (R1's language-consistency reward) on English, Chinese and mixed chains of thought.

Run: .venv/bin/python -m pytest tests/unit/test_rewards_language.py
"""

from __future__ import annotations

import time

import pytest

from rewards.language import chain_of_thought, consistency_reward

# (completion, language, expected share)
CASES = [
    ("<think>First add the two numbers together.</think><answer>5</answer>", "en", 1.0),
    ("<think>首先把两个数相加。</think><answer>5</answer>", "zh", 1.0),
    ("<think>首先把两个数相加。</think><answer>5</answer>", "en", 0.0),
    ("<think>First add the two numbers together.</think>", "zh", 0.0),
    ("<think>one two three 四</think>", "en", 0.75),  # a CJK ideograph is one word
    ("<think>one two three 四</think>", "zh", 0.25),
    ("<think>我们 compute 面积</think>", "zh", 0.8),  # 4 ideographs, 1 English word
    ("<think>Compute $x^2 + \\alpha = 3$ and then \\(\\frac{a}{b}\\) here</think>", "en", 1.0),
    ("<think>计算 $x^2 + y^2 = 25$ 的解</think>", "zh", 1.0),  # math is ignored
    ("<think>设 x = 3 和 y = 4</think>", "zh", 1.0),  # single-letter variables are ignored
    ("<think>\\frac{1}{2} + \\sqrt{3}</think>", "en", 0.0),  # LaTeX commands only: no words
    ("<think>1 + 2 = 3 !!! ...</think>", "en", 0.0),  # no words: no bonus
    ("<think></think><answer>Five</answer>", "en", 0.0),  # the answer is not the chain of thought
    ("<think>Let's check: réponse très bien</think>", "en", 1.0),  # scripts, not languages
    ("<think>Проверим ответ now</think>", "ru", 2 / 3),
    ("<think>カタカナ と ひらがな</think>", "ja", 1.0),
    ("<think>답을 확인합니다</think>", "ko", 1.0),
    ("reasoning after a prompt-opened tag</think><answer>7</answer>", "en", 1.0),
    ("no tags at all, plain words", "en", 1.0),
    ("<think>unclosed thought, 还没有结束", "en", 2 / 7),  # 2 English words, 5 ideographs
    ("<think>price $5 and $", "en", 1.0),  # an unclosed '$' is text
    ("<think>open \\( never closed words</think>", "en", 1.0),
    ("", "en", 0.0),
]


@pytest.mark.parametrize(("completion", "language", "expected"), CASES)
def test_consistency(completion: str, language: str, expected: float) -> None:
    assert consistency_reward(completion, language) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<think>a</think><answer>b</answer>", "a"),
        ("a</think><answer>b</answer>", "a"),
        ("<think>a", "a"),
        ("plain", "plain"),
    ],
)
def test_chain_of_thought(completion: str, expected: str) -> None:
    assert chain_of_thought(completion) == expected


def test_unknown_language_names_the_supported_ones() -> None:
    with pytest.raises(ValueError, match="supported: ar, de, en"):
        consistency_reward("<think>hi there</think>", "xx")


@pytest.mark.parametrize("text", ["\\(" * 50_000, "$" * 100_001, "word 词 " * 15_000])
def test_long_inputs_are_fast(text: str) -> None:
    start = time.monotonic()
    consistency_reward(f"<think>{text}</think>")
    assert time.monotonic() - start < 1.0
