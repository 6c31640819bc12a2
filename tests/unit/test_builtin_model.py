"""The builtin base model: a fixed, seeded pre-training schedule on a short/long mixture, SFT loss."""

import dataclasses
import json
import random

import pytest
import torch
from safetensors.torch import load_file

from cluster.data.builtin_model import (
    PretrainRecipe,
    _encode,
    build_base_model,
    build_tokenizer,
    pretraining_text,
    sft_batch_loss,
    tiny_config,
)
from cluster.data.tasks import addition_example


def test_every_setting_changes_the_cache_key():
    base = PretrainRecipe()
    changed = {
        "digits": 2, "seed": 1, "eval_size": 100, "steps": 10, "batch": 8, "lr": 1e-3, "warmup_steps": 1,
        "min_lr_ratio": 0.5, "long_fraction": 0.3, "long_only_steps": 5, "short_digits": True, "threads": 1,
        "hidden": 64, "layers": 2, "version": 99,
    }  # fmt: skip
    assert set(changed) == {f.name for f in dataclasses.fields(PretrainRecipe)}, "a new setting needs a row here"
    keys = {dataclasses.replace(base, **{name: value}).key() for name, value in changed.items()}
    assert len(keys | {base.key()}) == len(changed) + 1


def test_schedule_warms_up_then_decays_to_the_floor():
    r = PretrainRecipe(steps=100, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    assert r.lr_at(0) == pytest.approx(1e-4)
    assert r.lr_at(9) == pytest.approx(1e-3)
    assert r.lr_at(10) == pytest.approx(1e-3)
    assert r.lr_at(99) == pytest.approx(1e-4, rel=0.01)
    assert all(r.lr_at(s) >= r.lr_at(s + 1) for s in range(10, 99))


def test_mixture_is_mostly_short_one_line_answers():
    example = addition_example(347, 285, 3)
    assert example.short_solution == "<think></think><answer>632</answer>"
    rng = random.Random(0)
    texts = [pretraining_text(example, rng, 0.2) for _ in range(2000)]
    share = sum(t == example.solution for t in texts) / len(texts)
    assert 0.17 < share < 0.23
    assert set(texts) == {example.solution, example.short_solution}


def test_sft_loss_covers_exactly_the_completion_tokens():
    tok = build_tokenizer()
    ids, prompt_lens, completion_lens = _encode(tok, ["12+34=", "1+2="], ["<think></think><answer>46</answer>", "3"])
    assert prompt_lens.tolist() == [6, 4] and completion_lens.tolist() == [7, 2]  # 6 tokens + EOS, "3" + EOS
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(tiny_config(len(tok), hidden=32, layers=1))
    loss = sft_batch_loss(model, ids, prompt_lens, completion_lens)
    logp = torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)
    picked = [
        logp[i, t - 1, ids[i, t]] for i in range(2) for t in range(prompt_lens[i], prompt_lens[i] + completion_lens[i])
    ]
    assert loss.item() == pytest.approx(-torch.stack(picked).mean().item(), rel=1e-5)


def test_short_answers_teach_their_shape_not_their_digits():
    tok = build_tokenizer()
    ids, prompt_lens, completion_lens = _encode(tok, ["1+2="], ["<think></think><answer>3</answer>"])
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(tiny_config(len(tok), hidden=32, layers=1))
    digits = torch.tensor(tok.convert_tokens_to_ids(list("0123456789")))
    loss = sft_batch_loss(model, ids, prompt_lens, completion_lens, any_of=digits)
    logp = torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)[0]
    p = int(prompt_lens[0])
    terms = [logp[t - 1, ids[0, t]] for t in range(p, p + int(completion_lens[0]))]
    digit_at = p + 3  # <think> </think> <answer> then the digit
    terms[3] = torch.logsumexp(logp[digit_at - 1, digits], dim=0)
    assert loss.item() == pytest.approx(-torch.stack(terms).mean().item(), rel=1e-5)


def test_same_recipe_builds_bit_identical_weights_and_reports_its_figures(tmp_path):
    recipe = PretrainRecipe(steps=3, batch=8, warmup_steps=1, eval_size=10, hidden=32, layers=1)
    first = build_base_model(tmp_path / "a", recipe)
    second = build_base_model(tmp_path / "b", recipe)
    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    info = json.loads((first / "r1ray_base.json").read_text())
    assert info["recipe"] == dataclasses.asdict(recipe)
    for key in ("sampled_accuracy", "greedy_accuracy", "long_share", "long_accuracy", "mean_length"):
        assert 0 <= info[key] <= (40 if key == "mean_length" else 1)
    assert build_base_model(tmp_path / "a", recipe) == first, "a built model is reused, not rebuilt"
    assert torch.get_num_threads() >= 1
