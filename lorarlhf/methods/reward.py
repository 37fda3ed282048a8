"""The reward-model stage: train the Hydra's reward role (reward adapter + reward head) on preferences.

InstructGPT (Ouyang et al. 2022, sec. 3.5): a scalar reward read at the last token of prompt + response,
trained so that sigmoid(r_chosen - r_rejected) is the probability the chosen answer is preferred. Only the
reward adapter and head train; the frozen base and the other roles' adapters are untouched. Options: margins
and pair weights, reward centering, a Plackett-Luce listwise objective for rankings, and the prompt-aware
utility of Song et al. (2023) against reward collapse (training/losses.py has the formulas).

    for step in 1..steps:
        batch   <- next shuffled pairs (or whole rankings, listwise)
        rewards <- reward role on [chosen; rejected] in one forward pass (in slices if memory runs out)
        loss    <- Bradley-Terry (+ centering) | Plackett-Luce | prompt-aware utility
        update  <- AdamW on the reward adapter + head, gradient norm clipped
    evaluate on the held-out prompts: accuracy, margin, calibration (ECE), per-prompt reward spread
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from lorarlhf.data import AGGREGATIONS, PreferencePair
from lorarlhf.training.config import CommonConfig
from lorarlhf.training.losses import (
    bradley_terry_loss,
    plackett_luce_loss,
    prompt_aware_utility_loss,
    reward_centering_loss,
)
from lorarlhf.training.steps import StageRun
from lorarlhf.training.supervised_loop import SupervisedLoop, sliced_backward
from lorarlhf.validation import check_bool, check_choice, check_int, check_number

log = logging.getLogger("lorarlhf.reward")


OBJECTIVES = ("pairwise", "listwise")
UTILITIES = ("log_sigmoid", "prompt_aware")


@dataclass
class RewardConfig(CommonConfig):
    objective: str = "pairwise"
    """"pairwise": Bradley-Terry on every pair. "listwise": Plackett-Luce on each record's full ranking
    (rankings and ratings; a plain pair is a ranking of two)."""
    utility: str = "log_sigmoid"
    """"log_sigmoid": the usual Bradley-Terry utility for every prompt. "prompt_aware" (Song et al. 2023):
    a linear utility on bounded rewards for pairs whose record says utility "closed", against reward
    collapse; log-sigmoid for the rest. Pairwise objective only."""
    center_coef: float = 0.0
    """Weight of the reward-centering penalty (r_c + r_r)^2 (Eisenstein et al. 2023 use 0.01); 0 disables."""
    aggregate: str = "majority"
    """How several annotators' votes on one pair become a preference: "majority" or "bradley_terry"."""
    weight_rankings: bool = False
    """Weight each ranking's K(K-1)/2 pairs by 1/C(K,2), as InstructGPT does, so big rankings do not dominate."""
    score_margin: bool = False
    """Use the rating gap of rated responses as the Bradley-Terry margin."""
    ece_bins: int = 10
    """Bins of the expected calibration error of sigmoid(r_c - r_r)."""

    def __post_init__(self):
        super().__post_init__()
        for name, allowed in (("objective", OBJECTIVES), ("utility", UTILITIES), ("aggregate", AGGREGATIONS)):
            check_choice(name, getattr(self, name), allowed)
        if self.utility == "prompt_aware" and self.objective != "pairwise":
            raise ValueError("utility='prompt_aware' works with objective='pairwise' only")
        check_number("center_coef", self.center_coef, low=0)
        check_int("ece_bins", self.ece_bins)
        for name in ("weight_rankings", "score_margin"):
            check_bool(name, getattr(self, name))

    def pair_options(self) -> dict:
        return dict(aggregate=self.aggregate, weight_rankings=self.weight_rankings, score_margin=self.score_margin)


@dataclass
class Ranking:
    """One prompt's responses, best first, rebuilt from the pairs of one source record."""

    prompt: str
    responses: list[str]


