"""Reward-model training parts without Ray: the Bradley-Terry loss, the objective, pairs and the scalar head."""

import json
import math

import numpy as np
import pytest
import torch

from actors.reward_model import RewardModel, last_token_rewards, likelihood_rewards
from cluster.algo.objective import LossInputs
from cluster.algo.pairwise import PairwiseObjective, bradley_terry_loss, pairwise_metrics
from cluster.config import RunConfig
from cluster.data.builtin_model import build_tokenizer, save_random_model
from cluster.data.pairs import Pair, epoch_pair_batches, load_pairs, pair_batch, pair_tokens
from cluster.errors import DataError


def _cfg(**sections) -> RunConfig:
    return RunConfig.model_validate({"model": {"max_prompt_len": 16, "max_response_len": 12}, **sections})


def _jsonl(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# ---------------------------------------------------------------- the loss
def test_bradley_terry_loss_is_the_mean_negative_log_sigmoid_of_the_margin():
    chosen, rejected = torch.tensor([1.0, 0.0, -2.0]), torch.tensor([0.0, 0.0, 1.0])
    # -log sigmoid(m) = log(1 + exp(-m)) for margins 1, 0, -3
    expected = (_softplus(-1.0) + math.log(2.0) + _softplus(3.0)) / 3
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(expected, rel=1e-6)


def test_bradley_terry_gradient_raises_chosen_and_lowers_rejected():
    chosen = torch.tensor([0.5, -1.0], requires_grad=True)
    rejected = torch.tensor([0.0, 2.0], requires_grad=True)
    bradley_terry_loss(chosen, rejected).backward()
    # d/dc of -log sigmoid(c - r) is -sigmoid(r - c); the mean divides by the number of pairs.
    expected = -torch.sigmoid(rejected - chosen).detach() / 2
    torch.testing.assert_close(chosen.grad, expected)
    torch.testing.assert_close(rejected.grad, -expected)
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()
    # A badly ranked pair pulls harder than a well ranked one.
    assert abs(chosen.grad[1]) > abs(chosen.grad[0])


def test_bradley_terry_loss_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="same"):
        bradley_terry_loss(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="interleaved"):
        pairwise_metrics(torch.zeros(5))


# ---------------------------------------------------------------- the objective
def test_pairwise_objective_reads_interleaved_rows_and_reports_accuracy():
    values = torch.tensor([2.0, 1.0, 0.0, 3.0, 1.0, 1.0])  # pairs: won, lost, tie (a tie is no win)
    loss, metrics = PairwiseObjective().loss(LossInputs(values=values))
    expected = (_softplus(-1.0) + _softplus(3.0) + math.log(2.0)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6) and metrics["loss"] == pytest.approx(expected, rel=1e-6)
    assert metrics["accuracy"] == pytest.approx(1 / 3)
    assert metrics["reward_margin"] == pytest.approx((1.0 - 3.0 + 0.0) / 3)


def test_pairwise_objective_tells_the_learner_how_to_feed_it():
    objective = PairwiseObjective()
    assert objective.head == "reward" and objective.group_rows == 2
    assert not objective.token_weighted and not objective.uses_reference and not objective.uses_old_logprobs
    lp, mask = torch.zeros(2, 3), torch.ones(2, 3)
    with pytest.raises(ValueError, match="scalar head"):
        objective.loss(LossInputs(logprobs=lp, mask=mask, advantages=torch.zeros(2)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"values": torch.zeros(2, 1)}, "must be \\(B,\\)"),
        ({"values": torch.zeros(2), "mask": torch.ones(2, 3)}, "come alone"),
        ({}, "needs logprobs, mask and advantages"),
        ({"logprobs": torch.zeros(2, 3), "mask": torch.ones(2, 3)}, "needs logprobs, mask and advantages"),
    ],
)
def test_loss_inputs_hold_either_token_tables_or_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LossInputs(**kwargs)


# ---------------------------------------------------------------- pairs
def _pair(prompt: list[int], chosen: list[int], rejected: list[int]) -> Pair:
    return Pair(
        prompt_ids=np.array(prompt, np.int64), chosen_ids=np.array(chosen, np.int64), rejected_ids=np.array(rejected)
    )


