"""KTO on the Hydra: the actor adapter learns from unpaired thumbs up and down, no pairs, no reward model.

Kahneman-Tversky Optimization (Ethayarajh et al. 2024): the log-ratio of the policy to the reference is an
implicit reward r, and a prospect-theory value function rewards a desirable completion for rising above a
reference point z_ref and an undesirable one for falling below it, weighted lambda_D and lambda_U
(training/losses.py: kto_loss). z_ref is the policy's KL to the reference, estimated as in the paper from
mismatched pairs within the batch: each prompt with the next row's completion. The reference is the base
with adapters off (or the frozen sft adapter), as for DPO.

    for step in 1..steps:
        batch     <- next shuffled labelled completions (prompt x_i, completion y_i, label)
        z_ref     <- mean log pi(y_{i+1}|x_i) - log ref(y_{i+1}|x_i), clamped at 0, no gradient
        ref_logp  <- reference log ref(y_i|x_i) (adapters off)
        logp      <- actor log pi(y_i|x_i), one forward pass over the batch (in slices if memory runs out)
        loss      <- KTO: lambda_y - v(x, y) around z_ref
        update    <- AdamW on the actor adapter, gradient norm clipped
    evaluate on held-out labelled completions: how often the implicit reward's sign is the label
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

import torch

from lorarlhf.data import Feedback
from lorarlhf.methods.sft import SFTStageOptions
from lorarlhf.training.config import CommonConfig
from lorarlhf.training.losses import kto_loss, kto_reference_point
from lorarlhf.training.steps import StageRun
from lorarlhf.training.supervised_loop import SupervisedLoop, sliced_backward
from lorarlhf.validation import check_number

log = logging.getLogger("lorarlhf.kto")

# The paper's recommended range of lambda_D n_D / (lambda_U n_U) (section 4.3), and how far outside it a run is
# warned about: a factor of 2 beyond either end, where one kind of label dominates the gradient.
RECOMMENDED_RATIO = (1.0, 4 / 3)
WARN_FACTOR = 2.0


@dataclass
class KTOConfig(CommonConfig, SFTStageOptions):
    lr: float = 5e-5
    """AdamW learning rate of the actor adapter."""
    beta: float = 0.1
    """Scale of the implicit reward beta (log pi - log ref), and so how far the policy may move from the
    reference."""
    desirable_weight: float = 1.0
    """lambda_D: the weight of thumbs-up completions. The paper recommends lambda_D n_D / (lambda_U n_U) in
    [1, 4/3] for n_D thumbs up and n_U thumbs down; the run logs the ratio and warns far outside it."""
    undesirable_weight: float = 1.0
    """lambda_U: the weight of thumbs-down completions."""

    def __post_init__(self):
        super().__post_init__()
        self._check_sft_stage()
        for name in ("beta", "desirable_weight", "undesirable_weight"):
            check_number(name, getattr(self, name), low=0, open_low=True)
        if self.batch_size < 2:  # z_ref pairs each prompt with another row's completion
            raise ValueError(
                f"batch_size={self.batch_size} must be at least 2 for KTO: its KL reference point pairs each "
                "prompt with another row's completion in the batch"
            )


def train_kto(
    hydra,
    train_feedback: list[Feedback],
    config: KTOConfig,
    *,
    eval_feedback=None,
    on_step=None,
    progress=True,
    checkpoints=None,
) -> StageRun:
    """Train the actor adapter on labelled completions by KTO; evaluate on `eval_feedback` when given.

    checkpoints: a lorarlhf.training.checkpoints.StageCheckpoints to save through and resume from."""
    if not train_feedback:
        raise ValueError("no training rows: KTO needs at least one labelled completion (prompt, completion, label)")
    check_weighting(train_feedback, config)
    torch.manual_seed(config.seed)
    params = hydra.trainable_parameters("actor")
    loop = SupervisedLoop("kto", hydra, list(train_feedback), params, config, on_step=on_step, progress=progress,
                          checkpoints=checkpoints)  # fmt: skip
    policy = partial(_logprobs, hydra, config, "actor")

    hydra.disable_dropout()  # the policy and the reference pass must see the same network
    with hydra.train_mode():
        for step, rows in loop:

            def backward(pieces, rows=rows):  # the whole batch's gradient, in `pieces` slices
                z_ref = reference_point(hydra, rows, config, pieces)
                with torch.no_grad():
                    ref = _in_slices(partial(_logprobs, hydra, config, "reference"), rows, pieces)  # (B,)
                loss_of = partial(_loss, config, ref, _labels(rows, hydra.device), z_ref)
                return sliced_backward(policy, rows, loss_of, pieces)

            loss, (reward, z_ref) = loop.update(step, backward)
            up = _labels(rows, reward.device)
            loop.log(step, {
                "kto/loss": loss.item(),
                "kto/accuracy": ((reward > 0) == up).float().mean().item(),
                "kto/kl": z_ref.item(),
                "kto/reward_desirable": _mean(reward[up]),
                "kto/reward_undesirable": _mean(reward[~up]),
            })  # fmt: skip
    return loop.finish(evaluate_kto(hydra, eval_feedback, config) if eval_feedback else {})


def check_weighting(rows: list[Feedback], config: KTOConfig) -> float:
    """lambda_D n_D / (lambda_U n_U) of the training rows, logged, and warned about (with weights that would
    fix it) when it is more than WARN_FACTOR outside the paper's RECOMMENDED_RATIO."""
    n_up = sum(row.label for row in rows)
    n_down = len(rows) - n_up
    low, high = RECOMMENDED_RATIO
    ratio = config.desirable_weight * n_up / (config.undesirable_weight * n_down) if n_down else float("inf")
    log.info(
        "kto: %d desirable, %d undesirable rows; lambda_D n_D / (lambda_U n_U) = %.3g (recommended [%g, %.3g])",
        n_up, n_down, ratio, low, high,
    )  # fmt: skip
    if not low / WARN_FACTOR <= ratio <= high * WARN_FACTOR:
        hint = (
            f"; undesirable_weight in [{config.desirable_weight * n_up / (high * n_down):.3g}, "
            f"{config.desirable_weight * n_up / (low * n_down):.3g}] would bring it into range"
            if n_up and n_down
            else f": the rows have no {'undesirable' if n_up else 'desirable'} completions"
        )
        log.warning(
            "kto: lambda_D n_D / (lambda_U n_U) = %.3g (%d desirable x %g, %d undesirable x %g) is far outside "
            "the paper's recommended [%g, %.3g]%s",
            ratio, n_up, config.desirable_weight, n_down, config.undesirable_weight, low, high, hint,
        )  # fmt: skip
    return ratio


