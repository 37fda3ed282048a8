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
        old_logp   <- the actor before the update
        for iteration in num_iterations, for minibatch:                      (train)
            loss <- -min(ratio A, clip(ratio) A) + beta k3(actor || ref), averaged per sequence or per token
            one AdamW step on the actor adapter
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

import torch
from tqdm.auto import tqdm

from lorarlhf.training import distributed
from lorarlhf.training.config import RLConfig, _is_number, _positive_int
from lorarlhf.training.rewards import reward_functions
from lorarlhf.training.rl_loop import (
    PhaseTimer,
    PromptStream,
    collect,
    final_metrics,
    fit_prompts,
    in_chunks,
    mean_stats,
    rollout_record,
    rows_of,
    sampling_of,
)
from lorarlhf.training.rl_losses import LOSS_TYPES, group_advantages, grpo_policy_loss, masked_mean
from lorarlhf.training.supervised_loop import NonFiniteGuard, OutOfMemoryBackoff, StageRun, make_optimizer, synced_step

log = logging.getLogger("lorarlhf.grpo")


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
        for name in ("group_size", "num_iterations", "num_minibatches"):
            _positive_int(self, name)
        if self.group_size < 2:
            raise ValueError(f"group_size={self.group_size} must be >= 2: advantages compare samples of a prompt")
        if not _is_number(self.clip) or self.clip <= 0:
            raise ValueError(f"clip={self.clip!r} must be a positive number")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type={self.loss_type!r} is not supported; choose one of {LOSS_TYPES}")
        if not isinstance(self.scale_rewards, bool):
            raise ValueError(f"scale_rewards={self.scale_rewards!r} must be True or False")
        samples = self.batch_size * self.group_size
        if samples % self.num_minibatches or (samples // self.num_minibatches) % self.grad_accumulation:
            raise ValueError(
                f"batch_size x group_size = {samples} samples must split into num_minibatches={self.num_minibatches}"
                f" minibatches of a multiple of grad_accumulation={self.grad_accumulation}"
            )


def train_grpo(
    hydra, prompts: list[str], config: GRPOConfig, *, reward_fn=None, on_step=None, progress=True, checkpoints=None
) -> StageRun:
    """Run GRPO on `prompts` until `config.steps` optimizer steps; rewards from `reward_fn` or the reward role.

    checkpoints: a lorarlhf.training.checkpoints.StageCheckpoints to save through (between rollouts) and resume from."""
    functions = reward_functions(reward_fn)
    if not functions and "reward" not in hydra.roles:
        raise ValueError("GRPO needs a reward: pass reward_fn, or a Hydra with a trained reward role")
    hydra.disable_dropout()
    torch.manual_seed(config.seed)
    prompts = fit_prompts(hydra.tokenizer, prompts, config)
    stream = PromptStream(prompts, config.seed)
    sampling = sampling_of(config)
    params = hydra.trainable_parameters("actor")
    optimizer, schedule = make_optimizer(params, config)
    run, steps, guard = StageRun(), 0, NonFiniteGuard("rl", config.max_skipped_steps)
    backoff = OutOfMemoryBackoff("rl")
    if checkpoints is not None and (state := checkpoints.restore(optimizer)) is not None:
        stream.load_state_dict(state["stream"])
        guard.load_state_dict(state["guard"])
        schedule.load_state_dict(state["schedule"])
        run.history, steps = state["history"], state["step"]
    bar = tqdm(total=config.steps, initial=steps, desc="grpo", disable=not progress or not distributed.is_main())

    while steps < config.steps:
        steps_before = steps
        timer = PhaseTimer()
        samples, seeds = stream.next(config.batch_size, repeats=config.group_size)
        samples, seeds = distributed.shard(samples, config.group_size), distributed.shard(seeds, config.group_size)
        rollout, rewards = collect(hydra, samples, seeds, sampling, functions, config, timer, backoff)
        if rewards is None:
            guard.skip(f"a reward was NaN or infinite in the rollout after step {steps}")
            continue
        raw_scores, scores = rewards
        advantages = group_advantages(scores, config.group_size, scale_by_std=config.scale_rewards)  # (B*G,)
        batch = rollout.batch()
        mask = batch.response_mask  # (B*G, T)

        with timer("reference"), torch.no_grad():  # in grad_accumulation chunks, like the updates
            ref_logp, old_logp, old_entropy = backoff.run(
                partial(_scoring_passes, hydra, batch, config), "the reference and rollout-policy passes"
            )  # (B, T) each

        stats = []
        with timer("train"), hydra.train_mode():
            for _ in range(config.num_iterations):
                for minibatch in torch.randperm(len(samples)).chunk(config.num_minibatches):
                    update = partial(_update, hydra, optimizer, params, batch, minibatch, mask, old_logp, ref_logp,
                                     advantages, config)  # fmt: skip
                    step_stats = backoff.run(update, "the update")
                    if step_stats is None:
                        guard.skip(f"the loss or a gradient was not finite at step {steps + 1}")
                        continue
                    guard.ok()
                    stats.append(step_stats)
                    steps += 1
                    schedule.step()
                    bar.update(1)
                    if steps >= config.steps:
                        break
                if steps >= config.steps:
                    break

        sequence_kl = ((old_logp - ref_logp) * mask).sum(dim=1).mean().item()  # k1, per sequence
        record = {
            "step": steps,
            **rollout_record(rollout, raw_scores, scores, timer),
            "rl/kl": sequence_kl,
            "rl/lr": schedule.get_last_lr()[0],
            "rl/advantage_abs": advantages.abs().mean().item(),
            "rl/entropy": masked_mean(old_entropy, mask).item(),
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
                "history": run.history,
                "guard": guard.state_dict(),
                "schedule": schedule.state_dict(),
            }
            checkpoints.save(steps, hydra, optimizer, state)
    bar.close()
    run.metrics = {**final_metrics(run.history), **guard.metrics()}
    return run


def _scoring_passes(hydra, batch, config: GRPOConfig, smaller: int = 1):
    """Reference log-probs, rollout-policy log-probs and entropy, without autograd, in grad_accumulation x
    `smaller` chunks."""
    chunks, t, logprobs = config.grad_accumulation * smaller, config.temperature, hydra.token_logprobs
    ref_logp = in_chunks(batch, chunks, logprobs, role="reference", temperature=t)
    old_logp, old_entropy = in_chunks(batch, chunks, logprobs, role="actor", temperature=t, return_entropy=True)
    return ref_logp, old_logp, old_entropy


def _update(hydra, optimizer, params, batch, minibatch, mask, old_logp, ref_logp, advantages, config, smaller=1):
    """One optimizer step on a minibatch, in grad_accumulation (x `smaller`) micro-batches; None if not finite."""
    optimizer.zero_grad(set_to_none=True)
    totals: dict[str, float] = {}
    finite = True
    micro_batches = minibatch.chunk(config.grad_accumulation * smaller)
    minibatch_tokens = mask[minibatch].sum().clamp_min(1)
    for rows in micro_batches:
        # Weight each micro-batch by its share of what the loss averages over (tokens, or sequences), so
        # the accumulated gradient equals the one of the whole minibatch at once.
        if config.loss_type == "token":
            share = (mask[rows].sum() / minibatch_tokens).item()
        else:
            share = len(rows) / len(minibatch)
        logp = hydra.token_logprobs(rows_of(batch, rows), role="actor", temperature=config.temperature)
        loss, loss_stats = grpo_policy_loss(
            logp,
            old_logp[rows],
            ref_logp[rows],
            advantages[rows],
            mask[rows],
            clip=config.clip,
            beta=config.kl_coef,
            loss_type=config.loss_type,
        )
        if not torch.isfinite(loss):
            log.warning("skipping an update: the loss is %s", loss.item())
            finite = False
            break
        (loss * share).backward()
        parts = {"rl/loss": loss.item(), **{f"rl/{k}": v for k, v in loss_stats.items()}}
        for name, value in parts.items():
            totals[name] = totals.get(name, 0.0) + value * share
    grad_norm = synced_step(optimizer, params, config.max_grad_norm, finite)  # averaged over processes
    return None if grad_norm is None else {**totals, "rl/grad_norm": grad_norm}