def train_reward_model(
    hydra,
    train_pairs: list[PreferencePair],
    config: RewardConfig,
    *,
    eval_pairs: list[PreferencePair] | None = None,
    on_step: Callable[[dict[str, float]], None] | None = None,
    progress: bool = True,
    checkpoints=None,
) -> StageRun:
    """Train the reward role on `train_pairs`; evaluate on `eval_pairs` when given.

    checkpoints: a lorarlhf.training.checkpoints.StageCheckpoints to save through and resume from."""
    if not train_pairs:
        raise ValueError("no training pairs: the reward model needs at least one preference pair")
    torch.manual_seed(config.seed)
    units = rankings_of(train_pairs) if config.objective == "listwise" else list(train_pairs)
    params = hydra.trainable_parameters("reward")
    loop = SupervisedLoop(
        "rm",
        hydra,
        units,
        params,
        config,
        desc="reward model",
        on_step=on_step,
        progress=progress,
        checkpoints=checkpoints,
    )

    with hydra.train_mode():
        for step, batch in loop:
            forward, loss_of = _objective(hydra, batch, config)
            loss, rewards = loop.update(step, partial(sliced_backward, forward, batch, loss_of))
            chosen, rejected = rewards[:, 0], rewards[:, 1]  # listwise: best vs second best, for the records
            loop.log(step, {
                "rm/loss": loss.item(),
                "rm/accuracy": (chosen > rejected).float().mean().item(),
                "rm/margin": (chosen - rejected).mean().item(),
            })  # fmt: skip

    if not eval_pairs:
        log.warning("no held-out pairs (eval_fraction=%s): rm/eval_* metrics are not reported", config.eval_fraction)
    return loop.finish(evaluate_reward_model(hydra, eval_pairs, config) if eval_pairs else {})


def _objective(hydra, batch: list, config: RewardConfig):
    """(forward, loss_of) of a batch: per-item rewards, and the configured loss of them with the rewards."""
    if config.objective == "listwise":
        lengths = torch.tensor([len(ranking.responses) for ranking in batch], device=hydra.device)
        width = int(lengths.max())

        def forward(rankings):  # (G, K): every ranking's rewards, best first, padded to the batch's widest
            rewards, _ = ranking_rewards(hydra, rankings, config.max_length)
            return torch.nn.functional.pad(rewards, (0, width - rewards.shape[1]))

        return forward, lambda rewards: (plackett_luce_loss(rewards, lengths), rewards.detach())

    def forward_pairs(pairs):  # (B, 2): rewards of chosen and rejected
        return torch.stack(pair_rewards(hydra, pairs, config.max_length), dim=1)

    return forward_pairs, lambda r: (_pairwise_loss(r[:, 0], r[:, 1], batch, config), r.detach())


def _pairwise_loss(chosen, rejected, pairs, config: RewardConfig) -> torch.Tensor:
    weight = torch.tensor([p.weight for p in pairs], dtype=chosen.dtype, device=chosen.device)
    margin = None
    if any(p.margin is not None for p in pairs):
        margin = torch.tensor([p.margin or 0.0 for p in pairs], dtype=chosen.dtype, device=chosen.device)
    if config.utility == "prompt_aware":
        closed = torch.tensor([p.utility == "closed" for p in pairs], device=chosen.device)
        loss = prompt_aware_utility_loss(chosen, rejected, closed, margin=margin, weight=weight)
    else:
        loss = bradley_terry_loss(chosen, rejected, margin=margin, weight=weight)
    if config.center_coef:
        loss = loss + config.center_coef * reward_centering_loss(chosen, rejected)
    return loss


# --------------------------------------------------------------------------- rewards of pairs and rankings


def pair_rewards(hydra, pairs: list[PreferencePair], max_length: int | None = None):
    """Rewards of chosen and rejected, both from ONE forward pass over the stacked batch: (B,), (B,)."""
    prompts = [p.prompt for p in pairs]
    batch = hydra.encode(
        prompts + prompts, [p.chosen for p in pairs] + [p.rejected for p in pairs], max_length=max_length
    )
    rewards = hydra.rewards(batch.input_ids, batch.attention_mask)  # (2B,)
    return rewards[: len(pairs)], rewards[len(pairs) :]


