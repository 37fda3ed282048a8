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


class ShuffledBatches:
    """Endless batches: each epoch a fresh seeded permutation, so every unit is seen once per epoch.

    Its position is a small JSON-able state (`state_dict`), so a resumed run draws exactly the batches the
    interrupted one would have drawn next.
    """

    def __init__(self, units: list, batch_size: int, seed: int):
        self.units, self.batch_size = units, batch_size
        self.rng = random.Random(seed)
        self.order: list[int] = []  # the rest of the current epoch's permutation

    def __iter__(self) -> Iterator[list]:
        return self

    def __next__(self) -> list:
        if not self.order:
            self.order = list(range(len(self.units)))
            self.rng.shuffle(self.order)
        taken, self.order = self.order[: self.batch_size], self.order[self.batch_size :]
        return [self.units[i] for i in taken]

    def state_dict(self) -> dict:
        return {"rng": rng_state_to_json(self.rng.getstate()), "order": list(self.order)}

    def load_state_dict(self, state: dict) -> None:
        self.rng.setstate(rng_state_from_json(state["rng"]))
        self.order = list(state["order"])


def rng_state_to_json(state: tuple) -> list:
    """random.Random.getstate() as JSON-able lists."""
    version, internal, gauss = state
    return [version, list(internal), gauss]


def rng_state_from_json(state: list) -> tuple:
    version, internal, gauss = state
    return version, tuple(internal), gauss


def clipped_step(optimizer, params, max_grad_norm: float) -> float | None:
    """Clip the gradient's global norm and step; None, and no step, when the gradient is not finite."""
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    if not torch.isfinite(grad_norm):
        log.warning("skipping an update: the gradient norm is %s", grad_norm.item())
        optimizer.zero_grad(set_to_none=True)
        return None
    optimizer.step()
    return grad_norm.item()
