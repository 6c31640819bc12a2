"""cluster.algo.grpo against loop-by-loop transcriptions of the GRPO / DAPO / Dr. GRPO formulas."""

import math
import statistics

import pytest
import torch

from cluster.algo.grpo import LOSS_AGGS, dynamic_sampling_mask, group_advantages, policy_loss
from cluster.algo.logprobs import entropy_from_logits, masked_mean, token_logprobs

MAX_TOKENS = 8


def loop_advantages(rewards: list[float], group_size: int, scale: bool, eps: float = 1e-6) -> list[float]:
    out = []
    for start in range(0, len(rewards), group_size):
        group = rewards[start : start + group_size]
        mean = statistics.fmean(group)
        std = statistics.stdev(group)
        out += [(r - mean) / (std + eps) if scale else r - mean for r in group]
    return out


def loop_loss(
    lp, old, ref, adv, mask, clip_low, clip_high, kl_coef, loss_agg, max_tokens, clip_ratio_c=None, kl_max=None
):
    """One scalar autograd graph built token by token, exactly as the papers write the objective."""
    seq_terms = []
    for b in range(lp.shape[0]):
        terms = []
        for t in range(lp.shape[1]):
            if not mask[b, t]:
                continue
            ratio = torch.exp(lp[b, t] - old[b, t])
            clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
            pg = -torch.min(ratio * adv[b], clipped * adv[b])
            if clip_ratio_c is not None and adv[b] < 0:  # dual clip: at most c * |A|
                pg = torch.min(pg, -adv[b] * clip_ratio_c)
            kl = torch.exp(ref[b, t] - lp[b, t]) - (ref[b, t] - lp[b, t]) - 1 if ref is not None else 0.0
            if kl_max is not None and ref is not None:
                kl = torch.clamp(kl, max=kl_max)
            terms.append(pg + kl_coef * kl)
        seq_terms.append(terms)
    if loss_agg == "token-mean":
        flat = [term for terms in seq_terms for term in terms]
        return sum(flat) / len(flat)
    if loss_agg == "seq-mean-token-mean":
        seq_means = [sum(terms) / len(terms) for terms in seq_terms if terms]
        return sum(seq_means) / len(seq_means)
    return sum(sum(terms) / max_tokens for terms in seq_terms) / len(seq_terms)


def random_batch(seed: int) -> dict[str, torch.Tensor]:
    """Four sequences of six tokens; row 0 is fully masked."""
    gen = torch.Generator().manual_seed(seed)
    batch, length = 4, 6
    lp = -torch.rand(batch, length, generator=gen, dtype=torch.float64) * 2
    mask = torch.rand(batch, length, generator=gen) > 0.3
    mask[0] = False
    mask[1, 0] = True
    return {
        "logprobs": lp,
        # Wide enough that some ratios leave [0.8, 1.2] and get clipped.
        "old_logprobs": lp + (torch.rand(batch, length, generator=gen, dtype=torch.float64) - 0.5) * 0.8,
        "ref_logprobs": lp + (torch.rand(batch, length, generator=gen, dtype=torch.float64) - 0.5),
        # Mixed signs so both the upper (A > 0) and the lower (A < 0) clip bound are exercised.
        "advantages": torch.randn(batch, generator=gen, dtype=torch.float64).abs() * torch.tensor([1, 1, -1, 1]),
        "mask": mask,
    }


# ---- advantages ----


