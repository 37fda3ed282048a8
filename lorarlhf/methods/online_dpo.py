"""Online DPO on the Hydra: DPO on pairs the actor samples itself, ranked by the reward as they come.

Guo et al. 2024 ("Direct Language Model Alignment from Online AI Feedback"): offline DPO learns from pairs
another policy wrote, so its preferences grow stale as the policy moves; online DPO samples fresh
responses from the current policy at every step and lets a judge (there an LLM, here the reward adapter
trained first from pairs, or a reward function) pick which wins. Here each prompt gets group_size
samples, and the best and the worst of them form its pair; a prompt whose best and worst tie says
nothing and is left out (a rollout where every prompt ties is skipped; max_tied_rollouts of them in a row
end the stage early, since the reward no longer tells the policy's samples apart). The loss is DPO's (or
IPO's, or conservative DPO's) against the reference, the base with adapters off (or the frozen sft adapter).

    repeat until `steps` optimizer steps:
        rollout   <- actor samples group_size responses per prompt           (generate)
        scores    <- reward functions or the reward role                     (score)
        pairs     <- per prompt: (best, worst) response, ties left out
        ref_logp  <- summed reference log-probs of the pairs' responses      (reference)
        for minibatch of the pairs:                                          (train)
            h    <- [log pi(y_c) - log ref(y_c)] - [log pi(y_r) - log ref(y_r)]
            loss <- DPO(h) | IPO(h)
            one AdamW step on the actor adapter
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

import torch

from lorarlhf.methods.rl_options import RLConfig
from lorarlhf.training.losses import dpo_log_ratio_margin, dpo_loss, ipo_loss
from lorarlhf.training.rl_loop import RLLoop, in_chunks, rows_of
from lorarlhf.training.steps import StageRun
from lorarlhf.validation import check_choice, check_int, check_number

LOSSES = ("sigmoid", "ipo")

log = logging.getLogger("lorarlhf.rl")


@dataclass
class OnlineDPOConfig(RLConfig):
    lr: float = 5e-5
    """AdamW learning rate of the actor adapter (DPO's default)."""
    kl_coef: float = 0.1
    """beta of the DPO loss: the strength of the KL constraint to the reference (the implicit reward's scale)."""
    group_size: int = 4
    """Responses sampled per prompt; its best and worst form the prompt's pair (the paper samples 2)."""
    loss: str = "sigmoid"
    """"sigmoid" (DPO) or "ipo" (IPO)."""
    label_smoothing: float = 0.0
    """Conservative DPO: the assumed probability that the reward ranked a pair wrongly, in [0, 0.5)."""
    num_minibatches: int = 1
    """Minibatches each rollout's pairs are cut into; each is one optimizer step."""
    max_tied_rollouts: int = 8
    """Rollouts in a row in which every prompt's samples tie on reward (no pair to learn from) before the stage
    stops early: the reward no longer tells the policy's samples apart (it has converged, or the reward is flat)."""

    def __post_init__(self):
        super().__post_init__()
        for name in ("group_size", "num_minibatches", "max_tied_rollouts"):
            check_int(name, getattr(self, name))
        if self.group_size < 2:
            raise ValueError(f"group_size={self.group_size} must be >= 2: a pair needs two samples of a prompt")
        check_number("kl_coef", self.kl_coef, low=0, open_low=True)  # DPO's beta: IPO divides by it
        check_choice("loss", self.loss, LOSSES)
        check_number("label_smoothing", self.label_smoothing, low=0, high=0.5, open_high=True)
        if self.label_smoothing and self.loss != "sigmoid":
            raise ValueError(
                f"label_smoothing={self.label_smoothing} applies to loss='sigmoid' only, not {self.loss!r}"
            )
        if self.num_minibatches > self.batch_size:
            raise ValueError(
                f"num_minibatches={self.num_minibatches} must be <= batch_size={self.batch_size}: a rollout gives at"
                " most one pair per prompt"
            )

    @property
    def samples_per_prompt(self) -> int:
        return self.group_size


def best_and_worst(rewards: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of each prompt's best and worst sample, for the prompts whose best beats their worst: (P,), (P,).

    rewards: (B,), laid out as B / group_size consecutive groups of one prompt's samples. Among equal
    rewards the first sample wins, so the choice is deterministic."""
    grouped = rewards.view(-1, group_size)  # (B / G, G)
    best, worst = grouped.argmax(dim=1), grouped.argmin(dim=1)  # (B / G,)
    offsets = torch.arange(grouped.shape[0], device=rewards.device) * group_size
    kept = grouped.amax(dim=1) > grouped.amin(dim=1)  # a tie says nothing
    return (offsets + best)[kept], (offsets + worst)[kept]


def train_online_dpo(
    hydra,
    prompts: list[str],
    config: OnlineDPOConfig,
    *,
    reward_fn=None,
    columns: dict[str, list] | None = None,
    on_step=None,
    progress=True,
    checkpoints=None,
) -> StageRun:
    """Run online DPO on `prompts` until `config.steps` optimizer steps; rewards from `reward_fn` or the
    reward role.

    columns: the prompts' other fields (e.g. an answer), one list each aligned with `prompts`, passed to the
    reward functions that take them. checkpoints: a lorarlhf.training.checkpoints.StageCheckpoints to save
    through (between rollouts) and resume from."""
    params = hydra.trainable_parameters("actor")
    loop = RLLoop("online_dpo", hydra, prompts, params, config, reward_fn=reward_fn, columns=columns,
                  group_size=config.group_size, on_step=on_step, progress=progress,
                  checkpoints=checkpoints)  # fmt: skip

    tied = 0  # rollouts in a row without a pair
    for scored in loop:  # B prompts x G samples each, as B*G rows
        chosen, rejected = best_and_worst(scored.rewards, config.group_size)  # (P,) rows each
        tied = 0 if len(chosen) else tied + 1
        if tied >= config.max_tied_rollouts:
            log.warning("online_dpo: every prompt's samples tied on reward in %d rollouts in a row; stopping at step"
                        " %d of %d", tied, loop.steps, config.steps)  # fmt: skip
            break
        if tied:
            continue  # nothing to learn from this rollout
        pairs = rows_of(scored.batch, torch.cat([chosen, rejected]))  # (2P, T): chosen rows, then rejected
        ref_logp, old_logp = loop.scoring_passes(partial(_scoring_passes, hydra, pairs, config))  # (2P,) each

        with loop.training():
            for minibatch in torch.randperm(len(chosen)).chunk(config.num_minibatches):
                if loop.steps >= config.steps:
                    break
                loop.update(minibatch, partial(_dpo_loss, hydra, pairs, ref_logp, config), per_token=False)

        n = len(chosen)
        margin = config.kl_coef * dpo_log_ratio_margin(old_logp[:n], old_logp[n:], ref_logp[:n], ref_logp[n:])
        loop.log({
            "rl/kl": (old_logp - ref_logp).mean().item(),  # k1 per sequence, over the pairs' responses
            "online_dpo/pairs": float(n),
            "online_dpo/chosen_reward": scored.rewards[chosen].mean().item(),
            "online_dpo/rejected_reward": scored.rewards[rejected].mean().item(),
            "online_dpo/margin": margin.mean().item(),  # beta h before the update
            "online_dpo/accuracy": (margin > 0).float().mean().item(),
        })  # fmt: skip
    return loop.finish()


def _scoring_passes(hydra, pairs, config: OnlineDPOConfig, chunks: int):
    """(2P,) summed log-probs of the pairs' responses under the reference and the actor before the update, in
    `chunks` row slices."""
    t, logprobs = config.temperature, hydra.token_logprobs
    ref_logp = in_chunks(pairs, chunks, logprobs, role="reference", temperature=t).sum(dim=1)
    return ref_logp, in_chunks(pairs, chunks, logprobs, role="actor", temperature=t).sum(dim=1)


def _dpo_loss(hydra, pairs, ref_logp, config: OnlineDPOConfig, rows):
    """The configured DPO loss of pairs `rows` under the current actor, with its margin and accuracy."""
    n = pairs.input_ids.shape[0] // 2
    both = torch.cat([rows, rows + n])  # the rows' chosen responses, then their rejected ones
    logp = hydra.token_logprobs(rows_of(pairs, both), role="actor", temperature=config.temperature).sum(dim=1)
    h = dpo_log_ratio_margin(logp[: len(rows)], logp[len(rows) :], ref_logp[rows], ref_logp[rows + n])  # (R,)
    if config.loss == "ipo":
        loss = ipo_loss(h, beta=config.kl_coef)
    else:
        loss = dpo_loss(h, beta=config.kl_coef, label_smoothing=config.label_smoothing)
    return loss, {"online_dpo/loss": loss.item(), "online_dpo/update_accuracy": (h > 0).float().mean().item()}
