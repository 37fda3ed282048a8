"""What every training stage shares: its returned record, and the stream of shuffled batches it draws from."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field


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
