"""The embedded default's base model: a tiny Qwen2 with its own character tokenizer, built locally.

``build_base_model`` creates (once, cached under ``<output_dir>/_builtin/``) a ~1M-parameter
Qwen2-architecture model in Hugging Face format and pre-trains it on the builtin addition task
the way DeepSeek-V3-Base could reason but rarely showed it: most pre-training answers are one
short line (``347+285=<think></think><answer>632</answer>``, which such a small model almost always
gets wrong), a minority work the sum out column by column (usually right). The base therefore
answers short at greedy and only sometimes thinks when sampled; reinforcement learning with an
accuracy reward can move it to the long mode, which is what the demo shows.

Pre-training is a fixed schedule (step count, warm-up and cosine decay, data order, batch, thread
count), so the same settings build bit-identical weights on one machine and nearly the same base
on another; every setting is part of the cache key. The loss is r1ray's SFT objective
(``cluster.algo.sft``). Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from cluster.algo.logprobs import token_logprobs
from cluster.algo.sft import sft_loss
from cluster.data.tasks import AdditionTask, Example
from cluster.progress import track

logger = logging.getLogger(__name__)

TAGS = ["<think>", "</think>", "<answer>", "</answer>"]
CHARS = list("0123456789+-*/=;() ")
PAD, EOS = "<pad>", "<eos>"
BUILTIN_NAME = "builtin:tiny-adder"


def build_tokenizer(chars: list[str] | None = None):
    """Character-level tokenizer over ``chars`` (default ``CHARS``); the four tags are single (non-special, so
    they detokenize) tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([PAD, EOS, *TAGS, *(chars or CHARS)])}
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


@dataclass(frozen=True, kw_only=True)
class PretrainRecipe:
    """Everything that decides the builtin base model's weights (all of it goes into the cache key)."""

    digits: int = 3
    seed: int = 0
    eval_size: int = 200
    steps: int = 500
    batch: int = 128
    lr: float = 2e-3
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    long_fraction: float = 0.2
    """Share of pre-training examples that work the sum out; the rest answer in one short line."""
    long_only_steps: int = 350
    """First steps on worked examples only (the skill), before the mixture sets how rarely it is used."""
    short_digits: bool = False
    """Train the short answers' digits (else only their shape: see ``bucketed_loss``)."""
    threads: int = 2
    """torch threads while pre-training: a fixed count, so float reductions run the same everywhere."""
    hidden: int = 128
    layers: int = 4
    version: int = 4
    """Bumped whenever the pre-training code changes what it builds."""

    def key(self) -> str:
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]
        return f"tiny-adder-d{self.digits}-s{self.seed}-n{self.steps}-long{self.long_fraction}-{digest}"

    def lr_at(self, step: int) -> float:
        """Linear warm-up, then cosine decay to ``min_lr_ratio`` of the peak (``step`` counts from 0)."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def pretraining_text(example: Example, rng: random.Random, long_fraction: float) -> str:
    """The worked solution with probability ``long_fraction``, else the one-line answer."""
    return example.solution if rng.random() < long_fraction else example.short_solution


def _encode(
    tok, prompts: list[str], completions: list[str], eos: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, the prompt lengths and the completion lengths (with ``eos``, each completion ends
    with EOS)."""
    end = [tok.eos_token_id] if eos else []
    rows = [(tok.encode(p), tok.encode(c) + end) for p, c in zip(prompts, completions, strict=True)]
    width = max(len(p) + len(c) for p, c in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    for i, (p, c) in enumerate(rows):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
    return ids, torch.tensor([len(p) for p, _ in rows]), torch.tensor([len(c) for _, c in rows])


def sft_batch_loss(
    model,
    ids: torch.Tensor,
    prompt_lens: torch.Tensor,
    completion_lens: torch.Tensor,
    any_of: torch.Tensor | None = None,
) -> torch.Tensor:
    """r1ray's SFT objective on one batch: next-token NLL of the completion tokens only.

    With ``any_of`` (token ids), a target that is one of them is scored as the class: the log of the
    total probability of ``any_of``, so the model learns that such a token comes, not which one."""
    logits = model(input_ids=ids).logits[:, :-1]
    targets = ids[:, 1:]
    positions = torch.arange(targets.shape[1])[None]
    # target position t predicts token t + 1: completion tokens sit at [prompt_len, prompt_len + completion_len)
    mask = (positions >= prompt_lens[:, None] - 1) & (positions < (prompt_lens + completion_lens)[:, None] - 1)
    logprobs = token_logprobs(logits, targets)
    if any_of is not None:
        in_class = torch.logsumexp(torch.log_softmax(logits.float(), dim=-1)[..., any_of], dim=-1)
        logprobs = torch.where(torch.isin(targets, any_of), in_class, logprobs)
    return sft_loss(logprobs, mask.float())


def bucketed_loss(
    model, tok, prompts: list[str], completions: list[str], long: list[bool], short_digits: bool = True
) -> torch.Tensor:
    """``sft_batch_loss`` over the whole batch, computed as two forwards (long rows, short rows) so that
    the many one-line answers are not padded to the worked ones' length; weighted by tokens.

    Without ``short_digits`` a short row teaches the decision not to think and the answer's shape
    (``<think></think><answer>``, some digits, ``</answer>``) but not which digits: a model this small
    cannot add in one step, and learning to guess overwrites how it copies the worked answer out of
    its chain of thought (measured: accuracy when thinking fell from ~0.6 to ~0.1)."""
    digits = torch.tensor(tok.convert_tokens_to_ids(list("0123456789")))
    parts = []
    for want in (True, False):
        rows = [i for i, is_long in enumerate(long) if is_long == want]
        if rows:
            ids, p, c = _encode(tok, [prompts[i] for i in rows], [completions[i] for i in rows])
            any_of = None if want or short_digits else digits
            parts.append((sft_batch_loss(model, ids, p, c, any_of), c.sum()))
    total = sum(n for _, n in parts)
    return sum(loss * (n / total) for loss, n in parts)


@torch.no_grad()
def probe(model, tok, examples: list[Example], samples: int = 4, max_new_tokens: int = 40) -> dict[str, float]:
    """Sampled (T = 1) and greedy accuracy, mean length and long-mode share on ``examples``."""
    prompts = [tok.encode(e.prompt) for e in examples]
    width = max(map(len, prompts))
    if any(len(p) != width for p in prompts):
        raise ValueError("probe expects prompts of one length (the builtin task)")
    stop = tok.convert_tokens_to_ids("</answer>")
    results = {}
    for name, n, sample in (("sampled", samples, True), ("greedy", 1, False)):
        ids = torch.tensor([p for p in prompts for _ in range(n)])
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=sample,
            temperature=1.0 if sample else None,
            top_k=0 if sample else None,
            top_p=1.0 if sample else None,
            max_new_tokens=max_new_tokens,
            pad_token_id=tok.pad_token_id,
            eos_token_id=stop,
        )
        texts = tok.batch_decode(out[:, width:], skip_special_tokens=True)
        gold = [e.answer for e in examples for _ in range(n)]
        correct = [f"<answer>{a}</answer>" in t for a, t in zip(gold, texts, strict=True)]
        long = [not t.startswith("<think></think>") for t in texts]
        results[f"{name}_accuracy"] = sum(correct) / len(texts)
        if sample:
            results["long_share"] = sum(long) / len(texts)
            results["long_accuracy"] = sum(c for c, lg in zip(correct, long, strict=True) if lg) / max(1, sum(long))
            lengths = (out[:, width:] != tok.pad_token_id).sum(dim=1)
            results["mean_length"] = float(lengths.float().mean())
    return results


