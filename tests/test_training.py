"""What every stage shares: the learning-rate schedule, the shuffled batch stream, the sliced backward."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from lorarlhf.training.steps import make_optimizer
from lorarlhf.training.supervised_loop import ShuffledBatches, sliced_backward


def lrs(schedule: str, warmup: int, steps: int = 10) -> list[float]:
    params = [torch.nn.Parameter(torch.zeros(1))]
    config = SimpleNamespace(lr=1.0, weight_decay=0.0, warmup_steps=warmup, steps=steps, lr_schedule=schedule)
    optimizer, scheduler = make_optimizer(params, config)
    seen = []
    for _ in range(steps):
        seen.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return seen


def test_warmup_then_the_schedule_reaches_zero_at_the_last_step():
    assert lrs("constant", 0) == [1.0] * 10
    assert lrs("constant", 4)[:5] == [0.25, 0.5, 0.75, 1.0, 1.0]
    linear = lrs("linear", 2)
    assert linear[:2] == [0.5, 1.0] and linear[2] == pytest.approx(1.0) and linear[-1] == pytest.approx(1 / 8)
    cosine = lrs("cosine", 0)
    assert cosine[0] == 1.0 and cosine[5] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert all(a >= b for a, b in zip(cosine, cosine[1:], strict=False))


def test_shuffled_batches_resume_from_their_state():
    stream = ShuffledBatches(list(range(7)), 3, seed=1)
    first = [next(stream) for _ in range(4)]
    assert sorted(sum(first[:3], [])) == list(range(7))  # an epoch covers every unit once
    state = stream.state_dict()
    rest = [next(stream) for _ in range(5)]
    again = ShuffledBatches(list(range(7)), 3, seed=1)
    again.load_state_dict(state)
    assert [next(again) for _ in range(5)] == rest


def test_sliced_backward_gives_the_one_pass_gradient_for_a_loss_of_the_whole_batch():
    torch.manual_seed(0)
    weight = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    items = list(torch.randn(5, 4, dtype=torch.float64))

    def forward(rows):
        return torch.stack(rows) @ weight  # (n, 2) per-item scalars

    def loss_of(scalars):  # couples every item: a softmax over the batch
        return -torch.log_softmax(scalars[:, 0] - scalars[:, 1], dim=0)[0] + scalars.pow(2).mean(), None

    grads = []
    for pieces in (1, 2, 5):
        weight.grad = None
        loss, _ = sliced_backward(forward, items, loss_of, pieces)
        grads.append(weight.grad.clone())
    torch.testing.assert_close(grads[1], grads[0])
    torch.testing.assert_close(grads[2], grads[0])
