"""DPO and friends on the Hydra: the actor adapter learns from pairs directly, no reward model, no sampling.

Direct Preference Optimization (Rafailov et al. 2023): the policy's log-ratio to the reference is an
implicit reward, and the Bradley-Terry likelihood of the preferences under that reward is maximised. The
reference is the same base with adapters off (or the frozen sft adapter), so no second model is loaded.
Variants: conservative DPO (label smoothing), IPO, and CPL, which needs no reference at all (training/losses.py).
The step loop is training/pair_loop.py's:

    optionally: ref_logp <- reference log-probs of every pair, once
    for step in 1..steps:
        batch     <- next shuffled pairs
        logp      <- actor log p(chosen), log p(rejected), one forward pass over the stacked batch
        ref_logp  <- reference log-probs (adapters off), unless precomputed or CPL
        loss      <- DPO | IPO | CPL on them
        update    <- AdamW on the actor adapter, gradient norm clipped
    evaluate on held-out prompts: implicit-reward accuracy and margin
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from lorarlhf.data import PreferencePair
from lorarlhf.methods.sft import SFTStageOptions
from lorarlhf.training.config import CommonConfig
from lorarlhf.training.losses import cpl_loss, dpo_log_ratio_margin, dpo_loss, ipo_loss
from lorarlhf.training.pair_loop import evaluate_pairwise, pair_logprobs, reference_logprobs, train_pairwise
from lorarlhf.training.steps import StageRun
from lorarlhf.validation import check_bool, check_choice, check_number

LOSSES = ("sigmoid", "ipo", "cpl")
# pair_logprobs and reference_logprobs live in training/pair_loop.py and are DPO's public names too
__all__ = ["LOSSES", "DPOConfig", "evaluate_dpo", "pair_logprobs", "reference_logprobs", "train_dpo"]


@dataclass
class DPOConfig(CommonConfig, SFTStageOptions):
    lr: float = 5e-5
    """AdamW learning rate of the actor adapter."""
    loss: str = "sigmoid"
    """"sigmoid" (DPO), "ipo" (IPO), or "cpl" (Contrastive Preference Learning: no reference model)."""
    beta: float = 0.1
    """Strength of the KL constraint to the reference (DPO, IPO): the scale of the implicit reward."""
    label_smoothing: float = 0.0
    """Conservative DPO: the assumed probability that a label is flipped, in [0, 0.5)."""
    cpl_alpha: float = 0.1
    """CPL temperature alpha: the regret of a response is alpha x its log-prob."""
    cpl_lambda: float = 1.0
    """CPL conservative bias on the rejected response, in (0, 1]."""
    precompute_ref: bool = False
    """Compute the reference log-probs of every pair once before training instead of at every step."""

    def __post_init__(self):
        super().__post_init__()
        self._check_sft_stage()
        check_choice("loss", self.loss, LOSSES)
        for name in ("beta", "cpl_alpha"):
            check_number(name, getattr(self, name), low=0, open_low=True)
        check_number("label_smoothing", self.label_smoothing, low=0, high=0.5, open_high=True)
        check_number("cpl_lambda", self.cpl_lambda, low=0, high=1, open_low=True)
        check_bool("precompute_ref", self.precompute_ref)


def train_dpo(
    hydra,
    train_pairs: list[PreferencePair],
    config: DPOConfig,
    *,
    eval_pairs=None,
    on_step=None,
    progress=True,
    checkpoints=None,
) -> StageRun:
    """Train the actor adapter on preference pairs by config.loss; evaluate on `eval_pairs` when given.

    checkpoints: a lorarlhf.training.checkpoints.StageCheckpoints to save through and resume from."""
    reference = config.loss != "cpl"  # CPL has no reference
    ref_table = reference_logprobs(hydra, train_pairs, config) if config.precompute_ref and reference else None
    return train_pairwise(
        "dpo", partial(_loss, config), hydra, train_pairs, config, reference=reference, ref_table=ref_table,
        desc=f"dpo ({config.loss})", eval_pairs=eval_pairs, on_step=on_step, progress=progress,
        checkpoints=checkpoints,
    )  # fmt: skip


def _loss(config: DPOConfig, scores: torch.Tensor, ref: torch.Tensor | None):
    """The configured loss of the policy's (B, 4) pair scores, with each pair's implicit-reward margin:
    positive margin = the chosen answer wins."""
    chosen, rejected = scores[:, 0], scores[:, 1]
    if config.loss == "cpl":
        margin = config.cpl_alpha * (chosen - config.cpl_lambda * rejected)
        return cpl_loss(chosen, rejected, alpha=config.cpl_alpha, lam=config.cpl_lambda), margin.detach()
    h = dpo_log_ratio_margin(chosen, rejected, ref[:, 0], ref[:, 1])
    loss = (
        ipo_loss(h, beta=config.beta)
        if config.loss == "ipo"
        else dpo_loss(h, beta=config.beta, label_smoothing=config.label_smoothing)
    )
    return loss, (config.beta * h).detach()


def evaluate_dpo(hydra, pairs: list[PreferencePair], config: DPOConfig) -> dict[str, float]:
    """Held-out implicit-reward accuracy (the chosen answer's implicit reward is higher) and mean margin."""
    return evaluate_pairwise("dpo", partial(_loss, config), hydra, pairs, config, reference=config.loss != "cpl")
