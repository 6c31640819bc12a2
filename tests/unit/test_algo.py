"""The objectives and estimators of cluster/algo against direct computations."""

import math
from itertools import combinations

import numpy as np
import pytest
import torch

from cluster.algo.grpo import GRPOObjective, policy_loss
from cluster.algo.objective import LossInputs
from cluster.algo.passk import majority_answer, mean_pass_at_k, pass_at_k
from cluster.algo.sft import SFTObjective, sft_loss
from cluster.algo.sync import LOGPROB_DIFF_MAX, LOGPROB_DIFF_MEAN, EngineGap, logprob_gap


def test_sft_loss_is_the_mean_nll_of_response_tokens():
    lp = torch.log(torch.tensor([[0.5, 0.25, 0.9], [0.1, 0.9, 0.9]]))
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    expected = -(math.log(0.5) + math.log(0.25) + math.log(0.1)) / 3
    assert sft_loss(lp, mask).item() == pytest.approx(expected, rel=1e-6)
    loss, metrics = SFTObjective().loss(LossInputs(logprobs=lp, mask=mask, advantages=torch.zeros(2)))
    assert metrics["loss"] == pytest.approx(expected, rel=1e-6) and loss.item() == pytest.approx(expected, rel=1e-6)
    assert sft_loss(lp, torch.zeros_like(mask)).item() == 0.0
    assert SFTObjective().token_weighted and not SFTObjective().uses_reference


def test_grpo_objective_is_policy_loss_with_its_settings():
    torch.manual_seed(0)
    lp, old, ref = (torch.randn(3, 4) - 2 for _ in range(3))
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.float32)
    adv = torch.tensor([1.0, -0.5, 0.2])
    objective = GRPOObjective(kl_coef=0.1, loss_agg="token-mean", clip_ratio_c=3.0, kl_max=10.0)
    inputs = LossInputs(logprobs=lp, mask=mask, advantages=adv, old_logprobs=old, ref_logprobs=ref)
    loss, _ = objective.loss(inputs)
    direct, _ = policy_loss(lp, old, ref, adv, mask, kl_coef=0.1, loss_agg="token-mean", clip_ratio_c=3.0, kl_max=10.0)
    assert loss.item() == direct.item()
    assert objective.token_weighted and objective.uses_reference
    assert not GRPOObjective(kl_coef=0.0).uses_reference
    # No old logprobs: on-policy, the ratio is exactly 1.
    _, metrics = objective.loss(LossInputs(logprobs=lp, mask=mask, advantages=adv, ref_logprobs=ref))
    assert metrics["ratio_mean"] == 1.0 and metrics["clip_frac"] == 0.0


def _pass_at_k_by_enumeration(n: int, c: int, k: int) -> float:
    samples = [True] * c + [False] * (n - c)
    subsets = list(combinations(samples, k))
    return sum(any(s) for s in subsets) / len(subsets)


@pytest.mark.parametrize(("n", "c", "k"), [(4, 0, 1), (4, 1, 1), (4, 1, 2), (5, 2, 3), (6, 5, 2), (8, 3, 8), (3, 3, 1)])
def test_pass_at_k_matches_enumerating_every_subset(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(_pass_at_k_by_enumeration(n, c, k))


def test_pass_at_1_is_the_mean_accuracy_and_bad_counts_are_refused():
    table = [[True, False, False, False], [True, True, False, True]]
    assert mean_pass_at_k(table, 1) == pytest.approx(np.mean(table))
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        (["1", "2", "2"], "2"),
        (["1", "2"], "1"),  # tie: the first seen
        ([None, None, "3"], "3"),
        ([None], None),
        (["0.5", "1/2", "3", "3"], "0.5"),  # equivalence groups, not strings (with `same` below)
    ],
)
def test_majority_answer(answers, expected):
    def same(a, b):
        return abs(eval(a) - eval(b)) < 1e-9  # noqa: S307 - test table of literals

    assert majority_answer(answers, same) == expected


def test_logprob_gap_covers_every_engine():
    learner = np.array([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]])
    prompt_lens, response_lens = np.array([2, 1]), np.array([2, 1])
    exact = [np.array([np.nan, -9.0, -1.0, -2.0]), np.array([np.nan, -0.5])]
    stale = [np.array([np.nan, -9.0, -1.0, -2.5]), np.array([np.nan, -0.5])]
    assert logprob_gap(learner, [exact], prompt_lens, response_lens)[LOGPROB_DIFF_MAX] == 0.0
    gap = logprob_gap(learner, [exact, stale], prompt_lens, response_lens)
    assert gap[LOGPROB_DIFF_MAX] == pytest.approx(0.5)
    assert gap[LOGPROB_DIFF_MEAN] == pytest.approx(0.5 / 6)
    with pytest.raises(ValueError):
        logprob_gap(learner, [exact[:1]], prompt_lens, response_lens)


def test_engine_gap_counts_only_response_tokens_and_keeps_the_worst():
    gap = EngineGap()
    learner = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    # The engine's table is as wide as the whole batch's longest response; padding differs by any amount.
    gap.add(learner, np.array([[-1.0, -2.25, 0.0], [-0.5, -7.0, 0.0]], dtype=np.float32), mask)
    gap.add(learner[:1], np.array([[-1.5, -2.0]], dtype=np.float32), mask[:1])
    assert (gap.peak, gap.total, gap.tokens) == (0.5, 0.75, 5.0)
    with pytest.raises(ValueError, match="do not cover"):
        gap.add(learner, np.zeros((2, 1), dtype=np.float32), mask)


def test_the_free_sync_check_is_off_for_stale_or_nucleus_renormalised_logprobs():
    from cluster.config import RunConfig
    from cluster.stages.rl import free_sync_check

    assert free_sync_check(RunConfig())
    assert not free_sync_check(RunConfig.model_validate({"grpo": {"async_rollouts": True}}))
    nucleus = {"rollout": {"top_p": 0.9}, "grpo": {"old_logprobs": "learner"}}
    assert not free_sync_check(RunConfig.model_validate(nucleus))
