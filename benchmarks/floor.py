"""This machine's floor for one GRPO step, in plain single-process PyTorch: what no framework can beat.

``PlainTrainer``: one forward + backward of the policy and one no-grad reference forward over the same
padded batch the learner gets, the GRPO token loss with k3 KL, an AdamW step; ``plain_generate``:
``transformers`` ``generate`` of the same prompts x G (sampling, the same stop or fixed length);
``plain_copy``: ``copy_`` of every parameter into a second model's (the bytes a weight broadcast moves).
"""

from __future__ import annotations

import time

import numpy as np
import torch


class PlainTrainer:
    """``bucket_tokens``: the same update over length-sorted chunks of at most that many padded tokens (what
    r1ray's ``learner.micro_batch_tokens`` does), so a bucketed r1ray step is set against a bucketed floor."""

    def __init__(self, path: str, lr: float, kl: float, bucket_tokens: int | None = None) -> None:
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        self.ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval().requires_grad_(False)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr)
        self.kl = kl
        self.bucket_tokens = bucket_tokens

    def _logprobs(self, model, ids, attention, prompt, width):
        logits = model(input_ids=ids, attention_mask=attention).logits
        pos = (prompt[:, None] + torch.arange(width)[None]).clamp(max=ids.shape[1] - 1)
        picked = logits.gather(1, (pos - 1)[..., None].expand(-1, -1, logits.shape[-1]))
        return torch.log_softmax(picked.float(), -1).gather(-1, ids.gather(1, pos)[..., None]).squeeze(-1)

    def _chunk(self, batch, rows) -> None:
        """Forward (+ reference) and backward of ``rows``, scaled by their share of the batch."""
        chunk = batch.select(rows)
        used = int((chunk.prompt_lens + chunk.response_lens).max())
        ids = torch.tensor(chunk.input_ids[:, :used])
        prompt, resp = torch.tensor(chunk.prompt_lens), torch.tensor(chunk.response_lens)
        width = int(resp.max())
        attention = (torch.arange(used)[None] < (prompt + resp)[:, None]).long()
        mask = (torch.arange(width)[None] < resp[:, None]).float()
        with torch.no_grad():
            ref = self._logprobs(self.ref, ids, attention, prompt, width)
        lp = self._logprobs(self.model, ids, attention, prompt, width)
        adv = torch.tensor(chunk.advantages)[:, None]
        k3 = torch.exp(ref - lp) - (ref - lp) - 1
        per_token = -adv * torch.exp(lp - lp.detach()) + self.kl * k3
        loss = ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).sum() / len(batch)
        loss.backward()

    def step(self, batch) -> float:
        """Seconds for one update on ``batch`` (a ``TrainBatch``)."""
        from cluster.algo.microbatch import plan

        start = time.perf_counter()
        lengths = batch.prompt_lens + batch.response_lens
        for rows in plan(lengths, max_rows=len(batch), max_tokens=self.bucket_tokens):
            self._chunk(batch, rows)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return time.perf_counter() - start


def plain_generate(model, prompt_ids: list[list[int]], group: int, new_tokens: int, fixed: bool, stop: list[int]):
    """``generate`` of every prompt ``group`` times in one left-padded batch: (seconds, each row's new tokens)."""
    rows = [p for p in prompt_ids for _ in range(group)]
    width = max(len(p) for p in rows)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in rows])
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in rows])
    kwargs = {"min_new_tokens": new_tokens} if fixed else {"eos_token_id": stop}
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=attention,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            max_new_tokens=new_tokens,
            pad_token_id=0,
            **kwargs,
        )
    seconds = time.perf_counter() - start
    new = out[:, width:].numpy()
    hit = np.isin(new, stop)
    lengths = np.where(hit.any(1), hit.argmax(1) + 1, new.shape[1]) if not fixed else np.full(len(new), new.shape[1])
    return seconds, [r[:n] for r, n in zip(new, lengths, strict=True)]


def train_batch(prompt_ids: list[list[int]], group: int, completions: list[np.ndarray], seed: int = 0):
    """A ``TrainBatch`` of these completions (random advantages): what the learner would get."""
    from cluster.payloads import TrainBatch

    rows = [p for p in prompt_ids for _ in range(group)]
    width = max(len(p) + len(c) for p, c in zip(rows, completions, strict=True))
    ids = np.zeros((len(rows), width), dtype=np.int64)
    for i, (p, c) in enumerate(zip(rows, completions, strict=True)):
        ids[i, : len(p) + len(c)] = [*p, *c]
    return TrainBatch(
        input_ids=ids,
        prompt_lens=np.array([len(p) for p in rows]),
        response_lens=np.array([max(1, len(c)) for c in completions]),
        advantages=np.random.default_rng(seed).standard_normal(len(rows)).astype(np.float32),
    )


def plain_copy(src: torch.nn.Module, dst: torch.nn.Module) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        for a, b in zip(src.parameters(), dst.parameters(), strict=True):
            b.copy_(a)
    return time.perf_counter() - start
