"""Rewards inside Ray actors: deadlines hold off the main thread, failures are counted, never fatal."""

import time

import pytest
import ray

from actors.scorer import RewardScorer

pytestmark = pytest.mark.ray


@ray.remote
class AccuracyInThread:
    """Calls accuracy_reward directly from a worker thread of an actor (no scorer around it)."""

    def check(self, completion: str, answer: str) -> tuple[float, float]:
        from concurrent.futures import ThreadPoolExecutor

        from rewards import accuracy_reward

        start = time.monotonic()
        with ThreadPoolExecutor(1) as pool:
            value = pool.submit(accuracy_reward, completion, answer).result()
        return value, time.monotonic() - start


def test_accuracy_reward_in_an_actor_thread_meets_its_deadline(ray_cluster):
    actor = AccuracyInThread.remote()
    try:
        assert ray.get(actor.check.remote("\\boxed{\\frac{1}{2}}", "0.5"))[0] == 1.0
        value, seconds = ray.get(actor.check.remote("<answer>9**9**9**9</answer>", "1"))
        assert value == 0.0 and seconds < 5.5
    finally:
        ray.kill(actor)


def test_scorer_actor_scores_hanging_and_raising_rewards_as_zero(ray_cluster):
    weights = {"exact": 1.0, "tests.unit.bad_rewards:sleep_forever": 1.0, "tests.unit.bad_rewards:explode": 1.0}
    scorer = RewardScorer.options(name="reward-test").remote(weights, 1.0)
    try:
        start = time.monotonic()
        scores = ray.get(scorer.score.remote(["<answer>7</answer>", "<answer>8</answer>"], ["7", "7"]))
        assert time.monotonic() - start < 12
        assert scores.total.tolist() == [1.0, 0.0]
        assert scores.timeouts == 2 and scores.errors == 2
    finally:
        ray.kill(scorer)
