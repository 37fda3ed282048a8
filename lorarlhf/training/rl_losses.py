"""Policy-gradient losses and advantage estimators as pure functions of tensors, named as in their papers.

  - Generalized Advantage Estimation (Schulman et al. 2016, "High-Dimensional Continuous Control Using
    Generalized Advantage Estimation", eq. 16).
  - PPO-clip policy loss (Schulman et al. 2017, "Proximal Policy Optimization Algorithms", eq. 7) and the
    clipped value loss of the PPO2 baselines implementation; loss terms named as in cleanrl (`pg_loss1`,
    `pg_loss2`, `clipfrac`, `approx_kl`).
  - GRPO (Shao et al. 2024, "DeepSeekMath", eq. 3): group-relative advantages instead of a critic, and a KL
    penalty to the reference model estimated per token with Schulman's k3 ("Approximating KL Divergence",
    2020). Token-level normalisation as in DAPO (Yu et al. 2025) and Dr. GRPO (Liu et al. 2025,
    "Understanding R1-Zero-Like Training"), which also drops the division by the group's std.
  - The adaptive KL coefficient of Ziegler et al. 2019 ("Fine-Tuning Language Models from Human
    Preferences", sec. 2.2), and a fixed one with the same interface.
  - Running reward statistics (`RunningMoments`), the batch-by-batch update of Chan, Golub and LeVeque 1979
    ("Updating Formulae and a Pairwise Algorithm for Computing Sample Variances"), to normalise rewards by
    everything seen so far rather than by one batch.

Shapes: B sequences, T token positions. `mask` is a (B, T) bool tensor, True on response tokens; positions
outside it contribute nothing, and per-token outputs are 0 there. Inputs outside the mask are never read
into a result, so padding may hold any value (even inf or nan) without reaching a loss or a gradient.
Rollout quantities (old log-probs, reference log-probs, advantages, old values, returns) are constants of
the update and are detached here; gradients flow only into `logp` and `values`.
"""

from __future__ import annotations

import math

import torch

from lorarlhf.kernels import token_kl
from lorarlhf.validation import check_int

LOSS_TYPES = ("sequence", "token")


# ---------------------------------------------------------------- masked statistics


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """sum(x * mask) / sum(mask), over all entries or along `dim`; 0 where the mask selects nothing.

    x: any shape; mask: bool, same shape. Entries outside the mask are replaced by 0 before summing (not
    multiplied by 0), so a nan or inf there neither shows in the result nor in the gradient.
    """
    _check_mask(x, mask)
    total = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(dim=dim)
    count = mask.sum(dim=dim).clamp_min(1)  # an empty row: 0 / 1 = 0, not 0 / 0
    return total / count.to(total.dtype)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, *, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) over the masked entries of the whole tensor; 0 outside the mask.

    var is the population variance (unbiased=False). With shift_mean=False the mean is added back, so only
    the scale changes (as for advantages whose sign must be kept, e.g. with a single token).
    """
    mean = masked_mean(x, mask)
    centred = torch.where(mask, x - mean, torch.zeros((), dtype=x.dtype, device=x.device))
    var = masked_mean(centred.pow(2), mask)
    whitened = centred * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask, whitened, torch.zeros((), dtype=x.dtype, device=x.device))


# ---------------------------------------------------------------- advantages


@torch.no_grad()
def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized Advantage Estimation over the response tokens of each row (Schulman et al. 2016, eq. 16).

    rewards, values: (B, T); values[b, t] = V(s_t), the value of the state in which token t was chosen.
    mask: (B, T) bool; each row's response is one contiguous run of True (prompt or padding may come before
    it, padding after). With V_{t+1} = 0 after the last response token (the episode ends there):
        delta_t = r_t + gamma V_{t+1} - V_t
        A_t     = delta_t + gamma lam A_{t+1}          (A = 0 after the last response token)
        R_t     = A_t + V_t                            (the value targets)
    Returns (advantages, returns), both (B, T), zero outside the mask, without gradient. A row whose mask
    had gaps would be treated as separate episodes, each ending at its last True.
    """
    _check_mask(rewards, mask)
    _check_mask(values, mask)
    B, T = rewards.shape
    zero = torch.zeros((), dtype=rewards.dtype, device=rewards.device)
    advantages = torch.zeros_like(rewards)  # (B, T)
    next_value = rewards.new_zeros(B)  # V_{t+1}, 0 past the end of the response
    next_adv = rewards.new_zeros(B)  # A_{t+1}
    for t in reversed(range(T)):
        m = mask[:, t]  # (B,)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv = torch.where(m, delta + gamma * lam * next_adv, zero)
        advantages[:, t] = adv
        next_value = torch.where(m, values[:, t], zero)
        next_adv = adv
    returns = torch.where(mask, advantages + values, zero)
    return advantages, returns


