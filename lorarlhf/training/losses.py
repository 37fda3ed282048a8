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
  - KTO (Ethayarajh et al. 2024): unpaired thumbs up / down, valued by a prospect-theory value function around
    a KL reference point.
  - ORPO (Hong et al. 2024): SFT plus an odds-ratio penalty, no reference model.
  - SimPO (Meng et al. 2024): length-normalised log-probs as the reward, a target margin, no reference model.
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


def kto_reference_point(mismatched_log_ratio: torch.Tensor) -> torch.Tensor:
    """KTO's z_ref (Ethayarajh et al. 2024, eq. 8): the KL of the policy to the reference, estimated as the mean
    log-ratio log pi(y'|x) - log ref(y'|x) of completions y' paired with the wrong prompts x (so it measures
    drift, not the learnt preference), clamped at 0 and detached: no gradient flows through the reference point.

    mismatched_log_ratio: (B,). Returns a scalar."""
    return mismatched_log_ratio.detach().mean().clamp_min(0)


def kto_loss(
    log_ratio: torch.Tensor,
    desirable: torch.Tensor,
    z_ref: torch.Tensor,
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> torch.Tensor:
    """KTO (Ethayarajh et al. 2024, eq. 8): mean over the batch of lambda_y - v(x, y), where with
    r = log pi(y|x) - log ref(y|x) (log_ratio, (B,)),
        v(x, y) = lambda_D sigmoid(beta (r - z_ref))   where y is desirable (`desirable` (B,) bool True)
                  lambda_U sigmoid(beta (z_ref - r))   where y is undesirable
    and lambda_y is lambda_D or lambda_U: a desirable completion gains value by rising above the reference
    point, an undesirable one by falling below it; the sigmoid saturates, so no example dominates."""
    up = desirable_weight * (1 - torch.sigmoid(beta * (log_ratio - z_ref)))
    down = undesirable_weight * (1 - torch.sigmoid(beta * (z_ref - log_ratio)))
    return torch.where(desirable, up, down).mean()


def orpo_loss(chosen_mean_logp: torch.Tensor, rejected_mean_logp: torch.Tensor, *, lam: float) -> torch.Tensor:
    """ORPO (Hong et al. 2024, eqs. 6-7): mean of L_SFT + lambda L_OR, where for mean token log-probs
    log P(y|x) (chosen_mean_logp, rejected_mean_logp: (B,), length-normalised as in the paper),
        odds(y|x) = P(y|x) / (1 - P(y|x)),   L_SFT = -log P(y_w|x),
        L_OR = -log sigmoid(log odds(y_w|x) - log odds(y_l|x)).
    log(1 - P) is computed as log(-expm1(log P)), exact near P = 1 where 1 - exp(log P) cancels."""
    log_odds_ratio = orpo_log_odds_ratio(chosen_mean_logp, rejected_mean_logp)
    return (-chosen_mean_logp - lam * F.logsigmoid(log_odds_ratio)).mean()


def orpo_log_odds_ratio(chosen_mean_logp: torch.Tensor, rejected_mean_logp: torch.Tensor) -> torch.Tensor:
    """log odds(y_w|x) - log odds(y_l|x) per pair (B,): ORPO's implicit-preference margin."""
    return _log_odds(chosen_mean_logp) - _log_odds(rejected_mean_logp)


def _log_odds(logp: torch.Tensor) -> torch.Tensor:
    return logp - torch.log(-torch.expm1(logp))


def simpo_loss(
    chosen_mean_logp: torch.Tensor, rejected_mean_logp: torch.Tensor, *, beta: float, gamma: float
) -> torch.Tensor:
    """SimPO (Meng et al. 2024, eq. 6): mean -log sigmoid(beta/|y_w| log pi(y_w|x) - beta/|y_l| log pi(y_l|x) - gamma),
    where log pi(y|x)/|y| is the mean token log-prob (chosen_mean_logp, rejected_mean_logp: (B,)): the reward is
    the length-normalised likelihood the model generates by, so no reference model, and gamma is a target margin."""
    return -F.logsigmoid(beta * (chosen_mean_logp - rejected_mean_logp) - gamma).mean()
