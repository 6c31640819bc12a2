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
    if logits.ndim != 3 or tokens.shape != logits.shape[:2]:
        raise ValueError(
            f"expected logits (B, T, V) and tokens (B, T), got {tuple(logits.shape)} and {tuple(tokens.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    rows = []
    # One sequence at a time bounds the float32 copy of a bf16 vocab-sized tensor to (T, V), not (B, T, V).
    for row_logits, row_tokens in zip(logits, tokens, strict=True):
        scaled = row_logits.float() / temperature
        picked = scaled.gather(-1, row_tokens.long().unsqueeze(-1)).squeeze(-1)
        rows.append(picked - torch.logsumexp(scaled, dim=-1))
    return torch.stack(rows)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Float32 entropy of `softmax(logits)` over the last dim, one value per token."""
    logits = logits.float()
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)