def _logprobs(hydra, config: KTOConfig, role: str, rows: list[Feedback]) -> torch.Tensor:
    """(B,) summed log-probs of each row's completion given its prompt under `role`."""
    batch = hydra.encode([r.prompt for r in rows], [r.completion for r in rows], max_length=config.max_length)
    return hydra.token_logprobs(batch, role=role).sum(dim=1)


def mismatched(rows: list[Feedback]) -> list[Feedback]:
    """Each row's prompt with the next row's completion (the last with the first): the pairs z_ref is
    estimated from, unrelated by construction, so their log-ratio measures drift and not the labels."""
    return [Feedback(row.prompt, rows[(i + 1) % len(rows)].completion, row.label) for i, row in enumerate(rows)]


@torch.no_grad()
def reference_point(hydra, rows: list[Feedback], config: KTOConfig, pieces: int = 1) -> torch.Tensor:
    """z_ref of the batch: kto_reference_point of the mismatched pairs' log-ratios (a scalar, no gradient)."""
    pairs = mismatched(rows)
    policy = _in_slices(partial(_logprobs, hydra, config, "actor"), pairs, pieces)
    ref = _in_slices(partial(_logprobs, hydra, config, "reference"), pairs, pieces)
    return kto_reference_point(policy - ref)


def _in_slices(forward, rows: list, pieces: int) -> torch.Tensor:
    size = -(-len(rows) // max(pieces, 1))
    return torch.cat([forward(rows[i : i + size]) for i in range(0, len(rows), size)])


def _labels(rows: list[Feedback], device) -> torch.Tensor:
    return torch.tensor([row.label for row in rows], dtype=torch.bool, device=device)


def _loss(config: KTOConfig, ref: torch.Tensor, desirable: torch.Tensor, z_ref: torch.Tensor, logp: torch.Tensor):
    """KTO's loss of the policy's (B,) log-probs, with (each row's implicit reward beta r, z_ref)."""
    log_ratio = logp - ref
    loss = kto_loss(
        log_ratio, desirable, z_ref, beta=config.beta, desirable_weight=config.desirable_weight,
        undesirable_weight=config.undesirable_weight,
    )  # fmt: skip
    return loss, ((config.beta * log_ratio).detach(), z_ref)


def _mean(values: torch.Tensor) -> float:
    return values.mean().item() if values.numel() else float("nan")


@torch.no_grad()
def evaluate_kto(hydra, rows: list[Feedback], config: KTOConfig) -> dict[str, float]:
    """Held-out accuracy of the implicit reward's sign (positive for a thumbs up, negative for a thumbs down),
    the mean reward of each kind, and z_ref over the held-out batches."""
    rewards, kls = [], []
    for start in range(0, len(rows), config.batch_size):
        batch = rows[start : start + config.batch_size]
        logp = _logprobs(hydra, config, "actor", batch) - _logprobs(hydra, config, "reference", batch)
        rewards.append((config.beta * logp).float().cpu())
        kls.append(reference_point(hydra, batch, config).item())
    reward, up = torch.cat(rewards), _labels(rows, "cpu")
    return {
        "kto/eval_accuracy": ((reward > 0) == up).float().mean().item(),
        "kto/eval_reward_desirable": _mean(reward[up]),
        "kto/eval_reward_undesirable": _mean(reward[~up]),
        "kto/eval_kl": sum(kls) / len(kls),
        "kto/eval_rows": float(len(rows)),
    }
