"""RL losses and advantage estimators against hand-computed values and slow, obvious references."""

from __future__ import annotations

import math

import pytest
import torch
from lorarlhf.kernels import token_kl

from lorarlhf.training.rl_losses import (
    AdaptiveKLController,
    FixedKLController,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_bonus,
    explained_variance,
    gae,
    group_advantages,
    grpo_policy_loss,
    masked_mean,
    masked_whiten,
)

CLIP = 0.2


# ---------------------------------------------------------------- masked_mean / masked_whiten


def test_masked_mean_all_and_per_row():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[True, True, False], [False, False, True]])
    assert masked_mean(x, mask).item() == pytest.approx((1 + 2 + 6) / 3)
    torch.testing.assert_close(masked_mean(x, mask, dim=1), torch.tensor([1.5, 6.0]))
    torch.testing.assert_close(masked_mean(x, mask, dim=0), torch.tensor([1.0, 2.0, 6.0]))


def test_masked_mean_empty_row_is_zero_and_padding_is_never_read():
    x = torch.tensor([[1.0, 3.0, float("nan")], [float("inf"), float("nan"), 7.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    per_row = masked_mean(x, mask, dim=-1)
    torch.testing.assert_close(per_row, torch.tensor([2.0, 0.0]), check_dtype=False)
    (grad,) = torch.autograd.grad(per_row.sum(), x)
    torch.testing.assert_close(grad, torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 0.0]]))
    assert masked_mean(x, torch.zeros_like(mask)).item() == 0.0


