"""The sync check covers every engine every step: an engine that skips a weight update is caught at once,
by the probe after the push and, for free, by the next training batch (the engine's sampled-token logprobs
against the learner's first forward).

Two real vLLM-CPU engines (engine core in the actor), one FSDP2 learner, r1ray's gloo weight transfer.
The fault is injected into engine 1's own process: its gloo receiver still joins every broadcast (a
collective cannot lose a member) but keeps its old weights, as a silent partial sync would.
"""

import numpy as np
import pytest
import ray
import torch

from cluster.algo.grpo import group_advantages
from cluster.algo.sync import LOGPROB_DIFF_MAX, logprob_gap
from cluster.config import RunConfig
from cluster.data.builtin_model import build_tokenizer
from cluster.payloads import TrainBatch
from cluster.runtime.fleet import Fleet
from cluster.runtime.weight_sync import SYNC_PROBE_ROWS
from cluster.stages.common import sampling_spec
from cluster.stages.rl import grpo_objective

pytestmark = pytest.mark.ray


def _skip_weight_updates(engine) -> str:
    """Runs inside the rollout actor: from now on, receive each broadcast and throw it away."""
    import torch

    from cluster.transfer.gloo import GlooWeightTransferEngine

    def receive_only(self, info):
        for dtype_name, shape in zip(info.dtype_names, info.shapes, strict=True):
            self.group.broadcast(torch.empty(shape, dtype=getattr(torch, dtype_name)), 0).wait()

    GlooWeightTransferEngine.start_weight_update = lambda self: None
    GlooWeightTransferEngine.receive_weights = receive_only
    GlooWeightTransferEngine.finish_weight_update = lambda self: None
    return "patched"


def _step(fleet: Fleet, cfg: RunConfig, prompts, version: int) -> tuple[dict, dict, TrainBatch]:
    """One synchronous step: the training metrics (their gap proves the push before it), the probe's (the
    push after it) and the training batch."""
    rollouts = fleet.generate(prompts, cfg.grpo.group_size, sampling_spec(cfg, "train"))
    scores = fleet.score(rollouts.texts, ["0"] * rollouts.num_completions)
    advantages = group_advantages(torch.from_numpy(scores.total), cfg.grpo.group_size).numpy()
    batch = TrainBatch.from_rollouts(rollouts, advantages, check_engine=True)
    train = fleet.train(batch, grpo_objective(cfg))
    # Every engine scores the same probe sequences, whichever engine sampled them.
    return train, fleet.sync_weights(version, probe=batch), batch


def test_an_engine_that_skips_its_update_is_caught(ray_cluster, tied_model):
    cfg = RunConfig.model_validate(
        {
            "model": {"max_prompt_len": 32, "max_response_len": 12},
            "rollout": {"num_workers": 2, "stop": [], "engine_in_actor": True},
            "learner": {"lr": 3e-2, "micro_batch_size": 16},
            "grpo": {"prompts_per_step": 4, "group_size": 4, "kl_coef": 0.0},
            # length_bonus gives every group reward variance even from a random model
            "reward": {
                "weights": {"format": 1.0, "tests.unit.bad_rewards:length_bonus": 1.0},
                "accuracy_key": "format",
            },
        }
    )
    fleet = Fleet(cfg, str(tied_model), str(tied_model), optimizer_steps=3, reference=False)
    try:
        tok = build_tokenizer()
        prompts = [np.array(tok.encode(f"{100 + 7 * i}+{200 + i}="), dtype=np.int32) for i in range(4)]
        train, healthy, batch = _step(fleet, cfg, prompts, version=1)
        assert healthy["rollout/logprob_diff_max"] < 1e-4
        assert train["rollout/logprob_diff_max"] < 1e-4  # both sides start from the same weights
        assert train["rollout/logprob_checked_tokens"] == float(batch.response_lens.sum())  # every response token
        assert ray.get(fleet.rollouts[1].__ray_call__.remote(_skip_weight_updates)) == "patched"
        train, stale, batch = _step(fleet, cfg, prompts, version=2)
        probe = batch.select(slice(0, SYNC_PROBE_ROWS))
        assert train["rollout/logprob_diff_max"] < 1e-4  # sampled with version 1, which both engines loaded
        assert stale["rollout/logprob_diff_max"] > 1e-3, stale
        # Both engines claim the new version; engine 0 alone still matches the learner: the gap is engine 1's.
        assert ray.get([w.get_policy_version.remote() for w in fleet.rollouts]) == [2, 2]
        learner = ray.get(fleet.learners[0].compute_logprobs.remote(probe, temperature=1.0))
        engine0 = ray.get(fleet.rollouts[0].prompt_logprobs.remote(probe.sequences()))
        assert logprob_gap(learner, [engine0], probe.prompt_lens, probe.response_lens)[LOGPROB_DIFF_MAX] < 1e-4
        # The next batch: engine 1's half was sampled with version 1, the learner holds version 2.
        train, _, _ = _step(fleet, cfg, prompts, version=3)
        assert train["rollout/logprob_diff_max"] > 1e-3, train
    finally:
        fleet.shutdown()
