"""REINFORCE-style advantages (RLOO, REINFORCE++) against plain float64 loops written from the papers'
equations, on fresh random inputs with padding that holds nan."""

from __future__ import annotations

import pytest
import torch

from lorarlhf.training.reinforce_losses import (
    kl_penalised_sequence_rewards,
    kl_penalised_token_rewards,
    leave_one_out_advantages,
    reward_to_go,
)
from lorarlhf.training.rl_losses import masked_whiten

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12}


def ragged_mask(B: int, T: int, generator: torch.Generator) -> torch.Tensor:
    """(B, T): each row a contiguous response after a prompt of random length, some rows empty."""
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b in range(B):
        start = int(torch.randint(0, T, (1,), generator=generator))
        length = int(torch.randint(0, T - start + 1, (1,), generator=generator))
        mask[b, start : start + length] = True
    return mask


def with_nan_padding(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, x, torch.full((), float("nan"), dtype=x.dtype))


# ---------------------------------------------------------------- RLOO


def rloo_reference(rewards: list[float], k: int) -> list[float]:
    """Ahmadian et al. 2024, eq. 7: A_i = r_i - 1/(k-1) sum_{j != i} r_j, within each group of k."""
    out = []
    for g in range(0, len(rewards), k):
        group = rewards[g : g + k]
        for i, r in enumerate(group):
            out.append(r - sum(group[j] for j in range(k) if j != i) / (k - 1))
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("groups", "k"), [(1, 2), (3, 4), (7, 5)])
def test_leave_one_out_advantages_match_the_paper(groups, k, dtype):
    generator = torch.Generator().manual_seed(groups * 10 + k)
    rewards = (torch.randn(groups * k, generator=generator, dtype=torch.float64) * 3 + 1).to(dtype)
    expected = torch.tensor(rloo_reference(rewards.double().tolist(), k), dtype=torch.float64)
    got = leave_one_out_advantages(rewards, k)
    assert got.dtype == dtype and got.shape == (groups * k,)
    tol = TOLERANCE[dtype] * 10
    torch.testing.assert_close(got.double(), expected, rtol=tol, atol=tol)
    # each sample's baseline excludes itself: k/(k-1) times the centred reward, and 0 on average per group
    grouped = rewards.double().view(groups, k)
    scaled = (grouped - grouped.mean(1, keepdim=True)) * k / (k - 1)
    torch.testing.assert_close(got.double(), scaled.view(-1), rtol=tol, atol=tol)


def test_leave_one_out_advantages_refuse_bad_groups_and_carry_no_gradient():
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
    assert not leave_one_out_advantages(rewards, 2).requires_grad
    assert leave_one_out_advantages(torch.full((4,), 0.3), 4).abs().max() < 1e-7  # a tie carries nothing
    with pytest.raises(ValueError, match=r"group_size=1 must be >= 2"):
        leave_one_out_advantages(rewards, 1)
    with pytest.raises(ValueError, match=r"batch size B=4 is not a multiple of group_size=3"):
        leave_one_out_advantages(rewards, 3)
    with pytest.raises(ValueError, match=r"rewards must be 1-D"):
        leave_one_out_advantages(rewards.view(2, 2), 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kl_penalised_sequence_rewards_match_the_paper(dtype):
    """R(x, y) = r(x, y) - beta sum_t KL_t over the response's tokens (Ahmadian et al. 2024, eq. 2)."""
    generator = torch.Generator().manual_seed(3)
    B, T, beta = 9, 13, 0.07
    mask = ragged_mask(B, T, generator)
    scores = torch.randn(B, generator=generator, dtype=torch.float64)
    kl = torch.randn(B, T, generator=generator, dtype=torch.float64).abs()
    expected = [scores[b].item() - beta * sum(kl[b, t].item() for t in range(T) if mask[b, t]) for b in range(B)]
    got = kl_penalised_sequence_rewards(scores.to(dtype), with_nan_padding(kl.to(dtype), mask), mask, kl_coef=beta)
    tol = TOLERANCE[dtype] * 10
    torch.testing.assert_close(got.double(), torch.tensor(expected, dtype=torch.float64), rtol=tol, atol=tol)


# ---------------------------------------------------------------- REINFORCE++


def reinforce_pp_reference(scores, kl, mask, beta):
    """Hu 2025, eqs. 2-3 with gamma = 1, one token at a time: r_t = 1[t = last] r(x, y) - beta KL_t, and the
    advantage of token t is sum_{s >= t} r_s; then (A - mean) / std over every response token of the batch."""
    B, T = mask.shape
    returns = [[0.0] * T for _ in range(B)]
    for b in range(B):
        positions = [t for t in range(T) if mask[b, t]]
        for t in positions:
            returns[b][t] = sum(
                (scores[b].item() if s == positions[-1] else 0.0) - beta * kl[b, s].item() for s in positions if s >= t
            )
    values = [returns[b][t] for b in range(B) for t in range(T) if mask[b, t]]
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
    whitened = [[(returns[b][t] - mean) / std if mask[b, t] else 0.0 for t in range(T)] for b in range(B)]
    return torch.tensor(returns, dtype=torch.float64), torch.tensor(whitened, dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("B", "T"), [(1, 5), (6, 11), (13, 29)])
def test_reinforce_pp_advantages_match_the_paper(B, T, dtype):
    generator = torch.Generator().manual_seed(B * 100 + T)
    mask = ragged_mask(B, T, generator)
    mask[0, -2:] = True  # at least two response tokens in the batch, so the std is not 0
    scores = torch.randn(B, generator=generator, dtype=torch.float64) * 2
    kl = torch.randn(B, T, generator=generator, dtype=torch.float64)  # k1 estimates may be negative
    beta = 0.05
    expected_returns, expected_advantages = reinforce_pp_reference(scores, kl, mask, beta)

    token_rewards = kl_penalised_token_rewards(
        scores.to(dtype), with_nan_padding(kl.to(dtype), mask), mask, kl_coef=beta
    )
    returns = reward_to_go(token_rewards, mask)
    advantages = masked_whiten(returns, mask, eps=0.0)
    tol = TOLERANCE[dtype] * 10
    assert returns.dtype == dtype and returns.shape == (B, T)
    torch.testing.assert_close(returns.double(), expected_returns, rtol=tol, atol=tol)
    torch.testing.assert_close(advantages.double(), expected_advantages, rtol=tol * 10, atol=tol * 10)
    assert (token_rewards[~mask] == 0).all() and (returns[~mask] == 0).all()


def test_the_score_sits_on_the_last_response_token_only():
    mask = torch.tensor([[False, True, True, True, False], [False, False, False, False, False]])
    rewards = kl_penalised_token_rewards(torch.tensor([2.0, 5.0]), torch.zeros(2, 5), mask, kl_coef=0.1)
    assert rewards.tolist() == [[0.0, 0.0, 0.0, 2.0, 0.0], [0.0] * 5]  # an empty row gets no score
    assert reward_to_go(rewards, mask).tolist() == [[0.0, 2.0, 2.0, 2.0, 0.0], [0.0] * 5]


def test_shapes_and_masks_are_checked():
    kl, mask = torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        reward_to_go(kl, mask.float())
    with pytest.raises(ValueError, match=r"mask shape \(2, 2\) does not match the tensor's \(2, 3\)"):
        kl_penalised_token_rewards(torch.zeros(2), kl, mask[:, :2], kl_coef=0.1)