def test_masked_mean_rejects_non_bool_or_misshaped_mask():
    x = torch.ones(2, 3)
    with pytest.raises(ValueError, match="bool"):
        masked_mean(x, torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        masked_mean(x, torch.ones(2, 1, dtype=torch.bool))


def test_masked_whiten_hand_computed():
    x = torch.tensor([[1.0, 2.0, 99.0], [3.0, 4.0, -99.0]])
    mask = torch.tensor([[True, True, False], [True, True, False]])
    # masked entries 1, 2, 3, 4: mean 2.5, population variance 1.25
    scale = 1 / math.sqrt(1.25 + 1e-8)
    expected = torch.tensor([[-1.5, -0.5, 0.0], [0.5, 1.5, 0.0]]) * scale
    torch.testing.assert_close(masked_whiten(x, mask), expected)
    unshifted = torch.tensor([[-1.5 * scale + 2.5, -0.5 * scale + 2.5, 0.0], [0.5 * scale + 2.5, 1.5 * scale + 2.5, 0]])
    torch.testing.assert_close(masked_whiten(x, mask, shift_mean=False), unshifted)
    w = masked_whiten(x, mask)[mask]
    assert w.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert w.var(unbiased=False).item() == pytest.approx(1.0, rel=1e-5)


def test_masked_whiten_empty_mask_gives_zeros():
    x = torch.randn(2, 4)
    out = masked_whiten(x, torch.zeros(2, 4, dtype=torch.bool))
    assert torch.equal(out, torch.zeros(2, 4))


# ---------------------------------------------------------------- GAE


def _gae_reference(rewards, values, mask, gamma, lam):
    """One row at a time, plain Python floats, straight from the definition."""
    B, T = rewards.shape
    adv, ret = torch.zeros(B, T, dtype=torch.float64), torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        idx = [t for t in range(T) if mask[b, t]]
        r = [rewards[b, t].item() for t in idx]
        v = [values[b, t].item() for t in idx]
        last = 0.0
        for i in reversed(range(len(idx))):
            v_next = v[i + 1] if i + 1 < len(idx) else 0.0
            delta = r[i] + gamma * v_next - v[i]
            last = delta + gamma * lam * last
            adv[b, idx[i]] = last
            ret[b, idx[i]] = last + v[i]
    return adv, ret


def _padded_mask(starts, lengths, T):
    pos = torch.arange(T)
    starts, lengths = torch.tensor(starts)[:, None], torch.tensor(lengths)[:, None]
    return (pos >= starts) & (pos < starts + lengths)


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (1.0, 0.95), (0.99, 0.95), (0.9, 0.0), (0.5, 0.7)])
def test_gae_matches_per_row_reference(gamma, lam):
    gen = torch.Generator().manual_seed(0)
    T = 13
    # left prompt/padding of varying length, response of varying length (including 1 and 0), right padding
    starts, lengths = [0, 3, 5, 2, 12, 4], [13, 6, 1, 9, 1, 0]
    mask = _padded_mask(starts, lengths, T)
    rewards = torch.randn(len(starts), T, generator=gen)
    values = torch.randn(len(starts), T, generator=gen)
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
    ref_adv, ref_ret = _gae_reference(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(adv.double(), ref_adv, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ret.double(), ref_ret, atol=1e-5, rtol=1e-5)
    assert torch.all(adv[~mask] == 0) and torch.all(ret[~mask] == 0)


def test_gae_hand_computed_three_tokens_after_a_prompt():
    # one prompt position (garbage reward and value, masked out), then 3 response tokens, then padding
    rewards = torch.tensor([[5.0, 0.0, 0.0, 1.0, 9.0]])
    values = torch.tensor([[7.0, 0.5, 0.6, 0.7, 3.0]])
    mask = torch.tensor([[False, True, True, True, False]])
    gamma, lam = 0.9, 0.8
    # delta_2 = 1 - 0.7 = 0.3                  A_2 = 0.3
    # delta_1 = 0 + 0.9 * 0.7 - 0.6 = 0.03     A_1 = 0.03 + 0.72 * 0.3 = 0.246
    # delta_0 = 0 + 0.9 * 0.6 - 0.5 = 0.04     A_0 = 0.04 + 0.72 * 0.246 = 0.21712
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
    torch.testing.assert_close(adv, torch.tensor([[0.0, 0.21712, 0.246, 0.3, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.0, 0.71712, 0.846, 1.0, 0.0]]))


def test_gae_gamma_lam_one_gives_reward_to_go():
    gen = torch.Generator().manual_seed(1)
    mask = _padded_mask([2, 0], [5, 4], 8)
    rewards = torch.randn(2, 8, generator=gen)
    values = torch.randn(2, 8, generator=gen, requires_grad=True)
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    masked_r = torch.where(mask, rewards, 0.0)
    reward_to_go = masked_r.flip(1).cumsum(1).flip(1) * mask
    torch.testing.assert_close(ret, reward_to_go, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(adv, (reward_to_go - values.detach()) * mask, atol=1e-5, rtol=1e-5)
    assert not adv.requires_grad and not ret.requires_grad  # rollout quantities: constants of the update


# ---------------------------------------------------------------- PPO policy loss


# (advantage, ratio, expected loss, expected d loss / d logp, clipped?)
SIGN_CASES = {
    # A > 0, ratio > 1 + clip: pg_loss2 = -1 * 1.2 wins, constant in ratio
    "pos_adv_high_ratio": (1.0, 1.5, -1.2, 0.0),
    # A > 0, ratio < 1 - clip: pg_loss1 = -1 * 0.5 wins; d(-A ratio)/dlogp = -A ratio
    "pos_adv_low_ratio": (1.0, 0.5, -0.5, -0.5),
    # A < 0, ratio < 1 - clip: pg_loss2 = 0.8 wins, constant
    "neg_adv_low_ratio": (-1.0, 0.5, 0.8, 0.0),
    # A < 0, ratio > 1 + clip: pg_loss1 = 1.5 wins; gradient -A ratio = 1.5
    "neg_adv_high_ratio": (-1.0, 1.5, 1.5, 1.5),
}


@pytest.mark.parametrize("case", SIGN_CASES)
def test_clipped_policy_loss_sign_cases(case):
    adv, ratio, expected_loss, expected_grad = SIGN_CASES[case]
    old_logp = torch.tensor([[-1.3, -2.0]])
    logp = (old_logp + torch.tensor([[math.log(ratio), 0.0]])).requires_grad_()
    mask = torch.tensor([[True, False]])  # the second position is padding
    loss, stats = clipped_policy_loss(logp, old_logp, torch.tensor([[adv, 100.0]]), mask, clip=CLIP)
    assert loss.item() == pytest.approx(expected_loss, rel=1e-5)
    (grad,) = torch.autograd.grad(loss, logp)
    torch.testing.assert_close(grad, torch.tensor([[expected_grad, 0.0]]))
    assert stats["clipfrac"] == 1.0  # |ratio - 1| = 0.5 > 0.2 in all four
    assert stats["ratio_mean"] == pytest.approx(ratio, rel=1e-5)
    assert stats["approx_kl"] == pytest.approx((ratio - 1) - math.log(ratio), rel=1e-4)


def test_clipped_policy_loss_batch_mean_and_clipfrac():
    ratios = [1.5, 0.5, 1.1, 1.0, 0.7]  # |ratio - 1| > 0.2 for the first two and the last: but 0.7 is masked
    advs = [1.0, -1.0, 2.0, 3.0, 1.0]
    old_logp = torch.full((1, 5), -0.7)
    logp = (old_logp + torch.log(torch.tensor([ratios]))).requires_grad_()
    mask = torch.tensor([[True, True, True, True, False]])
    loss, stats = clipped_policy_loss(logp, old_logp, torch.tensor([advs]), mask, clip=CLIP)
    # per token: -1.2 (clipped), 0.8 (clipped), -2.2, -3.0; mean over 4 tokens
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 2.2 - 3.0) / 4, rel=1e-5)
    (grad,) = torch.autograd.grad(loss, logp)
    # unclipped tokens: d(-A ratio)/dlogp = -A ratio, divided by the 4 tokens
    torch.testing.assert_close(grad, torch.tensor([[0.0, 0.0, -2.2 / 4, -3.0 / 4, 0.0]]))
    assert stats["clipfrac"] == pytest.approx(0.5)
    assert stats["ratio_mean"] == pytest.approx((1.5 + 0.5 + 1.1 + 1.0) / 4, rel=1e-5)