def pretrain(model, tok, task: AdditionTask, recipe: PretrainRecipe) -> float:
    """The fixed pre-training schedule; returns the last step's loss."""
    rng = random.Random(f"pretrain-{recipe.seed}")
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr)
    loss = torch.tensor(float("nan"))
    started = time.perf_counter()
    for step in track(range(recipe.steps), "pre-training the builtin model"):
        for group in opt.param_groups:
            group["lr"] = recipe.lr_at(step)
        examples = [task.sample(rng) for _ in range(recipe.batch)]
        share = 1.0 if step < recipe.long_only_steps else recipe.long_fraction
        texts = [pretraining_text(e, rng, share) for e in examples]
        long = [t == e.solution for t, e in zip(texts, examples, strict=True)]
        loss = bucketed_loss(model, tok, [e.prompt for e in examples], texts, long, recipe.short_digits)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % 100 == 0 or step + 1 == recipe.steps:
            elapsed = time.perf_counter() - started
            left = elapsed / (step + 1) * (recipe.steps - step - 1)
            done = f"{step + 1}/{recipe.steps}"
            print(f"  pre-training step {done} loss {loss.item():.3f} ({left:.0f} s left)", flush=True)
    return loss.item()


def build_base_model(output_dir: str | Path, recipe: PretrainRecipe | None = None) -> Path:
    """Path of the pre-trained builtin model, building it on first use."""
    from transformers import Qwen2ForCausalLM

    recipe = recipe or PretrainRecipe()
    path = Path(output_dir) / "_builtin" / recipe.key()
    if (path / "r1ray_base.json").is_file():
        return path
    print(f"pre-training the builtin base model into {path} (once; a few minutes)...", flush=True)
    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    try:
        torch.manual_seed(recipe.seed)
        tok = build_tokenizer()
        model = Qwen2ForCausalLM(tiny_config(len(tok), hidden=recipe.hidden, layers=recipe.layers))
        # its held-out problems are never trained on, nor probed: the probe draws training-distribution problems
        task = AdditionTask(digits=recipe.digits, seed=recipe.seed, eval_size=recipe.eval_size)
        loss = pretrain(model, tok, task, recipe)
        model.eval()
        torch.manual_seed(recipe.seed)
        probe_rng = random.Random(f"probe-{recipe.seed}")
        figures = probe(model, tok, [task.sample(probe_rng) for _ in range(100)])
    finally:
        torch.set_num_threads(threads)
    info = {"recipe": asdict(recipe), "final_loss": loss, **figures, "seconds": time.perf_counter() - start}
    save_base(model, tok, path, info)
    print(
        f"base model ready in {info['seconds']:.0f} s: sampled accuracy {figures['sampled_accuracy']:.2f}, "
        f"greedy {figures['greedy_accuracy']:.2f}, long-mode share {figures['long_share']:.2f} "
        f"(accuracy when long {figures['long_accuracy']:.2f}), mean length {figures['mean_length']:.1f}",
        flush=True,
    )
    return path


def save_base(model, tok, path: Path, info: dict) -> None:
    """Model, tokenizer and ``r1ray_base.json`` (``info``) into ``path``, whole or not at all: written to a
    temporary folder that then replaces ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / "r1ray_base.json").write_text(json.dumps(info, indent=1))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
