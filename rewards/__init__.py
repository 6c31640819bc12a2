"""Rule-based rewards for GRPO: pure Python (no torch, no Ray), safe to call from any thread or actor.

Every reward maps ``(completion, gold_answer)`` to a float; ``rewards.registry`` names them::

    from rewards import WeightedReward
    total, parts = WeightedReward({"accuracy": 1.0, "format": 0.1})(completion, gold_answer)

``accuracy_reward`` runs math-verify in worker processes that never import the caller's main module,
so it works from a script without an ``if __name__ == "__main__":`` guard, a notebook, a thread or a
Ray actor. A service that calls it directly can ``rewards.math.warm_up()`` once so that worker start-up
never eats a call's deadline (r1ray's scorer runs whole rewards in its own deadline workers instead).
"""

from rewards.countdown import countdown_answer, countdown_reward
from rewards.deadline import DeadlineExecutor, Outcome
from rewards.exact import exact_match_reward
from rewards.format import format_reward
from rewards.language import consistency_reward
from rewards.math import accuracy_reward, extract_answer
from rewards.registry import REWARD_NAMES, RewardFn, WeightedReward, accuracy_tagged_reward, get_reward

__all__ = [
    "REWARD_NAMES",
    "DeadlineExecutor",
    "Outcome",
    "RewardFn",
    "WeightedReward",
    "accuracy_reward",
    "accuracy_tagged_reward",
    "consistency_reward",
    "countdown_answer",
    "countdown_reward",
    "exact_match_reward",
    "extract_answer",
    "format_reward",
    "get_reward",
]
