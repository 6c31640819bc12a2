"""GRPO advantage and loss math as pure tensor functions.

Formulas follow DeepSeekMath (GRPO: group-normalised advantages, clipped surrogate, k3 KL to a reference
policy), DAPO (asymmetric "clip-higher", token-level loss, dynamic sampling) and Dr. GRPO (no std
scaling, constant length normaliser), with two optional guards from PPO practice (dual clip, a cap
on each token's k3 term; r1ray's config turns both on, as verl does). Nothing here knows about Ray or
models, so the learner calls these (through ``GRPOObjective``) and `tests/unit/test_grpo.py` checks
them on CPU against loop implementations of the papers.
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from cluster.algo.logprobs import masked_mean
from cluster.algo.objective import LossInputs, Objective

LOSS_AGGS = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")
# Log-ratios are clamped to +-this before exp(): beyond it the loss would be finite but exp's backward
# (inf * 0) would make the gradient NaN. e^20 is already far past every clip and cap.
MAX_LOG_RATIO = 20.0


def _grouped(rewards: Tensor, group_size: int) -> Tensor:
    """Reshape flat per-sample rewards into `(num_prompts, group_size)` after checking they fit."""
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be 1-D (num_prompts * group_size,), got shape {tuple(rewards.shape)}")
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 to compare samples within a group, got {group_size}")
    if rewards.numel() == 0 or rewards.numel() % group_size != 0:
        raise ValueError(f"len(rewards)={rewards.numel()} is not a positive multiple of group_size={group_size}")
    return rewards.reshape(-1, group_size)


def group_advantages(rewards: Tensor, group_size: int, scale: bool = True, eps: float = 1e-6) -> Tensor:
    """Per-sample advantage `(r - mean_g) / (std_g + eps)`, or `r - mean_g` when `scale=False` (Dr. GRPO).

    `rewards` holds consecutive groups of `group_size` samples of the same prompt. The std is the
    unbiased one (correction=1). A group whose rewards are all equal gets advantage 0.
    """
    groups = _grouped(rewards, group_size).to(torch.float32)
    centered = groups - groups.mean(dim=1, keepdim=True)
    if scale:
        centered = centered / (groups.std(dim=1, correction=1, keepdim=True) + eps)
    return centered.reshape(-1)


def dynamic_sampling_mask(rewards: Tensor, group_size: int) -> Tensor:
    """Bool per group, True where rewards differ: DAPO keeps only those, the rest carry no gradient."""
    groups = _grouped(rewards, group_size)
    return (groups != groups[:, :1]).any(dim=1)


def _check_loss_inputs(
    logprobs: Tensor,
    old_logprobs: Tensor,
    ref_logprobs: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float,
    clip_high: float,
    kl_coef: float,
    loss_agg: str,
    max_tokens: int | None,
    clip_ratio_c: float | None = None,
    kl_max: float | None = None,
) -> None:
    if clip_ratio_c is not None and clip_ratio_c <= 1:
        raise ValueError(f"clip_ratio_c (dual clip) must be > 1, got {clip_ratio_c}")
    if kl_max is not None and kl_max <= 0:
        raise ValueError(f"kl_max must be > 0, got {kl_max}")
    if loss_agg not in LOSS_AGGS:
        raise ValueError(f"unknown loss_agg {loss_agg!r}; valid: {', '.join(LOSS_AGGS)}")
    if loss_agg == "seq-mean-token-sum-norm" and (max_tokens is None or max_tokens <= 0):
        raise ValueError(f"loss_agg 'seq-mean-token-sum-norm' needs max_tokens > 0, got {max_tokens}")
    if logprobs.ndim != 2:
        raise ValueError(f"logprobs must be (B, T), got shape {tuple(logprobs.shape)}")
    others = {"old_logprobs": old_logprobs, "mask": mask}
    if ref_logprobs is not None:
        others["ref_logprobs"] = ref_logprobs
    for name, tensor in others.items():
        if tensor.shape != logprobs.shape:
            raise ValueError(f"{name} shape {tuple(tensor.shape)} != logprobs shape {tuple(logprobs.shape)}")
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(f"advantages must be (B,)={tuple(logprobs.shape[:1])}, got {tuple(advantages.shape)}")
    if not 0 <= clip_low < 1 or clip_high < 0:
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got {clip_low} and {clip_high}")
    if kl_coef < 0:
        raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
    if kl_coef > 0 and ref_logprobs is None:
        raise ValueError("ref_logprobs is required when kl_coef > 0")


def _aggregate(per_token: Tensor, mask: Tensor, loss_agg: str, max_tokens: int | None) -> Tensor:
    if loss_agg == "token-mean":
        return masked_mean(per_token, mask)
    token_sums = (per_token * mask).sum(dim=-1)
    if loss_agg == "seq-mean-token-sum-norm":
        # Dr. GRPO: a constant normaliser, so long and short answers are not weighted by 1/length.
        return token_sums.sum() / (max_tokens * per_token.shape[0])
    lengths = mask.sum(dim=-1)
    # Empty sequences (e.g. truncated to nothing) are left out rather than dividing 0 by 0.
    has_tokens = lengths > 0
    return masked_mean(token_sums / lengths.clamp(min=1), has_tokens)


def _as_float(x: Tensor) -> Tensor:
    """Upcast bf16/fp16 so that exp(lp - old) is not dominated by rounding; keep float32/64 as is."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    ref_logprobs: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    kl_coef: float = 0.04,
    loss_agg: str = "seq-mean-token-mean",
    max_tokens: int | None = None,
    clip_ratio_c: float | None = None,
    kl_max: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Clipped GRPO surrogate plus `kl_coef` times the k3 KL to the reference policy.

    Per token: `ratio = exp(lp - old)`, `pg = -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A)`,
    `kl = exp(ref - lp) - (ref - lp) - 1`. Two optional guards against single-token blow-ups when the
    batch is off-policy (several mini-batches, stale rollouts): `clip_ratio_c` is dual-clip PPO (Ye et
    al. 2020): for A < 0 the token's loss is at most `clip_ratio_c * |A|`, so a huge ratio on a bad token
    cannot dominate the step; `kl_max` caps each token's k3 term (k3 grows like exp(ref - lp): it is
    10 at ref - lp = 2.5 nats, ~20000 at 10), and a capped token gives no gradient through that term.
    Both log-ratios are clamped to +-MAX_LOG_RATIO before exp.

    `loss_agg` picks how tokens become one scalar (see LOSS_AGGS): per-sequence token mean then sequence
    mean (GRPO), mean over all tokens (DAPO), or per-sequence token sum over `max_tokens` then sequence
    mean (Dr. GRPO). Gradients flow only into `logprobs`.

    Metrics: `loss` and `pg_loss` use `loss_agg`; `kl` (uncapped), `kl_capped_frac`, `clip_frac`,
    `dual_clip_frac`, `ratio_mean` and `ratio_max` are
    over masked tokens (0 when there are none).
    """
    _check_loss_inputs(
        logprobs,
        old_logprobs,
        ref_logprobs,
        advantages,
        mask,
        clip_low,
        clip_high,
        kl_coef,
        loss_agg,
        max_tokens,
        clip_ratio_c,
        kl_max,
    )
    bool_mask = mask.bool()
    float_mask = bool_mask.to(_as_float(logprobs).dtype)
    # Padding may hold -inf or garbage; zeroing it first keeps NaN out of both the values and where()'s backward.
    lp = torch.where(bool_mask, _as_float(logprobs), 0.0)
    # Old, reference and advantages are fixed targets of this step: no gradient may reach them.
    old = torch.where(bool_mask, _as_float(old_logprobs.detach()), 0.0)
    adv = _as_float(advantages.detach()).unsqueeze(-1)

    ratio = torch.exp(torch.clamp(lp - old, -MAX_LOG_RATIO, MAX_LOG_RATIO))
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * adv
    pg = -torch.minimum(unclipped, clipped)
    dual_clipped = torch.zeros_like(bool_mask)
    if clip_ratio_c is not None:
        cap = -adv * clip_ratio_c  # > 0 where A < 0
        dual_clipped = (adv < 0) & (pg > cap)
        pg = torch.where(dual_clipped, cap.expand_as(pg), pg)
    if ref_logprobs is None:
        kl = kl_raw = torch.zeros_like(lp)
    else:
        ref = torch.where(bool_mask, _as_float(ref_logprobs.detach()), 0.0)
        log_ratio_ref = torch.clamp(ref - lp, -MAX_LOG_RATIO, MAX_LOG_RATIO)
        kl_raw = torch.exp(log_ratio_ref) - log_ratio_ref - 1
        kl = kl_raw if kl_max is None else torch.clamp(kl_raw, max=kl_max)
    loss = _aggregate(pg + kl_coef * kl, float_mask, loss_agg, max_tokens)

    with torch.no_grad():
        any_tokens = bool(bool_mask.any())
        metrics = {
            "loss": loss.item(),
            "pg_loss": _aggregate(pg, float_mask, loss_agg, max_tokens).item(),
            # The estimate itself, uncapped: the cap shapes the gradient, not what is reported.
            "kl": masked_mean(kl_raw, bool_mask).item(),
            "kl_capped_frac": masked_mean((kl < kl_raw).float(), bool_mask).item(),
            "clip_frac": masked_mean((clipped < unclipped).float(), bool_mask).item(),
            "dual_clip_frac": masked_mean(dual_clipped.float(), bool_mask).item(),
            "ratio_mean": masked_mean(ratio, bool_mask).item(),
            "ratio_max": ratio[bool_mask].max().item() if any_tokens else 0.0,
        }
    return loss, metrics


@dataclass(frozen=True, kw_only=True)
class GRPOObjective(Objective):
    """``policy_loss`` with a run's settings; the learner calls ``loss`` once per micro-batch."""

    clip_low: float = 0.2
    clip_high: float = 0.2
    kl_coef: float = 0.04
    loss_agg: str = "seq-mean-token-mean"
    max_tokens: int | None = None
    """Dr. GRPO's constant normaliser: the most tokens a response may have."""
    clip_ratio_c: float | None = None
    kl_max: float | None = None

    @property
    def uses_reference(self) -> bool:
        return self.kl_coef > 0

    @property
    def uses_old_logprobs(self) -> bool:
        return True

    @property
    def token_weighted(self) -> bool:
        return self.loss_agg == "token-mean"

    @property
    def token_metrics(self) -> frozenset[str]:
        return frozenset({"kl", "kl_capped_frac", "clip_frac", "dual_clip_frac", "ratio_mean"})

    def loss(self, inputs: LossInputs) -> tuple[Tensor, dict[str, float]]:
        lp = inputs.logprobs
        return policy_loss(
            lp,
            lp.detach() if inputs.old_logprobs is None else inputs.old_logprobs,
            inputs.ref_logprobs,
            inputs.advantages,
            inputs.mask,
            clip_low=self.clip_low,
            clip_high=self.clip_high,
            kl_coef=self.kl_coef,
            loss_agg=self.loss_agg,
            max_tokens=self.max_tokens,
            clip_ratio_c=self.clip_ratio_c,
            kl_max=self.kl_max,
        )
