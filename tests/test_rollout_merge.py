"""Sampling with the actor merged into full-precision base weights: the same samples as the unmerged path, and the
base and adapters exactly as they were afterwards, also when the sampling raises; a 4-bit base on a CPU merges by
default when its copy fits in memory, an unquantized one only when asked."""

from __future__ import annotations

import pytest
import torch

from lorarlhf import HydraModel
from lorarlhf.training.rollout import SamplingConfig, generate_rollout


def trained_actor(path) -> HydraModel:
    """A tiny Hydra whose actor adapter is not the identity (peft starts B at zero, which merges to nothing)."""
    torch.manual_seed(0)
    hydra = HydraModel.from_pretrained(path, device="cpu", lora_r=8, quantize=None, roles=("actor",))
    with torch.no_grad():
        for name, param in hydra.peft.named_parameters():
            if "lora_B.actor" in name:
                param.normal_(0, 0.05)
    hydra.merge_sampling = True  # opt-in (see HydraModel.merge_sampling)
    return hydra


def snapshot(hydra) -> dict[str, torch.Tensor]:
    return {name: param.detach().clone() for name, param in hydra.peft.named_parameters()}


def assert_unchanged(hydra, before):
    after = dict(hydra.peft.named_parameters())
    assert after.keys() == before.keys()
    for name, value in before.items():
        assert torch.equal(after[name], value), name  # bit for bit, not within a tolerance


def test_merged_sampling_draws_the_unmerged_samples(tiny_model_dir):
    hydra = trained_actor(tiny_model_dir)
    prompts, seeds = ["a", "a much longer prompt", "third"], [5, 6, 7]
    sampling = SamplingConfig(max_new_tokens=12, top_k=50)
    before = snapshot(hydra)
    merged = generate_rollout(hydra, prompts, sampling, seeds)
    assert_unchanged(hydra, before)
    hydra.merge_sampling = False
    unmerged = generate_rollout(hydra, prompts, sampling, seeds)
    assert torch.equal(merged.response_ids, unmerged.response_ids)
    assert merged.responses == unmerged.responses


def test_merged_forward_matches_the_adapter_forward(tiny_model_dir):
    hydra = trained_actor(tiny_model_dir)
    ids = torch.randint(3, 200, (2, 9))
    mask = torch.ones_like(ids)
    with torch.no_grad(), hydra.role("actor"):
        unmerged = hydra.causal_lm(input_ids=ids, attention_mask=mask).logits
        with hydra.merged_for_sampling():
            merged = hydra.causal_lm(input_ids=ids, attention_mask=mask).logits
        base_layers = [layer.get_base_layer().weight for layer in hydra._lora_layers]
    assert not torch.equal(merged, hydra_reference_logits(hydra, ids, mask))  # the adapter does change the output
    torch.testing.assert_close(merged.log_softmax(-1), unmerged.log_softmax(-1), rtol=1e-5, atol=1e-5)
    assert all(isinstance(w, torch.nn.Parameter) for w in base_layers)


def hydra_reference_logits(hydra, ids, mask):
    with torch.no_grad(), hydra.role("reference"):
        return hydra.causal_lm(input_ids=ids, attention_mask=mask).logits


def test_an_exception_while_merged_restores_base_adapters_and_role(tiny_model_dir):
    hydra = trained_actor(tiny_model_dir)
    before = snapshot(hydra)
    ids = torch.randint(3, 200, (1, 5))
    with torch.no_grad(), hydra.role("actor"):
        expected = hydra.causal_lm(input_ids=ids).logits
    with pytest.raises(KeyboardInterrupt), torch.no_grad(), hydra.role("actor"), hydra.merged_for_sampling():
        raise KeyboardInterrupt
    assert hydra.active_role == "reference"
    assert_unchanged(hydra, before)
    with torch.no_grad(), hydra.role("actor"):  # the adapter runs again, unmerged, as before
        assert all(not layer.disable_adapters for layer in hydra._lora_layers)
        torch.testing.assert_close(hydra.causal_lm(input_ids=ids).logits, expected, rtol=0, atol=0)


def test_no_merge_with_gradients_or_for_the_reference(tiny_model_dir):
    hydra = trained_actor(tiny_model_dir)
    weights = [layer.get_base_layer().weight for layer in hydra._lora_layers]
    with hydra.role("actor"), hydra.merged_for_sampling():  # grad enabled: a training pass stays unmerged
        assert all(layer.get_base_layer().weight is w for layer, w in zip(hydra._lora_layers, weights, strict=True))
    with torch.no_grad(), hydra.role("reference"), hydra.merged_for_sampling():  # the bare base: nothing to merge
        assert all(layer.get_base_layer().weight is w for layer, w in zip(hydra._lora_layers, weights, strict=True))


def test_no_role_switch_while_merged(tiny_model_dir):
    hydra = trained_actor(tiny_model_dir)
    merged = pytest.raises(RuntimeError, match="merged for sampling")
    with torch.no_grad(), hydra.role("actor"), hydra.merged_for_sampling(), merged, hydra.role("reference"):
        pass
    assert hydra.active_role == "reference"


