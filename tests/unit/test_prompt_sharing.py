"""Rows that share a prompt (a GRPO group's G samples) run it once: the same logits and gradient as every row
run whole, fewer token positions computed, and the plain path where a model's cache does not allow it."""

import numpy as np
import pytest
import torch

from actors.learner_model import SHARING_OFF, micro_batches, response_logits
from cluster.algo.microbatch import computed_tokens, plan, plan_shared, prompt_owners, split_to
from cluster.payloads import TrainBatch

CPU = torch.device("cpu")


def batch_of(prompts: list[list[int]], rows: list[tuple[int, list[int]]], seed: int = 0) -> TrainBatch:
    """``rows``: (prompt index, response tokens) each."""
    width = max(len(prompts[p]) + len(r) for p, r in rows)
    ids = np.zeros((len(rows), width), dtype=np.int64)
    for i, (p, r) in enumerate(rows):
        ids[i, : len(prompts[p]) + len(r)] = [*prompts[p], *r]
    return TrainBatch(
        input_ids=ids,
        prompt_lens=np.array([len(prompts[p]) for p, _ in rows]),
        response_lens=np.array([len(r) for _, r in rows]),
        advantages=np.random.default_rng(seed).standard_normal(len(rows)).astype(np.float32),
    )


def tiny(**overrides):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=24, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.2, **overrides,
    )  # fmt: skip
    return Qwen2ForCausalLM(config)


PROMPTS = [[3, 4, 5], [6, 7, 8, 9, 10], [11, 12, 13, 14]]
# prompt 0 three times (one response of a single token), prompt 1 twice, prompt 2 once
ROWS = [(0, [15]), (1, [16, 17]), (0, [18, 19, 20, 21]), (2, [4, 5, 6]), (0, [7, 8, 9, 10, 11, 12]), (1, [13] * 5)]


def first_forward_rows(model, batch, share: bool) -> tuple[tuple, int]:
    """``response_logits``' output, and how many rows the model's first forward took."""
    seen = []
    handle = model.register_forward_pre_hook(lambda _m, _a, kw: seen.append(len(kw["input_ids"])), with_kwargs=True)
    try:
        return response_logits(model, batch, CPU, share_prompts=share), seen[0]
    finally:
        handle.remove()


def masked_logprob_sum(out) -> torch.Tensor:
    logits, tokens, mask = out
    return (torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1) * mask).sum()


def test_shared_prompts_give_every_row_its_own_logits_and_gradient():
    model, batch = tiny(), batch_of(PROMPTS, ROWS)
    plain, rows = first_forward_rows(model, batch, share=False)
    assert rows == 6
    shared, rows = first_forward_rows(model, batch, share=True)
    assert rows == 3  # the distinct prompts, once each
    mask = plain[2].bool()
    assert torch.equal(plain[2], shared[2]) and torch.equal(plain[1][mask], shared[1][mask])
    torch.testing.assert_close(shared[0][mask], plain[0][mask], atol=1e-5, rtol=1e-5)
    grads = []
    for share in (False, True):
        model.zero_grad()
        masked_logprob_sum(response_logits(model, batch, CPU, share_prompts=share)).backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters()})
    scale = max(g.abs().max().item() for g in grads[0].values())
    for name, want in grads[0].items():  # float summation order: a few 1e-6 on gradients of up to ~10
        torch.testing.assert_close(grads[1][name], want, atol=1e-6 * scale, rtol=1e-4, msg=name)


def test_single_token_responses_share_their_prompts_too():
    model, batch = tiny(), batch_of(PROMPTS, [(0, [5]), (1, [7]), (0, [6]), (1, [8])])
    plain = response_logits(model, batch, CPU, share_prompts=False)
    shared, rows = first_forward_rows(model, batch, share=True)
    assert rows == 2 and shared[0].shape == plain[0].shape == (4, 1, 24)
    torch.testing.assert_close(shared[0], plain[0], atol=1e-5, rtol=1e-5)


def test_distinct_prompts_and_activation_checkpointing_run_every_row():
    model = tiny()
    distinct = batch_of(PROMPTS, [(0, [5, 6]), (1, [7]), (2, [8, 9, 10])])
    assert first_forward_rows(model, distinct, share=True)[1] == 3
    model.gradient_checkpointing_enable()
    model.train()
    assert first_forward_rows(model, batch_of(PROMPTS, ROWS), share=True)[1] == 6