def group_advantages(
    rewards: torch.Tensor, group_size: int, *, scale_by_std: bool = True, eps: float = 1e-4
) -> torch.Tensor:
    """GRPO outcome advantages: each reward relative to the other samples of its prompt (DeepSeekMath, sec. 4.1.2).

    rewards: (B,), laid out as B / group_size consecutive groups of `group_size` samples of one prompt.
        A_i = (r_i - mean(group)) / (std(group) + eps)      scale_by_std=True  (GRPO)
        A_i =  r_i - mean(group)                            scale_by_std=False (Dr. GRPO, Liu et al. 2025)
    std is the sample standard deviation (unbiased=True, Bessel's correction), as in the TRL and OpenRLHF
    GRPO implementations; a group of one has std 0. A group whose rewards are all equal carries no signal
    and gets exactly 0 (its float mean may differ from the rewards in the last bit, which /eps would blow up).
    Returns (B,), without gradient.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (B,), got shape {tuple(rewards.shape)}")
    check_int("group_size", group_size)
    B = rewards.shape[0]
    if B % group_size != 0:
        raise ValueError(f"batch size B={B} is not a multiple of group_size={group_size}")
    grouped = rewards.detach().view(-1, group_size)  # (B / G, G)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_by_std:
        std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(grouped[:, :1])
        centred = centred / (std + eps)
    constant = grouped.amax(dim=1, keepdim=True) == grouped.amin(dim=1, keepdim=True)  # (B / G, 1)
    return centred.masked_fill(constant, 0.0).view(B)


# ---------------------------------------------------------------- PPO


def clipped_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO-clip (Schulman et al. 2017, eq. 7), averaged over all response tokens of the batch.

    logp, old_logp: (B, T) log-probs of the sampled tokens under the current and the rollout policy;
    advantages: (B, T) per token, or (B,) per sequence (the same value for every token of the row).
        ratio    = exp(logp - old_logp)
        pg_loss1 = -A ratio
        pg_loss2 = -A clamp(ratio, 1 - clip, 1 + clip)
        loss     = masked_mean(max(pg_loss1, pg_loss2))
    Returns (loss, stats) with detached float stats:
        clipfrac   fraction of tokens with |ratio - 1| > clip
        approx_kl  masked mean of k3 = (ratio - 1) - log ratio, an estimate of KL(old || new)
        ratio_mean masked mean of ratio
    """
    ratio, log_ratio = _ratio(logp, old_logp, mask)
    adv = _per_token(advantages, logp)  # (B, T)
    pg_loss1 = -adv * ratio
    pg_loss2 = -adv * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(pg_loss1, pg_loss2), mask)
    return loss, _ratio_stats(ratio, log_ratio, mask, clip)


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, *, clip: float
) -> torch.Tensor:
    """The PPO2 clipped value loss: the value may move at most `clip` from its rollout value before the loss
    stops pulling it further.

    values, old_values, returns: (B, T).
        V_clipped = V_old + clamp(V - V_old, -clip, clip)
        loss      = 0.5 masked_mean(max((V - R)^2, (V_clipped - R)^2))
    """
    _check_mask(values, mask)
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    # Zero the padding first, so that a nan there cannot reach the gradient through the unselected branch.
    values = torch.where(mask, values, zero)
    old_values = torch.where(mask, old_values.detach(), zero)
    returns = torch.where(mask, returns.detach(), zero)
    v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    vf_loss1 = (values - returns).pow(2)
    vf_loss2 = (v_clipped - returns).pow(2)
    return 0.5 * masked_mean(torch.maximum(vf_loss1, vf_loss2), mask)


# ---------------------------------------------------------------- GRPO


