"""Exact-match reward for synthetic tasks (the built-in arithmetic demo): no parsing, no normalization."""

from __future__ import annotations

from rewards.tags import last_block


def exact_match_reward(completion: str, answer: str) -> float:
    """1.0 when the last ``<answer>`` block, stripped, equals the stripped gold string; a blank gold never matches."""
    gold = str(answer).strip()
    tagged = last_block(completion, "answer")
    return 1.0 if gold and tagged is not None and tagged.strip() == gold else 0.0
