"""Mixture-of-experts bases in 4-bit: the experts quantized (lorarlhf.model.experts), LoRA off the routers and the
experts, and the planner counting every expert's weights, checked against dequantized-weight references."""

from __future__ import annotations

import copy
import logging
import re

import bitsandbytes as bnb
import pytest
import torch
import transformers
from model_families import IDS, VOCAB, save_family_model
from transformers import AutoModelForCausalLM

from lorarlhf import HydraModel
from lorarlhf.data import PreferencePair
from lorarlhf.methods.dpo import DPOConfig, train_dpo
from lorarlhf.model.experts import QuantizedExperts
from lorarlhf.model.loading import bnb_config
from lorarlhf.model.memory import parameter_bytes
from lorarlhf.planner import Shape, adapter_bytes, plan, weight_bytes

# Tiny, shaped like the real ones: 4 experts, top-2, widths a multiple of NF4's 64-weight blocks.
MOE_FAMILIES = {
    "mixtral": lambda: transformers.MixtralConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, tie_word_embeddings=False, **IDS,
    ),  # Mixtral-8x7B: SiLU-gated experts, gate_up_proj (E, 2I, H)
    "qwen3_moe": lambda: transformers.Qwen3MoeConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, moe_intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=4, num_experts_per_tok=2,
        norm_topk_prob=True, tie_word_embeddings=False, **IDS,
    ),  # Qwen3-30B-A3B: every layer sparse, q/k norms
    "gpt_oss": lambda: transformers.GptOssConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, num_local_experts=4, num_experts_per_tok=2, **IDS,
    ),  # gpt-oss-20b: transposed experts with biases, clamped interleaved SwiGLU, a router with a bias
}  # fmt: skip
ROUTERS = re.compile(r"\.(gate|router)(\.|$)")
PROMPTS = ["Tell me about the sea, briefly:", "A haiku about autumn leaves, please:"]
RESPONSES = ["Waves fold into foam on the shore.", "Red leaves drift down"]


@pytest.fixture(scope="module", params=list(MOE_FAMILIES))
def family(request, tmp_path_factory):
    """(name, saved model directory) of each tiny MoE family."""
    name = request.param
    return name, save_family_model(tmp_path_factory.mktemp(name), MOE_FAMILIES[name]())


def load(path, quantize="nf4", **kwargs):
    torch.manual_seed(0)
    return HydraModel.from_pretrained(path, quantize=quantize, device="cpu", lora_r=4, lora_alpha=8, **kwargs)


def dequantized(layer) -> torch.Tensor:
    """The (out, in) weight a bitsandbytes Linear4bit multiplies by: its NF4 codes times their scales."""
    return bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)


def set_expert_weights(experts: torch.nn.Module, quantized: QuantizedExperts) -> None:
    """Write `quantized`'s dequantized matrices into the 3-D parameters of a transformers experts module."""
    with torch.no_grad():
        for index in range(quantized.num_experts):
            expert = getattr(quantized, str(index))
            for name, param in (("gate_up", "gate_up_proj"), ("down", "down_proj")):
                weight = dequantized(getattr(expert, name))  # (out, in)
                getattr(experts, param)[index] = weight.T if experts.is_transposed else weight
                if experts.has_bias:
                    getattr(experts, f"{param}_bias")[index] = getattr(expert, name).bias


@pytest.mark.parametrize("implementation", ["eager", "grouped_mm", "batched_mm"])
@pytest.mark.parametrize("name", list(MOE_FAMILIES))
def test_quantized_experts_compute_the_dequantized_experts(name, implementation):
    # The container against the family's own experts module (each transformers implementation of it) holding the
    # dequantized NF4 weights: the same routing, activation and weighted sum, so fp32 agrees to rounding.
    config = MOE_FAMILIES[name]()
    config._experts_implementation = implementation
    torch.manual_seed(0)
    reference = AutoModelForCausalLM.from_config(config).model.layers[0].mlp.experts
    quantized = QuantizedExperts(copy.deepcopy(reference), bnb_config(torch.float32))
    set_expert_weights(reference, quantized)
    tokens, hidden, k = 41, config.hidden_size, config.num_experts_per_tok
    x = torch.randn(tokens, hidden, requires_grad=True)
    index = torch.stack([torch.randperm(4)[:k] for _ in range(tokens)])  # (N, K): distinct experts per token
    index[:5] = torch.tensor([0, 1][:k])  # some experts get many tokens, every expert some
    weights = torch.softmax(torch.randn(tokens, k), dim=-1)  # (N, K)
    grad_output = torch.randn(tokens, hidden)  # not 1: the gradient reaching LoRA below is checked too
    outputs = []
    for module in (quantized, reference):
        out = module(x, index, weights)
        (grad,) = torch.autograd.grad(out, x, grad_output)
        outputs.append((out, grad))
    (got, got_grad), (want, want_grad) = outputs
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_grad, want_grad, atol=1e-5, rtol=1e-5)


# Share of the decoder's matrix weights in 4-bit before this module's experts: Mixtral 0.11, Qwen3-MoE 0.20,
# gpt-oss 0.20 at these shapes (the experts' 3-D parameters left in fp32). Only the routers stay unquantized now.
def test_every_moe_family_is_4bit_without_a_warning(family, caplog):
    name, path = family
    with caplog.at_level(logging.WARNING, logger="lorarlhf.model"):
        hydra = load(path, roles=("actor",))
    assert hydra.quantized_fraction >= 0.99, name
    assert not [r for r in caplog.records if r.name == "lorarlhf.model"]
    assert sum(isinstance(m, QuantizedExperts) for m in hydra.modules()) == 2  # one per layer
    full = parameter_bytes(AutoModelForCausalLM.from_config(MOE_FAMILIES[name]()).parameters())
    assert hydra.base_bytes < 0.4 * full


