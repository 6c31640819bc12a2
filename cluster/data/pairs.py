"""Preference pairs for reward-model training: a prompt, the chosen response and the rejected one.

A row is ``{"prompt": ..., "chosen": ..., "rejected": ...}``, the common layout of preference
sets. The prompt is templated with ``data.template``, as the RL stage templates it, so the reward model
judges completions of the prompts the policy will see. Prompt and response are tokenized apart
(``pair_tokens``; the response ends with EOS, where the reward is read), the way the reward-model
server tokenizes what it scores. Bad rows are ``DataError``s naming the file and line.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from cluster.config import RunConfig
from cluster.data.tasks import read_rows
from cluster.errors import DataError
from cluster.payloads import TrainBatch

COLUMNS = ("prompt", "chosen", "rejected")


@dataclass(frozen=True, kw_only=True)
class Pair:
    prompt_ids: np.ndarray
    """int64 prompt tokens (templated)."""
    chosen_ids: np.ndarray
    """int64 tokens of the preferred response, EOS last."""
    rejected_ids: np.ndarray
    """int64 tokens of the other response, EOS last."""


def pair_tokens(tokenizer, prompt_text: str, response: str) -> tuple[list[int], list[int]]:
    """Prompt tokens (with the tokenizer's own special tokens) and response tokens (none, EOS appended), apart:
    the reward is read at the response's last token, the same one in training and in scoring."""
    prompt_ids = tokenizer(prompt_text)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        response_ids = [*response_ids, tokenizer.eos_token_id]
    return prompt_ids, response_ids


def load_pairs(path: str, cfg: RunConfig, tokenizer) -> list[Pair]:
    """The file's pairs, tokenized. Pairs longer than ``model.max_prompt_len`` / ``max_response_len`` follow
    ``data.overlong``: an error naming the row, left out (counted and printed), or truncated."""
    from cluster.data.prompts import PromptFormat

    fmt = PromptFormat(cfg, tokenizer)
    pairs, skipped = [], 0
    for where, row in read_rows(path):
        missing = [k for k in COLUMNS if k not in row]
        if missing:
            raise DataError(f"{where}: missing column(s) {missing}; it has {sorted(row)}")
        for key in COLUMNS:
            if not isinstance(row[key], str) or not row[key].strip():
                raise DataError(f"{where}: {key!r} must be non-empty text, got {row[key]!r:.60}")
        prompt_ids, chosen = pair_tokens(tokenizer, fmt.text(row["prompt"]), row["chosen"])
        rejected = pair_tokens(tokenizer, fmt.text(row["prompt"]), row["rejected"])[1]
        fitted = _fit(cfg, where, prompt_ids, chosen, rejected)
        if fitted is None:
            skipped += 1
            continue
        pairs.append(Pair(**{k: np.asarray(v, np.int64) for k, v in fitted.items()}))
    if skipped:
        print(f"data: left out {skipped} pairs of {path} (longer than the model's prompt or response length)")
    if not pairs:
        raise DataError(f"{path}: no preference pairs (or none fits the model's prompt and response lengths)")
    return pairs


def _fit(cfg: RunConfig, where: str, prompt: list[int], chosen: list[int], rejected: list[int]) -> dict | None:
    """The pair's token lists within the model's lengths per ``data.overlong``; None when it is left out."""
    from cluster.data.prompts import overlong_action

    max_prompt, max_response = cfg.model.max_prompt_len, cfg.model.max_response_len
    action = overlong_action(cfg, where, len(prompt), max(len(chosen), len(rejected)))
    if action == "fits":
        return {"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected}
    if action == "skip":
        return None
    return {
        "prompt_ids": prompt[-max_prompt:],  # the end holds the question and the assistant's turn
        "chosen_ids": chosen[:max_response],
        "rejected_ids": rejected[:max_response],
    }


def pair_batch(pairs: list[Pair]) -> TrainBatch:
    """Pairs as one right-padded batch: row ``2i`` is pair i's chosen response, row ``2i + 1`` its rejected one."""
    if not pairs:
        raise ValueError("pair_batch needs at least one pair")
    seqs = [(p.prompt_ids, r) for p in pairs for r in (p.chosen_ids, p.rejected_ids)]
    width = max(len(a) + len(b) for a, b in seqs)
    ids = np.zeros((len(seqs), width), dtype=np.int64)
    for i, (prompt, response) in enumerate(seqs):
        ids[i, : len(prompt) + len(response)] = np.concatenate([prompt, response])
    return TrainBatch(
        input_ids=ids,
        prompt_lens=np.array([len(a) for a, _ in seqs], dtype=np.int64),
        response_lens=np.array([len(b) for _, b in seqs], dtype=np.int64),
        advantages=np.zeros(len(seqs), dtype=np.float32),
    )


def epoch_pair_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch's batches of pair indices, shuffled as a pure function of (seed, epoch); the last short batch is
    dropped."""
    order = list(range(n))
    random.Random(f"rm-{seed}-{epoch}").shuffle(order)
    return [order[k : k + batch_size] for k in range(0, n - batch_size + 1, batch_size)]
