"""What every training stage's steps share: the run record a stage returns, AdamW and its schedule, the
guarded, clipped, process-averaged optimizer step, the guard that keeps non-finite numbers away from the
weights, and the out-of-memory backoff. The supervised loop and the RL loop are both built on these."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch

from lorarlhf.training import distributed

log = logging.getLogger("lorarlhf.training")


@dataclass
class StageRun:
    """What a stage returns: one record per step (or per RL iteration) and the final metrics."""

    history: list[dict[str, float]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


def rng_state_to_json(state: tuple) -> list:
    """random.Random.getstate() as JSON-able lists."""
    version, internal, gauss = state
    return [version, list(internal), gauss]


def rng_state_from_json(state: list) -> tuple:
    version, internal, gauss = state
    return version, tuple(internal), gauss


def make_optimizer(params, config):
    """AdamW on `params` and its learning-rate schedule: linear warmup over warmup_steps, then constant, or
    a linear or cosine decay to 0 at config.steps. The schedule advances once per applied update."""
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    warmup, total, shape = config.warmup_steps, config.steps, config.lr_schedule

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if shape == "linear":
            return 1.0 - progress
        if shape == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def clipped_step(optimizer, params, max_grad_norm: float) -> float | None:
    """Clip the gradient's global norm and step; None, and no step, when the gradient is not finite."""
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    if not torch.isfinite(grad_norm):
        log.warning("skipping an update: the gradient norm is %s", grad_norm.item())
        optimizer.zero_grad(set_to_none=True)
        return None
    optimizer.step()
    return grad_norm.item()


class NonFiniteError(RuntimeError):
    """Training stopped: too many steps in a row had a NaN or infinite reward, loss or gradient."""


class NonFiniteGuard:
    """Counts steps skipped for a NaN or infinite reward, loss or gradient; stops the run after `limit` in a row.

    One bad batch is skipped and training goes on; a run that only produces NaN stops with an error that
    says where the NaN came from, instead of training on garbage or looping forever.
    """

    def __init__(self, stage: str, limit: int):
        self.stage, self.limit = stage, limit
        self.total, self.in_row = 0, 0

    def skip(self, reason: str) -> None:
        self.total, self.in_row = self.total + 1, self.in_row + 1
        log.warning("%s: skipping a step: %s", self.stage, reason)
        if self.in_row >= self.limit:
            raise NonFiniteError(
                f"{self.stage}: {self.in_row} steps in a row were skipped, the last because {reason}; stopping the "
                "run (check the data and the reward for NaN/inf, or lower lr)"
            )

    def ok(self) -> None:
        self.in_row = 0

    def metrics(self) -> dict[str, float]:
        return {f"{self.stage}/skipped_nonfinite_steps": float(self.total)}

    def state_dict(self) -> dict:
        return {"total": self.total, "in_row": self.in_row}

    def load_state_dict(self, state: dict) -> None:
        self.total, self.in_row = int(state["total"]), int(state["in_row"])


def synced_step(optimizer, params, max_grad_norm: float, finite: bool = True) -> float | None:
    """Average the gradients over processes, clip and step; None, and no step on any process, when any
    process's loss was not finite (`finite` False) or the averaged gradient is not."""
    if distributed.world_size() > 1:
        finite = distributed.mean(float(finite)) == 1.0  # every process takes the same branch
        if finite:
            distributed.average_gradients(params)
    if not finite:
        optimizer.zero_grad(set_to_none=True)
        return None
    return clipped_step(optimizer, params, max_grad_norm)


def guarded_step(loss: torch.Tensor, optimizer, params, max_grad_norm: float, guard: NonFiniteGuard, where: str):
    """A clipped optimizer step on the gradients the backward of `loss` left (averaged over processes),
    unless a loss or a gradient is not finite: then nothing is applied, the guard counts it, and None is
    returned instead of the gradient norm."""
    grad_norm = synced_step(optimizer, params, max_grad_norm, finite=bool(torch.isfinite(loss)))
    if not torch.isfinite(loss):
        guard.skip(f"the loss was {loss.item()} at {where}")
    elif grad_norm is None:
        guard.skip(f"a gradient (or another process's loss) was not finite at {where} (the loss was {loss.item():.4g})")
    else:
        guard.ok()
    return grad_norm


class OutOfMemoryBackoff:
    """After a CUDA out-of-memory error, cut the work into twice as many pieces and retry it, up to `limit` times.

    `run(fn, what)` calls fn(factor), factor being how many times smaller than configured each micro-batch
    should be (1 at first). The effective batch never changes, only how much of it is in memory at once,
    and no data is skipped; the factor stays raised for the rest of the stage (one long prompt that did not
    fit is likely to come back).
    """

    def __init__(self, stage: str, limit: int = 4):
        self.stage, self.limit = stage, limit
        self.factor = 1

    def run(self, fn, what: str):
        while True:
            try:
                return fn(self.factor)
            except torch.OutOfMemoryError as error:
                if self.factor >= 2**self.limit:
                    raise RuntimeError(
                        f"{self.stage}: out of memory in {what} even with micro-batches {self.factor}x smaller; "
                        "lower batch_size, max_length or max_new_tokens"
                    ) from error
                self.factor *= 2
                log.warning(
                    "%s: out of memory in %s; retrying with micro-batches %dx smaller", self.stage, what, self.factor
                )
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
