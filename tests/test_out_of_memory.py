"""Out of memory on the GPU halves the micro-batch and retries: the same batch, the same update, nothing skipped.

Tested on the CPU by injecting the CUDA out-of-memory error whenever the decoder sees more rows than a limit.
"""

from __future__ import annotations

import pytest
import torch

from lorarlhf import HydraModel
from lorarlhf.data import PreferencePair
from lorarlhf.data.demonstrations import Demonstration
from lorarlhf.methods.dpo import DPOConfig, train_dpo
from lorarlhf.methods.grpo import GRPOConfig, train_grpo
from lorarlhf.methods.ppo import PPOConfig, train_ppo
from lorarlhf.methods.reward import RewardConfig, train_reward_model
from lorarlhf.methods.sft import SFTConfig, train_sft
from lorarlhf.model.tiny import save_tiny_model

PROMPTS = [f"Say something {i}:" for i in range(8)]


def lowercase(prompts, responses):
    return [sum(c.islower() for c in r) / max(len(r), 1) for r in responses]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("peaked"), seed=0, initializer_range=0.3)


def limit_rows(hydra, max_rows: int) -> list[int]:
    """Raise CUDA's out-of-memory error for any decoder call on more than `max_rows` rows; return the sizes seen."""
    seen = []

    def hook(module, args, kwargs):
        rows = kwargs["input_ids"].shape[0]
        seen.append(rows)
        if rows > max_rows:
            raise torch.OutOfMemoryError(f"CUDA out of memory (injected: {rows} rows)")

    hydra.causal_lm.base_model.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def run(model_dir, method, max_rows=None, **overrides):
    torch.manual_seed(0)
    roles = ("actor", "critic") if method == "ppo" else ("actor",)
    hydra = HydraModel.from_pretrained(model_dir, quantize=None, lora_r=4, roles=roles)
    seen = limit_rows(hydra, max_rows) if max_rows is not None else []
    if method == "ppo":
        config = PPOConfig(steps=4, batch_size=4, max_new_tokens=6, lr=1e-2, **overrides)
        result = train_ppo(hydra, PROMPTS, config, reward_fn=lowercase, progress=False)
    else:
        config = GRPOConfig(steps=3, batch_size=2, group_size=2, max_new_tokens=6, lr=1e-2, **overrides)
        result = train_grpo(hydra, PROMPTS, config, reward_fn=lowercase, progress=False)
    return hydra, result, seen


@pytest.mark.parametrize("method", ["ppo", "grpo"])
@pytest.mark.kernels
def test_out_of_memory_halves_the_micro_batch_and_keeps_the_batch(model_dir, method, caplog):
    hydra, result, seen = run(model_dir, method, max_rows=2)
    assert max(seen) > 2 and "out of memory in generation; retrying with micro-batches 2x smaller" in caplog.text
    # The same run planned with micro-batches of 2 from the start: the same samples and the same updates.
    planned, planned_result, _ = run(model_dir, method, grad_accumulation=2)
    assert len(result.history) == len(planned_result.history)
    for a, b in zip(result.history, planned_result.history, strict=True):
        assert a["rl/reward_mean"] == pytest.approx(b["rl/reward_mean"], abs=1e-6)  # every sample was trained on
    for a, b in zip(hydra.trainable_parameters("actor"), planned.trainable_parameters("actor"), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_out_of_memory_at_every_size_stops_with_advice(model_dir):
    with pytest.raises(RuntimeError, match=r"rl: out of memory in generation even with micro-batches 16x smaller; "):
        run(model_dir, "grpo", max_rows=0)


# --------------------------------------------------------------------------- SFT, reward model, DPO

PAIRS = [PreferencePair(f"Question {i}:", f"{w} yes", f"{w} no") for i, w in enumerate(["cat", "mat", "sky"] * 4)]
RANKED = [
    PreferencePair(f"Rank {i}:", a, b, group=i) for i in range(4) for a, b in (("x", "y"), ("x", "z"), ("y", "z"))
]
DEMOS = [Demonstration(f"Question {i}:", "the answer is yes") for i in range(12)]
STAGES = {
    "sft": (lambda h, c: train_sft(h, DEMOS, c, progress=False), SFTConfig, {}, "sft"),
    "rm": (lambda h, c: train_reward_model(h, PAIRS, c, progress=False), RewardConfig, {"center_coef": 0.01}, "reward"),
    "rm-listwise": (
        lambda h, c: train_reward_model(h, RANKED, c, progress=False),
        RewardConfig,
        {"objective": "listwise"},
        "reward",
    ),
    "dpo": (lambda h, c: train_dpo(h, PAIRS, c, progress=False), DPOConfig, {"precompute_ref": False}, "actor"),
    "cpl": (lambda h, c: train_dpo(h, PAIRS, c, progress=False), DPOConfig, {"loss": "cpl"}, "actor"),
}


@pytest.mark.parametrize("stage", list(STAGES))
@pytest.mark.kernels
def test_supervised_stages_split_the_batch_and_compute_the_same_gradient(model_dir, stage, caplog):
    train, config_cls, options, role = STAGES[stage]
    weights = []
    for max_rows in (None, 3 if stage == "rm-listwise" else 2):  # a 3-way ranking is one item of 3 rows
        torch.manual_seed(0)
        hydra = HydraModel.from_pretrained(model_dir, quantize=None, lora_r=4, roles=("sft", "actor", "reward"))
        if max_rows is not None:
            limit_rows(hydra, max_rows)
        config = config_cls(steps=3, batch_size=4, lr=1e-2, gradient_checkpointing=False, **options)
        run = train(hydra, config)
        # A listwise loss depends on reward differences only: the head's bias has an exact gradient of 0, and
        # Adam turns rounding noise in it into steps, so it is left out of the comparison.
        params = [p for p in hydra.trainable_parameters(role) if stage != "rm-listwise" or p.numel() > 1]
        weights.append([p.detach().clone() for p in params])
        losses = [record[next(k for k in record if k.endswith("/loss"))] for record in run.history]
        if max_rows is None:
            reference_losses = losses
    assert "out of memory in the update; retrying with micro-batches 2x smaller" in caplog.text
    assert losses == pytest.approx(reference_losses, rel=1e-5, abs=1e-6)
    for a, b in zip(*weights, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)  # the interpreted kernels round differently
