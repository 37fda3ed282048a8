"""The Hydra: one base, role adapters that stay isolated, references equal to plain transformers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from lorarlhf import HydraModel
from lorarlhf.model.loading import load_base_model
from lorarlhf.model.memory import module_bytes


def build(path, quantize="nf4", **kwargs):
    kwargs.setdefault("lora_r", 4)
    kwargs.setdefault("lora_alpha", 8)
    return HydraModel.from_pretrained(path, quantize=quantize, device="cpu", **kwargs)


def plain_logprobs(model, batch) -> torch.Tensor:
    """log p(token_t | <t) from full transformers logits, at response positions: the obvious way."""
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.double()
    logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    return F.pad(logp * batch.response_mask[:, 1:], (1, 0)).float()


def lora_bytes_expected(config, r: int) -> int:
    """r * (in + out) fp32 numbers for each Linear in every decoder layer (all-linear skips the LM head)."""
    hidden, inter = config.hidden_size, config.intermediate_size
    head_dim = hidden // config.num_attention_heads
    q_out, kv_out = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    shapes = [(hidden, q_out), (hidden, kv_out), (hidden, kv_out), (q_out, hidden)]
    shapes += [(hidden, inter), (hidden, inter), (inter, hidden)]
    return config.num_hidden_layers * sum(r * (i + o) for i, o in shapes) * 4


# --------------------------------------------------------------------------- one base


@pytest.mark.parametrize("quantize", ["nf4", None])
def test_roles_add_only_adapter_and_head_bytes(tiny_model_dir, quantize):
    base = load_base_model(str(tiny_model_dir), quantize=quantize, device=torch.device("cpu"), dtype=torch.float32)
    base_bytes = module_bytes(base)
    hydra = build(tiny_model_dir, quantize=quantize, lora_r=4)
    config = hydra.causal_lm.config
    head_bytes = (config.hidden_size + 1) * 4

    assert hydra.base_bytes == base_bytes
    report = hydra.memory_report()
    assert report["actor"] == lora_bytes_expected(config, 4)
    assert report["critic"] == report["reward"] == lora_bytes_expected(config, 4) + head_bytes
    # The whole module holds the base once plus each role's own weights, nothing more.
    assert module_bytes(hydra) == base_bytes + report["actor"] + report["critic"] + report["reward"]


def test_nf4_base_is_four_bit_on_cpu(tiny_model_dir):
    import bitsandbytes as bnb

    hydra = build(tiny_model_dir, quantize="nf4")
    q_proj = hydra.causal_lm.model.layers[0].self_attn.q_proj.base_layer
    assert isinstance(q_proj, bnb.nn.Linear4bit)
    assert q_proj.weight.quant_state.quant_type == "nf4"
    assert q_proj.weight.quant_state.nested  # double quantization
    full = build(tiny_model_dir, quantize=None)
    # Layers shrink ~8x; embeddings and LM head stay fp32, so the whole base shrinks less.
    assert hydra.base_bytes < 0.75 * full.base_bytes
    assert all(not p.requires_grad for n, p in hydra.peft.named_parameters() if "lora_" not in n)


# --------------------------------------------------------------------------- reference and actor


def dequantized_copy(model_dir, hydra):
    """A plain fp32 transformers model holding the Hydra's NF4 weights, dequantized by bitsandbytes."""
    import bitsandbytes as bnb

    plain = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    quantized = dict(hydra.causal_lm.named_modules())
    for name, module in plain.named_modules():
        source = quantized.get(f"{name}.base_layer", quantized.get(name))
        if isinstance(source, bnb.nn.Linear4bit):
            weight = bnb.functional.dequantize_4bit(source.weight.data, source.weight.quant_state)
            module.weight.data.copy_(weight)
    return plain