@pytest.mark.parametrize(
    ("rewards", "group_size", "scale", "expected"),
    [
        # Group means 0.5, unbiased std sqrt(0.5): (1 - 0.5) / 0.7071 = 0.7071.
        ([1, 0, 0, 1], 2, True, [math.sqrt(0.5), -math.sqrt(0.5), -math.sqrt(0.5), math.sqrt(0.5)]),
        ([1, 0, 0, 1], 2, False, [0.5, -0.5, -0.5, 0.5]),
        # Mean 1/4, unbiased std sqrt(0.75 * 0.25 * 4 / 3) = 0.5: (1 - 0.25) / 0.5 = 1.5, (0 - 0.25) / 0.5 = -0.5.
        ([1, 0, 0, 0], 4, True, [1.5, -0.5, -0.5, -0.5]),
        ([1, 1, 1, 0, 0, 0], 3, True, [0, 0, 0, 0, 0, 0]),
        ([2, 2], 2, False, [0, 0]),
    ],
)
def test_group_advantages_hand_examples(rewards, group_size, scale, expected):
    adv = group_advantages(torch.tensor(rewards), group_size, scale=scale)
    assert adv.dtype == torch.float32
    torch.testing.assert_close(adv, torch.tensor(expected, dtype=torch.float32), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scale", [True, False])
@pytest.mark.parametrize("group_size", [2, 5])
def test_group_advantages_match_loop(scale, group_size):
    rewards = torch.rand(3 * group_size, generator=torch.Generator().manual_seed(group_size))
    expected = loop_advantages(rewards.tolist(), group_size, scale)
    torch.testing.assert_close(group_advantages(rewards, group_size, scale=scale), torch.tensor(expected))


def test_identical_rewards_give_zero_not_nan():
    adv = group_advantages(torch.full((8,), 0.7), 4)
    assert torch.isfinite(adv).all()
    assert (adv == 0).all()


@pytest.mark.parametrize(
    ("rewards", "group_size", "match"),
    [
        (torch.zeros(2, 2), 2, "1-D"),
        (torch.zeros(5), 2, "multiple"),
        (torch.zeros(0), 2, "multiple"),
        (torch.zeros(4), 1, "group_size"),
    ],
)
def test_group_advantages_rejects_bad_input(rewards, group_size, match):
    with pytest.raises(ValueError, match=match):
        group_advantages(rewards, group_size)


def test_dynamic_sampling_mask():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.5, 0.5])
    assert dynamic_sampling_mask(rewards, 2).tolist() == [False, True, False, False]
    assert dynamic_sampling_mask(rewards, 4).tolist() == [True, True]


# ---- loss values and gradients against the loop reference ----


@pytest.mark.parametrize("loss_agg", LOSS_AGGS)
@pytest.mark.parametrize(
    ("clip_low", "clip_high", "kl_coef", "with_ref"),
    [
        (0.2, 0.2, 0.04, True),  # GRPO
        (0.2, 0.28, 0.0, False),  # DAPO clip-higher, no KL
        (0.1, 0.3, 0.5, True),
    ],
)
# Seeds whose batches have tokens clipped at both the upper and the lower bound.
@pytest.mark.parametrize("seed", [1, 2])
def test_policy_loss_matches_loop(loss_agg, clip_low, clip_high, kl_coef, with_ref, seed):
    batch = random_batch(seed)
    if not with_ref:
        batch["ref_logprobs"] = None
    lp = batch.pop("logprobs").requires_grad_()
    lp_loop = lp.detach().clone().requires_grad_()
    kwargs = {"clip_low": clip_low, "clip_high": clip_high, "kl_coef": kl_coef, "loss_agg": loss_agg}

    loss, metrics = policy_loss(lp, **batch, **kwargs, max_tokens=MAX_TOKENS)
    expected = loop_loss(
        lp_loop,
        batch["old_logprobs"],
        batch["ref_logprobs"],
        batch["advantages"],
        batch["mask"],
        **kwargs,
        max_tokens=MAX_TOKENS,
    )
    torch.testing.assert_close(loss, expected)
    assert metrics["loss"] == pytest.approx(expected.item())

    (grad,) = torch.autograd.grad(loss, lp)
    (grad_loop,) = torch.autograd.grad(expected, lp_loop)
    torch.testing.assert_close(grad, grad_loop)
    assert (grad[~batch["mask"]] == 0).all()