# --------------------------------------------------------------------------- a 4-bit base


def trained_4bit_actor(path) -> HydraModel:
    torch.manual_seed(0)
    hydra = HydraModel.from_pretrained(path, device="cpu", lora_r=8, quantize="nf4", roles=("actor",))
    with torch.no_grad():
        for name, param in hydra.peft.named_parameters():
            if "lora_B.actor" in name:
                param.normal_(0, 0.05)
    return hydra  # merge_sampling left at its default


def base_layers(hydra) -> list[torch.nn.Module]:
    return [layer.base_layer for layer in hydra._lora_layers]


def packed(hydra) -> list[torch.Tensor]:
    return [layer.weight.data.clone() for layer in base_layers(hydra)]


def test_a_4bit_base_on_a_cpu_samples_merged_by_default(tiny_model_dir):
    from bitsandbytes.nn import Linear4bit

    hydra = trained_4bit_actor(tiny_model_dir)
    assert hydra.merge_sampling is None
    originals, codes, before = base_layers(hydra), packed(hydra), snapshot(hydra)
    ids = torch.randint(3, 200, (2, 9))
    mask = torch.ones_like(ids)
    with torch.no_grad(), hydra.role("actor"):
        unmerged = hydra.causal_lm(input_ids=ids, attention_mask=mask).logits
        with hydra.merged_for_sampling():
            during = base_layers(hydra)
            merged = hydra.causal_lm(input_ids=ids, attention_mask=mask).logits
    # while merged, plain full-precision Linears stand in for every 4-bit layer; afterwards the 4-bit ones are back
    assert all(type(layer) is torch.nn.Linear and layer.weight.dtype == torch.float32 for layer in during)
    assert all(isinstance(layer, Linear4bit) for layer in originals)
    assert all(now is then for now, then in zip(base_layers(hydra), originals, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(packed(hydra), codes, strict=True))
    assert_unchanged(hydra, before)
    assert not torch.equal(merged, hydra_reference_logits(hydra, ids, mask))
    torch.testing.assert_close(merged.log_softmax(-1), unmerged.log_softmax(-1), rtol=1e-5, atol=1e-5)


def test_a_4bit_base_draws_the_unmerged_samples(tiny_model_dir):
    hydra = trained_4bit_actor(tiny_model_dir)
    prompts, seeds = ["a", "a much longer prompt", "third"], [5, 6, 7]
    sampling = SamplingConfig(max_new_tokens=12, top_k=50)
    merged = generate_rollout(hydra, prompts, sampling, seeds)
    hydra.merge_sampling = False
    unmerged = generate_rollout(hydra, prompts, sampling, seeds)
    assert torch.equal(merged.response_ids, unmerged.response_ids)


@pytest.mark.parametrize("available", [None, 1 << 16])
def test_a_4bit_base_stays_unmerged_when_its_copy_would_not_fit(tiny_model_dir, monkeypatch, available):
    import lorarlhf.model.hydra as hydra_module

    hydra = trained_4bit_actor(tiny_model_dir)
    copy_bytes = 4 * sum(layer.weight.quant_state.shape.numel() for layer in base_layers(hydra))
    assert copy_bytes > (1 << 16) * hydra_module.MERGE_MEMORY_SHARE  # the tiny model's copy is over 32 KiB
    monkeypatch.setattr(hydra_module, "available_memory_bytes", lambda: available)
    originals = base_layers(hydra)
    with torch.no_grad(), hydra.role("actor"), hydra.merged_for_sampling():
        assert all(now is then for now, then in zip(base_layers(hydra), originals, strict=True))
    hydra.merge_sampling = True  # asked for: merged whatever the memory
    with torch.no_grad(), hydra.role("actor"), hydra.merged_for_sampling():
        assert all(type(layer) is torch.nn.Linear for layer in base_layers(hydra))


def test_an_unquantized_base_stays_unmerged_by_default(tiny_model_dir):
    hydra = trained_actor(tiny_model_dir)
    hydra.merge_sampling = None
    weights = [layer.get_base_layer().weight for layer in hydra._lora_layers]
    with torch.no_grad(), hydra.role("actor"), hydra.merged_for_sampling():
        assert all(layer.get_base_layer().weight is w for layer, w in zip(hydra._lora_layers, weights, strict=True))


def test_an_exception_while_merged_puts_the_4bit_layers_back(tiny_model_dir):
    hydra = trained_4bit_actor(tiny_model_dir)
    originals, ids = base_layers(hydra), torch.randint(3, 200, (1, 5))
    with torch.no_grad(), hydra.role("actor"):
        expected = hydra.causal_lm(input_ids=ids).logits
    with pytest.raises(KeyboardInterrupt), torch.no_grad(), hydra.role("actor"), hydra.merged_for_sampling():
        raise KeyboardInterrupt
    assert all(now is then for now, then in zip(base_layers(hydra), originals, strict=True))
    with torch.no_grad(), hydra.role("actor"):
        torch.testing.assert_close(hydra.causal_lm(input_ids=ids).logits, expected, rtol=0, atol=0)
