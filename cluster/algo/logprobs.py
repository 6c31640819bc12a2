"""Per-token logprobs, entropies and masked means: what every objective and the learner share."""

import torch
from torch import Tensor


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `x` over positions where `mask` is true; 0 (not NaN) where nothing is selected."""
    mask = mask.bool()
    total = torch.where(mask, x, torch.zeros_like(x))
    if dim is None:
        return total.sum() / mask.sum().clamp(min=1)
    return total.sum(dim=dim) / mask.sum(dim=dim).clamp(min=1)


def token_logprobs(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> Tensor:
    """Float32 log-prob of each of `tokens` (B, T) under `softmax(logits / temperature)` (logits B, T, V).

    The sampler scores tokens at `temperature`, so the learner must divide by the same value for the
    importance ratio to compare like with like.
    """
    return token_logprobs_and_entropy(logits, tokens, temperature, entropy=False)[0]


def token_logprobs_and_entropy(
    logits: Tensor, tokens: Tensor, temperature: float = 1.0, *, entropy: bool = True
) -> tuple[Tensor, Tensor | None]:
    """``token_logprobs`` and, in the same pass over each block of logits (while it is in cache), the float32
    entropy of ``softmax(logits / temperature)`` per token (no gradient; None unless ``entropy``)."""
    if logits.ndim != 3 or tokens.shape != logits.shape[:2]:
        raise ValueError(
            f"expected logits (B, T, V) and tokens (B, T), got {tuple(logits.shape)} and {tuple(tokens.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    rows, entropies = [], []
    # Rows in chunks of at most CHUNK_ELEMENTS logits: one vectorised pass for small batches, while the float32
    # copy of a bf16 vocab-sized tensor stays bounded for large ones (never (B, T, V) at once).
    # ``split``, not slicing: the backward of each slice would write its gradient into a zeroed copy of the whole
    # logits tensor (one full-size fill and add per chunk: 0.6 s of a 40M model's 3.5 s step); a split's backward
    # concatenates the chunks' gradients once.
    step = rows_per_chunk(logits)
    for block, block_tokens in zip(logits.split(step), tokens.split(step), strict=True):
        scaled = block.float()
        if temperature != 1.0:
            scaled = scaled / temperature
        picked = scaled.gather(-1, block_tokens.long().unsqueeze(-1)).squeeze(-1)
        norm = torch.logsumexp(scaled, dim=-1)
        rows.append(picked - norm)
        if entropy:
            with torch.no_grad():
                probs = torch.exp(scaled - norm.unsqueeze(-1))
                entropies.append(norm - (probs * scaled).sum(dim=-1))
    lp = rows[0] if len(rows) == 1 else torch.cat(rows)
    return lp, (torch.cat(entropies) if entropy else None)


CHUNK_ELEMENTS = 1 << 21
"""Logits handled in one vectorised pass (8 MiB in float32: larger blocks fall out of cache and run slower
than row by row, measured on a 32k vocabulary)."""


def rows_per_chunk(logits: Tensor) -> int:
    """Rows of ``logits`` (B, ...) that hold at most ``CHUNK_ELEMENTS`` (at least one row)."""
    per_row = max(1, logits[0].numel()) if len(logits) else 1
    return max(1, CHUNK_ELEMENTS // per_row)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Float32 entropy of `softmax(logits)` over the last dim, one value per token."""
    logits = logits.float()
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)
