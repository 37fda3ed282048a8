"""PPO-RLHF on the Hydra: actor and critic are adapters on one frozen base, the reference is that base.

Ziegler et al. 2019 ("Fine-Tuning Language Models from Human Preferences") and InstructGPT (Ouyang et al.
2022): the reward of a response is the reward model's (or a function's) score at its last token, minus a
per-token KL penalty against the reference; GAE turns it into advantages with the critic's values; the
actor and critic are updated with PPO's clipped objectives (Schulman et al. 2017).

    repeat until `steps` optimizer steps:
        rollout    <- actor samples responses to a batch of prompts          (generate)
        scores     <- reward role or reward functions on the sampled tokens   (score)
        ref_logp   <- the base with adapters off (or the frozen sft adapter)  (reference)
        old_logp, old_values <- actor and critic before the update
        rewards    <- -kl_coef * KL(old || ref) per token, + score at the last token
        advantages, returns <- GAE(rewards, old_values); whiten advantages
        for epoch in ppo_epochs, for minibatch:                               (train)
            loss <- clipped policy loss + vf_coef * clipped value loss - ent_coef * entropy
            one AdamW step on the actor and critic adapters and the value head
        adapt kl_coef toward the target KL (optional)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lorarlhf.kernels import token_kl
from lorarlhf.model.hydra import CRITIC_MODES
from lorarlhf.model.tokenization import TokenizedBatch
from lorarlhf.training import distributed
from lorarlhf.training.config import ESTIMATORS, RLConfig, _is_number, _positive_int
from lorarlhf.training.rewards import reward_functions
from lorarlhf.training.rl_loop import (
    PhaseTimer,
    PromptStream,
    collect,
    final_metrics,
    fit_prompts,
    in_chunks,
    last_token_scores,
    mean_stats,
    rollout_record,
    rows_of,
    sampling_of,
    unique_params,
)
from lorarlhf.training.rl_losses import (
    AdaptiveKLController,
    FixedKLController,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_bonus,
    explained_variance,
    gae,
    masked_mean,
    masked_whiten,
)
from lorarlhf.training.supervised_loop import NonFiniteGuard, OutOfMemoryBackoff, StageRun, make_optimizer, synced_step

log = logging.getLogger("lorarlhf.ppo")


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

    def __post_init__(self):
        super().__post_init__()
        _positive_int(self, "ppo_epochs")
        _positive_int(self, "num_minibatches")
        _positive_int(self, "kl_horizon")
        for name in ("clip", "value_clip", "kl_target"):
            if not _is_number(getattr(self, name)) or getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a positive number")
        for name in ("vf_coef", "ent_coef"):
            if not _is_number(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be >= 0")
        for name in ("gamma", "lam"):
            if not _is_number(getattr(self, name)) or not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be in [0, 1]")
        for name in ("adaptive_kl", "whiten_advantages"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be True or False")
        if self.adaptive_kl and self.kl_coef <= 0:
            raise ValueError("adaptive_kl=True needs kl_coef > 0 to start from (it is multiplied, never added to)")
        if self.kl_estimator not in ESTIMATORS:
            raise ValueError(f"kl_estimator={self.kl_estimator!r} is not supported; choose one of {ESTIMATORS}")
        if self.critic not in CRITIC_MODES:
            raise ValueError(f"critic={self.critic!r} is not supported; choose one of {CRITIC_MODES}")
        if self.target_kl is not None and (not _is_number(self.target_kl) or self.target_kl <= 0):
            raise ValueError(f"target_kl={self.target_kl!r} must be None or a positive number")
        if self.batch_size % self.num_minibatches:
            raise ValueError(
                f"batch_size={self.batch_size} must be a multiple of num_minibatches={self.num_minibatches}"
            )
        if (self.batch_size // self.num_minibatches) % self.grad_accumulation:
            raise ValueError("each minibatch (batch_size / num_minibatches) must be a multiple of grad_accumulation")


def train_ppo(
    hydra, prompts: list[str], config: PPOConfig, *, reward_fn=None, on_step=None, progress=True, checkpoints=None
) -> StageRun:
    """Run PPO on `prompts` until `config.steps` optimizer steps; rewards from `reward_fn` or the reward role.

    checkpoints: a lorarlhf.training.checkpoints.StageCheckpoints to save through (between rollouts) and resume from."""
    functions = reward_functions(reward_fn)
    if not functions and "reward" not in hydra.roles:
        raise ValueError("PPO needs a reward: pass reward_fn, or a Hydra with a trained reward role")
    if "critic" not in hydra.roles:
        raise ValueError("PPO needs a critic role: build the Hydra with a 'critic' adapter or critic='shared'")
    if config.critic != hydra.critic_mode:
        raise ValueError(
            f"config critic={config.critic!r} but the Hydra was built with critic={hydra.critic_mode!r}; "
            "build it with HydraModel.from_pretrained(..., critic=...) to match"
        )
    hydra.disable_dropout()
    torch.manual_seed(config.seed)
    prompts = fit_prompts(hydra.tokenizer, prompts, config)
    stream = PromptStream(prompts, config.seed)
    sampling = sampling_of(config)
    kl_control = (
        AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
        if config.adaptive_kl
        else FixedKLController(config.kl_coef)
    )
    params = unique_params(hydra.trainable_parameters("actor") + hydra.trainable_parameters("critic"))
    optimizer, schedule = make_optimizer(params, config)
    run, steps, guard = StageRun(), 0, NonFiniteGuard("rl", config.max_skipped_steps)
    backoff = OutOfMemoryBackoff("rl")
    if checkpoints is not None and (state := checkpoints.restore(optimizer)) is not None:
        stream.load_state_dict(state["stream"])
        kl_control.load_state_dict(state["kl_control"])
        guard.load_state_dict(state["guard"])
        schedule.load_state_dict(state["schedule"])
        run.history, steps = state["history"], state["step"]
    bar = tqdm(total=config.steps, initial=steps, desc="ppo", disable=not progress or not distributed.is_main())

    while steps < config.steps:
        steps_before = steps
        timer = PhaseTimer()
        batch_prompts, seeds = (distributed.shard(part) for part in stream.next(config.batch_size))
        rollout, rewards = collect(hydra, batch_prompts, seeds, sampling, functions, config, timer, backoff)
        if rewards is None:
            guard.skip(f"a reward was NaN or infinite in the rollout after step {steps}")
            continue
        raw_scores, scores = rewards
        batch = rollout.batch()
        mask = batch.response_mask  # (B, T): the sampled tokens

        with timer("reference"), torch.no_grad():  # in grad_accumulation chunks, like the updates
            ref_logp, old_logp, old_entropy, old_values = backoff.run(
                partial(_scoring_passes, hydra, batch, config), "the reference and rollout-policy passes"
            )  # (B, T) each

        kl = token_kl(old_logp, ref_logp, estimator=config.kl_estimator) * mask  # (B, T)
        token_rewards = -kl_control.value * kl + last_token_scores(scores, mask)  # (B, T)
        advantages, returns = gae(token_rewards, old_values, mask, gamma=config.gamma, lam=config.lam)
        if config.whiten_advantages:
            advantages = (
                masked_whiten(advantages, mask)
                if distributed.world_size() == 1
                else distributed.global_masked_whiten(advantages, mask)
            )

        stats, stop = [], False
        with timer("train"), hydra.train_mode():
            for _ in range(config.ppo_epochs):
                order = torch.randperm(len(batch_prompts))
                for minibatch in order.chunk(config.num_minibatches):
                    update = partial(_update, hydra, optimizer, params, batch, minibatch, mask, old_logp, old_values,
                                     advantages, returns, config)  # fmt: skip
                    step_stats = backoff.run(update, "the update")
                    if step_stats is None:  # non-finite loss or gradient: nothing was applied
                        guard.skip(f"the loss or a gradient was not finite at step {steps + 1}")
                        continue
                    guard.ok()
                    stats.append(step_stats)
                    steps += 1
                    schedule.step()
                    bar.update(1)
                    if config.target_kl is not None and step_stats["rl/approx_kl"] > 1.5 * config.target_kl:
                        stop = True  # the policy moved too far from the rollout's: collect a fresh batch
                    if stop or steps >= config.steps:
                        break
                if stop or steps >= config.steps:
                    break

        sequence_kl = distributed.mean(kl.sum(dim=1).mean().item())  # mean per-sequence KL, every process
        kl_control.update(sequence_kl, len(batch_prompts))
        record = {
            "step": steps,
            **rollout_record(rollout, raw_scores, scores, timer),
            "rl/kl": sequence_kl,
            "rl/lr": schedule.get_last_lr()[0],
            "rl/kl_coef": kl_control.value,
            "rl/entropy": masked_mean(old_entropy, mask).item(),
            "rl/explained_variance": explained_variance(old_values, returns, mask),
            **mean_stats(stats),
        }
        record = distributed.mean_record(record)
        run.history.append(record)
        bar.set_postfix(reward=f"{record['rl/reward_mean']:.3f}", kl=f"{sequence_kl:.3f}")
        if on_step is not None:
            on_step(record)
        if checkpoints is not None and checkpoints.due(steps, steps_before):
            state = {
                "stream": stream.state_dict(),
                "kl_control": kl_control.state_dict(),
                "history": run.history,
                "guard": guard.state_dict(),
                "schedule": schedule.state_dict(),
            }
            checkpoints.save(steps, hydra, optimizer, state)
    bar.close()
    run.metrics = {**final_metrics(run.history), **guard.metrics()}
    return run


def _scoring_passes(hydra, batch, config: PPOConfig, smaller: int = 1):
    """Reference log-probs, rollout-policy log-probs and entropy, and values of the rollout, without autograd,
    in grad_accumulation x `smaller` chunks."""
    chunks, t, logprobs = config.grad_accumulation * smaller, config.temperature, hydra.token_logprobs
    ref_logp = in_chunks(batch, chunks, logprobs, role="reference", temperature=t)
    old_logp, old_entropy = in_chunks(batch, chunks, logprobs, role="actor", temperature=t, return_entropy=True)
    return ref_logp, old_logp, old_entropy, in_chunks(batch, chunks, partial(state_values, hydra))


def _update(
    hydra, optimizer, params, batch, minibatch, mask, old_logp, old_values, advantages, returns, config, smaller=1
):
    """One optimizer step on a minibatch, in grad_accumulation (x `smaller`) micro-batches; None if not finite."""
    optimizer.zero_grad(set_to_none=True)
    totals: dict[str, float] = {}
    finite = True
    micro_batches = minibatch.chunk(config.grad_accumulation * smaller)
    minibatch_tokens = mask[minibatch].sum().clamp_min(1)
    for rows in micro_batches:
        # The losses are token means; weighting each micro-batch by its share of the minibatch's tokens
        # makes the accumulated gradient the token mean over the whole minibatch, whatever the lengths.
        share = (mask[rows].sum() / minibatch_tokens).item()
        sub = rows_of(batch, rows)
        if config.ent_coef > 0:  # the entropy's gradient costs one more matmul: only when it is in the loss
            logp, entropy = hydra.token_logprobs(sub, role="actor", temperature=config.temperature, return_entropy=True)
        else:
            logp, entropy = hydra.token_logprobs(sub, role="actor", temperature=config.temperature), None
        values = state_values(hydra, sub)
        pg_loss, pg_stats = clipped_policy_loss(logp, old_logp[rows], advantages[rows], mask[rows], clip=config.clip)
        vf_loss = clipped_value_loss(values, old_values[rows], returns[rows], mask[rows], clip=config.value_clip)
        loss = pg_loss + config.vf_coef * vf_loss
        if entropy is not None:
            loss = loss - config.ent_coef * entropy_bonus(entropy, mask[rows])
        if not torch.isfinite(loss):
            log.warning("skipping an update: the loss is %s", loss.item())
            finite = False
            break
        (loss * share).backward()
        parts = {
            "rl/policy_loss": pg_loss.item(),
            "rl/value_loss": vf_loss.item(),
            **{f"rl/{k}": v for k, v in pg_stats.items()},
        }
        for name, value in parts.items():
            totals[name] = totals.get(name, 0.0) + value * share
    grad_norm = synced_step(optimizer, params, config.max_grad_norm, finite)  # averaged over processes
    return None if grad_norm is None else {**totals, "rl/grad_norm": grad_norm}


def state_values(hydra, batch: TokenizedBatch) -> torch.Tensor:
    """V(s_t) for the token at t: the critic read at position t - 1, the state the token was chosen in."""
    values = hydra.values(batch.input_ids, batch.attention_mask)  # (B, T): after each token
    return F.pad(values[:, :-1], (1, 0))