@pytest.mark.parametrize("quantize", ["nf4", None])
@pytest.mark.kernels
def test_reference_logprobs_equal_plain_transformers(tiny_model_dir, pairs, quantize):
    hydra = build(tiny_model_dir, quantize=quantize)
    if quantize == "nf4":
        plain = dequantized_copy(tiny_model_dir, hydra)
        assert not torch.equal(plain.model.layers[0].mlp.up_proj.weight, hydra_free_weights(tiny_model_dir))
    else:
        plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    batch = hydra.encode(*pairs)

    expected = plain_logprobs(plain, batch)
    got = hydra.token_logprobs(batch, role="reference")

    assert batch.response_mask.sum() > 10
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hydra.sequence_logprobs(*pairs, role="reference"), expected.sum(1), atol=1e-4, rtol=0)


def hydra_free_weights(model_dir):
    """The checkpoint's own (unquantized) up_proj weight: NF4 must have rounded it."""
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).model.layers[0].mlp.up_proj.weight


@pytest.mark.kernels
def test_untrained_actor_equals_reference(tiny_model_dir, pairs):
    hydra = build(tiny_model_dir)
    with torch.no_grad():
        actor = hydra.sequence_logprobs(*pairs, role="actor")
        reference = hydra.sequence_logprobs(*pairs, role="reference")
    assert torch.equal(actor, reference)  # LoRA B starts at zero
    # With autograd on, bitsandbytes takes its dequantize-then-matmul path: equal to float tolerance.
    torch.testing.assert_close(hydra.sequence_logprobs(*pairs, role="actor"), reference, atol=1e-3, rtol=1e-4)


