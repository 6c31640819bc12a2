"""The reward scorer (plain class, real worker processes): weighted sums, deadlines, failures counted."""

import time

import numpy as np
import pytest

from actors.scorer import Scorer

BAD = "tests.unit.bad_rewards"


@pytest.fixture
def make_scorer():
    made = []

    def make(weights, timeout_s=5.0, think_opened=False):
        scorer = Scorer(weights, timeout_s=timeout_s, think_opened=think_opened)
        made.append(scorer)
        return scorer

    yield make
    for scorer in made:
        scorer.close()


def test_weighted_sum_and_components(make_scorer):
    scorer = make_scorer({"exact": 1.0, "format": 0.1})
    texts = ["<think>a</think><answer>12</answer>", "<think>a</think><answer>13</answer>", "12"]
    scores = scorer.score(texts, ["12", "12", "12"])
    np.testing.assert_allclose(scores.total, [1.1, 0.1, 0.0], rtol=1e-6)
    assert scores.components["exact"].tolist() == [1.0, 0.0, 0.0]
    assert scores.timeouts == scores.errors == 0


def test_format_is_always_reported_and_follows_the_template(make_scorer):
    texts = ["<think>a</think><answer>12</answer>", "a</think><answer>12</answer>"]
    plain = make_scorer({"exact": 1.0}).score(texts, ["12", "12"])
    assert plain.components["format"].tolist() == [1.0, 0.0], "format is measured even at weight 0"
    np.testing.assert_allclose(plain.total, [1.0, 1.0])
    opened = make_scorer({"exact": 1.0, "format": 0.5}, think_opened=True).score(texts, ["12", "12"])
    # the prompt opened <think>: the completion continues the thought and must not open it again
    assert opened.components["format"].tolist() == [0.0, 1.0]
    np.testing.assert_allclose(opened.total, [1.0, 1.5])


def test_format_under_the_deadline_when_a_chunk_fails(make_scorer):
    scorer = make_scorer({f"{BAD}:explode": 1.0}, think_opened=True)
    scores = scorer.score(["a</think><answer>1</answer>"], ["1"])
    assert scores.errors == 1 and scores.components["format"].tolist() == [1.0]


def test_reward_that_sleeps_forever_scores_zero_within_deadline(make_scorer):
    scorer = make_scorer({f"{BAD}:sleep_forever": 1.0, f"{BAD}:length_bonus": 1.0}, timeout_s=1.0)
    start = time.monotonic()
    scores = scorer.score(["abcd", "ab"], ["x", "x"])
    elapsed = time.monotonic() - start
    assert scores.components[f"{BAD}:sleep_forever"].tolist() == [0.0, 0.0]
    np.testing.assert_allclose(scores.components[f"{BAD}:length_bonus"], [0.04, 0.02])
    assert scores.timeouts == 2
    # one timed-out chunk, then one deadline per completion for the sleeping reward
    assert elapsed < 1.0 * 3 + 3.0


def test_reward_that_raises_scores_zero_and_is_counted(make_scorer):
    scorer = make_scorer({f"{BAD}:explode": 1.0, "exact": 1.0})
    scores = scorer.score(["<answer>5</answer>"], ["5"])
    assert scores.components[f"{BAD}:explode"].tolist() == [0.0]
    assert scores.components["exact"].tolist() == [1.0]
    assert scores.errors == 1
    assert "reward bug" in scores.error_messages[0]


def test_math_accuracy_inside_the_scorer(make_scorer):
    scorer = make_scorer({"accuracy": 1.0})
    texts = ["so \\boxed{\\frac{1}{2}}", "<answer>0.5</answer>", "<answer>9**9**9**9</answer>", "#### 3"]
    scores = scorer.score(texts, ["0.5", "\\frac12", "1", "4"])
    assert scores.components["accuracy"].tolist() == [1.0, 1.0, 0.0, 0.0]


def test_mismatched_lengths_are_an_error(make_scorer):
    with pytest.raises(ValueError, match="answers"):
        make_scorer({"exact": 1.0}).score(["a"], [])


def test_unknown_reward_name_is_a_clear_error():
    with pytest.raises(ValueError, match="exact"):
        Scorer({"exactly": 1.0})
