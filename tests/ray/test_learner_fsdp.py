"""FSDP2 over gloo: two learner ranks take exactly the step one rank takes on the same batch, for each objective."""

from pathlib import Path

import numpy as np
import pytest
import ray
import torch
from safetensors.torch import load_file

from actors.learner_model import micro_batches
from cluster.algo.grpo import GRPOObjective
from cluster.algo.sft import SFTObjective
from cluster.config import LearnerConfig
from cluster.payloads import TrainBatch
from tests.ray.learner_ranks import random_batch, start_ranks

pytestmark = pytest.mark.ray


IN_TURN = {
    "grpo-kl": GRPOObjective(kl_coef=0.05, loss_agg="seq-mean-token-mean"),
    "dapo-token-mean-2x2": GRPOObjective(kl_coef=0.0, loss_agg="token-mean", epochs=2, mini_batches=2),
    "sft": SFTObjective(),
}


@pytest.fixture(scope="module")
def groups(ray_cluster, tied_model):
    """A W = 1 and a W = 2 set of learner ranks (micro-batches of 2, the reference model loaded) that the module's
    tests share; a test that re-configures them sets them back. They start from ``tied_model``."""
    updates = sum(objective.updates for objective in IN_TURN.values())
    cfg = {"lr": 1e-3, "micro_batch_size": 2, "grad_clip": 1e9}
    out = {
        world: start_ranks(tied_model, LearnerConfig(world_size=world, **cfg), optimizer_steps=updates, reference=True)
        for world in (1, 2)
    }
    yield out
    for ranks in out.values():
        for r in ranks:
            ray.kill(r)


def _export(ranks, folder) -> Path:
    ray.get([r.save_checkpoint.remote(str(folder)) for r in ranks])
    return folder


def test_world_size_two_matches_one_for_each_objective(groups, tmp_path):
    """Two ranks take the update one rank takes, for each objective in turn (the same ranks: each objective
    starts from the weights and Adam moments the one before left); and what each checkpoint's Hugging Face
    export holds (what eval, sampling and the next stage load) gives the trained ranks' own logprobs, not a
    stale or partial copy."""
    # Both groups export where they start: a checkpoint of ranks that never stepped initialises Adam's state
    # (torch's distributed state dict takes a step of zero gradients), so both take it or neither may.
    start = [_export(ranks, tmp_path / f"start-w{world}") for world, ranks in groups.items()][0]
    batch = random_batch(group=2)  # each rank's micro-batch of 2 rows runs their one prompt once
    mask = np.arange(batch.max_response_len)[None] < batch.response_lens[:, None]
    before, policy = load_file(start / "model.safetensors"), _plain_logprobs(start, batch)
    ref = ray.put(batch)
    for name, objective in IN_TURN.items():
        metrics, logprobs = {}, {}
        for world, ranks in groups.items():
            metrics[world] = ray.get([r.train_step.remote(ref, objective) for r in ranks])[0]
            _export(ranks, tmp_path / name / f"w{world}")
            logprobs[world] = ray.get([r.compute_logprobs.remote(ref, temperature=1.0) for r in ranks])[0]
        w1, w2 = (load_file(tmp_path / name / f"w{world}" / "model.safetensors") for world in (1, 2))
        assert w1.keys() == w2.keys()
        moved = max((w1[k] - before[k]).abs().max().item() for k in w1)
        assert moved > 1e-4, f"{name}: the update did not change the weights"
        for key in w1:
            # Adam's first step is lr * g / (|g| + eps): for the few weights whose gradient is near eps, float
            # summation order (1 rank vs 2) moves the step by a few 1e-6 at lr 1e-3 (seen: 2 of 65k elements).
            torch.testing.assert_close(
                w1[key], w2[key], atol=1e-5, rtol=1e-4, msg=lambda m, key=key, name=name: f"{name} {key}: {m}"
            )
        assert metrics[1]["grad_norm"] == pytest.approx(metrics[2]["grad_norm"], rel=1e-4), name
        if objective.mini_batches == 1:
            assert metrics[1]["loss"] == pytest.approx(metrics[2]["loss"], abs=1e-6), name
        for world in (1, 2):
            exported = _plain_logprobs(tmp_path / name / f"w{world}", batch)
            np.testing.assert_allclose(exported[mask], logprobs[world][mask], atol=1e-5, err_msg=f"{name} W={world}")
            assert np.abs(exported - policy)[mask].max() > 1e-3, f"{name} W={world}: the policy did not change"
        before, policy = w1, exported