@pytest.mark.kernels
def test_entropy_matches_full_softmax(tiny_model_dir, pairs):
    hydra = build(tiny_model_dir, quantize=None)
    batch = hydra.encode(*pairs)
    logp, entropy = hydra.token_logprobs(batch, role="reference", return_entropy=True)
    with torch.no_grad():
        logits = hydra.causal_lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    full = torch.log_softmax(logits.double(), -1)
    expected = F.pad(-(full.exp() * full).sum(-1) * batch.response_mask[:, 1:], (1, 0)).float()
    torch.testing.assert_close(entropy, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(logp == 0, ~batch.response_mask)


# --------------------------------------------------------------------------- isolation


def snapshot(hydra, pairs, batch):
    with torch.no_grad():
        return {
            "actor": hydra.sequence_logprobs(*pairs, role="actor"),
            "reference": hydra.sequence_logprobs(*pairs, role="reference"),
            "reward": hydra.score(*pairs),
            "critic": hydra.values(batch.input_ids, batch.attention_mask),
        }


@pytest.mark.kernels
def test_actor_step_changes_only_the_actor(tiny_model_dir, pairs, base_checksum):
    hydra = build(tiny_model_dir)
    batch = hydra.encode(*pairs)
    before, checksum = snapshot(hydra, pairs, batch), base_checksum(hydra)
    optimizer = torch.optim.SGD(hydra.trainable_parameters("actor"), lr=0.1)

    # First step moves LoRA A only (B is zero); the second moves the output.
    for _ in range(2):
        optimizer.zero_grad()
        loss = -hydra.sequence_logprobs(*pairs, role="actor").mean()
        loss.backward()
        optimizer.step()

    with_grad = {name for name, p in hydra.named_parameters() if p.grad is not None}
    actor = {name for name, p in hydra.named_parameters() if any(p is q for q in hydra.trainable_parameters("actor"))}
    assert with_grad == actor and actor
    after = snapshot(hydra, pairs, batch)
    assert not torch.allclose(after["actor"], before["actor"])
    assert (after["actor"] > before["actor"]).all()  # the step raised log-likelihood, as asked
    for role in ("reference", "reward", "critic"):
        assert torch.equal(after[role], before[role]), role
    assert base_checksum(hydra) == checksum


def test_critic_and_reward_gradients_reach_only_their_adapter_and_head(tiny_model_dir, pairs):
    hydra = build(tiny_model_dir)
    batch = hydra.encode(*pairs)
    for role, loss_fn in (
        ("critic", lambda: hydra.values(batch.input_ids, batch.attention_mask).pow(2).mean()),
        ("reward", lambda: hydra.score(*pairs).sum()),
    ):
        hydra.zero_grad(set_to_none=True)
        loss_fn().backward()
        owned = {id(p) for p in hydra.trainable_parameters(role)}
        with_grad = {id(p) for p in hydra.parameters() if p.grad is not None}
        assert with_grad == owned, role
        assert hydra.heads[role].linear.weight.grad.abs().sum() > 0


@pytest.mark.kernels
def test_reference_never_builds_a_graph(tiny_model_dir, pairs):
    hydra = build(tiny_model_dir)
    assert not hydra.sequence_logprobs(*pairs, role="reference").requires_grad
    assert hydra.sequence_logprobs(*pairs, role="actor").requires_grad


# --------------------------------------------------------------------------- role switching


def test_role_context_restores_previous_role_on_exception(tiny_model_dir):
    hydra = build(tiny_model_dir)
    assert hydra.active_role == "reference"
    with hydra.role("critic"):
        with pytest.raises(RuntimeError, match="boom"), hydra.role("actor"):
            assert hydra.active_role == "actor"
            assert hydra.peft.active_adapter == "actor"
            raise RuntimeError("boom")
        assert hydra.active_role == "critic"
        assert hydra.peft.active_adapter == "critic"
    assert hydra.active_role == "reference"
    assert not any(layer.merged for layer in _lora_layers(hydra))
    assert all(layer.disable_adapters for layer in _lora_layers(hydra))


def _lora_layers(hydra):
    from peft.tuners.lora import LoraLayer

    return [m for m in hydra.peft.modules() if isinstance(m, LoraLayer)]


@pytest.mark.kernels
def test_losses_from_two_roles_backpropagate_together(tiny_model_dir, pairs):
    """PPO builds the actor loss and the critic loss under different roles, then calls backward once."""
    hydra = build(tiny_model_dir)
    batch = hydra.encode(*pairs)
    actor_loss = -hydra.sequence_logprobs(*pairs, role="actor").mean()
    critic_loss = hydra.values(batch.input_ids, batch.attention_mask).pow(2).mean()
    (actor_loss + critic_loss).backward()
    for role in ("actor", "critic"):
        grads = [p.grad for p in hydra.trainable_parameters(role)]
        assert all(g is not None for g in grads), role
        assert sum(g.abs().sum() for g in grads) > 0, role
    assert all(p.grad is None for p in hydra.trainable_parameters("reward"))


def test_unknown_or_absent_role_is_a_clear_error(tiny_model_dir, pairs):
    hydra = build(tiny_model_dir)
    with pytest.raises(ValueError, match=r"unknown role 'policy'.*'reference', 'sft', 'actor', 'critic', 'reward'"):
        hydra.sequence_logprobs(*pairs, role="policy")
    with pytest.raises(ValueError, match="role 'sft' has no adapter"):
        hydra.sequence_logprobs(*pairs, role="sft")
    with pytest.raises(ValueError, match="cannot add role 'reference'"):
        hydra.add_role("reference")
    with pytest.raises(ValueError, match="already has an adapter"):
        hydra.add_role("actor")
    assert hydra.active_role == "reference"


@pytest.mark.kernels
def test_reference_is_the_frozen_sft_adapter_when_one_exists(tiny_model_dir, pairs):
    hydra = build(tiny_model_dir)
    with torch.no_grad():
        bare = hydra.sequence_logprobs(*pairs, role="reference")
    hydra.add_role("sft")
    assert hydra.roles == ("reference", "sft", "actor", "critic", "reward")
    optimizer = torch.optim.SGD(hydra.trainable_parameters("sft"), lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        (-hydra.sequence_logprobs(*pairs, role="sft").mean()).backward()
        optimizer.step()
    with torch.no_grad():
        sft = hydra.sequence_logprobs(*pairs, role="sft")
        reference = hydra.sequence_logprobs(*pairs, role="reference")
    assert torch.equal(reference, sft)
    assert not torch.allclose(reference, bare)
    assert not hydra.sequence_logprobs(*pairs, role="reference").requires_grad  # frozen, though sft trains


# --------------------------------------------------------------------------- scores and generation


def test_reward_is_read_at_the_last_real_token_whatever_the_padding(tiny_model_dir, pairs):
    hydra = build(tiny_model_dir)
    prompts, responses = pairs
    with torch.no_grad():
        together = hydra.score(prompts, responses)
        alone = torch.cat([hydra.score([p], [r]) for p, r in zip(prompts, responses, strict=True)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    assert together.dtype == torch.float32 and together.shape == (2,)


def test_batched_greedy_generation_matches_one_at_a_time(tiny_model_dir):
    hydra = build(tiny_model_dir, quantize=None)
    prompts = ["a", "a much longer prompt than the first"]
    batched = hydra.generate(prompts, max_new_tokens=6, do_sample=False)
    alone = [hydra.generate([p], max_new_tokens=6, do_sample=False)[0] for p in prompts]
    assert batched == alone
    assert hydra.generate(prompts, max_new_tokens=6, do_sample=False, role="reference") == batched
    assert all(isinstance(text, str) for text in batched)


def test_generation_restores_training_mode_and_role(tiny_model_dir):
    hydra = build(tiny_model_dir)
    hydra.train()
    hydra.generate(["hi"], max_new_tokens=2, do_sample=False)
    assert hydra.training and hydra.active_role == "reference"
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        hydra.generate(["hi"], max_new_tokens=0)


@pytest.mark.parametrize("quantize", [None, "nf4"])
@pytest.mark.kernels
def test_gradient_checkpointing_recomputes_under_each_loss_own_role(tiny_model_dir, pairs, quantize):
    """Backward after the role contexts closed, two roles in one loss: same gradients as without checkpointing."""
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        hydra = build(tiny_model_dir, quantize=quantize, gradient_checkpointing=checkpointing)
        hydra.train()
        batch = hydra.encode(*pairs)
        for _ in range(2):  # the second pass sees nonzero LoRA B, so every adapter weight gets a gradient
            hydra.zero_grad()
            actor_loss = -hydra.sequence_logprobs(*pairs, role="actor").sum()
            critic_loss = hydra.values(batch.input_ids, batch.attention_mask).pow(2).sum()
            (actor_loss + critic_loss).backward()
            with torch.no_grad():
                for role in ("actor", "critic"):
                    for p in hydra.trainable_parameters(role):
                        p -= 0.1 * p.grad
        grads.append(torch.cat([p.grad.flatten() for r in ("actor", "critic") for p in hydra.trainable_parameters(r)]))
    assert (grads[0] != 0).float().mean() > 0.9
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------- architectures that rescale logits


@pytest.mark.kernels
def test_rescaled_lm_head_folds_into_the_temperature(tmp_path, pairs):
    """Granite divides its logits by logits_scaling after the LM head: log-probs must still match transformers."""
    from transformers import GraniteConfig, GraniteForCausalLM

    from lorarlhf.model.tiny import build_tiny_tokenizer, tiny_llama_config

    fields = tiny_llama_config().to_dict()
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    config = GraniteConfig(**{k: fields[k] for k in keys}, num_key_value_heads=2, logits_scaling=4.0)
    GraniteForCausalLM(config).save_pretrained(tmp_path)
    build_tiny_tokenizer().save_pretrained(tmp_path)
    hydra = build(tmp_path, quantize=None)
    assert hydra.logit_scale == 0.25
    batch = hydra.encode(*pairs)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    torch.testing.assert_close(hydra.token_logprobs(batch, role="reference"), plain_logprobs(plain, batch))


# --------------------------------------------------------------------------- padding, modes, devices


@pytest.mark.filterwarnings("ignore:fan_in_fan_out is set to False")  # GPT-2's Conv1D, handled by peft
@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_left_padded_rows_score_like_unpadded_ones(tmp_path, architecture):
    """Rollouts are left-padded: positions must count real tokens (rotary and absolute embeddings alike)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from lorarlhf.model.tiny import build_tiny_tokenizer

    if architecture == "gpt2":
        GPT2LMHeadModel(GPT2Config(vocab_size=259, n_embd=32, n_layer=2, n_head=2)).save_pretrained(tmp_path)
        build_tiny_tokenizer().save_pretrained(tmp_path)
        path = tmp_path
    else:
        from lorarlhf.model.tiny import save_tiny_model

        path = save_tiny_model(tmp_path)
    hydra = build(path, quantize=None)
    ids = torch.tensor([[1, 70, 71, 72, 73]])
    padded = torch.tensor([[0, 0, 1, 70, 71, 72, 73]])
    with torch.no_grad():
        alone = hydra.rewards(ids, torch.ones_like(ids))
        left = hydra.rewards(padded, (padded != 0).long())
        h_alone = hydra.hidden_states(ids, torch.ones_like(ids), role="actor")
        h_left = hydra.hidden_states(padded, (padded != 0).long(), role="actor")
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h_left[:, 2:], h_alone, atol=1e-5, rtol=1e-5)


def test_fresh_hydra_is_in_eval_mode_and_generation_restores_each_modules_mode(tiny_model_dir):
    hydra = build(tiny_model_dir)
    assert not any(module.training for module in hydra.modules())
    hydra.heads.train()  # a mixed state, as a trainer may leave it
    modes = {name: module.training for name, module in hydra.named_modules()}
    hydra.generate(["hi"], max_new_tokens=2, do_sample=False)
    assert {name: module.training for name, module in hydra.named_modules()} == modes


@pytest.mark.parametrize(("capability", "expected"), [((7, 5), torch.float16), ((8, 0), torch.bfloat16)])
def test_gpu_compute_dtype_follows_the_card(monkeypatch, capability, expected):
    """A T4 (sm_75) gets fp16: bf16 there is emulated. Ampere and newer get bf16."""
    from lorarlhf.model.loading import resolve_dtype

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert resolve_dtype(None, torch.device("cuda")) == expected


@pytest.mark.kernels
def test_role_switch_matches_peft_own_switch(tiny_model_dir, pairs):
    """The fast switch sets the same adapter state peft's set_adapter / disable_adapter_layers would."""
    hydra = build(tiny_model_dir, quantize=None)
    optimizer = torch.optim.SGD(hydra.trainable_parameters("critic"), lr=0.5)
    for _ in range(2):
        optimizer.zero_grad()
        hydra.sequence_logprobs(*pairs, role="critic").sum().backward()
        optimizer.step()
    batch = hydra.encode(*pairs)
    with torch.no_grad():
        ours = {role: hydra.token_logprobs(batch, role=role) for role in ("critic", "actor", "reference")}
        hydra.peft.base_model.enable_adapter_layers()  # our switch left the reference (adapters off) active
        hydra.peft.set_adapter("critic")
        assert torch.equal(hydra.token_logprobs(batch), ours["critic"])
        hydra.peft.set_adapter("actor")
        assert torch.equal(hydra.token_logprobs(batch), ours["actor"])
        with hydra.peft.disable_adapter():
            assert torch.equal(hydra.token_logprobs(batch), ours["reference"])
    assert not torch.equal(ours["critic"], ours["actor"])


@pytest.mark.kernels
def test_exact_kl_to_reference_matches_full_softmaxes(tiny_model_dir, pairs):
    hydra = build(tiny_model_dir, quantize=None)
    batch = hydra.encode(*pairs)
    assert torch.equal(hydra.kl_to_reference(batch), torch.zeros(batch.input_ids.shape))  # untrained actor
    optimizer = torch.optim.SGD(hydra.trainable_parameters("actor"), lr=0.5)
    for _ in range(2):
        optimizer.zero_grad()
        (-hydra.sequence_logprobs(*pairs, role="actor").sum()).backward()
        optimizer.step()

    kl = hydra.kl_to_reference(batch, temperature=0.8)
    with torch.no_grad():
        logits = {}
        for role in ("actor", "reference"):
            with hydra.role(role):
                logits[role] = hydra.causal_lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        logp = torch.log_softmax(logits["actor"][:, :-1].double() / 0.8, -1)
        logq = torch.log_softmax(logits["reference"][:, :-1].double() / 0.8, -1)
        expected = F.pad((logp.exp() * (logp - logq)).sum(-1) * batch.response_mask[:, 1:], (1, 0)).float()
    assert kl.requires_grad and (kl[batch.response_mask] > 0).all()
    torch.testing.assert_close(kl, expected, atol=1e-6, rtol=1e-4)
    kl.sum().backward()
    assert all(p.grad is not None for p in hydra.trainable_parameters("actor"))
