"""NaN and infinity never reach the weights: the step is skipped and counted, and a run of them stops with an
error that says where they came from."""

from __future__ import annotations

import pytest
import torch

from lorarlhf import HydraModel
from lorarlhf.data import PreferencePair
from lorarlhf.data.demonstrations import Demonstration
from lorarlhf.methods.dpo import DPOConfig, train_dpo
from lorarlhf.methods.reward import RewardConfig, train_reward_model
from lorarlhf.methods.sft import SFTConfig, train_sft
from lorarlhf.training.steps import NonFiniteError

pytestmark = pytest.mark.kernels  # every test here reaches the kernels

PAIRS = [PreferencePair(f"Question {i}:", "cat yes", "cat no") for i in range(8)]
DEMOS = [Demonstration(f"Question {i}:", "cat yes") for i in range(8)]


def nan_hidden_states(hydra, calls: set[int]):
    """Make the decoder's output NaN on the given (1-based) forward calls, as a numerically broken batch would."""
    count = [0]

    def hook(module, inputs, output):
        count[0] += 1
        return output * float("nan") if count[0] in calls else output

    return hydra.causal_lm.base_model.norm.register_forward_hook(hook)


def trainable(hydra, role):
    return [p.detach().clone() for p in hydra.trainable_parameters(role)]


STAGES = {
    "sft": (lambda h, c: train_sft(h, DEMOS, c, progress=False), SFTConfig, "sft"),
    "rm": (lambda h, c: train_reward_model(h, PAIRS, c, progress=False), RewardConfig, "reward"),
    "dpo": (lambda h, c: train_dpo(h, PAIRS, c, progress=False), DPOConfig, "actor"),
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_nan_loss_is_skipped_counted_and_never_applied(tiny_model_dir, stage):
    train, config_cls, role = STAGES[stage]
    hydra = HydraModel.from_pretrained(tiny_model_dir, quantize=None, roles=("sft", "actor", "reward"))
    before = trainable(hydra, role)
    handle = nan_hidden_states(hydra, calls={1, 2, 3, 4})  # DPO's first step runs the actor and the reference
    run = train(hydra, config_cls(steps=1, lr=1e-2, batch_size=4, gradient_checkpointing=False))
    handle.remove()
    assert run.metrics[f"{stage}/skipped_nonfinite_steps"] == 1
    assert all(torch.equal(a, b) for a, b in zip(before, trainable(hydra, role), strict=True))  # nothing applied
    run = train(hydra, config_cls(steps=2, lr=1e-2, batch_size=4, gradient_checkpointing=False))
    assert run.metrics[f"{stage}/skipped_nonfinite_steps"] == 0
    assert not all(torch.equal(a, b) for a, b in zip(before, trainable(hydra, role), strict=True))


def test_an_infinite_gradient_with_a_finite_loss_is_skipped(tiny_model_dir):
    hydra = HydraModel.from_pretrained(tiny_model_dir, quantize=None, roles=("sft", "actor"))
    before = trainable(hydra, "sft")
    first = hydra.trainable_parameters("sft")[0]
    handle = first.register_hook(lambda grad: grad * float("inf"))
    run = train_sft(hydra, DEMOS, SFTConfig(steps=1, batch_size=4, gradient_checkpointing=False), progress=False)
    handle.remove()
    assert run.metrics["sft/skipped_nonfinite_steps"] == 1
    assert all(torch.equal(a, b) for a, b in zip(before, trainable(hydra, "sft"), strict=True))


def test_nan_after_nan_stops_the_run_saying_where(tiny_model_dir):
    hydra = HydraModel.from_pretrained(tiny_model_dir, quantize=None, roles=("actor",))
    nan_hidden_states(hydra, calls=set(range(1, 100)))
    config = DPOConfig(steps=10, batch_size=4, max_skipped_steps=3, gradient_checkpointing=False)
    with pytest.raises(
        NonFiniteError, match=r"dpo: 3 steps in a row were skipped, the last because the loss was nan at step 3"
    ):
        train_dpo(hydra, PAIRS, config, progress=False)
