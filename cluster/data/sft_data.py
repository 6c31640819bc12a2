"""SFT rows: a prompt and the response to learn, tokenized apart so the loss mask is exact.

A row is ``{"prompt": ..., "response": ...}`` (the prompt is templated with ``data.template``, as
the RL stage templates it, so a cold-started model meets the prompts RL will give it) or
``{"messages": [{"role": ..., "content": ...}, ...]}`` in chat format: everything before the last
assistant turn is the prompt, through the tokenizer's chat template; the last assistant turn is
the response. Every response ends with the tokenizer's EOS token. Bad rows are ``DataError``s
naming the file and line.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from cluster.config import RunConfig
from cluster.data.tasks import read_rows
from cluster.errors import DataError
from cluster.payloads import TrainBatch


@dataclass(frozen=True, kw_only=True)
class SFTRow:
    prompt_ids: np.ndarray
    """int64 prompt tokens (templated)."""
    response_ids: np.ndarray
    """int64 response tokens, EOS last."""

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)


def load_sft_rows(path: str, cfg: RunConfig, tokenizer) -> tuple[list[SFTRow], int]:
    """The file's rows, tokenized; and how many were left out for length (``data.overlong: skip``)."""
    from cluster.data.prompts import PromptFormat, overlong_action

    fmt = PromptFormat(cfg, tokenizer)
    s = cfg.sft
    rows, skipped = [], 0
    for where, row in read_rows(path):
        if s.messages_key in row and s.response_key not in row:
            prompt_text, response = _chat_row(row[s.messages_key], tokenizer, where, s.messages_key)
            prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        else:
            missing = [k for k in (s.prompt_key, s.response_key) if k not in row]
            if missing:
                raise DataError(
                    f"{where}: missing column(s) {missing} (or a {s.messages_key!r} column); it has {sorted(row)}"
                )
            prompt, response = row[s.prompt_key], row[s.response_key]
            for key, value in ((s.prompt_key, prompt), (s.response_key, response)):
                if not isinstance(value, str) or not value.strip():
                    raise DataError(f"{where}: {key!r} must be non-empty text, got {value!r:.60}")
            prompt_ids = fmt.ids(prompt)
        if cfg.data.think_opened and response.lstrip().startswith("<think>"):
            # The prompt already opened the thought (r1zero, R1-distill chat templates): continue it, as RL samples do.
            response = response.lstrip()[len("<think>") :]
        response_ids = [*tokenizer(response, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
        action = overlong_action(cfg, where, len(prompt_ids), len(response_ids))
        if action == "skip":
            skipped += 1
            continue
        if action == "truncate":
            prompt_ids = prompt_ids[-cfg.model.max_prompt_len :]  # the end holds the question and the turn
            response_ids = response_ids[: cfg.model.max_response_len]
        rows.append(
            SFTRow(prompt_ids=np.asarray(prompt_ids, np.int64), response_ids=np.asarray(response_ids, np.int64))
        )
    if not rows:
        raise DataError(f"{path}: no SFT rows (or none fits the model's prompt and response lengths)")
    return rows, skipped


def _chat_row(messages, tokenizer, where: str, key: str) -> tuple[str, str]:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: {key!r} must be a non-empty list of {{role, content}} messages")
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str) or "role" not in message:
            raise DataError(f"{where}: every message needs a 'role' and text 'content', got {message!r:.80}")
    if messages[-1]["role"] != "assistant":
        raise DataError(
            f"{where}: the last message must be the assistant's (the response), got {messages[-1]['role']!r}"
        )
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(f"{where}: chat-format rows need a tokenizer with a chat template, and this one has none")
    prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
    return prompt, messages[-1]["content"]


def sft_batch(rows: list[SFTRow]) -> TrainBatch:
    """Rows as one right-padded batch, sorted by length so that consecutive micro-batches are alike."""
    rows = sorted(rows, key=lambda r: r.length)
    width = max(r.length for r in rows)
    ids = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : r.length] = np.concatenate([r.prompt_ids, r.response_ids])
    return TrainBatch(
        input_ids=ids,
        prompt_lens=np.array([len(r.prompt_ids) for r in rows], dtype=np.int64),
        response_lens=np.array([len(r.response_ids) for r in rows], dtype=np.int64),
        advantages=np.zeros(len(rows), dtype=np.float32),
    )


def epoch_batches(rows: list[SFTRow], batch_size: int, seed: int, epoch: int, *, bucket: bool) -> list[list[int]]:
    """One epoch's batches of row indices, a pure function of (seed, epoch). With ``bucket``, the shuffled rows
    are sorted by length within windows of 50 batches before being cut, so a batch holds rows of similar
    length; batches are then shuffled. The last short batch is dropped."""
    order = list(range(len(rows)))
    rng = random.Random(f"sft-{seed}-{epoch}")
    rng.shuffle(order)
    if bucket:
        window = 50 * batch_size
        order = [
            i for k in range(0, len(order), window) for i in sorted(order[k : k + window], key=lambda i: rows[i].length)
        ]
    batches = [order[k : k + batch_size] for k in range(0, len(order) - batch_size + 1, batch_size)]
    if bucket:
        rng.shuffle(batches)
    return batches
