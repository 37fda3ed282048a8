"""SimPO on the Hydra: the length-normalised likelihood is the implicit reward, so no reference model.

Simple Preference Optimization (Meng et al. 2024): -log sigmoid of beta times the difference of the mean token
log-probs of chosen and rejected, less a target margin gamma (training/losses.py: simpo_loss). The reward is the
quantity generation ranks answers by, and dividing by the length keeps it from favouring long answers. The
step loop is training/pair_loop.py's:

    for step in 1..steps:
        batch   <- next shuffled pairs
        logp    <- actor mean token log p(chosen), log p(rejected), one forward pass over the stacked batch
        loss    <- -log sigmoid(beta (logp_chosen - logp_rejected) - gamma)
        update  <- AdamW on the actor adapter, gradient norm clipped
    evaluate on held-out pairs: implicit-reward accuracy and margin
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lorarlhf.methods.sft import SFTStageOptions
from lorarlhf.training.config import CommonConfig
from lorarlhf.training.losses import simpo_loss
from lorarlhf.training.pair_loop import mean_logprobs, reference_free_trainer
from lorarlhf.validation import check_number


@dataclass
class SimPOConfig(CommonConfig, SFTStageOptions):
    lr: float = 5e-5
    """AdamW learning rate of the actor adapter."""
    beta: float = 2.0
    """Scale of the reward, beta/|y| log pi(y|x) (the paper uses 2.0 to 2.5)."""
    gamma: float = 1.0
    """Target reward margin of chosen over rejected, >= 0 (the paper uses 0.3 to 1.6, about beta/2)."""

    def __post_init__(self):
        super().__post_init__()
        self._check_sft_stage()
        check_number("beta", self.beta, low=0, open_low=True)
        check_number("gamma", self.gamma, low=0)


def _loss(config: SimPOConfig, scores: torch.Tensor, ref: None):
    """SimPO's loss of the (B, 4) pair scores, with each pair's reward margin beta (mean logp_c - mean logp_r)."""
    chosen, rejected = mean_logprobs(scores)
    return simpo_loss(chosen, rejected, beta=config.beta, gamma=config.gamma), (
        config.beta * (chosen - rejected)
    ).detach()


train_simpo = reference_free_trainer("simpo", _loss)
