"""The embedded default's base model: a tiny Qwen2 with its own character tokenizer, built locally.

``build_base_model`` creates (once, cached under ``<output_dir>/_builtin/``) a ~1M-parameter
Qwen2-architecture model in Hugging Face format, then pre-trains it briefly on worked examples of
the built-in task so that it starts partly competent, like a base model. It stops at the first
checkpoint whose sampled held-out accuracy reaches ``target_accuracy``: pre-training at this
learning rate swings between checkpoints, so the start is chosen by measurement, not step count.
Nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from pathlib import Path

import torch

from cluster.data.tasks import AdditionTask, Example

logger = logging.getLogger(__name__)

TAGS = ["<think>", "</think>", "<answer>", "</answer>"]
CHARS = list("0123456789+-*/=;() ")
PAD, EOS = "<pad>", "<eos>"
BUILTIN_NAME = "builtin:tiny-adder"


def build_tokenizer():
    """Character-level tokenizer; the four tags are single (non-special, so they detokenize) tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([PAD, EOS, *TAGS, *CHARS])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=PAD))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS, bos_token=None)
    tok.add_tokens(TAGS)
    return tok


def tiny_config(vocab_size: int, tie: bool = True, hidden: int = 128, layers: int = 4):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=tie,
        rope_theta=10000.0,
        torch_dtype="float32",
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
    )


def save_random_model(path: Path, *, tie: bool = True, hidden: int = 128, layers: int = 4, seed: int = 0) -> Path:
    """A randomly initialised tiny model plus tokenizer in Hugging Face format (tests, benchmarks)."""
    from transformers import Qwen2ForCausalLM

    tok = build_tokenizer()
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(tiny_config(len(tok), tie=tie, hidden=hidden, layers=layers))
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def _encode(tok, examples: list[Example]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids with the prompt positions masked out of the loss (only the completion is learned)."""
    rows = [(tok.encode(e.prompt), tok.encode(e.solution) + [tok.eos_token_id]) for e in examples]
    width = max(len(p) + len(c) for p, c in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (p, c) in enumerate(rows):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        labels[i, len(p) : len(p) + len(c)] = torch.tensor(c)
    return ids, labels


@torch.no_grad()
def sampled_accuracy(model, tok, examples: list[Example], temperature: float = 1.0, max_new_tokens: int = 48) -> float:
    prompts = [tok.encode(e.prompt) for e in examples]
    width = max(map(len, prompts))
    if any(len(p) != width for p in prompts):
        raise ValueError("sampled_accuracy expects prompts of one length (the builtin task)")
    out = model.generate(
        torch.tensor(prompts),
        attention_mask=torch.ones(len(prompts), width, dtype=torch.long),
        do_sample=temperature > 0,
        temperature=temperature if temperature > 0 else None,
        top_k=0,
        max_new_tokens=max_new_tokens,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.convert_tokens_to_ids("</answer>"),
    )
    texts = tok.batch_decode(out[:, width:], skip_special_tokens=True)
    return sum(f"<answer>{e.answer}</answer>" in t for e, t in zip(examples, texts, strict=True)) / len(examples)


def pretrain(model, tok, task: AdditionTask, *, steps: int, batch: int, lr: float, target_accuracy: float, seed: int):
    rng = random.Random(f"pretrain-{seed}")
    # The stopping point is chosen on problems of the training distribution, never on the held-out set.
    probe_rng = random.Random(f"probe-{seed}")
    probe = [task.sample(probe_rng) for _ in range(100)]
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    accuracy, step = 0.0, 0
    for step in range(1, steps + 1):
        ids, labels = _encode(tok, [task.sample(rng) for _ in range(batch)])
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 20 == 0:
            model.eval()
            accuracy = sampled_accuracy(model, tok, probe)
            model.train()
            logger.info("pretrain step %d loss %.3f sampled accuracy %.2f", step, loss.item(), accuracy)
            if accuracy >= target_accuracy:
                break
    return step, accuracy


def build_base_model(
    output_dir: str | Path,
    *,
    digits: int = 3,
    seed: int = 0,
    eval_size: int = 200,
    steps: int = 400,
    batch: int = 128,
    lr: float = 1e-3,
    target_accuracy: float = 0.15,
) -> Path:
    """Path of the pre-trained builtin model, building it on first use."""
    from transformers import Qwen2ForCausalLM

    key = f"tiny-adder-d{digits}-s{seed}-e{eval_size}-n{steps}-acc{target_accuracy}"
    path = Path(output_dir) / "_builtin" / key
    if (path / "r1ray_base.json").is_file():
        return path
    print(f"pre-training the builtin base model into {path} (once; about a minute)...", flush=True)
    start = time.perf_counter()
    torch.manual_seed(seed)
    tok = build_tokenizer()
    model = Qwen2ForCausalLM(tiny_config(len(tok)))
    task = AdditionTask(digits=digits, seed=seed, eval_size=eval_size)  # its held-out problems are never trained on
    step, accuracy = pretrain(
        model, tok, task, steps=steps, batch=batch, lr=lr, target_accuracy=target_accuracy, seed=seed
    )
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    info = {"steps": step, "sampled_accuracy": accuracy, "seconds": time.perf_counter() - start}
    (tmp / "r1ray_base.json").write_text(json.dumps(info))
    print(f"base model ready: {step} steps, sampled accuracy {accuracy:.2f}, {info['seconds']:.0f} s", flush=True)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path