def test_pair_batch_interleaves_chosen_and_rejected_rows():
    pairs = [_pair([5, 6], [7, 1], [8, 9, 1]), _pair([4], [3, 3, 3, 1], [2, 1])]
    batch = pair_batch(pairs)
    assert batch.input_ids.tolist() == [
        [5, 6, 7, 1, 0],
        [5, 6, 8, 9, 1],
        [4, 3, 3, 3, 1],
        [4, 2, 1, 0, 0],
    ]
    assert batch.prompt_lens.tolist() == [2, 2, 1, 1]
    assert batch.response_lens.tolist() == [2, 3, 4, 2]
    assert batch.advantages.tolist() == [0.0] * 4 and batch.input_ids.dtype == np.int64


def test_epoch_pair_batches_are_a_deterministic_full_shuffle():
    a = epoch_pair_batches(103, 10, seed=0, epoch=0)
    assert a == epoch_pair_batches(103, 10, seed=0, epoch=0)
    assert len(a) == 10 and all(len(b) == 10 for b in a)
    assert len({i for b in a for i in b}) == 100  # the last short batch is dropped, nothing repeats
    assert a != epoch_pair_batches(103, 10, seed=0, epoch=1) and a != epoch_pair_batches(103, 10, seed=1, epoch=0)


def test_load_pairs_templates_the_prompt_and_ends_responses_with_eos(tmp_path):
    tok = build_tokenizer()
    row = {"prompt": "1+2", "chosen": "<answer>3</answer>", "rejected": "<answer>4</answer>"}
    path = _jsonl(tmp_path / "p.jsonl", [row])
    (pair,) = load_pairs(path, _cfg(data={"template": "{prompt}="}), tok)
    assert tok.decode(pair.prompt_ids) == "1+2="
    for ids, text in ((pair.chosen_ids, row["chosen"]), (pair.rejected_ids, row["rejected"])):
        assert ids[-1] == tok.eos_token_id and tok.decode(ids[:-1]) == text


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "1+1=", "chosen": "2"}, "line 2: missing column(s) ['rejected']"),
        ({"prompt": "1+1=", "chosen": "2", "rejected": 3}, "line 2: 'rejected' must be non-empty text"),
        ({"prompt": "", "chosen": "2", "rejected": "3"}, "line 2: 'prompt' must be non-empty text"),
        ({"prompt": "1+1=", "chosen": ["2"], "rejected": "3"}, "line 2: 'chosen' must be non-empty text"),
        ("[1, 2]", "line 2: expected an object"),
        ("{not json", "line 2: not valid JSON"),
    ],
)
def test_bad_pair_rows_name_file_and_line(tmp_path, row, message):
    good = {"prompt": "1+1=", "chosen": "2", "rejected": "3"}
    path = _jsonl(tmp_path / "bad.jsonl", [good, row])
    with pytest.raises(DataError) as err:
        load_pairs(path, _cfg(), build_tokenizer())
    assert message in str(err.value) and "bad.jsonl" in str(err.value)


def test_load_pairs_refuses_an_empty_file_and_follows_data_overlong(tmp_path):
    tok = build_tokenizer()
    with pytest.raises(DataError, match="no preference pairs"):
        load_pairs(_jsonl(tmp_path / "empty.jsonl", []), _cfg(), tok)
    rows = [{"prompt": "1+1=", "chosen": "2", "rejected": "3"}, {"prompt": "1+1=", "chosen": "2", "rejected": "9" * 20}]
    path = _jsonl(tmp_path / "long.jsonl", rows)
    assert len(load_pairs(path, _cfg(), tok)) == 1
    with pytest.raises(DataError, match="line 2"):
        load_pairs(path, _cfg(data={"overlong": "error"}), tok)
    assert len(load_pairs(path, _cfg(data={"overlong": "truncate"}), tok)[1].rejected_ids) == 12


