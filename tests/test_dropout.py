"""Dropout is off in RL and DPO however a family implements it: nn.Dropout modules, and the float
probabilities OPT-style models hand to functional dropout (and layerdrop) in forward."""

from __future__ import annotations

import math

import pytest
import torch
from model_families import IDS, VOCAB, save_family_model
from transformers import OPTConfig

from lorarlhf import HydraModel
from lorarlhf.data import PreferencePair
from lorarlhf.methods.dpo import DPOConfig, train_dpo
from lorarlhf.methods.grpo import GRPOConfig, train_grpo
from lorarlhf.methods.ppo import PPOConfig, train_ppo

pytestmark = pytest.mark.kernels  # every test here reaches the kernels

PROMPTS = [f"Say something {i}:" for i in range(8)]
DROPOUT = dict(dropout=0.1, attention_dropout=0.1, activation_dropout=0.1, layerdrop=0.1)


@pytest.fixture(scope="module")
def opt_dir(tmp_path_factory):
    """A tiny OPT whose every drop probability is a plain float read in forward (no nn.Dropout module)."""
    config = OPTConfig(
        vocab_size=VOCAB, hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=256, word_embed_proj_dim=64, init_std=0.3, **DROPOUT, **IDS,
    )  # fmt: skip
    return save_family_model(tmp_path_factory.mktemp("tiny-opt"), config)


def build(path, **kwargs):
    torch.manual_seed(0)
    return HydraModel.from_pretrained(path, device="cpu", quantize=None, lora_r=4, **kwargs)


def lowercase(prompts, responses):
    return [sum(c.islower() for c in r) / max(len(r), 1) for r in responses]


def test_training_mode_log_probs_are_deterministic_once_dropout_is_off(opt_dir):
    hydra = build(opt_dir, lora_dropout=0.2)
    batch = hydra.encode(["Hello there", "A longer prompt here"], [" general", " kenobi!"])
    with hydra.train_mode(), torch.no_grad():
        noisy = [hydra.token_logprobs(batch, role="reference") for _ in range(2)]
        assert not torch.equal(*noisy)  # the test can see OPT's functional dropout
        hydra.disable_dropout()
        for role in ("reference", "actor"):
            first, second = (hydra.token_logprobs(batch, role=role) for _ in range(2))
            assert torch.equal(first, second), role
    config = hydra.causal_lm.config
    assert (config.dropout, config.attention_dropout, config.activation_dropout, config.layerdrop) == (0, 0, 0, 0)
    assert not any(m.p for m in hydra.modules() if isinstance(m, torch.nn.Dropout))  # peft's lora_dropout too
    assert hydra.lora.dropout == 0.2  # the user's setting, as saved with the run, is kept


@pytest.mark.parametrize("method", ["grpo", "ppo"])
def test_the_first_rl_update_is_exactly_on_policy(opt_dir, method):
    hydra = build(opt_dir)
    if method == "grpo":
        config = GRPOConfig(steps=1, lr=1e-12, batch_size=2, group_size=4, max_new_tokens=6)
        run = train_grpo(hydra, PROMPTS, config, reward_fn=lowercase, progress=False)
        assert run.history[0]["rl/kl"] == 0.0  # the untrained actor is the reference, pass for pass
    else:
        config = PPOConfig(steps=1, lr=1e-12, batch_size=4, max_new_tokens=6, ppo_epochs=1)
        run = train_ppo(hydra, PROMPTS, config, reward_fn=lowercase, progress=False)
    assert run.history[0]["rl/approx_kl"] == 0.0  # every ratio exactly 1
    assert run.history[0]["rl/clipfrac"] == 0.0


def test_the_first_dpo_loss_is_log_two(opt_dir):
    hydra = build(opt_dir)
    pairs = [PreferencePair(f"Question {i}:", f"answer {i} yes", f"answer {i} no") for i in range(4)]
    run = train_dpo(hydra, pairs, DPOConfig(steps=1, lr=1e-12, batch_size=4), progress=False)
    assert run.history[0]["dpo/margin"] == 0.0
    assert run.history[0]["dpo/loss"] == pytest.approx(math.log(2), rel=1e-6)
