"""RLOO on the Hydra: REINFORCE with a leave-one-out baseline, no critic.

Ahmadian et al. 2024 ("Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human
Feedback in LLMs"): a whole response is one action, so REINFORCE needs no critic and no per-token credit
assignment; k samples per prompt give each sample a baseline, the mean reward of the other k - 1, which
is unbiased because it never sees the sample itself.

The KL to the reference is a penalty on the sequence's reward, as in the paper (sec. 3.1, eq. 2), not a
term of the loss as in GRPO: R(x, y) = r(x, y) - beta sum_t log(pi(y_t) / ref(y_t)). That keeps the
estimator the paper's REINFORCE, whose baseline then also centres the KL term among a prompt's samples,
and keeps a single loss term to clip.

    repeat until `steps` optimizer steps:
        rollout    <- actor samples group_size responses per prompt          (generate)
        scores     <- reward functions or the reward role                    (score)
        ref_logp   <- the base with adapters off (or the frozen sft adapter) (reference)
        old_logp   <- the actor before the update (a rollout used once: the update's own forward, detached)
        rewards    <- score - kl_coef * sum_t KL_t(old || ref)
        advantages <- reward - mean of the other group_size - 1 rewards of its prompt
        for iteration in num_iterations, for minibatch:                      (train)
            loss <- -min(ratio A, clip(ratio) A), averaged over the batch's response tokens
            one AdamW step on the actor adapter

With num_iterations=1 the ratio is 1 and its gradient is that of log pi, so the loss is the paper's
REINFORCE: the mean over the batch's tokens is its sum of log-probs scaled by one constant per batch.
More iterations reuse the rollout, and then the PPO clip bounds how far they move the policy.

ReinforceConfig holds the options RLOO shares with REINFORCE++ (methods/reinforce_pp.py), and
`ReinforceRollout` / `reinforce_policy_loss` the passes and the loss both run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from lorarlhf.kernels import token_kl
from lorarlhf.methods.rl_options import RLConfig
from lorarlhf.training.reinforce_losses import kl_penalised_sequence_rewards, leave_one_out_advantages
from lorarlhf.training.rl_loop import RLLoop, first_forward_outputs, in_chunks, rows_of
from lorarlhf.training.rl_losses import clipped_policy_loss, masked_mean
from lorarlhf.training.steps import StageRun
from lorarlhf.validation import check_choice, check_int, check_number

KL_ESTIMATORS = ("k1", "k3")


@dataclass
class ReinforceConfig(RLConfig):
    """Options RLOO and REINFORCE++ share: samples per prompt, the KL estimator, PPO-style reuse and clipping."""

    group_size: int = 4
    """Responses sampled per prompt (RLOO's k; the paper finds k=4 better than 2)."""
    kl_estimator: str = "k1"
    """Per-token KL folded into the reward: "k1" (log ratio, as both papers) or "k3"."""
    clip: float = 0.2
    """Ratio clipping epsilon (inactive at the first pass over a rollout, where the ratio is 1)."""
    num_iterations: int = 1
    """Passes over each rollout batch (1: on-policy REINFORCE)."""
    num_minibatches: int = 1
    """Minibatches each rollout batch is cut into per pass; each is one optimizer step."""

    def __post_init__(self):
        super().__post_init__()
        for name in ("group_size", "num_iterations", "num_minibatches"):
            check_int(name, getattr(self, name))
        check_choice("kl_estimator", self.kl_estimator, KL_ESTIMATORS)
        check_number("clip", self.clip, low=0, open_low=True)
        samples = self.batch_size * self.group_size
        if samples % self.num_minibatches or (samples // self.num_minibatches) % self.grad_accumulation:
            raise ValueError(
                f"batch_size x group_size = {samples} samples must split into num_minibatches={self.num_minibatches}"
                f" minibatches of a multiple of grad_accumulation={self.grad_accumulation}"
            )

    @property
    def samples_per_prompt(self) -> int:
        return self.group_size


@dataclass
class RLOOConfig(ReinforceConfig):
    kl_coef: float = 0.05
    """beta: weight of the sequence's KL to the reference, subtracted from its reward (the paper's penalty)."""

    def __post_init__(self):
        super().__post_init__()
        if self.group_size < 2:
            raise ValueError(f"group_size={self.group_size} must be >= 2: each sample's baseline is the others'")


def train_rloo(
    hydra,
    prompts: list[str],
    config: RLOOConfig,
    *,
    reward_fn=None,
    columns: dict[str, list] | None = None,
    on_step=None,
    progress=True,
    checkpoints=None,
) -> StageRun:
    """Run RLOO on `prompts` until `config.steps` optimizer steps; rewards from `reward_fn` or the reward role.

    columns: the prompts' other fields (e.g. an answer), one list each aligned with `prompts`, passed to the
    reward functions that take them. checkpoints: a lorarlhf.training.checkpoints.StageCheckpoints to save
    through (between rollouts) and resume from."""
    params = hydra.trainable_parameters("actor")
    loop = RLLoop("rloo", hydra, prompts, params, config, reward_fn=reward_fn, columns=columns,
                  group_size=config.group_size, on_step=on_step, progress=progress,
                  checkpoints=checkpoints)  # fmt: skip

    for scored in loop:  # B prompts x k samples each, as B*k rows
        batch, mask = scored.batch, scored.mask  # (B*k, T)
        rollout = ReinforceRollout.scored(loop, hydra, batch, config, partial(_rloo_advantages, scored, config))
        with loop.training():
            for minibatch in loop.minibatches(config.num_iterations, config.num_minibatches):
                loop.update(minibatch, partial(reinforce_policy_loss, hydra, batch, rollout, config))

        old = rollout.final_targets()
        loop.log({
            "rl/kl": ((old.logp - rollout.ref_logp) * mask).sum(dim=1).mean().item(),  # k1, per sequence
            **old.logged,
            "rl/advantage_abs": old.advantages.abs().mean().item(),
            "rl/entropy": masked_mean(old.entropy, mask).item(),
        })  # fmt: skip
    return loop.finish()


def _rloo_advantages(scored, config: RLOOConfig, kl: torch.Tensor):
    """The leave-one-out advantages (B*k,) of the KL-penalised sequence rewards, and what to log of them."""
    rewards = kl_penalised_sequence_rewards(scored.rewards, kl, scored.mask, kl_coef=config.kl_coef)  # (B*k,)
    advantages = leave_one_out_advantages(rewards, config.group_size)
    return advantages, {"rl/penalised_reward_mean": rewards.mean().item()}


@dataclass
class ReinforceTargets:
    """What the policy loss of one rollout compares against: the rollout policy's log-probs and entropy (B, T),
    the advantages ((B,) per sequence or (B, T) per token), and the statistics of them to log."""

    logp: torch.Tensor
    entropy: torch.Tensor
    advantages: torch.Tensor
    logged: dict[str, float]


class ReinforceRollout:
    """One rollout's reference log-probs and its ReinforceTargets: set from the no-grad passes before the
    updates (`set_old`), or, for a rollout used once, from the first update's own forward (`from_forward`).

    advantages_of(kl) -> (advantages, {name: value}): the method's advantages from the per-token KL (B, T) of
    the rollout policy to the reference, which depends on every row, so micro-batches cannot go before it."""

    def __init__(self, hydra, batch, config: ReinforceConfig, advantages_of: Callable):
        self.hydra, self.batch, self.config, self.advantages_of = hydra, batch, config, advantages_of
        self.ref_logp: torch.Tensor | None = None  # (B, T)
        self.targets: ReinforceTargets | None = None

    @classmethod
    def scored(cls, loop, hydra, batch, config: ReinforceConfig, advantages_of: Callable) -> ReinforceRollout:
        """The rollout with its reference pass run, and the rollout policy's too unless the rollout is used once,
        in one piece (one pass, one minibatch, no accumulation): then the update's own forward is that pass, as
        before its step the actor is the rollout policy."""
        rollout = cls(hydra, batch, config, advantages_of)
        used_once = config.num_iterations == 1 and config.num_minibatches == 1 and config.grad_accumulation == 1
        if used_once:
            rollout.ref_logp = loop.scoring_passes(partial(_reference_pass, hydra, batch, config))
        else:
            rollout.set_old(*loop.scoring_passes(partial(_scoring_passes, hydra, batch, config)))
        return rollout

    def set_old(self, ref_logp, old_logp, old_entropy) -> None:
        """The targets from the rollout policy's log-probs and entropies, (B, T) each."""
        self.ref_logp = ref_logp
        kl = token_kl(old_logp, ref_logp, estimator=self.config.kl_estimator)  # (B, T)
        advantages, logged = self.advantages_of(kl)
        self.targets = ReinforceTargets(old_logp, old_entropy, advantages, logged)

    def from_forward(self, rows: torch.Tensor, logp, entropy) -> None:
        """The targets from the update's forward of `rows`, detached: the whole rollout in one piece, or, when
        memory ran out and the update came in micro-batches, a no-grad pass over all of it first."""
        whole = partial(_scoring_passes, self.hydra, self.batch, self.config)
        old = first_forward_outputs(rows, (logp, entropy), self.batch.input_ids.shape[0], lambda c: whole(c)[1:])
        self.set_old(self.ref_logp, *old)

    def final_targets(self) -> ReinforceTargets:
        """The targets, for the record; from a no-grad pass now if no update ran its forward."""
        if self.targets is None:
            with torch.no_grad():
                self.set_old(self.ref_logp, *_scoring_passes(self.hydra, self.batch, self.config, 1)[1:])
        return self.targets


def _reference_pass(hydra, batch, config: ReinforceConfig, chunks: int):
    """Reference log-probs of the rollout, (B, T), in `chunks` row slices."""
    return in_chunks(batch, chunks, hydra.token_logprobs, role="reference", temperature=config.temperature)


def _scoring_passes(hydra, batch, config: ReinforceConfig, chunks: int):
    """Reference log-probs, rollout-policy log-probs and entropy, (B, T) each, in `chunks` row slices."""
    t, logprobs = config.temperature, hydra.token_logprobs
    ref_logp = _reference_pass(hydra, batch, config, chunks)
    old_logp, old_entropy = in_chunks(batch, chunks, logprobs, role="actor", temperature=t, return_entropy=True)
    return ref_logp, old_logp, old_entropy


def reinforce_policy_loss(hydra, batch, rollout: ReinforceRollout, config: ReinforceConfig, rows):
    """The clipped policy-gradient loss of the rollout's `rows` under the current actor, averaged over their
    response tokens; advantages are (B,) per sequence (RLOO) or (B, T) per token (REINFORCE++)."""
    sub, t = rows_of(batch, rows), config.temperature
    if rollout.targets is None:  # a rollout used once: this forward is the rollout policy's
        logp, entropy = hydra.token_logprobs(sub, role="actor", temperature=t, return_entropy=True)
        rollout.from_forward(rows, logp, entropy)
    else:
        logp = hydra.token_logprobs(sub, role="actor", temperature=t)
    old = rollout.targets
    loss, stats = clipped_policy_loss(logp, old.logp[rows], old.advantages[rows], batch.response_mask[rows],
                                      clip=config.clip)  # fmt: skip
    return loss, {"rl/loss": loss.item(), **{f"rl/{k}": v for k, v in stats.items()}}