def test_clipped_policy_loss_approx_kl_zero_on_policy():
    gen = torch.Generator().manual_seed(2)
    logp = -torch.rand(3, 6, generator=gen) * 4
    mask = _padded_mask([0, 1, 2], [6, 3, 2], 6)
    loss, stats = clipped_policy_loss(logp, logp.clone(), torch.randn(3, 6, generator=gen), mask, clip=CLIP)
    assert stats["approx_kl"] == 0.0 and stats["clipfrac"] == 0.0 and stats["ratio_mean"] == pytest.approx(1.0)


def test_clipped_policy_loss_approx_kl_is_token_kl_k3_of_old_vs_new():
    gen = torch.Generator().manual_seed(3)
    old_logp = -torch.rand(2, 5, generator=gen) * 3
    logp = old_logp + 0.3 * torch.randn(2, 5, generator=gen)
    mask = _padded_mask([0, 2], [5, 2], 5)
    _, stats = clipped_policy_loss(logp, old_logp, torch.randn(2), mask, clip=CLIP)
    log_ratio = (logp - old_logp)[mask].double()
    expected = (log_ratio.exp() - 1 - log_ratio).mean().item()
    assert stats["approx_kl"] == pytest.approx(expected, rel=1e-4)


def test_clipped_policy_loss_sequence_advantages_broadcast():
    gen = torch.Generator().manual_seed(4)
    old_logp = -torch.rand(3, 7, generator=gen) * 3
    logp = (old_logp + 0.4 * torch.randn(3, 7, generator=gen)).requires_grad_()
    mask = _padded_mask([0, 2, 4], [7, 4, 1], 7)
    adv = torch.randn(3, generator=gen)
    loss_seq, stats_seq = clipped_policy_loss(logp, old_logp, adv, mask, clip=CLIP)
    loss_tok, stats_tok = clipped_policy_loss(logp, old_logp, adv[:, None].expand(3, 7), mask, clip=CLIP)
    assert loss_seq.item() == loss_tok.item() and stats_seq == stats_tok
    g_seq, g_tok = (torch.autograd.grad(loss, logp)[0] for loss in (loss_seq, loss_tok))
    torch.testing.assert_close(g_seq, g_tok)
    with pytest.raises(ValueError, match="advantages"):
        clipped_policy_loss(logp, old_logp, torch.randn(7), mask, clip=CLIP)


