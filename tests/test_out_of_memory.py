"""Out of memory on the GPU halves the micro-batch and retries: the same batch, the same updates, nothing skipped.

Tested on the CPU by injecting the CUDA out-of-memory error whenever the decoder sees more rows than a limit.
"""

from __future__ import annotations

import pytest
import torch

from lorarlhf import HydraModel
from lorarlhf.grpo_config import GRPOConfig
from lorarlhf.grpo_trainer import train_grpo
from lorarlhf.ppo_config import PPOConfig
from lorarlhf.ppo_trainer import train_ppo
from lorarlhf.tiny import save_tiny_model

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
