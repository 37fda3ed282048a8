"""GRPO on the Hydra: no critic; each prompt's samples are each other's baseline.

Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath, sec. 4.1): sample `group_size`
responses per prompt, take each response's advantage as its reward standardised within its group (or only
centred, as Dr. GRPO, Liu et al. 2025, argues), and maximise the clipped ratio objective with a k3 KL
penalty to the reference inside the loss.

    repeat until `steps` optimizer steps:
        rollout    <- actor samples group_size responses per prompt          (generate)
        scores     <- reward functions or the reward role                    (score)
        advantages <- (score - group mean) / group std
        ref_logp   <- the base with adapters off (or the frozen sft adapter) (reference)
        old_logp   <- the actor before the update (a rollout used once: the update's own forward, detached)
        for iteration in num_iterations, for minibatch:                      (train)
            loss <- -min(ratio A, clip(ratio) A) + beta k3(actor || ref), averaged per sequence or per token
            one AdamW step on the actor adapter
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from lorarlhf.methods.rl_options import RLConfig
from lorarlhf.training.rl_loop import (
    RLLoop,
    in_chunks,
    rows_of,
)
from lorarlhf.training.rl_losses import LOSS_TYPES, group_advantages, grpo_policy_loss, masked_mean
from lorarlhf.training.steps import StageRun
from lorarlhf.validation import check_bool, check_choice, check_int, check_number


@dataclass
class GRPOConfig(RLConfig):
    kl_coef: float = 0.04
    """beta: weight of the k3 KL to the reference in the loss (DeepSeekMath uses 0.04)."""
    group_size: int = 8
    """Responses sampled per prompt; advantages are normalised within each prompt's group."""
    scale_rewards: bool = True
    """Divide group-centred rewards by the group's std (GRPO); False keeps only the centring (Dr. GRPO)."""
    clip: float = 0.2
    """Ratio clipping epsilon."""
    num_iterations: int = 1
    """Passes over each rollout batch (1: on-policy, the ratio is 1 at the first pass)."""
    num_minibatches: int = 1
    """Minibatches each rollout batch is cut into per pass; each is one optimizer step."""
    loss_type: str = "sequence"
    """"sequence": mean over each response's tokens, then over responses (GRPO). "token": mean over all
    tokens of the batch (DAPO / Dr. GRPO), so long responses are not down-weighted."""

    def __post_init__(self):
        super().__post_init__()
        check_int("group_size", self.group_size)
        if self.group_size < 2:
            raise ValueError(f"group_size={self.group_size} must be >= 2: advantages compare samples of a prompt")
        for name in ("num_iterations", "num_minibatches"):
            check_int(name, getattr(self, name))
        check_number("clip", self.clip, low=0, open_low=True)
        check_choice("loss_type", self.loss_type, LOSS_TYPES)
        check_bool("scale_rewards", self.scale_rewards)
        samples = self.batch_size * self.group_size
        if samples % self.num_minibatches or (samples // self.num_minibatches) % self.grad_accumulation:
            raise ValueError(
                f"batch_size x group_size = {samples} samples must split into num_minibatches={self.num_minibatches}"
                f" minibatches of a multiple of grad_accumulation={self.grad_accumulation}"
            )

    @property
    def samples_per_prompt(self) -> int:
        return self.group_size


def train_grpo(
    hydra,
    prompts: list[str],
    config: GRPOConfig,
    *,
    reward_fn=None,
    columns: dict[str, list] | None = None,
    on_step=None,
    progress=True,
    checkpoints=None,
) -> StageRun:
    """Run GRPO on `prompts` until `config.steps` optimizer steps; rewards from `reward_fn` or the reward role.

    columns: the prompts' other fields (e.g. an answer), one list each aligned with `prompts`, passed to the
    reward functions that take them. checkpoints: a lorarlhf.training.checkpoints.StageCheckpoints to save
    through (between rollouts) and resume from."""
    params = hydra.trainable_parameters("actor")
    loop = RLLoop("grpo", hydra, prompts, params, config, reward_fn=reward_fn, columns=columns,
                  group_size=config.group_size, on_step=on_step, progress=progress,
                  checkpoints=checkpoints)  # fmt: skip

    # A rollout trained on once (one pass, one minibatch) is scored by the update's own forward: before the
    # step the actor is the rollout policy, so a separate no-grad pass of it would compute the same numbers.
    used_once = config.num_iterations == 1 and config.num_minibatches == 1
    for scored in loop:  # B prompts x G samples each, as B*G rows
        batch, mask = scored.batch, scored.mask  # (B*G, T)
        advantages = group_advantages(scored.rewards, config.group_size, scale_by_std=config.scale_rewards)  # (B*G,)
        if used_once:
            ref_logp = loop.scoring_passes(partial(_reference_pass, hydra, batch, config))  # (B*G, T)
            old_logp, old_entropy = torch.zeros_like(ref_logp), torch.zeros_like(ref_logp)  # filled by the update
            rollout_logp = (old_logp, old_entropy)
        else:
            ref_logp, old_logp, old_entropy = loop.scoring_passes(partial(_scoring_passes, hydra, batch, config))
            rollout_logp = None

        with loop.training():
            for minibatch in loop.minibatches(config.num_iterations, config.num_minibatches):
                loss_of = partial(_policy_loss, hydra, batch, old_logp, ref_logp, advantages, config, rollout_logp)
                loop.update(minibatch, loss_of, per_token=config.loss_type == "token")

        loop.log({
            "rl/kl": ((old_logp - ref_logp) * mask).sum(dim=1).mean().item(),  # k1, per sequence
            "rl/advantage_abs": advantages.abs().mean().item(),
            "rl/entropy": masked_mean(old_entropy, mask).item(),
        })  # fmt: skip
    return loop.finish()


def _reference_pass(hydra, batch, config: GRPOConfig, chunks: int):
    """Reference log-probs, (B*G, T), in `chunks` row slices."""
    return in_chunks(batch, chunks, hydra.token_logprobs, role="reference", temperature=config.temperature)


def _scoring_passes(hydra, batch, config: GRPOConfig, chunks: int):
    """Reference log-probs, rollout-policy log-probs and entropy, (B*G, T) each, in `chunks` row slices."""
    t, logprobs = config.temperature, hydra.token_logprobs
    ref_logp = _reference_pass(hydra, batch, config, chunks)
    old_logp, old_entropy = in_chunks(batch, chunks, logprobs, role="actor", temperature=t, return_entropy=True)
    return ref_logp, old_logp, old_entropy


def _policy_loss(hydra, batch, old_logp, ref_logp, advantages, config: GRPOConfig, rollout_logp, rows):
    """The GRPO loss of the rollout's `rows` under the current actor, and its statistics.

    rollout_logp: None, or (logp, entropy) (B*G, T) buffers this forward fills with its detached log-probs
    and entropies, which are then the rollout policy's (a rollout used once: the ratio is exactly 1)."""
    sub, t = rows_of(batch, rows), config.temperature
    if rollout_logp is None:
        logp = hydra.token_logprobs(sub, role="actor", temperature=t)
    else:
        logp, entropy = hydra.token_logprobs(sub, role="actor", temperature=t, return_entropy=True)
        rollout_logp[0][rows], rollout_logp[1][rows] = logp.detach(), entropy.detach()
    loss, stats = grpo_policy_loss(
        logp,
        old_logp[rows],
        ref_logp[rows],
        advantages[rows],
        batch.response_mask[rows],
        clip=config.clip,
        beta=config.kl_coef,
        loss_type=config.loss_type,
    )
    return loss, {"rl/loss": loss.item(), **{f"rl/{k}": v for k, v in stats.items()}}