def test_clipped_policy_loss_nan_padding_does_not_leak():
    logp = torch.tensor([[-1.0, float("nan")]], requires_grad=True)
    old_logp = torch.tensor([[-1.2, float("inf")]])
    mask = torch.tensor([[True, False]])
    loss, stats = clipped_policy_loss(logp, old_logp, torch.tensor([[1.0, float("nan")]]), mask, clip=CLIP)
    (grad,) = torch.autograd.grad(loss, logp)
    assert math.isfinite(loss.item()) and torch.isfinite(grad).all() and grad[0, 1] == 0
    assert all(math.isfinite(v) for v in stats.values())


# ---------------------------------------------------------------- PPO value loss


def test_clipped_value_loss_hand_computed():
    # token 0, clipped branch: V = 1, V_old = 0, R = 1: (V - R)^2 = 0, V_clipped = 0.2, (0.2 - 1)^2 = 0.64
    # token 1, unclipped branch: V = -0.5, V_old = 0, R = 1: (V - R)^2 = 2.25 > (-0.2 - 1)^2 = 1.44
    values = torch.tensor([[1.0, -0.5, 42.0]], requires_grad=True)
    old_values = torch.tensor([[0.0, 0.0, 0.0]])
    returns = torch.tensor([[1.0, 1.0, -42.0]])
    mask = torch.tensor([[True, True, False]])
    loss = clipped_value_loss(values, old_values, returns, mask, clip=CLIP)
    assert loss.item() == pytest.approx(0.5 * (0.64 + 2.25) / 2, rel=1e-6)
    (grad,) = torch.autograd.grad(loss, values)
    # clipped token: the clipped term is constant in V; unclipped: 0.5 * 2 (V - R) / 2 tokens
    torch.testing.assert_close(grad, torch.tensor([[0.0, 0.5 * 2 * (-1.5) / 2, 0.0]]))


