"""PPO-RLHF on the Hydra: actor and critic are adapters on one frozen base, the reference is that base.

Ziegler et al. 2019 ("Fine-Tuning Language Models from Human Preferences") and InstructGPT (Ouyang et al.
2022): the reward of a response is the reward model's (or a function's) score at its last token, minus a
per-token KL penalty against the reference; GAE turns it into advantages with the critic's values; the
actor and critic are updated with PPO's clipped objectives (Schulman et al. 2017).

    repeat until `steps` optimizer steps:
        rollout    <- actor samples responses to a batch of prompts          (generate)
        scores     <- reward role or reward functions on the sampled tokens   (score)
        ref_logp   <- the base with adapters off (or the frozen sft adapter)  (reference)
        old_logp, old_values <- actor and critic before the update (a rollout used once: the update's own
                                forward, detached, so no separate pass of them)
        score      <- (score - running mean) / running std over every score so far (reward_scaling)
        rewards    <- -kl_coef * KL(old || ref) per token, + score at the last token
        advantages, returns <- GAE(rewards, old_values); whiten advantages
        for epoch in ppo_epochs, for minibatch:                               (train)
            loss <- clipped policy loss + vf_coef * clipped value loss - ent_coef * entropy
                    (the value loss alone for the first critic_warmup_steps steps)
            one AdamW step on the actor and critic adapters and the value head
        adapt kl_coef toward the target KL (optional)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

from lorarlhf.kernels import token_kl
from lorarlhf.methods.rl_options import RLConfig
from lorarlhf.model.hydra import CRITIC_MODES
from lorarlhf.model.tokenization import TokenizedBatch
from lorarlhf.training import distributed
from lorarlhf.training.rl_loop import (
    RLLoop,
    first_forward_outputs,
    in_chunks,
    last_token_scores,
    rows_of,
    unique_params,
)
from lorarlhf.training.rl_losses import (
    AdaptiveKLController,
    FixedKLController,
    RunningMoments,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_bonus,
    explained_variance,
    gae,
    masked_mean,
    masked_whiten,
)
from lorarlhf.training.steps import StageRun
from lorarlhf.validation import check_bool, check_choice, check_int, check_number, check_optional_number

ESTIMATORS = ("k1", "k3")
REWARD_SCALINGS = ("auto", "none", "running")


@dataclass
class PPOConfig(RLConfig):
    ppo_epochs: int = 2
    """Passes over each rollout batch; every minibatch of every pass is one optimizer step."""
    num_minibatches: int = 1
    """Minibatches each rollout batch is cut into per pass."""
    clip: float = 0.2
    """PPO ratio clipping epsilon."""
    value_clip: float = 0.2
    """Clipping of the value update around the rollout's values."""
    vf_coef: float = 0.1
    """Weight of the value loss in the joint actor + critic loss."""
    ent_coef: float = 0.0
    """Weight of the entropy bonus."""
    gamma: float = 1.0
    """Discount of GAE."""
    lam: float = 0.95
    """GAE lambda."""
    whiten_advantages: bool = True
    """Normalise advantages to zero mean and unit variance over each rollout batch."""
    kl_estimator: str = "k1"
    """Per-token KL folded into the reward: "k1" (log ratio, as InstructGPT) or "k3"."""
    adaptive_kl: bool = False
    """Adapt kl_coef toward kl_target (Ziegler et al. 2019)."""
    kl_target: float = 6.0
    """Target KL per sequence of the adaptive controller (adaptive_kl=True); not to confuse with target_kl."""
    kl_horizon: int = 10000
    """Horizon of the adaptive controller."""
    target_kl: float | None = None
    """Early stop: end a rollout's PPO epochs when the approx-KL between the updated and the rollout policy
    exceeds 1.5 x this (None: never). A trust region per rollout, unlike kl_target."""
    critic: str = "separate"
    """"separate": the critic has its own adapter. "shared": the actor adapter + a value head (joint Hydra)."""
    critic_warmup_steps: int = 0
    """Optimizer steps at the start that train the critic alone (the value loss; the actor adapter is left as
    it is, unless critic="shared", where the value loss moves the shared adapter), so the first policy updates
    see advantages from a critic that has already fit some returns (OpenRLHF's freezing_actor_steps,
    DeepSpeed-Chat's critic-first recipe). They count toward `steps`."""
    reward_scaling: str = "auto"
    """"running": each score becomes (score - mean) / std over every score seen so far (this rollout's
    included), so a reward function's units (a share in [0, 1] with a std of 0.05, a count) do not decide how
    much the score weighs against the KL penalty, and the critic fits targets of unit scale. "none": scores as
    shaped (after reward_normalize and reward_clip). "auto": "running" for reward functions, "none" for the
    reward role, whose scores are Bradley-Terry logits, a unit kl_coef can be set against."""

    def __post_init__(self):
        super().__post_init__()
        for name in ("ppo_epochs", "num_minibatches", "kl_horizon"):
            check_int(name, getattr(self, name))
        check_int("critic_warmup_steps", self.critic_warmup_steps, minimum=0, hint=" (0: no warm-up)")
        check_choice("reward_scaling", self.reward_scaling, REWARD_SCALINGS)
        for name in ("clip", "value_clip", "kl_target"):
            check_number(name, getattr(self, name), low=0, open_low=True)
        for name in ("vf_coef", "ent_coef"):
            check_number(name, getattr(self, name), low=0)
        for name in ("gamma", "lam"):
            check_number(name, getattr(self, name), low=0, high=1)
        for name in ("adaptive_kl", "whiten_advantages"):
            check_bool(name, getattr(self, name))
        if self.adaptive_kl and self.kl_coef <= 0:
            raise ValueError("adaptive_kl=True needs kl_coef > 0 to start from (it is multiplied, never added to)")
        check_choice("kl_estimator", self.kl_estimator, ESTIMATORS)
        check_choice("critic", self.critic, CRITIC_MODES)
        check_optional_number("target_kl", self.target_kl, low=0, open_low=True)
        if self.batch_size % self.num_minibatches:
            raise ValueError(
                f"batch_size={self.batch_size} must be a multiple of num_minibatches={self.num_minibatches}"
            )
        if (self.batch_size // self.num_minibatches) % self.grad_accumulation:
            raise ValueError("each minibatch (batch_size / num_minibatches) must be a multiple of grad_accumulation")

    def hydra_options(self) -> dict:
        return {**super().hydra_options(), "critic": self.critic}


def train_ppo(
    hydra,
    prompts: list[str],
    config: PPOConfig,
    *,
    reward_fn=None,
    columns: dict[str, list] | None = None,
    on_step=None,
    progress=True,
    checkpoints=None,
) -> StageRun:
    """Run PPO on `prompts` until `config.steps` optimizer steps; rewards from `reward_fn` or the reward role.

    columns: the prompts' other fields (e.g. an answer), one list each aligned with `prompts`, passed to the
    reward functions that take them. checkpoints: a lorarlhf.training.checkpoints.StageCheckpoints to save
    through (between rollouts) and resume from."""
    if "critic" not in hydra.roles:
        raise ValueError("PPO needs a critic role: build the Hydra with a 'critic' adapter or critic='shared'")
    if config.critic != hydra.critic_mode:
        raise ValueError(
            f"config critic={config.critic!r} but the Hydra was built with critic={hydra.critic_mode!r}; "
            "build it with HydraModel.from_pretrained(..., critic=...) to match"
        )
    kl_control = (
        AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
        if config.adaptive_kl
        else FixedKLController(config.kl_coef)
    )
    scaling = config.reward_scaling
    if scaling == "auto":
        scaling = "running" if reward_fn is not None else "none"
    state = {"kl_control": kl_control}
    if scaling == "running":
        state["reward_moments"] = moments = RunningMoments()
    params = unique_params(hydra.trainable_parameters("actor") + hydra.trainable_parameters("critic"))
    loop = RLLoop("ppo", hydra, prompts, params, config, reward_fn=reward_fn, columns=columns, state=state,
                  on_step=on_step, progress=progress, checkpoints=checkpoints)  # fmt: skip
    # A rollout trained on once, in one piece (one epoch, one minibatch, no accumulation), is scored by the
    # update's own forward: before the step the actor and critic are the rollout's, so separate no-grad
    # passes of them would compute the same numbers.
    used_once = config.ppo_epochs == 1 and config.num_minibatches == 1 and config.grad_accumulation == 1

    for scored in loop:
        batch, scores = scored.batch, scored.rewards  # (B, T): batch.response_mask marks the sampled tokens
        if scaling == "running":
            moments.update(distributed.all_gather_cat(scores))  # every process's scores, the same statistics
            scores = moments.normalize(scores)  # (B,)
        warmup = loop.steps < config.critic_warmup_steps  # the critic alone, on this rollout
        rollout = PPORollout(hydra, batch, scores, kl_control.value, config)
        if used_once and not warmup:
            rollout.ref_logp = loop.scoring_passes(partial(_reference_pass, hydra, batch, config))
        else:
            rollout.set_old(*loop.scoring_passes(partial(_scoring_passes, hydra, batch, config)))

        with loop.training():
            for minibatch in loop.minibatches(config.ppo_epochs, config.num_minibatches):
                stats = loop.update(minibatch, partial(_ppo_loss, hydra, batch, rollout, config, warmup))
                if stats and config.target_kl is not None and stats["rl/approx_kl"] > 1.5 * config.target_kl:
                    break  # the policy moved too far from the rollout's: collect a fresh batch

        old = rollout.targets
        if old is None:  # the update was skipped (non-finite): its targets from a pass, for the record
            with torch.no_grad():
                rollout.set_old(rollout.ref_logp, *_scoring_passes(hydra, batch, config, 1)[1:])
            old = rollout.targets
        mask = batch.response_mask
        sequence_kl = distributed.mean(old.kl.sum(dim=1).mean().item())  # mean per-sequence KL, every process
        kl_control.update(sequence_kl, mask.shape[0])
        loop.log({
            "rl/kl": sequence_kl,
            "rl/kl_coef": kl_control.value,
            "rl/entropy": masked_mean(old.entropy, mask).item(),
            "rl/explained_variance": explained_variance(old.values, old.returns, mask),
            "rl/critic_warmup": float(warmup),
        })  # fmt: skip
    return loop.finish()


@dataclass
class RolloutTargets:
    """What the PPO losses of one rollout compare against, (B, T) each, zero outside the response mask:
    the rollout policy's log-probs and entropy, the critic's values V(s_t), the per-token KL to the reference
    folded into the reward, and GAE's advantages (whitened when asked) and returns."""

    logp: torch.Tensor
    entropy: torch.Tensor
    values: torch.Tensor
    kl: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


class PPORollout:
    """One rollout's reference log-probs and its RolloutTargets: set from the no-grad passes before the
    updates (`set_old`), or, for a rollout used once, from the first update's own forward (`from_forward`)."""

    def __init__(self, hydra, batch: TokenizedBatch, scores: torch.Tensor, kl_coef: float, config: PPOConfig):
        self.hydra, self.batch, self.scores, self.kl_coef, self.config = hydra, batch, scores, kl_coef, config
        self.ref_logp: torch.Tensor | None = None  # (B, T)
        self.targets: RolloutTargets | None = None

    def set_old(self, ref_logp, old_logp, old_entropy, old_values) -> None:
        """The targets from the rollout policy's log-probs, entropies and values, (B, T) each."""
        config, mask = self.config, self.batch.response_mask
        self.ref_logp = ref_logp
        kl = token_kl(old_logp, ref_logp, estimator=config.kl_estimator) * mask  # (B, T)
        token_rewards = -self.kl_coef * kl + last_token_scores(self.scores, mask)  # (B, T)
        advantages, returns = gae(token_rewards, old_values, mask, gamma=config.gamma, lam=config.lam)
        if config.whiten_advantages:
            advantages = (
                masked_whiten(advantages, mask)
                if distributed.world_size() == 1
                else distributed.global_masked_whiten(advantages, mask)
            )
        self.targets = RolloutTargets(old_logp, old_entropy, old_values, kl, advantages, returns)

    def from_forward(self, rows: torch.Tensor, logp, entropy, values) -> None:
        """The targets from the update's forward of `rows`, detached: the whole rollout in one piece, or, when
        memory ran out and the update came in micro-batches, a no-grad pass over all of it first (the
        advantages are whitened over the whole rollout, so no micro-batch can go before them)."""
        whole = partial(_scoring_passes, self.hydra, self.batch, self.config)
        old = first_forward_outputs(
            rows, (logp, entropy, values), self.batch.input_ids.shape[0], lambda chunks: whole(chunks)[1:]
        )
        self.set_old(self.ref_logp, *old)


def _reference_pass(hydra, batch, config: PPOConfig, chunks: int):
    """Reference log-probs of the rollout, (B, T), in `chunks` row slices."""
    return in_chunks(batch, chunks, hydra.token_logprobs, role="reference", temperature=config.temperature)


def _scoring_passes(hydra, batch, config: PPOConfig, chunks: int):
    """Reference log-probs, rollout-policy log-probs and entropy, and values of the rollout, (B, T) each,
    in `chunks` row slices."""
    t, logprobs = config.temperature, hydra.token_logprobs
    ref_logp = _reference_pass(hydra, batch, config, chunks)
    old_logp, old_entropy = in_chunks(batch, chunks, logprobs, role="actor", temperature=t, return_entropy=True)
    return ref_logp, old_logp, old_entropy, in_chunks(batch, chunks, partial(state_values, hydra))


def _ppo_loss(hydra, batch, rollout: PPORollout, config: PPOConfig, warmup: bool, rows):
    """Clipped policy loss + vf_coef x clipped value loss (- ent_coef x entropy) of the rollout's `rows`;
    during the critic's warm-up the value loss alone (the policy's terms still reported, without gradient)."""
    sub, mask = rows_of(batch, rows), batch.response_mask[rows]
    first_forward = rollout.targets is None  # a rollout used once: this forward is the rollout policy's
    with torch.set_grad_enabled(torch.is_grad_enabled() and not warmup):
        if config.ent_coef > 0 or first_forward:  # the entropy's gradient costs one more matmul: only if needed
            logp, entropy = hydra.token_logprobs(sub, role="actor", temperature=config.temperature, return_entropy=True)
        else:
            logp, entropy = hydra.token_logprobs(sub, role="actor", temperature=config.temperature), None
    values = state_values(hydra, sub)
    if first_forward:
        rollout.from_forward(rows, logp, entropy, values)
    old = rollout.targets
    pg_loss, pg_stats = clipped_policy_loss(logp, old.logp[rows], old.advantages[rows], mask, clip=config.clip)
    vf_loss = clipped_value_loss(values, old.values[rows], old.returns[rows], mask, clip=config.value_clip)
    loss = config.vf_coef * vf_loss if warmup else pg_loss + config.vf_coef * vf_loss
    if config.ent_coef > 0 and not warmup:
        loss = loss - config.ent_coef * entropy_bonus(entropy, mask)
    stats = {"rl/policy_loss": pg_loss.item(), "rl/value_loss": vf_loss.item()}
    return loss, {**stats, **{f"rl/{k}": v for k, v in pg_stats.items()}}


def state_values(hydra, batch: TokenizedBatch) -> torch.Tensor:
    """V(s_t) for the token at t: the critic read at position t - 1, the state the token was chosen in."""
    values = hydra.values(batch.input_ids, batch.attention_mask)  # (B, T): after each token
    return F.pad(values[:, :-1], (1, 0))
