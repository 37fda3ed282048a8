"""Training losses as pure functions of tensors, named as in their papers.

Reward model:
  - Bradley-Terry pairwise loss (Bradley & Terry 1952; InstructGPT, Ouyang et al. 2022, eq. 1), with an
    optional margin (Llama 2, Touvron et al. 2023, eq. 2) and per-pair weights.
  - Reward centering (Eisenstein et al. 2023, "Helping or Herding?"): a penalty on (r_c + r_r)^2 that keeps
    rewards near zero mean, so they are comparable across prompts.
  - Plackett-Luce listwise loss for K-way rankings (Plackett 1975; Luce 1959).
  - Prompt-aware utility (Song et al. 2023, "Reward Collapse in Aligning Large Language Models"): the usual
    log-sigmoid utility drives every prompt's reward distribution to the same shape; a linear utility on
    bounded rewards drives them to the extremes, which suits closed-ended prompts with one right answer.

RL-free preference optimisation on the policy's own log-probs:
  - DPO (Rafailov et al. 2023), conservative DPO with label smoothing (Mitchell 2023), IPO (Azar et al. 2023).
  - Contrastive Preference Learning (Hejna et al. 2023): preferences modelled by regret, no reference model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    *,
    margin: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """-w log sigmoid(r_c - r_r - m), averaged with the weights: the negative log-likelihood of the preference.

    chosen, rejected: (B,) rewards; margin: (B,) known preference strength (0 where unknown); weight: (B,).
    """
    logits = chosen - rejected
    if margin is not None:
        logits = logits - margin
    losses = -F.logsigmoid(logits)  # (B,)
    return _weighted_mean(losses, weight)


def reward_centering_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """mean (r_c + r_r)^2: zero when each pair's rewards are centred on 0."""
    return (chosen + rejected).pow(2).mean()


def linear_utility_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, *, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """-(sigmoid(r_c) - sigmoid(r_r)): the linear utility U(x) = x on rewards bounded to (0, 1).

    Its optimum puts rewards at the two ends of the range, the distribution Song et al. (2023) want for
    closed-ended prompts, where an answer is right or wrong.
    """
    return _weighted_mean(-(torch.sigmoid(chosen) - torch.sigmoid(rejected)), weight)


def prompt_aware_utility_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    closed: torch.Tensor,
    *,
    margin: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per pair: linear utility where `closed` (B,) bool is True, Bradley-Terry log-sigmoid elsewhere."""
    logits = chosen - rejected
    if margin is not None:
        logits = logits - margin
    losses = torch.where(closed, -(torch.sigmoid(chosen) - torch.sigmoid(rejected)), -F.logsigmoid(logits))
    return _weighted_mean(losses, weight)


def plackett_luce_loss(rewards: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Listwise negative log-likelihood of observed rankings, averaged over rankings.

    rewards: (G, K) rewards of each ranking's responses ordered best first, padded on the right;
    lengths: (G,) how many responses each ranking has (>= 2). For one ranking r_1 > ... > r_k:
        -log P = -sum_{i=1}^{k-1} [r_i - log sum_{j=i}^{k} exp(r_j)]
    """
    k = rewards.shape[1]
    positions = torch.arange(k, device=rewards.device)
    valid = positions[None, :] < lengths[:, None]  # (G, K)
    masked = rewards.masked_fill(~valid, float("-inf"))
    # log sum over the suffix j >= i: a reversed cumulative logsumexp.
    suffix = torch.logcumsumexp(masked.flip(1), dim=1).flip(1)  # (G, K)
    terms = (rewards - suffix).masked_fill(~valid, 0.0)
    last = positions[None, :] == (lengths[:, None] - 1)  # the last item's term is always 0
    return -(terms.masked_fill(last, 0.0).sum(1)).mean()


def _weighted_mean(losses: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    if weight is None:
        return losses.mean()
    return (losses * weight).sum() / weight.sum().clamp_min(torch.finfo(losses.dtype).tiny)


# --------------------------------------------------------------------------- RL-free preference optimisation


def dpo_log_ratio_margin(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
) -> torch.Tensor:
    """h = [log pi(y_c|x) - log ref(y_c|x)] - [log pi(y_r|x) - log ref(y_r|x)], per pair: (B,)."""
    return (chosen_logp - ref_chosen_logp) - (rejected_logp - ref_rejected_logp)


def dpo_loss(margin: torch.Tensor, *, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """Sigmoid DPO (Rafailov et al. 2023, eq. 7): mean -log sigmoid(beta h).

    With label_smoothing eps > 0, conservative DPO (Mitchell 2023): the label is wrong with probability eps,
    mean -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h).
    """
    losses = -(1 - label_smoothing) * F.logsigmoid(beta * margin) - label_smoothing * F.logsigmoid(-beta * margin)
    return losses.mean()


def ipo_loss(margin: torch.Tensor, *, beta: float) -> torch.Tensor:
    """IPO (Azar et al. 2023, eq. 17): mean (h - 1/(2 beta))^2, which regresses the log-ratio margin to a
    finite target instead of pushing it to infinity, so it does not overfit deterministic preferences."""
    return (margin - 1 / (2 * beta)).pow(2).mean()


def cpl_loss(chosen_logp: torch.Tensor, rejected_logp: torch.Tensor, *, alpha: float, lam: float = 1.0) -> torch.Tensor:
    """Contrastive Preference Learning (Hejna et al. 2023, eq. 5): preferences follow the regret, and the
    optimal advantage is alpha log pi, so no reward model and no RL:
        -log [exp(alpha S_c) / (exp(alpha S_c) + exp(lam alpha S_r))] = softplus(lam alpha S_r - alpha S_c)
    where S is a response's summed log-prob under the policy; lam < 1 is the paper's conservative bias."""
    return F.softplus(lam * alpha * rejected_logp - alpha * chosen_logp).mean()
