"""The step loop of the supervised stages (SFT, reward model, DPO): the stream of shuffled batches, the backward
of a batch in slices, and `SupervisedLoop`, which runs them on the shared steps of steps.py."""

from __future__ import annotations

import random
from collections.abc import Iterator

import torch
from tqdm.auto import tqdm

from lorarlhf.training import distributed
from lorarlhf.training.steps import (
    NonFiniteGuard,
    OutOfMemoryBackoff,
    StageRun,
    guarded_step,
    make_optimizer,
    rng_state_from_json,
    rng_state_to_json,
)


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


def sliced_backward(forward, items: list, loss_of, pieces: int = 1):
    """Backpropagate loss_of(forward(items)) holding the activations of 1/pieces of the batch at a time.

    forward(items) gives per-item scalars (n, k); loss_of(scalars) gives (loss, stats). With pieces > 1 the
    scalars are computed slice by slice without autograd, the loss's gradient with respect to them is taken
    on the whole batch, and each slice runs again and is backpropagated with its rows of that gradient: the
    gradient of one pass, for any loss of per-item scalars, at the price of one more forward pass. A loss
    that is not finite is returned without a backward. Returns (loss, stats), the loss detached.
    """
    if pieces <= 1 or len(items) <= 1:
        loss, stats = loss_of(forward(items))
        if torch.isfinite(loss):
            loss.backward()
        return loss.detach(), stats
    size = -(-len(items) // pieces)  # ceil
    slices = [items[i : i + size] for i in range(0, len(items), size)]
    with torch.no_grad():
        scalars = torch.cat([forward(part) for part in slices])
    scalars.requires_grad_(True)
    loss, stats = loss_of(scalars)
    if torch.isfinite(loss):
        (grad,) = torch.autograd.grad(loss, scalars)
        for part, part_grad in zip(slices, grad.split([len(part) for part in slices]), strict=True):
            forward(part).backward(part_grad)
    return loss.detach(), stats


class SupervisedLoop:
    """The step loop SFT, the reward model and DPO share, so each trainer states only its loss and records.

        loop = SupervisedLoop("dpo", hydra, units, params, config, on_step=..., checkpoints=...)
        for step, batch in loop:                      # this process's share of the next global batch
            loss, out = loop.update(step, backward)   # backward(pieces) -> (loss, out), in `pieces` slices
            loop.log(step, {"dpo/loss": ...})         # + grad norm and lr; averaged, recorded, checkpointed
        run = loop.finish(eval_metrics)

    It owns the shuffled batches, AdamW and its schedule, the non-finite guard, the out-of-memory backoff
    (which multiplies config.grad_accumulation) and the checkpoints, and resumes all of them from
    `checkpoints` when it holds a checkpoint of this stage.
    """

    def __init__(
        self,
        stage: str,
        hydra,
        units: list,
        params,
        config,
        *,
        desc=None,
        on_step=None,
        progress=True,
        checkpoints=None,
    ):
        self.stage, self.hydra, self.params, self.config = stage, hydra, params, config
        self.on_step, self.checkpoints = on_step, checkpoints
        self.batches = ShuffledBatches(units, config.batch_size, config.seed)
        self.optimizer, self.schedule = make_optimizer(params, config)
        self.guard = NonFiniteGuard(stage, config.max_skipped_steps)
        self.backoff = OutOfMemoryBackoff(stage)
        self.run, self.start = StageRun(), 1
        self.grad_norm: float | None = None
        self.lr = config.lr
        if checkpoints is not None and (state := checkpoints.restore(self.optimizer)) is not None:
            self.batches.load_state_dict(state["batches"])
            self.guard.load_state_dict(state["guard"])
            self.schedule.load_state_dict(state["schedule"])
            self.run.history, self.start = state["history"], state["step"] + 1
        self.bar = dict(desc=desc or stage, disable=not progress or not distributed.is_main())

    def __iter__(self) -> Iterator[tuple[int, list]]:
        steps = range(self.start, self.config.steps + 1)
        for step in tqdm(steps, initial=self.start - 1, total=self.config.steps, **self.bar):
            yield step, distributed.shard(next(self.batches))

    def update(self, step: int, backward):
        """backward(pieces) backpropagates the batch in `pieces` slices and returns (loss, out); then a
        guarded, clipped, process-averaged optimizer step and a schedule step when it was applied."""

        def attempt(factor: int):
            self.optimizer.zero_grad(set_to_none=True)
            return backward(factor * self.config.grad_accumulation)

        loss, out = self.backoff.run(attempt, "the update")
        config = self.config
        self.grad_norm = guarded_step(
            loss, self.optimizer, self.params, config.max_grad_norm, self.guard, f"step {step}"
        )
        self.lr = self.schedule.get_last_lr()[0]
        if self.grad_norm is not None:
            self.schedule.step()
        return loss, out

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Record the step (averaged over processes), report it, and checkpoint when one is due."""
        record = {
            "step": step,
            **metrics,
            f"{self.stage}/grad_norm": float("nan") if self.grad_norm is None else self.grad_norm,
            f"{self.stage}/lr": self.lr,
        }
        record = distributed.mean_record(record)
        self.run.history.append(record)
        if self.on_step is not None:
            self.on_step(record)
        if self.checkpoints is not None and self.checkpoints.due(step):
            state = {
                "batches": self.batches.state_dict(),
                "guard": self.guard.state_dict(),
                "history": self.run.history,
            }
            state["schedule"] = self.schedule.state_dict()
            self.checkpoints.save(step, self.hydra, self.optimizer, state)

    def finish(self, metrics: dict[str, float]) -> StageRun:
        """The stage's run: `metrics` (its evaluation), the last training loss and the skipped-step count."""
        self.run.metrics.update(metrics)
        self.run.metrics[f"{self.stage}/train_loss_last"] = self.run.history[-1][f"{self.stage}/loss"]
        self.run.metrics.update(self.guard.metrics())
        return self.run
