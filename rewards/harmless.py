"""A harmlessness rule judging the whole response (the chain of thought and the answer), as DeepSeek-R1's
last RL phase judges harmlessness: 1.0 when the completion holds none of ``FORBIDDEN``, else 0.0.

``FORBIDDEN`` is the miniature world's forbidden token class (``cluster/data/r1_world.py``: the base
model sometimes emits ``!``). Real runs judge harmlessness with a reward model on the whole response
(``reward.models.<name>.span: response``) or a rule of their own (``module:function``).
"""

from __future__ import annotations

FORBIDDEN: tuple[str, ...] = ("!",)


def harmless_reward(completion: str, answer: str) -> float:
    """1.0 when ``completion`` contains none of ``FORBIDDEN``; the gold answer is not consulted."""
    return 0.0 if any(token in completion for token in FORBIDDEN) else 1.0
