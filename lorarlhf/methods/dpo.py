"""DPO and friends on the Hydra: the actor adapter learns from pairs directly, no reward model, no sampling.

Direct Preference Optimization (Rafailov et al. 2023): the policy's log-ratio to the reference is an
implicit reward, and the Bradley-Terry likelihood of the preferences under that reward is maximised. The
reference is the same base with adapters off (or the frozen sft adapter), so no second model is loaded.
Variants: conservative DPO (label smoothing), IPO, and CPL, which needs no reference at all (training/losses.py).

    optionally: ref_logp <- reference log-probs of every pair, once
    for step in 1..steps:
        batch     <- next shuffled pairs
        logp      <- actor log p(chosen), log p(rejected), one forward pass over the stacked batch
                     (in slices if memory runs out)
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
from lorarlhf.training.steps import StageRun
from lorarlhf.training.supervised_loop import SupervisedLoop, sliced_backward
from lorarlhf.validation import check_bool, check_choice, check_number

LOSSES = ("sigmoid", "ipo", "cpl")


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


def pair_logprobs(hydra, pairs: list[PreferencePair], role: str, max_length: int | None = None):
    """Summed response log-probs of chosen and rejected under `role`, one forward pass: (B,), (B,)."""
    prompts = [p.prompt for p in pairs]
    batch = hydra.encode(
        prompts + prompts, [p.chosen for p in pairs] + [p.rejected for p in pairs], max_length=max_length
    )
    logp = hydra.token_logprobs(batch, role=role).sum(dim=1)  # (2B,)
    return logp[: len(pairs)], logp[len(pairs) :]


@torch.no_grad()
def reference_logprobs(hydra, pairs: list[PreferencePair], config: DPOConfig) -> torch.Tensor:
    """(N, 2) reference log-probs of every pair's chosen and rejected answers, computed once."""
    rows = []
    for start in range(0, len(pairs), config.batch_size):
        chosen, rejected = pair_logprobs(
            hydra, pairs[start : start + config.batch_size], "reference", config.max_length
        )
        rows.append(torch.stack([chosen, rejected], dim=1))
    return torch.cat(rows)


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
    if not train_pairs:
        raise ValueError("no training pairs: DPO needs at least one preference pair")
    torch.manual_seed(config.seed)
    ref_table = (
        reference_logprobs(hydra, train_pairs, config) if config.precompute_ref and config.loss != "cpl" else None
    )
    params = hydra.trainable_parameters("actor")
    loop = SupervisedLoop("dpo", hydra, list(enumerate(train_pairs)), params, config, desc=f"dpo ({config.loss})",
                          on_step=on_step, progress=progress, checkpoints=checkpoints)  # fmt: skip

    hydra.disable_dropout()  # the policy and the reference pass must see the same network
    with hydra.train_mode():
        for step, rows in loop:
            pairs = [pair for _, pair in rows]

            def backward(pieces, rows=rows, pairs=pairs):  # the whole batch's gradient, in `pieces` slices
                ref = _reference(hydra, pairs, [i for i, _ in rows], ref_table, config, pieces)
                return sliced_backward(partial(_policy, hydra, config), pairs, partial(_loss, ref, config), pieces)

            loss, (margin, logp) = loop.update(step, backward)
            loop.log(step, {
                "dpo/loss": loss.item(),
                "dpo/accuracy": (margin > 0).float().mean().item(),
                "dpo/margin": margin.mean().item(),
                "dpo/chosen_logp": logp[:, 0].mean().item(),
                "dpo/rejected_logp": logp[:, 1].mean().item(),
            })  # fmt: skip
    return loop.finish(evaluate_dpo(hydra, eval_pairs, config) if eval_pairs else {})


def _policy(hydra, config: DPOConfig, pairs: list[PreferencePair]) -> torch.Tensor:
    """(B, 2): the actor's summed log-probs of each pair's chosen and rejected answers."""
    return torch.stack(pair_logprobs(hydra, pairs, "actor", config.max_length), dim=1)


@torch.no_grad()
def _reference(hydra, pairs, indices, ref_table, config: DPOConfig, pieces: int = 1) -> torch.Tensor | None:
    """(B, 2) reference log-probs of the pairs: looked up when precomputed, None for CPL (it has no reference)."""
    if config.loss == "cpl":
        return None
    if ref_table is not None:
        return ref_table[torch.tensor(indices)].to(hydra.device)
    size = -(-len(pairs) // max(pieces, 1))
    parts = [
        pair_logprobs(hydra, pairs[i : i + size], "reference", config.max_length) for i in range(0, len(pairs), size)
    ]
    return torch.cat([torch.stack(part, dim=1) for part in parts])


def _loss(ref: torch.Tensor | None, config: DPOConfig, logp: torch.Tensor):
    """The configured loss of the policy's (B, 2) log-probs, with (each pair's implicit-reward margin, the
    log-probs): positive margin = the chosen answer wins."""
    chosen, rejected = logp[:, 0], logp[:, 1]
    if config.loss == "cpl":
        margin = config.cpl_alpha * (chosen - config.cpl_lambda * rejected)
        return cpl_loss(chosen, rejected, alpha=config.cpl_alpha, lam=config.cpl_lambda), (
            margin.detach(),
            logp.detach(),
        )
    h = dpo_log_ratio_margin(chosen, rejected, ref[:, 0], ref[:, 1])
    loss = (
        ipo_loss(h, beta=config.beta)
        if config.loss == "ipo"
        else dpo_loss(h, beta=config.beta, label_smoothing=config.label_smoothing)
    )
    return loss, ((config.beta * h).detach(), logp.detach())


@torch.no_grad()
def evaluate_dpo(hydra, pairs: list[PreferencePair], config: DPOConfig) -> dict[str, float]:
    """Held-out implicit-reward accuracy (the chosen answer's implicit reward is higher) and mean margin."""
    margins = []
    for start in range(0, len(pairs), config.batch_size):
        batch = pairs[start : start + config.batch_size]
        _, (margin, _) = _loss(_reference(hydra, batch, [], None, config), config, _policy(hydra, config, batch))
        margins.append(margin.float().cpu())
    margin = torch.cat(margins)
    return {
        "dpo/eval_accuracy": (margin > 0).float().mean().item(),
        "dpo/eval_margin": margin.mean().item(),
        "dpo/eval_pairs": float(len(pairs)),
    }
