"""ORPO on the Hydra: supervised fine-tuning and preference learning in one loss, with no reference model.

Odds Ratio Preference Optimization (Hong et al. 2024): the NLL of the chosen answer, plus lambda times the
-log sigmoid of the log odds ratio of chosen over rejected, with odds from the length-normalised likelihood
(training/losses.py: orpo_loss). No reference pass and no SFT stage before it: the SFT term is in the loss.
The step loop is training/pair_loop.py's:

    for step in 1..steps:
        batch   <- next shuffled pairs
        logp    <- actor mean token log p(chosen), log p(rejected), one forward pass over the stacked batch
        loss    <- -log P(chosen) - lambda log sigmoid(log odds(chosen) - log odds(rejected))
        update  <- AdamW on the actor adapter, gradient norm clipped
    evaluate on held-out pairs: accuracy of the log odds ratio's sign, and its mean
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lorarlhf.training.config import CommonConfig
from lorarlhf.training.losses import orpo_log_odds_ratio, orpo_loss
from lorarlhf.training.pair_loop import mean_logprobs, reference_free_trainer
from lorarlhf.validation import check_number


@dataclass
class ORPOConfig(CommonConfig):
    lr: float = 5e-5
    """AdamW learning rate of the actor adapter."""
    orpo_lambda: float = 0.1
    """lambda: the weight of the odds-ratio term against the chosen answer's NLL (the paper's 0.1)."""

    def __post_init__(self):
        super().__post_init__()
        check_number("orpo_lambda", self.orpo_lambda, low=0, open_low=True)


def _loss(config: ORPOConfig, scores: torch.Tensor, ref: None):
    """ORPO's loss of the (B, 4) pair scores, with each pair's log odds ratio (positive: the chosen wins)."""
    chosen, rejected = mean_logprobs(scores)
    return orpo_loss(chosen, rejected, lam=config.orpo_lambda), orpo_log_odds_ratio(chosen, rejected).detach()


train_orpo = reference_free_trainer("orpo", _loss)
