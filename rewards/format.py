"""R1-Zero's format reward: the completion is exactly ``<think>...</think>`` then ``<answer>...</answer>``.

Whitespace may surround the two blocks; anything else outside them, a repeated or nested tag, or a
blank block scores 0. When the prompt itself ends with ``<think>`` (the R1-Zero template ends with
"Assistant: <think>"), pass ``think_opened=True``: the completion then starts inside the thought and
must not open it again.
"""

from __future__ import annotations

TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def format_reward(completion: str, *, think_opened: bool = False) -> float:
    """1.0 for ``<think>non-blank</think> <answer>non-blank</answer>`` and nothing else, else 0.0."""
    text = "<think>" + completion if think_opened else completion
    if any(text.count(tag) != 1 for tag in TAGS):
        return 0.0
    # Each tag occurs once, so partitioning in order checks both the order and what lies between.
    before, _, rest = text.partition("<think>")
    thought, _, rest = rest.partition("</think>")
    between, opened, rest = rest.partition("<answer>")
    answer, closed, after = rest.partition("</answer>")
    well_formed = opened and closed and not (before.strip() or between.strip() or after.strip())
    return 1.0 if well_formed and thought.strip() and answer.strip() else 0.0