# ---------------------------------------------------------------- the gradient against an independent one
def _full_batch_gradient(model_path, batch: TrainBatch, objective) -> dict[str, np.ndarray]:
    """The objective's loss on the whole batch in one plain forward (no FSDP, no micro-batches), row by row
    for the response tokens, and its gradient: what every learner layout must reproduce."""
    from transformers import AutoModelForCausalLM

    from cluster.algo.logprobs import token_logprobs
    from cluster.algo.objective import LossInputs

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    width = batch.max_response_len
    lps, masks = [], []
    for ids, p, r in zip(batch.input_ids, batch.prompt_lens, batch.response_lens, strict=True):
        seq = torch.tensor(ids[: p + r])[None]
        logits = model(input_ids=seq).logits[0, p - 1 : p + r - 1]  # position t predicts token t + 1
        lp = token_logprobs(logits[None], seq[:, p : p + r], objective.temperature)[0]
        lps.append(torch.nn.functional.pad(lp, (0, width - r)))
        masks.append((torch.arange(width) < r).float())
    inputs = LossInputs(
        logprobs=torch.stack(lps), mask=torch.stack(masks), advantages=torch.as_tensor(batch.advantages)
    )
    loss, _ = objective.loss(inputs)
    loss.backward()
    return {name: p.grad.numpy() for name, p in model.named_parameters()}


def _micro_batching(micro: int, tokens: int | None):
    """Runs inside a learner rank: its micro-batches from now on (read by every call)."""

    def apply(learner) -> None:
        learner.cfg = learner.cfg.model_copy(update={"micro_batch_size": micro, "micro_batch_tokens": tokens})

    return apply


OBJECTIVES = [
    GRPOObjective(kl_coef=0.0, loss_agg="seq-mean-token-mean"),
    GRPOObjective(kl_coef=0.0, loss_agg="token-mean"),
    SFTObjective(),
]
# (micro-batch rows, padded tokens per micro-batch) of each world size
# (4, 16) at W = 2: the ranks' plans differ in length (2 and 3 micro-batches), the shorter one is cut to match.
LAYOUTS = {1: [(8, None), (3, None), (1, None), (8, 30)], 2: [(2, None), (4, 24), (4, 16)]}


@pytest.mark.parametrize("world", sorted(LAYOUTS))
def test_gradient_equals_the_full_batch_gradient_in_every_layout(groups, tmp_path, world):
    """Micro-batches of 8, 3 and 1 rows on one rank, 2 ranks with micro-batches of 2, and length-bucketed
    micro-batches (rows sorted by length, at most ``tokens`` padded tokens each) on 1 and 2 ranks, for GRPO's
    two weightings and SFT, on rows of distinct prompts and on groups of rows sharing one (run once through the
    cache): the gradient is the full-batch gradient (of the weights the ranks hold), so a scale
    error (a factor of the world size, of the micro-batch count, a token count taken per micro-batch) or a row
    matched to another row's advantage shows up at once, unlike in the weights after one Adam step. The same
    ranks take each layout in turn (``gradients`` applies nothing)."""
    ranks = groups[world]
    if world == 2:  # the layout whose plans differ in length between the ranks (each rank: 4 rows of 8)
        own = [
            micro_batches(random_batch(rows=8, seed=3).select(np.arange(4 * k, 4 * k + 4)), 4, 16, True) for k in (0, 1)
        ]
        assert [len(p) for p in own] == [2, 3]
    held = _export(ranks, tmp_path / "held")
    try:
        # Distinct prompts, and groups of 4 rows sharing one (run once per micro-batch through the cache).
        for group in (1, 4):
            batch = random_batch(rows=8, seed=3, group=group)
            wanted = [_full_batch_gradient(held, batch, objective) for objective in OBJECTIVES]
            ref = ray.put(batch)
            for micro, tokens in LAYOUTS[world]:
                ray.get([r.__ray_call__.remote(_micro_batching(micro, tokens)) for r in ranks])
                for objective, want in zip(OBJECTIVES, wanted, strict=True):
                    grads = ray.get([r.gradients.remote(ref, objective) for r in ranks])[0]
                    scale = max(np.abs(g).max() for g in want.values())
                    assert grads.keys() == want.keys()
                    for name in want:
                        np.testing.assert_allclose(
                            grads[name], want[name], atol=1e-5 * scale, rtol=1e-4,
                            err_msg=f"group {group} micro {micro} tokens {tokens} {objective}: {name}",
                        )  # fmt: skip
    finally:
        ray.get([r.__ray_call__.remote(_micro_batching(2, None)) for r in ranks])


