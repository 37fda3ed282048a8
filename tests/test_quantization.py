"""What 4-bit NF4 covers after loading: every family's Linear-like decoder layers, measured and reported."""

from __future__ import annotations

import logging

import pytest
import torch
from model_families import FAMILIES, IDS, VOCAB, save_family_model
from transformers import AutoModelForCausalLM, MixtralConfig

from lorarlhf import HydraModel
from lorarlhf.model.loading import bnb_config
from lorarlhf.model.memory import parameter_bytes
from lorarlhf.model.quantization import report_coverage

LOG = "lorarlhf.model"


def load(path, quantize="nf4"):
    return HydraModel.from_pretrained(path, quantize=quantize, device="cpu", lora_r=4, roles=("actor",))


def test_a_llama_is_all_4bit_and_says_so_without_a_warning(tiny_model_dir, caplog):
    with caplog.at_level(logging.INFO, logger=LOG):
        hydra = load(tiny_model_dir)
    assert hydra.quantized_fraction == 1.0
    assert "100.0% of the decoder's matrix weights are 4-bit NF4" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == LOG]
    assert load(tiny_model_dir, quantize=None).quantized_fraction == 0.0


@pytest.mark.kernels
def test_falcons_own_linear_layers_are_quantized_and_compute_the_same_function(tmp_path, caplog):
    # transformers' bitsandbytes integration replaces only modules whose type *is* nn.Linear, and Falcon's
    # projections are FalconLinear, a subclass: before lorarlhf replaced them, a Falcon loaded "in 4-bit" was not.
    config = FAMILIES["falcon"]()
    path = save_family_model(tmp_path, config)
    with caplog.at_level(logging.WARNING, logger=LOG):
        hydra = load(path)
    assert hydra.quantized_fraction >= 0.9 and not [r for r in caplog.records if r.name == LOG]
    assert not any(type(m).__name__ == "FalconLinear" for m in hydra.modules())
    assert hydra.base_bytes < 0.4 * parameter_bytes(AutoModelForCausalLM.from_config(config).parameters())
    full = load(path, quantize=None)
    batch = hydra.encode(["Hello there", "A longer prompt"], [" general", " kenobi!"])
    with torch.no_grad():
        nf4, fp32 = (h.token_logprobs(batch, role="reference") for h in (hydra, full))
    # NF4 rounds each weight to one of 16 levels per block: the log-probs move by a few percent, not more
    assert (nf4 - fp32).abs().max() < 0.05 * fp32.abs().max()


@pytest.mark.parametrize("name", ["gpt2", "opt", "gpt_neox", "phi", "qwen2", "gemma"])
def test_every_family_is_all_4bit(tmp_path, name):
    assert load(save_family_model(tmp_path, FAMILIES[name]())).quantized_fraction == 1.0


def test_matrices_left_in_full_precision_are_named_in_a_warning(tmp_path, caplog):
    # transformers' own 4-bit load keeps Mixtral's experts, 3-D parameters of one MixtralExperts module, in the
    # compute dtype (lorarlhf's loader then quantizes them: tests/test_moe.py); the report names what is left
    config = MixtralConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, **IDS,
    )  # fmt: skip
    path = save_family_model(tmp_path, config)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=bnb_config(torch.float32), device_map="cpu")
    with caplog.at_level(logging.WARNING, logger=LOG):
        coverage = report_coverage(model, str(path))
    assert coverage.fraction < 0.9 and "MixtralExperts" in coverage.full_precision
    (warning,) = [r for r in caplog.records if r.name == LOG]
    assert warning.levelno == logging.WARNING and "MixtralExperts" in warning.getMessage()
    assert f"only {100 * coverage.fraction:.1f}% of the decoder's matrix weights" in warning.getMessage()
    assert load(path).quantized_fraction > 0.99  # the Hydra's load: the experts in 4-bit too