def test_lora_adapts_attention_and_never_a_router_or_an_expert(family):
    name, path = family
    for quantize in ("nf4", None):
        hydra = load(path, quantize, roles=("actor",))
        adapted = {n.removesuffix(".lora_A.actor") for n, _ in hydra.peft.named_modules() if n.endswith("lora_A.actor")}
        assert adapted and all(re.search(r"self_attn\.[qkvo]_proj$", n) for n in adapted), (quantize, adapted)
        assert len(adapted) == 4 * 2  # q, k, v, o of both layers
        assert not any(ROUTERS.search(n) or ".experts" in n for n, _ in hydra.peft.named_parameters() if "lora_" in n)


def plain_logprobs(model, batch) -> torch.Tensor:
    """log_softmax(model(input_ids).logits) at the next tokens, response positions only, 0 elsewhere: (B, T)."""
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids).logits.double()
    logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    return torch.nn.functional.pad(logp * batch.response_mask[:, 1:], (1, 0))


@pytest.mark.kernels
def test_reference_logprobs_equal_plain_transformers_with_the_dequantized_weights(family):
    # Every 4-bit matrix of the Hydra (attention and experts) dequantized into the plain transformers model: the
    # same function, computed by transformers' own MoE code, so the log-probs agree to fp32 rounding.
    name, path = family
    hydra = load(path, roles=("actor",))
    plain = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        for module_name, module in hydra.causal_lm.named_modules():
            if isinstance(module, QuantizedExperts):
                set_expert_weights(plain.get_submodule(module_name), module)
            elif isinstance(module, bnb.nn.Linear4bit) and ".experts." not in module_name:
                plain.get_submodule(module_name.removesuffix(".base_layer")).weight.copy_(dequantized(module))
    batch = hydra.encode(PROMPTS, RESPONSES)
    with torch.no_grad():
        got = hydra.token_logprobs(batch, role="reference")
    torch.testing.assert_close(got.double(), plain_logprobs(plain, batch), atol=1e-5, rtol=1e-5)


def snapshot(hydra) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Copies of the base's weights (4-bit codes and scales included) and of the LoRA weights, by name."""
    frozen, adapters = {}, {}
    for name, param in hydra.peft.named_parameters():
        (adapters if "lora_" in name else frozen)[name] = param.detach().clone()
        if getattr(param, "quant_state", None) is not None:
            frozen[name + ".absmax"] = param.quant_state.absmax.detach().clone()
    return frozen, adapters


@pytest.mark.kernels
def test_a_dpo_step_on_the_4bit_experts_moves_only_the_actor_and_reloads(family, tmp_path):
    name, path = family
    hydra = load(path, roles=("actor", "critic"))
    frozen, adapters = snapshot(hydra)
    pairs = [PreferencePair(p, r, r[::-1]) for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    run = train_dpo(hydra, pairs, DPOConfig(steps=1, lr=1e-2, batch_size=2, eval_fraction=0.0), progress=False)
    assert torch.isfinite(torch.tensor(run.history[-1]["dpo/loss"]))
    frozen_after, adapters_after = snapshot(hydra)
    assert frozen_after.keys() == frozen.keys()
    assert all(torch.equal(frozen_after[n], v) for n, v in frozen.items()), "a base weight moved"
    moved = [n for n, v in adapters.items() if not torch.equal(adapters_after[n], v)]
    assert moved and all(".actor." in n for n in moved)
    hydra.save(tmp_path / "run")
    batch = hydra.encode(PROMPTS, RESPONSES)
    reloaded = HydraModel.load(tmp_path / "run", device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded.token_logprobs(batch, role="actor"), hydra.token_logprobs(batch, role="actor")
        )


# --------------------------------------------------------------------------- the planner


def test_planned_weight_and_adapter_bytes_equal_the_loaded_moe_model(family):
    name, path = family
    config = MOE_FAMILIES[name]()
    shape = Shape.from_config(config)
    for quantize in ("nf4", None):
        report = load(path, quantize, roles=("actor", "critic")).memory_report()
        assert weight_bytes(shape, quantize=quantize, dtype_bytes=4) == report["base"], (name, quantize)
        for role in ("actor", "critic"):
            assert adapter_bytes(shape, lora_r=4, role=role) == report[role], (name, quantize, role)


def test_real_size_moe_bases_plan_to_their_4bit_size():
    # All experts are held (46.7B weights of Mixtral-8x7B, 30.5B of Qwen3-30B-A3B), only the top-k of them run per
    # token: 2 x 14336 and 8 x 768 of MLP width for the activations. Configs at the published sizes, no weights.
    mixtral = transformers.MixtralConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, num_local_experts=8, num_experts_per_tok=2,
    )  # fmt: skip
    qwen3 = transformers.Qwen3MoeConfig(
        vocab_size=151936, hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768, num_hidden_layers=48,
        num_attention_heads=32, num_key_value_heads=4, head_dim=128, num_experts=128, num_experts_per_tok=8,
        tie_word_embeddings=False,
    )  # fmt: skip
    for config, low, high, active in ((mixtral, 24e9, 26e9, 2 * 14336), (qwen3, 16e9, 17e9, 8 * 768)):
        memory = plan(config, method="dpo", batch_size=1, max_length=512)
        assert low < memory.items["base weights"] < high, (config.model_type, memory.items["base weights"] / 1e9)
        assert Shape.from_config(config).active_intermediate_size == active
        assert memory.items["actor adapter"] < 60e6  # attention only: ~54 MB, not the experts' 0.8 / 2.5 GB