def test_metrics_match_loop():
    batch = random_batch(2)
    mask = batch["mask"]
    _, metrics = policy_loss(**batch, clip_low=0.1, clip_high=0.15, kl_coef=0.0, loss_agg="token-mean")
    ratios, kls, clipped, outside = [], [], [], []
    for b, t in mask.nonzero().tolist():
        ratio = math.exp(batch["logprobs"][b, t] - batch["old_logprobs"][b, t])
        log_ref = float(batch["ref_logprobs"][b, t] - batch["logprobs"][b, t])
        adv = float(batch["advantages"][b])
        ratios.append(ratio)
        kls.append(math.exp(log_ref) - log_ref - 1)
        clipped.append((adv > 0 and ratio > 1.15) or (adv < 0 and ratio < 0.9))
        outside.append(not 0.9 <= ratio <= 1.15)
    assert 0 < sum(clipped) < sum(outside), "need clipped tokens and out-of-range tokens the clip does not bind"
    assert metrics["ratio_mean"] == pytest.approx(statistics.fmean(ratios))
    assert metrics["ratio_max"] == pytest.approx(max(ratios))
    assert metrics["kl"] == pytest.approx(statistics.fmean(kls))
    assert metrics["clip_frac"] == pytest.approx(statistics.fmean(clipped))
    # Without KL the loss is the policy-gradient term alone.
    assert metrics["pg_loss"] == pytest.approx(metrics["loss"])
    assert all(isinstance(value, float) for value in metrics.values())


# ---- clipping edge cases on a single token ----


@pytest.mark.parametrize(
    ("adv", "ratio", "clip_low", "clip_high", "clipped"),
    [
        (1.0, 1.5, 0.2, 0.2, True),  # A > 0 above 1 + clip_high: no incentive to push further
        (1.0, 1.1, 0.2, 0.2, False),
        (1.0, 0.5, 0.2, 0.2, False),  # A > 0 below 1 - clip_low: still pulled up
        (-1.0, 0.5, 0.2, 0.2, True),  # A < 0 below 1 - clip_low: no incentive to push further
        (-1.0, 1.5, 0.2, 0.2, False),  # A < 0 above 1 + clip_high: still pulled down
        (1.0, 1.25, 0.2, 0.2, True),
        (1.0, 1.25, 0.2, 0.28, False),  # DAPO clip-higher lets this low-probability token keep growing
        (-1.0, 0.75, 0.2, 0.28, True),  # the lower bound is unchanged by clip-higher
    ],
)
def test_clipping_zeroes_gradient(adv, ratio, clip_low, clip_high, clipped):
    old = torch.tensor([[-1.0]], dtype=torch.float64)
    lp = (old + math.log(ratio)).requires_grad_()
    loss, metrics = policy_loss(
        lp, old, None, torch.tensor([adv], dtype=torch.float64), torch.ones(1, 1), clip_low, clip_high, kl_coef=0.0
    )
    (grad,) = torch.autograd.grad(loss, lp)
    assert metrics["clip_frac"] == float(clipped)
    if clipped:
        assert grad.item() == 0.0
        assert loss.item() == pytest.approx(-adv * (1 + clip_high if adv > 0 else 1 - clip_low))
    else:
        # d(-ratio * A)/d lp = -ratio * A
        assert grad.item() == pytest.approx(-ratio * adv)
        assert loss.item() == pytest.approx(-ratio * adv)


@pytest.mark.parametrize(
    ("adv", "ratio", "loss", "grad", "dual"),
    [
        (-1.0, 5.0, 3.0, 0.0, True),  # A < 0, ratio above c: the loss stops at c * |A|, no gradient
        (-2.0, 5.0, 6.0, 0.0, True),
        (-1.0, 2.0, 2.0, 2.0, False),  # below c: the ordinary (unclipped) term, d(-ratio * A)/d lp
        (1.0, 5.0, -1.2, 0.0, False),  # A > 0: only the ordinary clip applies
    ],
)
def test_dual_clip_by_hand(adv, ratio, loss, grad, dual):
    old = torch.tensor([[-3.0]], dtype=torch.float64)
    lp = (old + math.log(ratio)).requires_grad_()
    value, metrics = policy_loss(
        lp, old, None, torch.tensor([adv], dtype=torch.float64), torch.ones(1, 1), kl_coef=0.0, clip_ratio_c=3.0
    )
    (g,) = torch.autograd.grad(value, lp)
    assert value.item() == pytest.approx(loss)
    assert g.item() == pytest.approx(grad)
    assert metrics["dual_clip_frac"] == float(dual)