# ---------------------------------------------------------------- memory-safe loading and sharded resume
def _plain_logprobs(model_path, batch: TrainBatch) -> np.ndarray:
    """The response tokens' logprobs of the checkpoint loaded plainly by transformers (no FSDP)."""
    from transformers import AutoModelForCausalLM

    from cluster.algo.logprobs import token_logprobs

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    table = np.zeros((len(batch), batch.max_response_len), dtype=np.float32)
    with torch.no_grad():
        for i, (ids, p, r) in enumerate(zip(batch.input_ids, batch.prompt_lens, batch.response_lens, strict=True)):
            seq = torch.tensor(ids[: p + r])[None]
            logits = model(input_ids=seq).logits[0, p - 1 : p + r - 1]
            table[i, :r] = token_logprobs(logits[None], seq[:, p : p + r])[0].numpy()
    return table


def test_rank0_load_at_world_size_two_and_sharded_resume(ray_cluster, tied_model, tmp_path):
    """Two ranks build the model on the meta device and take rank 0's weights by broadcast: their logprobs are
    the plain model's (buffers such as rotary frequencies included), in length-bucketed micro-batches too. A
    checkpoint's sharded trainer state (one DCP shard per rank) resumes to exactly the step the uninterrupted
    ranks take next."""
    cfg = LearnerConfig(world_size=2, lr=1e-3, micro_batch_size=2, grad_clip=1e9)
    objective = GRPOObjective(kl_coef=0.0, loss_agg="seq-mean-token-mean")
    first, second = ray.put(random_batch(seed=0)), ray.put(random_batch(seed=1))
    ranks = start_ranks(tied_model, cfg, optimizer_steps=2)
    try:
        probe = random_batch(seed=5, group=2)
        got = ray.get([r.compute_logprobs.remote(probe, temperature=1.0) for r in ranks])
        np.testing.assert_allclose(got[0], _plain_logprobs(tied_model, probe), atol=1e-5)
        np.testing.assert_array_equal(got[0], got[1])
        # With ``micro_batch_tokens`` the rows run sorted by length in several micro-batches; the logprob table
        # (the reference's, the behaviour policy's) comes back row for row in the batch's order.
        ray.get([r.__ray_call__.remote(_micro_batching(8, 20)) for r in ranks])
        rows = random_batch(rows=12, seed=7, group=3)
        bucketed = ray.get([r.compute_logprobs.remote(rows, temperature=1.0) for r in ranks])[0]
        np.testing.assert_allclose(bucketed, _plain_logprobs(tied_model, rows), atol=1e-5)
        ray.get([r.__ray_call__.remote(_micro_batching(cfg.micro_batch_size, None)) for r in ranks])
        ray.get([r.train_step.remote(first, objective) for r in ranks])
        ray.get([r.save_checkpoint.remote(str(tmp_path / "ck")) for r in ranks])
        straight = ray.get([r.train_step.remote(second, objective) for r in ranks])[0]
        ray.get([r.save_checkpoint.remote(str(tmp_path / "straight")) for r in ranks])
    finally:
        for r in ranks:
            ray.kill(r)
    shards = sorted(p.name for p in (tmp_path / "ck" / "trainer_state").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]

    ranks = start_ranks(tied_model, cfg, optimizer_steps=2)
    try:
        ray.get([r.load_checkpoint.remote(str(tmp_path / "ck")) for r in ranks])
        resumed = ray.get([r.train_step.remote(second, objective) for r in ranks])[0]
        ray.get([r.save_checkpoint.remote(str(tmp_path / "resumed")) for r in ranks])
    finally:
        for r in ranks:
            ray.kill(r)
    assert resumed["grad_norm"] == pytest.approx(straight["grad_norm"], rel=1e-6)
    a, b = load_file(tmp_path / "straight" / "model.safetensors"), load_file(tmp_path / "resumed" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0, msg=lambda m, key=key: f"{key}: {m}")