@pytest.mark.parametrize(
    "overrides",
    [
        {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 0},  # a cache that drops keys
        {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}},  # per-forward RoPE
    ],
    ids=["sliding-window", "dynamic-rope"],
)
def test_models_sharing_would_change_fall_back_to_every_row_and_say_so(overrides):
    model, batch = tiny(**overrides), batch_of(PROMPTS, ROWS)
    plain = response_logits(model, batch, CPU, share_prompts=False)
    shared = response_logits(model, batch, CPU, share_prompts=True)
    assert getattr(model, SHARING_OFF) is True
    mask = plain[2].bool()
    torch.testing.assert_close(shared[0][mask], plain[0][mask])
    assert first_forward_rows(model, batch, share=True)[1] == 6  # remembered: no more prompt passes


# ---------------------------------------------------------------- planning micro-batches for shared prompts
def test_prompt_owners_number_distinct_prompts_in_order():
    batch = batch_of(PROMPTS, ROWS)
    assert prompt_owners(batch.input_ids, batch.prompt_lens).tolist() == [0, 1, 0, 2, 0, 1]
    distinct = batch_of(PROMPTS, [(0, [5]), (1, [5]), (2, [5])])
    assert prompt_owners(distinct.input_ids, distinct.prompt_lens) is None


def test_computed_tokens_count_each_shared_prompt_once():
    prompt, response = np.array([4, 4, 6, 6]), np.array([3, 5, 2, 2])
    owners = np.array([0, 0, 1, 1])
    parts = [np.array([0, 1]), np.array([2, 3])]
    # [0, 1]: one prompt of 4 + 2 rows x (5 - 1); [2, 3]: one prompt of 6 + 2 rows x (2 - 1)
    assert computed_tokens(parts, prompt, response, owners) == (4 + 8) + (6 + 2)
    assert computed_tokens(parts, prompt, response, None) == 2 * 9 + 2 * 8


def grpo_rows(prompt_len: int, groups: int = 8, g: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    response = rng.integers(2, 30, groups * g)
    return np.full(groups * g, prompt_len), response, np.repeat(np.arange(groups), g)


@pytest.mark.parametrize(("prompt_len", "whole_groups"), [(2, False), (60, True)])
def test_plan_shared_keeps_groups_together_when_their_prompts_outweigh_the_padding(prompt_len, whole_groups):
    """Short prompts: rows sorted by length (little padding) beat whole groups; long prompts: whole groups (each
    prompt once per micro-batch) win. Either plan covers each row once within the budget, and computes no
    more tokens than the other."""
    prompt, response, owners = grpo_rows(prompt_len)
    budget = 8 * int((prompt + response).max())
    chosen = plan_shared(prompt, response, owners, max_rows=32, max_tokens=budget)
    assert sorted(np.concatenate(chosen).tolist()) == list(range(len(owners)))
    assert all(len(p) * (prompt + response)[p].max() <= budget for p in chosen)
    groups_whole = all(np.isin(owners, owners[p]).sum() == len(p) for p in chosen)
    assert groups_whole == whole_groups
    by_row = plan(prompt + response, max_rows=32, max_tokens=budget)
    assert computed_tokens(chosen, prompt, response, owners) <= computed_tokens(by_row, prompt, response, owners)


def test_plan_shared_never_puts_a_group_over_the_budget_or_max_rows():
    prompt, response, owners = grpo_rows(60)
    budget = 2 * int((prompt + response).max())  # two rows fit, a group of four does not
    chosen = plan_shared(prompt, response, owners, max_rows=32, max_tokens=budget)
    assert all(len(p) * (prompt + response)[p].max() <= budget for p in chosen)
    chosen = plan_shared(prompt, response, owners, max_rows=3, max_tokens=10**6)  # nor more rows than max_rows
    assert max(len(p) for p in chosen) <= 3


def test_micro_batches_without_a_budget_or_sharing_keep_the_plain_plan():
    batch = batch_of(PROMPTS, ROWS)
    for share in (False, True):
        assert [p.tolist() for p in micro_batches(batch, 4, None, share)] == [[0, 1, 2, 3], [4, 5]]
    lengths = batch.prompt_lens + batch.response_lens
    want = [p.tolist() for p in plan(lengths, max_rows=6, max_tokens=20)]
    assert [p.tolist() for p in micro_batches(batch, 6, 20, share_prompts=False)] == want


def test_split_to_halves_the_largest_micro_batch_at_group_boundaries():
    parts = [np.arange(0, 8), np.arange(8, 10)]
    got = split_to(parts, 4, group_rows=2)
    assert [p.tolist() for p in got] == [[0, 1], [2, 3], [4, 5, 6, 7], [8, 9]]
    with pytest.raises(ValueError, match="single groups"):
        split_to([np.arange(2)], 2, group_rows=2)