def test_kl_cap_by_hand():
    lp = torch.tensor([[-4.0, -2.0]], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[-1.0, -1.0]], dtype=torch.float64)  # ref - lp = 3 (k3 = e^3 - 4 = 16.1) and 1
    loss, metrics = policy_loss(
        lp, lp.detach(), ref, torch.zeros(1, dtype=torch.float64), torch.ones(1, 2), kl_coef=1.0, kl_max=10.0
    )
    k3_big, k3_small = math.exp(3) - 4, math.e - 2
    assert loss.item() == pytest.approx((10.0 + k3_small) / 2)
    # What is reported is the estimate itself; the cap only shapes the gradient.
    assert metrics["kl"] == pytest.approx((k3_big + k3_small) / 2)
    assert metrics["kl_capped_frac"] == 0.5
    (grad,) = torch.autograd.grad(loss, lp)
    # The capped token gives no gradient; the other one d k3 / d lp = 1 - e^1, halved by the mean.
    torch.testing.assert_close(grad, torch.tensor([[0.0, (1 - math.e) / 2]], dtype=torch.float64))


@pytest.mark.parametrize("loss_agg", LOSS_AGGS)
def test_guards_match_loop(loss_agg):
    batch = random_batch(3)
    # Row 2 (A < 0) far off-policy: ratios e^1.5 = 4.5 > c = 3. Row 3: the reference likes its tokens far more.
    batch["old_logprobs"][2] = batch["logprobs"][2] - 1.5
    batch["ref_logprobs"][3] = batch["logprobs"][3] + 3.0
    lp = batch.pop("logprobs").requires_grad_()
    lp_loop = lp.detach().clone().requires_grad_()
    kwargs = {"clip_low": 0.2, "clip_high": 0.2, "kl_coef": 0.1, "loss_agg": loss_agg}
    guards = {"clip_ratio_c": 3.0, "kl_max": 10.0}
    loss, metrics = policy_loss(lp, **batch, **kwargs, max_tokens=MAX_TOKENS, **guards)
    expected = loop_loss(lp_loop, *batch.values(), **kwargs, max_tokens=MAX_TOKENS, **guards)
    torch.testing.assert_close(loss, expected)
    (grad,) = torch.autograd.grad(loss, lp)
    (grad_loop,) = torch.autograd.grad(expected, lp_loop)
    torch.testing.assert_close(grad, grad_loop)
    assert metrics["dual_clip_frac"] > 0 and metrics["kl_capped_frac"] > 0
    # The guards change this batch's loss: without them it is different.
    unguarded, _ = policy_loss(lp.detach(), **batch, **kwargs, max_tokens=MAX_TOKENS)
    assert abs(unguarded.item() - loss.item()) > 1e-3


@pytest.mark.parametrize("guards", [{}, {"clip_ratio_c": 3.0, "kl_max": 10.0}])
def test_extreme_log_ratios_give_finite_gradients(guards):
    # A token the policy now gives 99 nats more than the old policy did, and one the reference gives
    # 99 nats more than the policy: exp() overflows without the clamp, and its backward gives NaN.
    lp = torch.tensor([[-100.0, -1.0]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-1.0, -100.0]], dtype=torch.float64)
    ref = torch.tensor([[-1.0, -1.0]], dtype=torch.float64)
    for adv in (1.0, -1.0):
        loss, metrics = policy_loss(
            lp, old, ref, torch.tensor([adv], dtype=torch.float64), torch.ones(1, 2), kl_coef=0.1, **guards
        )
        (grad,) = torch.autograd.grad(loss, lp)
        assert torch.isfinite(loss) and torch.isfinite(grad).all(), (adv, loss, grad)
        assert math.isfinite(metrics["kl"]) and math.isfinite(metrics["ratio_max"])


def test_on_policy_single_token_by_hand():
    lp = torch.tensor([[-0.5]], requires_grad=True)
    loss, metrics = policy_loss(lp, lp.detach(), None, torch.tensor([2.0]), torch.ones(1, 1), kl_coef=0.0)
    assert loss.item() == pytest.approx(-2.0)
    assert metrics["ratio_mean"] == metrics["ratio_max"] == 1.0
    assert metrics["clip_frac"] == 0.0