def ranking_rewards(hydra, rankings: list[Ranking], max_length: int | None = None):
    """Rewards of every response of every ranking, best first and right-padded: (G, K), lengths (G,)."""
    prompts = [r.prompt for r in rankings for _ in r.responses]
    responses = [text for r in rankings for text in r.responses]
    batch = hydra.encode(prompts, responses, max_length=max_length)
    flat = hydra.rewards(batch.input_ids, batch.attention_mask)  # (sum K,)
    lengths = torch.tensor([len(r.responses) for r in rankings], device=flat.device)
    width = int(lengths.max())
    rewards = flat.new_zeros(len(rankings), width)
    rows = torch.repeat_interleave(torch.arange(len(rankings), device=flat.device), lengths)
    cols = torch.cat([torch.arange(int(k), device=flat.device) for k in lengths])
    return rewards.index_put((rows, cols), flat), lengths


def rankings_of(pairs: list[PreferencePair]) -> list[Ranking]:
    """Group pairs by source record and order each record's responses by wins (a full ranking's order)."""
    groups: dict[object, list[PreferencePair]] = defaultdict(list)
    for i, pair in enumerate(pairs):
        groups[("record", pair.group) if pair.group is not None else ("pair", i)].append(pair)
    rankings = []
    for members in groups.values():
        wins: dict[str, int] = defaultdict(int)
        for pair in members:
            wins[pair.chosen] += 1
            wins[pair.rejected] += 0
        order = sorted(wins, key=lambda text: -wins[text])  # stable: ties keep first-seen order
        rankings.append(Ranking(members[0].prompt, order))
    return rankings


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_reward_model(hydra, pairs: list[PreferencePair], config: RewardConfig) -> dict[str, float]:
    """Held-out accuracy, mean margin, calibration and per-prompt reward spread."""
    chosen, rejected = [], []
    for start in range(0, len(pairs), config.batch_size):
        c, r = pair_rewards(hydra, pairs[start : start + config.batch_size], config.max_length)
        chosen.append(c.float().cpu())
        rejected.append(r.float().cpu())
    chosen, rejected = torch.cat(chosen), torch.cat(rejected)
    margin = chosen - rejected
    spreads = prompt_reward_spread(pairs, chosen, rejected)
    spread = torch.tensor(list(spreads.values()))
    return {
        "rm/eval_accuracy": (margin > 0).float().mean().item(),
        "rm/eval_margin": margin.mean().item(),
        "rm/eval_ece": expected_calibration_error(torch.sigmoid(margin), bins=config.ece_bins),
        "rm/eval_pairs": float(len(pairs)),
        "rm/prompt_spread_mean": spread.mean().item(),
        "rm/prompt_spread_std": spread.std().item() if len(spread) > 1 else 0.0,
    }


def expected_calibration_error(p_chosen: torch.Tensor, *, bins: int = 10) -> float:
    """ECE of the model's preference probabilities against the labels (the chosen side is the truth).

    Each pair is a prediction with confidence max(p, 1 - p), correct when p > 0.5; confidences fall in
    [0.5, 1], cut into `bins` equal bins; ECE = sum over bins of |accuracy - mean confidence| x bin share.
    """
    confidence = torch.maximum(p_chosen, 1 - p_chosen)
    correct = (p_chosen > 0.5).float()
    edges = torch.linspace(0.5, 1.0, bins + 1)
    index = torch.bucketize(confidence, edges[1:-1], right=True)  # 0..bins-1
    ece = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            ece += members.float().mean().item() * abs(
                correct[members].mean().item() - confidence[members].mean().item()
            )
    return ece


def prompt_reward_spread(pairs, chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, float]:
    """Per prompt, max - min reward over its distinct responses: collapse shows as the same spread everywhere."""
    rewards: dict[str, dict[str, float]] = defaultdict(dict)
    for pair, c, r in zip(pairs, chosen.tolist(), rejected.tolist(), strict=True):
        rewards[pair.prompt][pair.chosen] = c
        rewards[pair.prompt][pair.rejected] = r
    return {prompt: max(values.values()) - min(values.values()) for prompt, values in rewards.items()}
