"""``learner.reference: actor``: the frozen reference model in an actor of its own, its logprobs in the batch.

The reference actor's table is the one a learner rank's own reference computes, row for row (length-bucketed
micro-batches, a sampling temperature), and a learner that holds no reference takes exactly the gradient a
learner with one takes when the batch brings that table. A policy that differs from the reference makes the
KL term's gradient non-zero, so a wrong or misplaced table would show.
"""

import numpy as np
import pytest
import ray

from actors.learner import PolicyLearner
from actors.reference import ReferenceWorker
from cluster.algo.grpo import GRPOObjective
from cluster.config import LearnerConfig
from cluster.data.builtin_model import save_random_model
from cluster.payloads import LearnerSpec, TrainBatch
from tests.ray.learner_ranks import free_port, random_batch

pytestmark = pytest.mark.ray

TEMPERATURE = 0.7


def _batch(rows: int = 12, seed: int = 5) -> TrainBatch:
    # Groups of 3 rows sharing a prompt: the actor and the ranks run each prompt once (learner.share_prompts).
    return random_batch(rows, seed, group=3)


def _learner(policy, reference_model, *, reference: bool, cfg: LearnerConfig):
    spec = LearnerSpec(
        rank=0,
        world_size=1,
        master_addr="127.0.0.1",
        master_port=free_port(),
        model_path=str(policy),
        base_path=str(reference_model),
        config=cfg,
        optimizer_steps=1,
        reference=reference,
    )
    return PolicyLearner.options(num_cpus=1).remote(spec)


@pytest.fixture(scope="module")
def policy_model(tmp_path_factory):
    """Another random model of the reference's architecture: the policy has moved away from the reference."""
    return save_random_model(tmp_path_factory.mktemp("policy"), tie=True, seed=11)


def test_reference_actor_gives_the_ranks_reference_and_gradient(ray_cluster, tied_model, policy_model):
    cfg = LearnerConfig(micro_batch_size=8, micro_batch_tokens=30)
    batch = _batch()
    objective = GRPOObjective(kl_coef=0.5, temperature=TEMPERATURE)
    actor = ReferenceWorker.options(num_cpus=1).remote(
        str(tied_model), micro_batch_size=cfg.micro_batch_size, micro_batch_tokens=cfg.micro_batch_tokens
    )
    with_ref = _learner(policy_model, tied_model, reference=True, cfg=cfg)
    without = _learner(policy_model, tied_model, reference=False, cfg=cfg)
    try:
        table = ray.get(actor.logprobs.remote(batch, TEMPERATURE))
        want = ray.get(with_ref.compute_logprobs.remote(batch, temperature=TEMPERATURE, reference=True))
        assert table.shape == want.shape == (len(batch), batch.max_response_len)
        np.testing.assert_allclose(table, want, atol=1e-6)
        assert (table[np.arange(batch.max_response_len)[None] >= batch.response_lens[:, None]] == 0).all()

        got = ray.get(without.gradients.remote(TrainBatch(**{**batch.__dict__, "ref_logprobs": table}), objective))
        expected = ray.get(with_ref.gradients.remote(batch, objective))
        # The KL term pulls the policy towards the reference: without its table the gradient differs.
        no_kl = ray.get(with_ref.gradients.remote(batch, GRPOObjective(kl_coef=0.0, temperature=TEMPERATURE)))
        scale = max(np.abs(g).max() for g in expected.values())
        assert max(np.abs(expected[k] - no_kl[k]).max() for k in expected) > 1e-3 * scale
        for name, grad in expected.items():
            np.testing.assert_allclose(got[name], grad, atol=1e-6 * scale, rtol=1e-5, err_msg=name)

        with pytest.raises(ray.exceptions.RayTaskError, match="needs reference logprobs"):
            ray.get(without.gradients.remote(batch, objective))
    finally:
        for a in (actor, with_ref, without):
            ray.kill(a)


def test_a_table_that_does_not_fit_the_batch_is_refused():
    batch = _batch(rows=4)
    with pytest.raises(ValueError, match="ref_logprobs must be"):
        TrainBatch(**{**batch.__dict__, "ref_logprobs": np.zeros((4, 1), dtype=np.float32)})
    with pytest.raises(ValueError, match="ref_logprobs must be"):
        TrainBatch(**{**batch.__dict__, "ref_logprobs": np.zeros((3, batch.max_response_len), dtype=np.float32)})