def test_clipped_value_loss_inside_clip_is_plain_mse():
    values = torch.tensor([[0.1, 0.9]])
    returns = torch.tensor([[1.0, 0.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss = clipped_value_loss(values, values - 0.05, returns, mask, clip=CLIP)
    assert loss.item() == pytest.approx(0.5 * (0.81 + 0.81) / 2, rel=1e-6)


# ---------------------------------------------------------------- GRPO


def test_group_advantages_hand_computed_two_groups():
    rewards = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 6.0])
    # group 1: mean 2, unbiased std 1; group 2: mean 2, deviations (-2, -2, 4), unbiased var 24 / 2 = 12
    s1, s2 = 1.0 + 1e-4, math.sqrt(12.0) + 1e-4
    expected = torch.tensor([-1 / s1, 0.0, 1 / s1, -2 / s2, -2 / s2, 4 / s2])
    torch.testing.assert_close(group_advantages(rewards, 3), expected)
    torch.testing.assert_close(
        group_advantages(rewards, 3, scale_by_std=False), torch.tensor([-1.0, 0.0, 1.0, -2.0, -2.0, 4.0])
    )


def test_group_advantages_constant_group_gives_exact_zeros():
    # 0.1 * 3 / 3 != 0.1 in float32: without the guard the tiny error would be divided by eps
    rewards = torch.tensor([0.1, 0.1, 0.1, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0])
    adv = group_advantages(rewards, 3)
    assert torch.equal(adv[:6], torch.zeros(6))
    assert torch.isfinite(adv).all() and adv[7] > 0
    assert torch.equal(group_advantages(torch.tensor([3.0, -1.0]), 1), torch.zeros(2))


def test_group_advantages_validation():
    with pytest.raises(ValueError, match=r"B=5.*group_size=2"):
        group_advantages(torch.zeros(5), 2)
    with pytest.raises(ValueError, match="positive"):
        group_advantages(torch.zeros(4), 0)
    with pytest.raises(ValueError, match="1-D"):
        group_advantages(torch.zeros(2, 2), 2)


def test_grpo_beta_zero_is_the_clipped_objective_per_sequence():
    gen = torch.Generator().manual_seed(5)
    B, T = 4, 9
    old_logp = -torch.rand(B, T, generator=gen) * 3
    logp = (old_logp + 0.4 * torch.randn(B, T, generator=gen)).requires_grad_()
    ref_logp = -torch.rand(B, T, generator=gen) * 3
    mask = _padded_mask([0, 3, 1, 5], [9, 4, 2, 3], T)
    adv = torch.randn(B, generator=gen)
    loss, stats = grpo_policy_loss(logp, old_logp, ref_logp, adv, mask, clip=CLIP, beta=0.0)
    per_seq = [
        clipped_policy_loss(logp[b : b + 1], old_logp[b : b + 1], adv[b : b + 1], mask[b : b + 1], clip=CLIP)[0]
        for b in range(B)
    ]
    expected = torch.stack(per_seq).mean()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(torch.autograd.grad(loss, logp)[0], torch.autograd.grad(expected, logp)[0])
    _, ppo_stats = clipped_policy_loss(logp, old_logp, adv, mask, clip=CLIP)
    assert stats["clipfrac"] == ppo_stats["clipfrac"]
    assert stats["approx_kl"] == pytest.approx(ppo_stats["approx_kl"])


def test_grpo_kl_term_is_token_kl_k3():
    gen = torch.Generator().manual_seed(6)
    B, T = 3, 6
    logp = (-torch.rand(B, T, generator=gen) * 3).requires_grad_()
    ref_logp = logp.detach() + 0.5 * torch.randn(B, T, generator=gen)
    mask = _padded_mask([0, 2, 1], [6, 3, 4], T)
    beta = 0.04
    # zero advantages and logp == old_logp: only the KL term is left
    loss, stats = grpo_policy_loss(
        logp, logp.detach(), ref_logp, torch.zeros(B), mask, clip=CLIP, beta=beta, loss_type="token"
    )
    k3 = token_kl(logp, ref_logp, estimator="k3")
    expected_kl = k3[mask].mean()
    assert loss.item() == pytest.approx(beta * expected_kl.item(), rel=1e-5)
    assert stats["kl"] == pytest.approx(expected_kl.item(), rel=1e-5)
    # gradient of beta * k3 w.r.t. logp: -beta (exp(ref - logp) - 1) per token / number of tokens
    expected_grad = torch.where(mask, -beta * torch.expm1(ref_logp - logp.detach()) / mask.sum(), 0.0)
    torch.testing.assert_close(torch.autograd.grad(loss, logp)[0], expected_grad)


def test_grpo_sequence_and_token_normalisation_differ_on_unequal_lengths():
    # on-policy (ratio 1), beta 0: the per-token loss is -A
    logp = torch.full((2, 4), -1.0)
    mask = torch.tensor([[True, False, False, False], [True, True, True, False]])
    adv = torch.tensor([1.0, -1.0])
    kwargs = dict(clip=CLIP, beta=0.0)
    seq, _ = grpo_policy_loss(logp, logp, logp, adv, mask, loss_type="sequence", **kwargs)
    tok, _ = grpo_policy_loss(logp, logp, logp, adv, mask, loss_type="token", **kwargs)
    assert seq.item() == pytest.approx((-1.0 + 1.0) / 2)  # row means -1 and +1, then mean over rows
    assert tok.item() == pytest.approx((-1.0 + 3 * 1.0) / 4)  # 4 tokens: one at -1, three at +1
    # an empty row counts as a sequence with loss 0 under "sequence"
    mask_empty = torch.cat([mask, torch.zeros(1, 4, dtype=torch.bool)])
    logp3, adv3 = torch.full((3, 4), -1.0), torch.tensor([1.0, -1.0, 5.0])
    seq3, _ = grpo_policy_loss(logp3, logp3, logp3, adv3, mask_empty, loss_type="sequence", **kwargs)
    assert seq3.item() == pytest.approx(0.0)


def test_grpo_bad_loss_type():
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match=r"'sequence', 'token'.*'mean'"):
        grpo_policy_loss(
            x, x, x, torch.zeros(1), torch.ones(1, 2, dtype=torch.bool), clip=CLIP, beta=0.1, loss_type="mean"
        )


