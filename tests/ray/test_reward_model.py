"""Reward-model training for real: ``run_rm`` learns a preference the random model does not know, its checkpoint
serves from ``RewardModelServer``, and two FSDP ranks take exactly the pairwise step one rank takes."""

import json
import random

import numpy as np
import pytest
import ray
import torch

from actors.reward_model import RewardModelServer
from cluster.algo.pairwise import PairwiseObjective, pairwise_metrics
from cluster.config import LearnerConfig, load_config
from cluster.data.builtin_model import save_random_model
from cluster.payloads import TrainBatch
from cluster.stages.rm import run_rm
from tests.ray.learner_ranks import start_ranks

pytestmark = pytest.mark.ray

TRAIN_PAIRS, HELD_OUT = 3200, 128


def _preference_rows(n: int, seed: int) -> list[dict]:
    """Small additions: the correct sum is preferred to a wrong one (same tags, same length range), so a random
    model scores them alike and only a learned reward tells them apart."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 9), rng.randint(0, 2)
        wrong = rng.choice([x for x in range(12) if x != a + b])
        chosen, rejected = f"<answer>{a + b}</answer>", f"<answer>{wrong}</answer>"
        rows.append({"prompt": f"{a}+{b}=", "chosen": chosen, "rejected": rejected})
    return rows


@pytest.fixture(scope="module")
def trained(ray_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("rm")
    base = save_random_model(root / "base", seed=0)
    rows = _preference_rows(TRAIN_PAIRS, seed=0)
    train = root / "pairs.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(
        None,
        [
            f"model.path={base}",
            f"output_dir={root / 'runs'}",
            "name=rm-test",
            f"rm.train={train}",
            f"rm.eval_size={HELD_OUT}",
            "rm.batch_size=32",
            "rm.epochs=1",
            "eval_every=0",
            "learner.cpus_per_rank=1",
            "learner.lr=1e-3",
            "learner.lr_schedule=cosine",
            "learner.micro_batch_size=64",
        ],
    )
    summary = run_rm(cfg)
    return summary, rows[-HELD_OUT:]  # run_rm holds out the file's tail


def test_run_rm_learns_the_preference(trained):
    summary, _ = trained
    assert summary["kind"] == "rm" and summary["steps"] == (TRAIN_PAIRS - HELD_OUT) // 32
    before, after = summary["eval_accuracy_before"], summary["eval_accuracy_after"]
    assert after >= 0.8 and after > before + 0.2, summary["evals"]
    assert summary["eval_loss_after"] < summary["eval_loss_before"]


def test_the_checkpoint_is_a_hugging_face_reward_model(trained):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    summary, _ = trained
    model = AutoModelForSequenceClassification.from_pretrained(summary["model"])
    assert model.config.num_labels == 1 and model.config.architectures == ["Qwen2ForSequenceClassification"]
    assert AutoTokenizer.from_pretrained(summary["model"]).eos_token == "<eos>"


def test_reward_model_server_prefers_the_chosen_responses(trained):
    summary, held_out = trained
    server = RewardModelServer.options(num_cpus=1).remote(summary["model"], batch_size=48)
    try:
        assert ray.get(server.ready.remote())
        prompts = [r["prompt"] for r in held_out]
        chosen = ray.get(server.score.remote(prompts, [r["chosen"] for r in held_out]))
        rejected = ray.get(server.score.remote(prompts, [r["rejected"] for r in held_out]))
    finally:
        ray.kill(server)
    assert chosen.shape == (HELD_OUT,) and chosen.dtype == np.float32
    accuracy = float((chosen > rejected).mean())
    # The server tokenizes as training did: its accuracy is the stage's own held-out measurement.
    assert accuracy == pytest.approx(summary["eval_accuracy_after"], abs=1 / HELD_OUT)


def test_a_reward_config_combines_rules_and_the_model_by_task_and_span(trained):
    """Fleet.score: the rule reward on reasoning rows, the reward model on general rows, judging the answer."""
    from cluster.runtime.fleet import Fleet
    from rewards.registry import RowInfo

    summary, held_out = trained
    cfg = load_config(
        None,
        [
            "name=rm-fleet",
            "reward.weights={exact: 1.0, pref: 0.5}",
            f"reward.models={{pref: {{path: {summary['model']}, span: answer}}}}",
            "reward.only={exact: [math], pref: [general]}",
        ],
    )
    fleet = Fleet(cfg, "", "", rollouts=False, learners=False)
    try:
        rows, n = held_out, len(held_out)
        # The reward model sees only the answer: a chain of thought in front changes nothing.
        texts = [f"<think>1+1=2</think>{r['chosen']}" for r in rows] + [r["rejected"] for r in rows]
        answers = [str(eval(r["prompt"].rstrip("="))) for r in rows] * 2  # noqa: S307 - digits and '+' only
        general = [RowInfo(task="general", prompt=r["prompt"]) for r in rows] * 2
        scores = fleet.score(texts, answers, general)
        assert set(scores.components) == {"exact", "format", "pref"}
        assert (scores.components["exact"] == 0).all(), "exact applies to math rows only"
        pref = scores.components["pref"]
        plain = fleet.score([r["chosen"] for r in rows], answers[:n], general[:n]).components["pref"]
        np.testing.assert_allclose(pref[:n], plain, rtol=1e-5, atol=1e-5)
        # over the whole held-out set: the stage's own accuracy (>= 0.8 above), not a 16-pair sample of it
        assert (pref[:n] > pref[n:]).mean() >= 0.75
        np.testing.assert_allclose(scores.total, 0.5 * pref, rtol=1e-6)
        math = fleet.score(texts, answers, [RowInfo(task="math", prompt=r["prompt"]) for r in rows] * 2)
        assert (math.components["pref"] == 0).all() and math.components["exact"][:n].all()
    finally:
        fleet.shutdown()


def test_a_kept_fleet_swaps_its_rewards_and_keeps_an_idle_reward_model(trained):
    """Fleet.use_rewards (a pipeline's warm fleet between stages that score differently): the scorers take the new
    rules in place, a reward model the new section does not name is set aside, and the same server serves again
    when a later section names it."""
    from cluster.runtime.fleet import Fleet
    from rewards.registry import RowInfo

    summary, held_out = trained
    model = f"reward.models={{pref: {{path: {summary['model']}, span: answer}}}}"
    with_model = load_config(None, ["name=swap", "reward.weights={exact: 1.0, pref: 0.5}", model])
    rules = load_config(None, ["name=swap", "reward.weights={exact: 1.0, language: 0.5}", "reward.num_scorers=2"])
    texts = [f"<think>1+1=2</think>{r['chosen']}" for r in held_out]
    answers = [str(eval(r["prompt"].rstrip("="))) for r in held_out]  # noqa: S307 - digits and '+' only
    info = [RowInfo(task="general", prompt=r["prompt"]) for r in held_out]
    fleet = Fleet(with_model, "", "", rollouts=False, learners=False)
    try:
        first = fleet.score(texts, answers, info)
        server = fleet.reward_models["pref"]
        fleet.use_rewards(rules)
        swapped = fleet.score(texts, answers, info)
        assert set(swapped.components) == {"exact", "format", "language"} and len(fleet.scorers) == 2
        np.testing.assert_allclose(swapped.total, swapped.components["exact"] + 0.5 * swapped.components["language"])
        assert fleet.reward_models == {} and ray.get(server.ready.remote())  # idle, still up
        fleet.use_rewards(with_model)
        assert fleet.reward_models["pref"]._actor_id == server._actor_id and len(fleet.scorers) == 1
        again = fleet.score(texts, answers, info)
        assert set(again.components) == {"exact", "format", "pref"}
        np.testing.assert_array_equal(again.total, first.total)
        # the same name with another spec (it judges the whole response): a new server in the old one's place
        response = model.replace("answer}", "response}")
        fleet.use_rewards(load_config(None, ["name=swap", "reward.weights={exact: 1.0, pref: 0.5}", response]))
        assert fleet.reward_models["pref"]._actor_id != server._actor_id
        assert fleet.score(texts, answers, info).components["pref"].tolist() != again.components["pref"].tolist()
    finally:
        fleet.shutdown()
    with pytest.raises(ValueError):
        ray.get_actor("rm-pref")  # the idle server is shut down with the fleet


def test_a_likelihood_reward_model_trains_serves_and_stays_a_language_model(ray_cluster, tmp_path):
    """``rm.score: likelihood``: Bradley-Terry training moves the language model's own likelihoods; the checkpoint
    is a causal LM that says how it scores, and the server scores as the stage measured."""
    from transformers import AutoConfig, AutoModelForCausalLM

    base = save_random_model(tmp_path / "base", seed=0)
    rows = _preference_rows(1600, seed=1)
    train = tmp_path / "pairs.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    overrides = [f"model.path={base}", f"output_dir={tmp_path / 'runs'}", "name=rm-likelihood", f"rm.train={train}"]
    overrides += [f"rm.eval_size={HELD_OUT}", "rm.score=likelihood", "eval_every=0", "learner.cpus_per_rank=1"]
    overrides += ["learner.lr=1e-3", "learner.micro_batch_size=64"]
    summary = run_rm(load_config(None, overrides))
    before, after = summary["eval_accuracy_before"], summary["eval_accuracy_after"]
    assert after >= 0.75 and after > before + 0.15, summary["evals"]
    assert AutoConfig.from_pretrained(summary["model"]).reward_score == "likelihood"
    assert type(AutoModelForCausalLM.from_pretrained(summary["model"])).__name__ == "Qwen2ForCausalLM"
    held_out = rows[-HELD_OUT:]
    server = RewardModelServer.options(num_cpus=1).remote(summary["model"], batch_size=48)
    try:
        prompts = [r["prompt"] for r in held_out]
        chosen = ray.get(server.score.remote(prompts, [r["chosen"] for r in held_out]))
        rejected = ray.get(server.score.remote(prompts, [r["rejected"] for r in held_out]))
    finally:
        ray.kill(server)
    assert (chosen < 0).all() and (rejected < 0).all(), "mean log-probabilities"
    assert float((chosen > rejected).mean()) == pytest.approx(after, abs=1 / HELD_OUT)


# ---------------------------------------------------------------- FSDP: pairs over ranks
def _pair_batch(pairs: int, seed: int = 0) -> TrainBatch:
    rng = np.random.default_rng(seed)
    prompt_lens = np.repeat(rng.integers(2, 5, pairs), 2)
    response_lens = rng.integers(2, 7, 2 * pairs)
    ids = np.zeros((2 * pairs, int((prompt_lens + response_lens).max())), dtype=np.int64)
    for i in range(2 * pairs):
        ids[i, : prompt_lens[i] + response_lens[i]] = rng.integers(2, 25, prompt_lens[i] + response_lens[i])
    zeros = np.zeros(2 * pairs, dtype=np.float32)
    return TrainBatch(input_ids=ids, prompt_lens=prompt_lens, response_lens=response_lens, advantages=zeros)


def _ranks(model_path, world: int) -> list:
    # micro_batch_size 3 is rounded down to one pair: no micro-batch splits a pair.
    cfg = LearnerConfig(world_size=world, lr=1e-3, micro_batch_size=3, grad_clip=1e9)
    return start_ranks(model_path, cfg, head="reward")


def _step(model_path, world: int) -> tuple[dict, np.ndarray, np.ndarray]:
    ranks = _ranks(model_path, world)
    try:
        batch = ray.put(_pair_batch(4))
        before = ray.get([r.compute_rewards.remote(batch) for r in ranks])[0]
        metrics = ray.get([r.train_step.remote(batch, PairwiseObjective()) for r in ranks])[0]
        after = ray.get([r.compute_rewards.remote(batch) for r in ranks])[0]
        if world == 2:
            odd = ray.put(_pair_batch(3))
            for call in [r.train_step.remote(odd, PairwiseObjective()) for r in ranks]:
                with pytest.raises(ValueError, match="split evenly"):  # 3 pairs over 2 ranks
                    ray.get(call)
        return metrics, before, after
    finally:
        for r in ranks:
            ray.kill(r)


def test_two_ranks_take_the_pairwise_step_one_rank_takes(ray_cluster, tied_model):
    one, before1, after1 = _step(tied_model, 1)
    two, before2, after2 = _step(tied_model, 2)
    # The new head is drawn from the run's seed on every rank: both start from the same model.
    np.testing.assert_allclose(before1, before2, rtol=1e-5, atol=1e-6)
    assert np.abs(after1 - before1).max() > 1e-4, "the update did not change the rewards"
    np.testing.assert_allclose(after1, after2, rtol=1e-4, atol=1e-5)
    for key in ("loss", "accuracy", "reward_margin", "grad_norm"):
        assert one[key] == pytest.approx(two[key], rel=1e-4, abs=1e-6), key
    # The step's metrics are those of the whole batch before the update, however micro-batches and ranks cut it.
    _, direct = pairwise_metrics(torch.tensor(before1))
    for key in ("loss", "accuracy", "reward_margin"):
        assert two[key] == pytest.approx(direct[key], rel=1e-5, abs=1e-6), key