# ---- KL ----


def test_kl_zero_when_policy_equals_reference():
    batch = random_batch(4)
    batch["ref_logprobs"] = batch["logprobs"].clone()
    batch["advantages"] = torch.zeros_like(batch["advantages"])
    loss, metrics = policy_loss(**batch, kl_coef=1.0)
    assert metrics["kl"] == 0.0
    assert loss.item() == 0.0


def test_kl_positive_and_matches_k3():
    lp = torch.tensor([[-1.0, -2.0]], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0]], dtype=torch.float64)
    loss, metrics = policy_loss(
        lp, lp.detach(), ref, torch.zeros(1, dtype=torch.float64), torch.ones(1, 2), kl_coef=1.0
    )
    k3 = [math.exp(d) - d - 1 for d in (-0.5, 1.0)]
    assert metrics["kl"] > 0
    assert metrics["kl"] == pytest.approx(statistics.fmean(k3))
    assert loss.item() == pytest.approx(statistics.fmean(k3))
    # d k3 / d lp = 1 - exp(ref - lp), halved by the two-token mean.
    (grad,) = torch.autograd.grad(loss, lp)
    torch.testing.assert_close(grad, torch.tensor([[(1 - math.exp(-0.5)) / 2, (1 - math.exp(1.0)) / 2]]).double())


# ---- aggregation ----


def test_aggregations_differ_by_hand():
    # Sequence 0 has per-token pg [-1, -1, -1], sequence 1 has [-3]: on policy, A = [1, 3].
    lp = torch.zeros(2, 3)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    adv = torch.tensor([1.0, 3.0])
    expected = {"seq-mean-token-mean": -2.0, "token-mean": -1.5, "seq-mean-token-sum-norm": (-3 / 4 - 3 / 4) / 2}
    for loss_agg, value in expected.items():
        loss, _ = policy_loss(lp, lp, None, adv, mask, kl_coef=0.0, loss_agg=loss_agg, max_tokens=4)
        assert loss.item() == pytest.approx(value), loss_agg


@pytest.mark.parametrize("loss_agg", LOSS_AGGS)
def test_fully_masked_batch_is_zero_not_nan(loss_agg):
    lp = torch.full((2, 3), -math.inf, requires_grad=True)
    loss, metrics = policy_loss(
        lp,
        torch.full((2, 3), -math.inf),
        None,
        torch.ones(2),
        torch.zeros(2, 3),
        loss_agg=loss_agg,
        kl_coef=0.0,
        max_tokens=3,
    )
    (grad,) = torch.autograd.grad(loss, lp)
    assert loss.item() == 0.0
    assert (grad == 0).all()
    assert all(value == 0.0 for value in metrics.values())


def test_low_precision_inputs_give_float32_loss():
    batch = {
        key: value.to(torch.bfloat16) if value.is_floating_point() else value for key, value in random_batch(5).items()
    }
    loss, _ = policy_loss(**batch)
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"loss_agg": "sum"}, "valid: seq-mean-token-mean, token-mean, seq-mean-token-sum-norm"),
        ({"loss_agg": "seq-mean-token-sum-norm"}, "max_tokens"),
        ({"ref_logprobs": None}, "ref_logprobs is required"),
        ({"advantages": torch.zeros(3)}, "advantages"),
        ({"mask": torch.ones(4, 5)}, "mask shape"),
        ({"logprobs": torch.zeros(4, 6, 1), "old_logprobs": torch.zeros(4, 6, 1)}, "logprobs must be"),
        ({"clip_low": 1.0}, "clip_low"),
        ({"kl_coef": -0.1}, "kl_coef"),
        ({"clip_ratio_c": 1.0}, "clip_ratio_c"),
        ({"kl_max": 0.0}, "kl_max"),
    ],
)
def test_policy_loss_rejects_bad_input(overrides, match):
    with pytest.raises(ValueError, match=match):
        policy_loss(**(random_batch(0) | overrides))


def test_reference_not_needed_without_kl():
    batch = random_batch(6) | {"ref_logprobs": None}
    _, metrics = policy_loss(**batch, kl_coef=0.0)
    assert metrics["kl"] == 0.0


