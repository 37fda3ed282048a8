"""The fused LoRA layers (lorarlhf.model.lora_layers) against peft's own LoRA layers: the same outputs, the same
gradients, the same saved adapter, on every path a Hydra takes (one role on, roles switched, adapters off,
dropout, a 4-bit base)."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
from transformers import LlamaForCausalLM

from lorarlhf import HydraModel
from lorarlhf.model.lora import LoraSettings
from lorarlhf.model.lora_layers import FusedLoraLinear
from lorarlhf.model.tiny import tiny_llama_config


def _twins(dropout: float = 0.0, dtype=torch.float64):
    """The same tiny Llama with the same random LoRA weights, once through lorarlhf's settings (fused layers)
    and once through peft's plain LoraConfig; two adapters each, so role switching is covered."""
    torch.manual_seed(0)
    base = LlamaForCausalLM(tiny_llama_config()).to(dtype)
    other = copy.deepcopy(base)
    settings = LoraSettings(r=4, alpha=8, dropout=dropout)
    fused = get_peft_model(base, settings.peft_config(base), adapter_name="actor")
    fused.add_adapter("critic", settings.peft_config(base))
    plain_config = dict(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear", bias="none")
    plain = get_peft_model(other, LoraConfig(**plain_config), adapter_name="actor")
    plain.add_adapter("critic", LoraConfig(**plain_config))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for (name, a), (other_name, b) in zip(fused.named_parameters(), plain.named_parameters(), strict=True):
            assert name == other_name
            if "lora_" in name:  # LoRA B starts at zero: draw both factors so the update is not zero
                a.copy_(torch.randn(a.shape, generator=generator, dtype=a.dtype) * 0.3)
            b.copy_(a)
    return fused, plain


def _lora_grads(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_every_adapted_linear_is_the_fused_layer():
    fused, plain = _twins()
    adapted = [m for m in fused.modules() if hasattr(m, "lora_A")]
    assert adapted and all(isinstance(m, FusedLoraLinear) for m in adapted)
    assert not any(isinstance(m, FusedLoraLinear) for m in plain.modules())


@pytest.mark.parametrize("adapter", ["actor", "critic"])
def test_outputs_and_gradients_equal_peft(adapter):
    fused, plain = _twins()
    ids = torch.randint(0, 200, (3, 11), generator=torch.Generator().manual_seed(2))
    for model in (fused, plain):
        model.set_adapter(adapter)
        for name, p in model.named_parameters():  # train every LoRA factor of both adapters
            p.requires_grad_("lora_" in name)
    out_fused, out_plain = fused(ids).logits, plain(ids).logits
    torch.testing.assert_close(out_fused, out_plain, rtol=1e-12, atol=1e-12)
    weights = torch.randn(out_plain.shape, generator=torch.Generator().manual_seed(3), dtype=out_plain.dtype)
    (out_fused * weights).sum().backward()
    (out_plain * weights).sum().backward()
    grads_fused, grads_plain = _lora_grads(fused), _lora_grads(plain)
    assert grads_fused.keys() == grads_plain.keys()
    assert all(adapter in name for name in grads_fused)  # only the active adapter gets gradients
    for name, grad in grads_plain.items():
        torch.testing.assert_close(grads_fused[name], grad, rtol=1e-10, atol=1e-12, msg=name)
    assert max(g.abs().max() for g in grads_plain.values()) > 0


def test_the_update_is_written_into_the_base_output():
    """No second full-size tensor: every fused layer returns its base layer's own output storage."""
    fused, _ = _twins()
    base_outputs, layer_outputs = {}, {}
    for name, module in fused.named_modules():
        if isinstance(module, FusedLoraLinear):
            module.base_layer.register_forward_hook(
                lambda m, i, out, name=name: base_outputs.__setitem__(name, out.untyped_storage().data_ptr())
            )
            module.register_forward_hook(
                lambda m, i, out, name=name: layer_outputs.__setitem__(name, out.untyped_storage().data_ptr())
            )
    for name, p in fused.named_parameters():
        p.requires_grad_("lora_" in name)
    fused(torch.randint(0, 200, (2, 7), generator=torch.Generator().manual_seed(4))).logits.sum().backward()
    assert base_outputs and base_outputs == layer_outputs


def test_adapters_off_is_the_base_and_merging_is_peft():
    fused, plain = _twins()
    ids = torch.randint(0, 200, (2, 9), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        with fused.disable_adapter(), plain.disable_adapter():
            torch.testing.assert_close(fused(ids).logits, plain(ids).logits, rtol=0, atol=0)
        on = fused(ids).logits
        fused.merge_adapter()
        torch.testing.assert_close(fused(ids).logits, on, rtol=1e-10, atol=1e-10)
        fused.unmerge_adapter()
        torch.testing.assert_close(fused(ids).logits, plain(ids).logits, rtol=1e-12, atol=1e-12)


def test_dropout_takes_peft_forward():
    fused, plain = _twins(dropout=0.5)
    ids = torch.randint(0, 200, (2, 9), generator=torch.Generator().manual_seed(5))
    fused.train(), plain.train()
    torch.manual_seed(6)
    out_fused = fused(ids).logits
    torch.manual_seed(6)
    out_plain = plain(ids).logits
    torch.testing.assert_close(out_fused, out_plain, rtol=1e-12, atol=1e-12)


def test_the_saved_adapter_is_peft_format(tmp_path):
    fused, plain = _twins()
    state_fused = get_peft_model_state_dict(fused, adapter_name="actor")
    state_plain = get_peft_model_state_dict(plain, adapter_name="actor")
    assert state_fused.keys() == state_plain.keys()
    for key, value in state_plain.items():
        assert torch.equal(state_fused[key], value), key
    fused.save_pretrained(tmp_path, selected_adapters=["actor"])
    saved = (tmp_path / "actor" / "adapter_config.json").read_text()  # peft saves a named adapter in a folder
    assert "custom" not in saved and "Fused" not in saved


def test_a_4bit_base_gets_the_fused_layer_with_peft_numbers(tiny_model_dir):
    pytest.importorskip("bitsandbytes")
    hydra = HydraModel.from_pretrained(tiny_model_dir, quantize="nf4", device="cpu", roles=("actor",), lora_r=4)
    layers = [m for m in hydra.peft.modules() if hasattr(m, "lora_A")]
    assert layers and all(type(m).__name__ == "FusedLoraLinear4bit" for m in layers)
    layer = layers[0]
    with torch.no_grad():
        layer.lora_B["actor"].weight.normal_(generator=torch.Generator().manual_seed(7))
    x = torch.randn(5, layer.in_features, generator=torch.Generator().manual_seed(8))
    base = layer.base_layer(x)
    with hydra.role("actor"):
        update = layer.lora_B["actor"](layer.lora_A["actor"](x)) * layer.scaling["actor"]
        torch.testing.assert_close(layer(x), base + update, rtol=1e-5, atol=1e-5)
    assert update.abs().max() > 1e-3
    with hydra.role("reference"):
        torch.testing.assert_close(layer(x), base, rtol=0, atol=0)
