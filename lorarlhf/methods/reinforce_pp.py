"""REINFORCE++ on the Hydra: PPO's tricks without its critic.

Hu 2025 ("REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models"): the KL to the
reference is a penalty in the reward of every token, a token's advantage is the reward-to-go from it, and
advantages are normalised over the whole batch, not per prompt as in GRPO, which the paper argues
overfits easy prompts (a prompt whose samples all but agree gets its tiny differences blown up to unit
scale). The update is PPO's clipped surrogate. Samples of one prompt are independent here; group_size
only sets how many are drawn.

    repeat until `steps` optimizer steps:
        rollout    <- actor samples group_size responses per prompt          (generate)
        scores     <- reward functions or the reward role                    (score)
        ref_logp   <- the base with adapters off (or the frozen sft adapter) (reference)
        old_logp   <- the actor before the update (a rollout used once: the update's own forward, detached)
        rewards_t  <- -kl_coef * KL_t(old || ref), + score at the last token
        advantages <- sum_{s >= t} rewards_s, whitened over the batch's response tokens
        for iteration in num_iterations, for minibatch:                      (train)
            loss <- -min(ratio A, clip(ratio) A), averaged over the batch's response tokens
            one AdamW step on the actor adapter
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from lorarlhf.methods.rloo import ReinforceConfig, ReinforceRollout, reinforce_policy_loss
from lorarlhf.training import distributed
from lorarlhf.training.reinforce_losses import kl_penalised_token_rewards, reward_to_go
from lorarlhf.training.rl_loop import RLLoop
from lorarlhf.training.rl_losses import masked_mean, masked_whiten
from lorarlhf.training.steps import StageRun


@dataclass
class ReinforcePPConfig(ReinforceConfig):
    kl_coef: float = 0.01
    """beta: weight of the per-token KL to the reference, subtracted from each token's reward (0.01, as the
    paper's OpenRLHF runs: a penalty on every token adds up over a response, and at 0.05 it drowns a reward
    of unit scale within a few dozen steps)."""


def train_reinforce_pp(
    hydra,
    prompts: list[str],
    config: ReinforcePPConfig,
    *,
    reward_fn=None,
    columns: dict[str, list] | None = None,
    on_step=None,
    progress=True,
    checkpoints=None,
) -> StageRun:
    """Run REINFORCE++ on `prompts` until `config.steps` optimizer steps; rewards from `reward_fn` or the
    reward role.

    columns: the prompts' other fields (e.g. an answer), one list each aligned with `prompts`, passed to the
    reward functions that take them. checkpoints: a lorarlhf.training.checkpoints.StageCheckpoints to save
    through (between rollouts) and resume from."""
    params = hydra.trainable_parameters("actor")
    loop = RLLoop("reinforce_pp", hydra, prompts, params, config, reward_fn=reward_fn, columns=columns,
                  group_size=config.group_size, on_step=on_step, progress=progress,
                  checkpoints=checkpoints)  # fmt: skip

    for scored in loop:
        batch, mask = scored.batch, scored.mask  # (B*G, T)
        rollout = ReinforceRollout.scored(loop, hydra, batch, config, partial(_advantages, scored, config))
        with loop.training():
            for minibatch in loop.minibatches(config.num_iterations, config.num_minibatches):
                loop.update(minibatch, partial(reinforce_policy_loss, hydra, batch, rollout, config))

        old = rollout.final_targets()
        loop.log({
            "rl/kl": ((old.logp - rollout.ref_logp) * mask).sum(dim=1).mean().item(),  # k1, per sequence
            **old.logged,
            "rl/entropy": masked_mean(old.entropy, mask).item(),
        })  # fmt: skip
    return loop.finish()


def _advantages(scored, config: ReinforcePPConfig, kl):
    """Reward-to-go of the KL-penalised token rewards, whitened over the batch: (B*G, T), and their mean return."""
    mask = scored.mask
    token_rewards = kl_penalised_token_rewards(scored.rewards, kl, mask, kl_coef=config.kl_coef)  # (B*G, T)
    returns = reward_to_go(token_rewards, mask)  # (B*G, T)
    # The whole batch, every process's share included: one mean and one scale for all prompts.
    whiten = masked_whiten if distributed.world_size() == 1 else distributed.global_masked_whiten
    return whiten(returns, mask), {"rl/return_mean": masked_mean(returns, mask).item()}
