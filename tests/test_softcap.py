"""Gemma 2's soft-capped LM head (logits = cap * tanh(logits / cap)) through the Hydra, against plain transformers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, Gemma2Config, Gemma2ForCausalLM

from lorarlhf import HydraModel
from lorarlhf.data import PreferencePair
from lorarlhf.methods.dpo import DPOConfig, train_dpo
from lorarlhf.model.loading import logit_scale
from lorarlhf.model.tiny import build_tiny_tokenizer
from lorarlhf.training.rollout import _step

CAP = 30.0


@pytest.fixture(scope="module")
def tiny_gemma2_dir(tmp_path_factory):
    """A 2-layer Gemma 2 with its real flags (both soft-caps, sliding-window layers, tied head) on disk.

    A randomly initialised model's logits are O(0.1), where the cap is invisible; a large final-norm weight
    spreads them over about +-100, so most of them are bent by the cap of 30.
    """
    path = tmp_path_factory.mktemp("tiny-gemma2")
    tokenizer = build_tiny_tokenizer()
    config = Gemma2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=8,
        max_position_embeddings=128,
        final_logit_softcapping=CAP,
        attn_logit_softcapping=50.0,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(config)
    with torch.no_grad():
        model.model.norm.weight.fill_(400.0)  # Gemma's RMSNorm scales by (1 + weight)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def plain_token_logprobs(model, batch, *, softcap: bool = True) -> torch.Tensor:
    """log_softmax(model(input_ids).logits) at the next tokens, response positions only: (B, T) float64."""
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.double()
    if not softcap:  # undo the cap (atanh), to show that it matters at these weights
        logits = CAP * torch.atanh((logits / CAP).clamp(-1 + 1e-12, 1 - 1e-12))
    logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    return F.pad(logp * batch.response_mask[:, 1:], (1, 0))


@pytest.mark.kernels
def test_gemma2_loads_and_its_reference_logprobs_equal_transformers(tiny_gemma2_dir):
    hydra = HydraModel.from_pretrained(tiny_gemma2_dir, quantize=None, device="cpu", lora_r=4, lora_alpha=8)
    assert hydra.logit_softcap == CAP and hydra.logit_scale == 1.0
    batch = hydra.encode(["Hello, how are you?", "Sea:"], ["I am fine, thanks.", "waves"])
    plain = AutoModelForCausalLM.from_pretrained(tiny_gemma2_dir, dtype=torch.float32)

    expected = plain_token_logprobs(plain, batch)
    got = hydra.token_logprobs(batch, role="reference")
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)
    # Not a vacuous match: without the cap these log-probs are far off.
    assert (plain_token_logprobs(plain, batch, softcap=False) - expected).abs().max() > 1.0

    # Entropy rides on the same kernel call; the exact KL of the untrained actor to the reference is 0.
    logp, entropy = hydra.token_logprobs(batch, role="reference", return_entropy=True)
    with torch.no_grad():
        full = torch.log_softmax(plain(input_ids=batch.input_ids).logits.double()[:, :-1], dim=-1)
    expected_entropy = F.pad(-(full.exp() * full).sum(-1) * batch.response_mask[:, 1:], (1, 0))
    torch.testing.assert_close(entropy.double(), expected_entropy, atol=1e-5, rtol=1e-5)
    assert torch.equal(hydra.kl_to_reference(batch), torch.zeros(batch.input_ids.shape))


@pytest.mark.kernels
def test_a_dpo_step_on_gemma2_trains_the_actor_through_the_cap(tiny_gemma2_dir):
    torch.manual_seed(0)
    hydra = HydraModel.from_pretrained(tiny_gemma2_dir, quantize=None, device="cpu", lora_r=4, lora_alpha=8)
    pairs = [PreferencePair(f"Q{i}:", f"a{i} yes", f"a{i} no") for i in range(4)]
    run = train_dpo(hydra, pairs, DPOConfig(steps=1, lr=1e-2, batch_size=4, eval_fraction=0.0), progress=False)
    assert torch.isfinite(torch.tensor(run.history[-1]["dpo/loss"]))

    # The actor moved, and its log-probs and exact KL still agree with transformers' capped logits.
    batch = hydra.encode([p.prompt for p in pairs], [p.chosen for p in pairs])
    with torch.no_grad(), hydra.role("actor"):
        actor_logits = hydra.causal_lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    with torch.no_grad(), hydra.role("reference"):
        ref_logits = hydra.causal_lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    logp_all = torch.log_softmax(actor_logits.double()[:, :-1], dim=-1)
    logq_all = torch.log_softmax(ref_logits.double()[:, :-1], dim=-1)
    scored = batch.response_mask[:, 1:]
    expected_logp = logp_all.gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1) * scored
    expected_kl = (logp_all.exp() * (logp_all - logq_all)).sum(-1) * scored
    with torch.no_grad():
        got_logp = hydra.token_logprobs(batch, role="actor")
        got_kl = hydra.kl_to_reference(batch)
    torch.testing.assert_close(got_logp.double(), F.pad(expected_logp, (1, 0)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_kl.double(), F.pad(expected_kl, (1, 0)), atol=1e-5, rtol=1e-5)
    assert got_kl.max() > 0


def test_rollouts_sample_from_logits_transformers_already_capped(tiny_gemma2_dir):
    """Sampling reads the model's own logits: capped by Gemma2ForCausalLM's forward, not a second time here."""
    hydra = HydraModel.from_pretrained(tiny_gemma2_dir, quantize=None, device="cpu", lora_r=4, lora_alpha=8)
    ids = torch.tensor([[1, 40, 41, 42]])
    with torch.no_grad(), hydra.role("actor"):
        logits, _ = _step(hydra, ids, torch.ones_like(ids), torch.arange(ids.shape[1])[None], None)
        plain = hydra.causal_lm(input_ids=ids).logits[:, -1]
    torch.testing.assert_close(logits, plain.float())
    assert logits.abs().max() <= CAP and logits.abs().max() > CAP / 2  # within the cap, and near it


def test_a_head_that_rescales_and_soft_caps_is_refused():
    config = Gemma2Config(final_logit_softcapping=CAP)
    config.logit_scale = 0.5  # no architecture does both; the order of the two would be a guess
    with pytest.raises(ValueError, match=r"model_type='gemma2' both rescales \(by 0.5\) and soft-caps its logits"):
        logit_scale(config)