def grpo_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip: float,
    beta: float,
    loss_type: str = "sequence",
) -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO objective (DeepSeekMath, Shao et al. 2024, eq. 3) as a loss to minimise.

    logp, old_logp, ref_logp: (B, T) sampled-token log-probs under the policy, the rollout policy and the
    reference model; advantages: (B,) per sequence (see `group_advantages`), broadcast over its tokens.
    Per token:
        l_t = -min(ratio A, clamp(ratio, 1 - clip, 1 + clip) A) + beta k3_t
        k3_t = exp(ref_logp - logp) - 1 - (ref_logp - logp)   (token_kl(logp, ref_logp, estimator="k3"))
    loss_type:
        "sequence"  mean of l_t over each sequence's tokens, then over the B sequences (original GRPO); a row
                    with no response tokens counts as a sequence with loss 0
        "token"     sum of l_t over all response tokens / their number (DAPO, Dr. GRPO), so long responses
                    are not down-weighted per token
    Returns (loss, stats) with detached float stats: clipfrac, approx_kl (as in `clipped_policy_loss`),
    ratio_mean, and kl (masked mean of k3_t).
    """
    if loss_type not in LOSS_TYPES:
        names = ", ".join(repr(t) for t in LOSS_TYPES)
        raise ValueError(f"loss_type must be one of {names}; got {loss_type!r}")
    ratio, log_ratio = _ratio(logp, old_logp, mask)
    adv = _per_token(advantages, logp)  # (B, T)
    pg_loss1 = -adv * ratio
    pg_loss2 = -adv * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    kl = token_kl(
        torch.where(mask, logp, zero), torch.where(mask, ref_logp.detach(), zero), estimator="k3"
    )  # (B, T), 0 outside the mask
    per_token = torch.maximum(pg_loss1, pg_loss2) + beta * kl  # (B, T)
    if loss_type == "sequence":
        per_sequence = masked_mean(per_token, mask, dim=-1)  # (B,)
        loss = per_sequence.mean()
    else:
        loss = masked_mean(per_token, mask)  # one mean over all response tokens of the batch
    stats = _ratio_stats(ratio, log_ratio, mask, clip)
    stats["kl"] = masked_mean(kl.detach(), mask).item()
    return loss, stats


# ---------------------------------------------------------------- diagnostics


def entropy_bonus(entropy: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """masked_mean(entropy): the mean per-token policy entropy; trainers subtract coef * this from the loss."""
    return masked_mean(entropy, mask)


@torch.no_grad()
def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var[R - V] / Var[R] over the masked entries: 1 for a perfect critic, 0 for one that predicts a
    constant equal to the mean return, negative for worse.

    Computed in float64. Returns nan when Var[R] == 0 (including an empty mask), where the ratio is undefined,
    as cleanrl and Stable-Baselines3 do; loggers show the nan rather than a misleading number.
    """
    _check_mask(values, mask)
    _check_mask(returns, mask)
    v, r = values.detach().double()[mask], returns.detach().double()[mask]
    if r.numel() == 0:
        return math.nan
    var_r = r.var(unbiased=False).item()
    if var_r == 0:
        return math.nan
    return 1.0 - (r - v).var(unbiased=False).item() / var_r


# ---------------------------------------------------------------- KL coefficient


