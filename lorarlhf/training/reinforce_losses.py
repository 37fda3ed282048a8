"""REINFORCE-style advantages as pure functions of tensors, named as in their papers.

  - RLOO (Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from
    Human Feedback in LLMs", sec. 3.3; Kool et al. 2019): k samples per prompt, each sample's baseline is
    the mean reward of the other k - 1, and the KL to the reference is a penalty on the sequence's reward.
  - REINFORCE++ (Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language
    Models", sec. 3): the KL penalty is folded into the reward token by token, the advantage of a token is
    the reward-to-go from it, and advantages are normalised over the whole batch instead of per prompt.

Shapes: B sequences, T token positions; `mask` is a (B, T) bool tensor, True on response tokens. Outputs
are 0 outside the mask, and nothing outside it is read, so padding may hold any value (even nan). Every
function returns constants of the update: no gradient flows through them.
"""

from __future__ import annotations

import torch

from lorarlhf.validation import check_int


@torch.no_grad()
def leave_one_out_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO advantages (Ahmadian et al. 2024, eq. 7): each reward minus the mean of its group's others.

    rewards: (B,), laid out as B / group_size consecutive groups of the k = group_size samples of a prompt.
        A_i = r_i - 1/(k-1) sum_{j != i} r_j
    The baseline of a sample never sees the sample itself, so it is unbiased, unlike the group mean; the
    result equals k/(k-1) (r_i - mean(group)). Returns (B,).
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (B,), got shape {tuple(rewards.shape)}")
    check_int("group_size", group_size)
    if group_size < 2:
        raise ValueError(f"group_size={group_size} must be >= 2: a leave-one-out baseline needs another sample")
    if rewards.shape[0] % group_size:
        raise ValueError(f"batch size B={rewards.shape[0]} is not a multiple of group_size={group_size}")
    grouped = rewards.detach().view(-1, group_size)  # (B / k, k)
    others = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)  # mean of the other k - 1
    return (grouped - others).view(-1)


@torch.no_grad()
def kl_penalised_sequence_rewards(
    scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, *, kl_coef: float
) -> torch.Tensor:
    """The RLOO paper's reward of a whole response: R(x, y) = r(x, y) - beta sum_t KL_t.

    scores: (B,) the reward model's (or function's) scores; kl: (B, T) per-token KL estimates
    log pi(y_t) - log ref(y_t) (or another estimator). Returns (B,).
    """
    _check_mask(kl, mask)
    return scores.detach() - kl_coef * _masked(kl, mask).sum(dim=1)


@torch.no_grad()
def kl_penalised_token_rewards(
    scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, *, kl_coef: float
) -> torch.Tensor:
    """REINFORCE++'s per-token reward (Hu 2025, eq. 2): r_t = 1[t = last] r(x, y) - beta KL_t.

    scores: (B,); kl: (B, T). The score sits on each row's last response token; a row with no response
    tokens gets none. Returns (B, T), 0 outside the mask.
    """
    _check_mask(kl, mask)
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = (positions * mask).argmax(dim=1)  # (B,): the last True of each row
    at_last = (positions[None, :] == last[:, None]) & mask  # (B, T)
    rewards = torch.where(at_last, scores.detach()[:, None].to(kl.dtype), torch.zeros((), dtype=kl.dtype))
    return rewards - kl_coef * _masked(kl, mask)


@torch.no_grad()
def reward_to_go(token_rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """G_t = sum_{s >= t} r_s over each row's response tokens (REINFORCE++ eq. 3, gamma = 1): with the
    rewards of `kl_penalised_token_rewards`, r(x, y) - beta sum_{s >= t} KL_s. Returns (B, T), 0 outside."""
    _check_mask(token_rewards, mask)
    masked = _masked(token_rewards, mask)
    returns = masked.flip(1).cumsum(dim=1).flip(1)  # suffix sums
    return _masked(returns, mask)


def _masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


def _check_mask(x: torch.Tensor, mask: torch.Tensor) -> None:
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got {mask.dtype}")
    if mask.shape != x.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match the tensor's {tuple(x.shape)}")