# ---------------------------------------------------------------- the scalar head
@pytest.fixture(scope="module")
def reward_checkpoint(tmp_path_factory):
    from transformers import AutoModelForSequenceClassification

    causal = save_random_model(tmp_path_factory.mktemp("causal"), seed=3)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(causal, num_labels=1)
    out = tmp_path_factory.mktemp("rm")
    model.save_pretrained(out)
    build_tokenizer().save_pretrained(out)
    return out


def test_rewards_are_read_at_the_last_real_token_whatever_the_padding(reward_checkpoint):
    rm = RewardModel(str(reward_checkpoint), batch_size=2)
    prompts = ["1+2=", "12+34=", "5+5=", "0+0="]
    responses = ["<answer>3</answer>", "<answer>46</answer>", "<think></think><answer>10</answer>", "0"]
    batched = rm.score(prompts, responses)
    alone = np.concatenate([rm.score([p], [r]) for p, r in zip(prompts, responses, strict=True)])
    assert batched.shape == (4,) and batched.dtype == np.float32
    np.testing.assert_allclose(batched, alone, rtol=1e-5, atol=1e-6)
    assert rm.score([], []).shape == (0,)


def test_last_token_rewards_read_the_last_token_even_when_it_is_the_pad_id(reward_checkpoint):
    rm = RewardModel(str(reward_checkpoint))
    # Token 0 is the pad id (as with tokenizers whose pad token is EOS): transformers' own pooling takes the
    # rightmost token that is not the pad id, one too early for the first row.
    ids = torch.tensor([[9, 10, 11, 0], [9, 10, 11, 1]])
    ends = torch.tensor([4, 4])
    with torch.no_grad():
        ours = last_token_rewards(rm.model, ids, ends)
        direct = rm.model.score(rm.model.model(input_ids=ids).last_hidden_state)[:, -1, 0]
        theirs = rm.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, 0]
    torch.testing.assert_close(ours, direct)
    assert ours[1].item() == pytest.approx(theirs[1].item(), abs=1e-6)
    assert ours[0].item() != pytest.approx(theirs[0].item(), abs=1e-6)


# ---------------------------------------------------------------- likelihood scoring
@pytest.fixture(scope="module")
def likelihood_checkpoint(tmp_path_factory):
    from transformers import AutoConfig

    path = save_random_model(tmp_path_factory.mktemp("likelihood"), seed=4)
    config = AutoConfig.from_pretrained(path)
    config.reward_score = "likelihood"
    config.save_pretrained(path)
    return path


def test_a_likelihood_reward_is_the_mean_logprob_of_the_response_tokens(likelihood_checkpoint):
    from transformers import AutoModelForCausalLM

    rm = RewardModel(str(likelihood_checkpoint), batch_size=2)
    assert rm.scoring == "likelihood"
    prompts = ["1+2=", "12+34=", "5+5="]
    responses = ["<think></think><answer>3</answer>", "<answer>46</answer>", "1"]
    batched = rm.score(prompts, responses)
    model = AutoModelForCausalLM.from_pretrained(likelihood_checkpoint).eval()
    for prompt, response, got in zip(prompts, responses, batched, strict=True):
        # Token by token, one unpadded sequence at a time: log p(response token | everything before it).
        p_ids, r_ids = pair_tokens(rm.tokenizer, prompt, response)
        ids = torch.tensor([p_ids + r_ids])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        expected = np.mean([logprobs[len(p_ids) + i - 1, t].item() for i, t in enumerate(r_ids)])
        assert got == pytest.approx(expected, abs=1e-5)
    assert (batched < 0).all()


def test_likelihood_rewards_ignore_padding_and_prompt_tokens(likelihood_checkpoint):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(likelihood_checkpoint).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 0, 0], [5, 6, 7, 8, 9, 10, 11]])
    with torch.no_grad():
        short = likelihood_rewards(model, ids[:1, :5], torch.tensor([2]), torch.tensor([5]))
        padded = likelihood_rewards(model, ids, torch.tensor([2, 2]), torch.tensor([5, 7]))
        longer_prompt = likelihood_rewards(model, ids[1:], torch.tensor([4]), torch.tensor([7]))
    torch.testing.assert_close(padded[:1], short)
    assert padded[1].item() != pytest.approx(longer_prompt.item(), abs=1e-6)