class AdaptiveKLController:
    """The adaptive KL coefficient of Ziegler et al. 2019, sec. 2.2: a proportional controller that steers
    the observed KL(policy || reference) toward `target`.

        error  = clip(KL / target - 1, -0.2, 0.2)
        value *= 1 + error * n_steps / horizon

    n_steps is the number of samples (or steps) since the last update, so `horizon` is measured in the same
    unit; each update moves the coefficient by at most 20% * n_steps / horizon.
    """

    def __init__(self, init_coef: float, target: float, horizon: float):
        self.value = _positive("init_coef", init_coef)
        self.target = _positive("target", target)
        self.horizon = _positive("horizon", horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        current_kl = float(current_kl)
        if not math.isfinite(current_kl):
            raise ValueError(f"current_kl must be finite, got {current_kl}")  # a nan would poison the coefficient
        if n_steps < 0:
            raise ValueError(f"n_steps must be >= 0, got {n_steps}")
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restore value, target and horizon, as saved by `state_dict`."""
        missing = {"value", "target", "horizon"} - set(state)
        if missing:
            raise ValueError(f"KL controller state is missing {sorted(missing)}; got keys {sorted(state)}")
        self.value = _positive("value", state["value"])
        self.target = _positive("target", state["target"])
        self.horizon = _positive("horizon", state["horizon"])


class FixedKLController:
    """A constant KL coefficient with the AdaptiveKLController interface; update does nothing."""

    def __init__(self, coef: float):
        coef = float(coef)
        if not (math.isfinite(coef) and coef >= 0):
            raise ValueError(f"coef must be a finite number >= 0, got {coef}")
        self.value = coef

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        if "value" not in state:
            raise ValueError(f"KL controller state is missing ['value']; got keys {sorted(state)}")
        self.value = float(state["value"])


# ---------------------------------------------------------------- reward statistics


class RunningMoments:
    """Count, mean and population variance of every value seen so far, one batch at a time, in float64.

    Merging a batch of n values with mean m_b and summed squared deviations M2_b into (N, m, M2)
    (Chan et al. 1979):
        delta = m_b - m
        m    += delta n / (N + n)
        M2   += M2_b + delta^2 N n / (N + n)
        N    += n
    so the result equals the mean and variance of all values at once, without keeping them.
    `normalize(x)` = (x - mean) / (std + eps); before any value it returns x unchanged.
    """

    def __init__(self):
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count else 1.0

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().double().flatten()
        if not torch.isfinite(x).all():
            raise ValueError("RunningMoments.update got a nan or inf; it would poison every later normalisation")
        n = x.numel()
        if n == 0:
            return
        batch_mean = x.mean().item()
        batch_m2 = (x - batch_mean).pow(2).sum().item()
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.m2 += batch_m2 + delta * delta * self.count * n / total
        self.count = total

    def normalize(self, x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
        if not self.count:
            return x
        return ((x.double() - self.mean) / (self.std + eps)).to(x.dtype)

    def state_dict(self) -> dict[str, float]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restore count, mean and m2, as saved by `state_dict`."""
        missing = {"count", "mean", "m2"} - set(state)
        if missing:
            raise ValueError(f"running moments state is missing {sorted(missing)}; got keys {sorted(state)}")
        count, mean, m2 = int(state["count"]), float(state["mean"]), float(state["m2"])
        if count < 0 or m2 < 0 or not (math.isfinite(mean) and math.isfinite(m2)):
            raise ValueError(f"running moments state is not a valid one: {state}")
        self.count, self.mean, self.m2 = count, mean, m2


# ---------------------------------------------------------------- helpers


def _check_mask(x: torch.Tensor, mask: torch.Tensor) -> None:
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got {mask.dtype}")
    if mask.shape != x.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match the tensor's {tuple(x.shape)}")


def _ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ratio, log ratio), both (B, T), with log ratio set to 0 outside the mask before exp, so padding can
    neither overflow nor send a nan into the gradient."""
    _check_mask(logp, mask)
    _check_mask(old_logp, mask)
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    log_ratio = torch.where(mask, logp - old_logp.detach(), zero)  # (B, T)
    return torch.exp(log_ratio), log_ratio


def _per_token(advantages: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) per-sequence advantages broadcast to (B, T); (B, T) passed through. Detached."""
    advantages = advantages.detach()
    if advantages.shape == like.shape:
        return advantages
    if advantages.shape == like.shape[:1]:
        return advantages[:, None].expand_as(like)
    raise ValueError(
        f"advantages must be (B,) per sequence or (B, T) per token with (B, T) = {tuple(like.shape)}, "
        f"got {tuple(advantages.shape)}"
    )


@torch.no_grad()
def _ratio_stats(ratio: torch.Tensor, log_ratio: torch.Tensor, mask: torch.Tensor, clip: float) -> dict[str, float]:
    # token_kl(p, q, "k3") = exp(q - p) - 1 - (q - p); with p = old, q = new that is (ratio - 1) - log ratio.
    k3 = token_kl(torch.zeros_like(log_ratio), log_ratio.detach(), estimator="k3")
    return {
        "clipfrac": masked_mean(((ratio - 1.0).abs() > clip).to(ratio.dtype), mask).item(),
        "approx_kl": masked_mean(k3, mask).item(),
        "ratio_mean": masked_mean(ratio.detach(), mask).item(),
    }


def _positive(name: str, x: float) -> float:
    x = float(x)
    if not (math.isfinite(x) and x > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {x}")
    return x