# ---- helpers ----


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_match_loop(temperature):
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, 5, (2, 3), generator=gen)
    out = token_logprobs(logits, tokens, temperature)
    assert out.shape == (2, 3)
    for b in range(2):
        for t in range(3):
            row = logits[b, t].detach().tolist()
            log_norm = math.log(sum(math.exp(x / temperature) for x in row))
            assert out[b, t].item() == pytest.approx(row[tokens[b, t]] / temperature - log_norm)
    # The gradient of log p(token) w.r.t. logits is (onehot - softmax) / temperature.
    (grad,) = torch.autograd.grad(out.sum(), logits)
    onehot = torch.nn.functional.one_hot(tokens, 5).double()
    torch.testing.assert_close(grad, (onehot - torch.softmax(logits.detach() / temperature, -1)) / temperature)


def test_token_logprobs_bf16_returns_float32():
    assert token_logprobs(torch.randn(1, 2, 4, dtype=torch.bfloat16), torch.zeros(1, 2)).dtype == torch.float32


@pytest.mark.parametrize(
    ("logits", "tokens", "temperature", "match"),
    [
        (torch.zeros(2, 3), torch.zeros(2, 3), 1.0, "expected logits"),
        (torch.zeros(2, 3, 4), torch.zeros(2, 2), 1.0, "expected logits"),
        (torch.zeros(2, 3, 4), torch.zeros(2, 3), 0.0, "temperature"),
    ],
)
def test_token_logprobs_rejects_bad_input(logits, tokens, temperature, match):
    with pytest.raises(ValueError, match=match):
        token_logprobs(logits, tokens, temperature)


def test_entropy_matches_loop():
    logits = torch.randn(2, 3, 6, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    entropy = entropy_from_logits(logits)
    for b in range(2):
        for t in range(3):
            exps = [math.exp(x) for x in logits[b, t].tolist()]
            probs = [e / sum(exps) for e in exps]
            assert entropy[b, t].item() == pytest.approx(-sum(p * math.log(p) for p in probs))
    assert entropy_from_logits(torch.zeros(4)).item() == pytest.approx(math.log(4))


@pytest.mark.parametrize(
    ("dim", "expected"),
    [
        (None, 14 / 4),
        (-1, [1.5, 0.0, 5.5]),
    ],
)
def test_masked_mean(dim, expected):
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    mask = torch.tensor([[1, 1], [0, 0], [1, 1]])
    torch.testing.assert_close(masked_mean(x, mask, dim), torch.tensor(expected))


def test_masked_mean_ignores_nonfinite_padding():
    x = torch.tensor([1.0, math.nan, -math.inf])
    assert masked_mean(x, torch.tensor([True, False, False])).item() == 1.0


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fused_logprobs_and_entropy_equal_the_separate_passes(temperature, monkeypatch):
    import cluster.algo.logprobs as logprobs

    monkeypatch.setattr(logprobs, "CHUNK_ELEMENTS", 12)  # several row blocks: 2 rows of 3 x 2 logits each
    gen = torch.Generator().manual_seed(9)
    logits = torch.randn(5, 3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, 2, (5, 3), generator=gen)
    lp, entropy = logprobs.token_logprobs_and_entropy(logits, tokens, temperature)
    assert torch.equal(lp, token_logprobs(logits, tokens, temperature))
    torch.testing.assert_close(entropy, entropy_from_logits(logits.detach() / temperature))
    assert lp.requires_grad and not entropy.requires_grad
    assert logprobs.token_logprobs_and_entropy(logits, tokens, temperature, entropy=False)[1] is None
    # The gradient through the row blocks is the one-pass log-softmax's.
    (grad,) = torch.autograd.grad((lp * torch.arange(15.0).view(5, 3)).sum(), logits)
    whole = torch.log_softmax(logits / temperature, -1).gather(-1, tokens[..., None]).squeeze(-1)
    (expected,) = torch.autograd.grad((whole * torch.arange(15.0).view(5, 3)).sum(), logits)
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-6)  # the blocks are float32
