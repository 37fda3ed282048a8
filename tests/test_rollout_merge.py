"""Sampling with the actor merged into an unquantized base: the same samples as the unmerged path, and the base
and adapters exactly as they were afterwards, also when the sampling raises."""

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