# ---------------------------------------------------------------- entropy, explained variance


def test_entropy_bonus_is_masked_mean():
    entropy = torch.tensor([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert entropy_bonus(entropy, mask).item() == pytest.approx(2.0)


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0, 50.0]])
    mask = torch.tensor([[True, True, True, False]])
    assert explained_variance(returns.clone(), returns, mask) == pytest.approx(1.0)
    assert explained_variance(torch.zeros_like(returns), returns, mask) == pytest.approx(0.0, abs=1e-12)
    # R - V = (0, 0, 1): Var 2/9; Var R = 2/3
    values = torch.tensor([[1.0, 2.0, 2.0, -50.0]])
    assert explained_variance(values, returns, mask) == pytest.approx(1 - (2 / 9) / (2 / 3))
    assert math.isnan(explained_variance(values, torch.ones(1, 4), mask))  # Var[R] = 0: undefined
    assert math.isnan(explained_variance(values, returns, torch.zeros_like(mask)))


# ---------------------------------------------------------------- KL controllers


def test_adaptive_kl_controller_hand_computed_sequence():
    ctl = AdaptiveKLController(init_coef=0.1, target=6.0, horizon=10_000)
    ctl.update(current_kl=12.0, n_steps=256)  # error 1.0 clipped to 0.2
    expected = 0.1 * (1 + 0.2 * 256 / 10_000)
    assert ctl.value == pytest.approx(expected, rel=1e-12)
    ctl.update(current_kl=6.6, n_steps=100)  # error 0.1
    expected *= 1 + 0.1 * 100 / 10_000
    assert ctl.value == pytest.approx(expected, rel=1e-12)
    ctl.update(current_kl=0.0, n_steps=1000)  # error -1 clipped to -0.2
    expected *= 1 - 0.2 * 1000 / 10_000
    assert ctl.value == pytest.approx(expected, rel=1e-12)
    ctl.update(current_kl=6.0, n_steps=1000)  # on target: unchanged
    assert ctl.value == pytest.approx(expected, rel=1e-12)
    ctl.update(current_kl=torch.tensor(1e9), n_steps=10_000)  # a 0-d tensor is accepted; still at most +20%
    assert ctl.value == pytest.approx(expected * 1.2, rel=1e-6)


def test_adaptive_kl_controller_state_round_trip():
    ctl = AdaptiveKLController(0.2, 3.0, 500)
    ctl.update(10.0, 64)
    state = ctl.state_dict()
    assert all(type(v) is float for v in state.values())
    other = AdaptiveKLController(1.0, 1.0, 1.0)
    other.load_state_dict(state)
    assert other.state_dict() == state
    other.update(1.0, 32)
    ctl.update(1.0, 32)
    assert other.value == ctl.value
    with pytest.raises(ValueError, match="horizon"):
        other.load_state_dict({"value": 0.1, "target": 1.0})


@pytest.mark.parametrize(
    "args,name",
    [
        ((0.0, 6.0, 100), "init_coef"),
        ((0.1, -1.0, 100), "target"),
        ((0.1, 6.0, 0), "horizon"),
        ((0.1, 6.0, float("nan")), "horizon"),
        ((float("inf"), 6.0, 100), "init_coef"),
    ],
)
def test_adaptive_kl_controller_validation(args, name):
    with pytest.raises(ValueError, match=name):
        AdaptiveKLController(*args)


def test_adaptive_kl_controller_update_validation():
    ctl = AdaptiveKLController(0.1, 6.0, 100)
    with pytest.raises(ValueError, match="current_kl"):
        ctl.update(float("nan"), 10)
    with pytest.raises(ValueError, match="n_steps"):
        ctl.update(1.0, -1)
    assert ctl.value == 0.1


def test_fixed_kl_controller():
    ctl = FixedKLController(0.05)
    ctl.update(100.0, 1000)
    assert ctl.value == 0.05
    other = FixedKLController(1.0)
    other.load_state_dict(ctl.state_dict())
    assert other.value == 0.05 and other.state_dict() == {"value": 0.05}
    with pytest.raises(ValueError, match="coef"):
        FixedKLController(-0.1)
