"""What every training stage shares: its returned record, the stream of shuffled batches, the optimizer step."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

log = logging.getLogger("lorarlhf.training")


@dataclass
class StageRun:
    """What a stage returns: one record per step (or per RL iteration) and the final metrics."""

    history: list[dict[str, float]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


def shuffled_batches(units: list, batch_size: int, rng: random.Random) -> Iterator[list]:
    """Endless batches: each epoch a fresh permutation, so every unit is seen once per epoch."""
    while True:
        order = list(range(len(units)))
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            yield [units[i] for i in order[start : start + batch_size]]


def clipped_step(optimizer, params, max_grad_norm: float) -> float | None:
    """Clip the gradient's global norm and step; None, and no step, when the gradient is not finite."""
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    if not torch.isfinite(grad_norm):
        log.warning("skipping an update: the gradient norm is %s", grad_norm.item())
        optimizer.zero_grad(set_to_none=True)
        return None
    optimizer.step()
    return grad_norm.item()
