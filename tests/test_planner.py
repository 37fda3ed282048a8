"""The memory planner: what can be checked on a CPU is checked exactly against real objects."""

from __future__ import annotations

import pytest
import torch
from model_families import FAMILIES, save_family_model
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, MambaConfig

from lorarlhf import HydraModel
from lorarlhf.methods.table import METHODS
from lorarlhf.model.memory import parameter_bytes
from lorarlhf.planner import GiB, Shape, UnreadableConfig, adapter_bytes, kv_cache_bytes, plan, weight_bytes

LLAMA3_8B = LlamaConfig(
    vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, tie_word_embeddings=False,
)  # fmt: skip


@pytest.mark.parametrize("quantize", ["nf4", None])
def test_weight_and_adapter_bytes_equal_a_loaded_hydra(tiny_model_dir, quantize):
    shape = Shape.from_config(AutoConfig.from_pretrained(tiny_model_dir))
    hydra = HydraModel.from_pretrained(tiny_model_dir, quantize=quantize, device="cpu", lora_r=4)
    report = hydra.memory_report()
    assert weight_bytes(shape, quantize=quantize, dtype_bytes=4) == report["base"]
    for role in ("actor", "critic", "reward"):
        assert adapter_bytes(shape, lora_r=4, role=role) == report[role]


def test_optimizer_state_is_two_fp32_moments_per_trainable_weight(tiny_model_dir):
    hydra = HydraModel.from_pretrained(tiny_model_dir, quantize=None, device="cpu", lora_r=4, roles=("actor",))
    params = hydra.trainable_parameters("actor")
    optimizer = torch.optim.AdamW(params)
    sum(p.sum() for p in params).backward()
    optimizer.step()
    moments = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if t.dim())
    shape = Shape.from_config(AutoConfig.from_pretrained(tiny_model_dir))
    assert moments == 2 * adapter_bytes(shape, lora_r=4, role="actor")
    tiny = plan(tiny_model_dir, method="grpo", lora_r=4, reward_model=False)
    assert tiny.items["gradients + AdamW state"] == 3 * adapter_bytes(shape, lora_r=4, role="actor")


def test_kv_cache_formula_equals_a_real_cache(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    cache = model(input_ids=torch.randint(3, 200, (3, 17)), use_cache=True).past_key_values
    real = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    shape = Shape.from_config(model.config)
    assert kv_cache_bytes(shape, sequences=3, tokens=17, dtype_bytes=4) == real


def test_a_smaller_card_gets_smaller_micro_batches_and_a_readable_table():
    roomy = plan(LLAMA3_8B, method="grpo", batch_size=8, group_size=8, max_length=1024, gpu_memory_gb=80)
    tight = plan(LLAMA3_8B, method="grpo", batch_size=8, group_size=8, max_length=1024, gpu_memory_gb=24)
    assert roomy.batch_size == tight.batch_size == 64
    assert tight.micro_batch < roomy.micro_batch and tight.fits
    assert tight.peak_gb * GiB <= 24e9 * 0.9
    assert tight.micro_batch * tight.grad_accumulation >= 64
    table = str(tight)
    assert "base weights" in table and "recommended: micro-batch" in table and "fits" in table
    assert 4.5 < tight.items["base weights"] / GiB < 6  # NF4 linears + bf16 embeddings and LM head of an 8B model
    hopeless = plan(LLAMA3_8B, method="ppo", quantize=None, gpu_memory_gb=8)
    assert not hopeless.fits and "does NOT fit" in str(hopeless)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"method='rlhf' is not a method; choose one of"):
        plan(LLAMA3_8B, method="rlhf")
    with pytest.raises(ValueError, match=r"batch_size=0 must be a positive integer"):
        plan(LLAMA3_8B, batch_size=0)
    with pytest.raises(ValueError, match=r"dtype='int8' is not supported"):
        plan(LLAMA3_8B, dtype="int8")


def test_align_raises_grad_accumulation_to_fit_a_small_card(tiny_model_dir):
    from lorarlhf.methods.grpo import GRPOConfig
    from lorarlhf.pipeline import fit_to_card

    hydra = HydraModel.from_pretrained(tiny_model_dir, quantize="nf4", device="cpu", lora_r=4, roles=("actor",))
    config = GRPOConfig(batch_size=4, group_size=4, max_length=128, max_new_tokens=32, lora_r=4)
    roomy = fit_to_card(config, "grpo", hydra, train_reward=False, gpu_memory_gb=80)
    assert config.grad_accumulation == 1 and roomy.fits
    # A card just above the fixed costs: every micro-batch must shrink, and still split the batch evenly.
    fixed = sum(v for k, v in roomy.items.items() if not k.startswith(("activations", "KV cache")))
    config = GRPOConfig(batch_size=4, group_size=4, max_length=128, max_new_tokens=32, lora_r=4)
    tight = fit_to_card(config, "grpo", hydra, train_reward=False, gpu_memory_gb=(fixed + 300_000) / 0.9e9)
    assert config.grad_accumulation > 1 and 16 % config.grad_accumulation == 0
    assert config.grad_accumulation >= tight.grad_accumulation


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_in_the_table_is_planned_and_fitted_to_a_card(tiny_model_dir, method):
    """A method added to the table is planned from its entry: what it trains, whether it samples, pairs."""
    from lorarlhf.pipeline import fit_to_card

    entry = METHODS[method]
    estimate = plan(LLAMA3_8B, method=method, batch_size=4, group_size=3, gpu_memory_gb=24)
    per_prompt = 3 if entry.samples and method != "ppo" else 1
    assert estimate.batch_size == 4 * per_prompt * (2 if entry.data == "pairs" else 1)
    assert ("generation" in estimate.phases) == entry.samples
    assert plan(LLAMA3_8B, method=method).batch_size == 8 * (
        entry.config().samples_per_prompt if entry.samples else 2 if entry.data == "pairs" else 1
    )  # group_size=None: the method's own default
    hydra = HydraModel.from_pretrained(tiny_model_dir, quantize=None, device="cpu", lora_r=4, roles=("actor",))
    config = entry.config(batch_size=4, max_length=128, lora_r=4)
    assert fit_to_card(config, method, hydra, train_reward=False, gpu_memory_gb=80).fits


def test_plan_command_prints_the_table(tiny_model_dir, capsys):
    from lorarlhf.cli import main

    assert main(["plan", str(tiny_model_dir), "--method", "dpo", "--gpu-memory-gb", "24", "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "memory plan" in out and "base weights" in out and "recommended: micro-batch 8" in out
    assert main(["plan", str(tiny_model_dir), "--batch-size", "0"]) == 2
    assert "batch_size=0 must be a positive integer" in capsys.readouterr().err


# --------------------------------------------------------------------------- model families

FAMILY_NAMES = tuple(FAMILIES)


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def family(request, tmp_path_factory):
    """(config, saved model directory) of a tiny model of each family."""
    config = FAMILIES[request.param]()
    return config, save_family_model(tmp_path_factory.mktemp(request.param), config)


def test_weight_bytes_of_every_family_equal_its_models_parameters(family):
    # Tolerance 0: the planner counts the parameters of the architecture transformers builds from the config
    # (on the meta device), so fp32 and bf16 bases match exactly; NF4 is compared with a real 4-bit load, where
    # bitsandbytes' packed codes and quantization state are the independent reference.
    config, path = family
    shape = Shape.from_config(config)
    model = AutoModelForCausalLM.from_config(config)
    for dtype, name in ((torch.float32, "float32"), (torch.bfloat16, "bfloat16")):
        real = parameter_bytes(model.to(dtype).parameters())
        assert plan(config, quantize=None, dtype=name).items["base weights"] == real, (config.model_type, name)
    hydra = HydraModel.from_pretrained(path, quantize="nf4", device="cpu", lora_r=4, roles=("actor", "critic"))
    report = hydra.memory_report()
    assert weight_bytes(shape, quantize="nf4", dtype_bytes=4) == report["base"]
    assert report["base"] < 0.4 * parameter_bytes(model.float().parameters())
    for role in ("actor", "critic"):
        assert adapter_bytes(shape, lora_r=4, role=role) == report[role], (config.model_type, role)


def test_every_familys_config_names_give_its_real_kv_cache(family):
    # The table's concepts (layers, key/value heads, head size) checked against the cache the model builds:
    # GPT-2 calls them n_layer / n_head, Falcon-7B-style multi-query attention keeps one key/value head.
    config, path = family
    model = AutoModelForCausalLM.from_pretrained(path)
    cache = model(input_ids=torch.randint(3, 200, (2, 9)), use_cache=True).past_key_values
    real = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    assert kv_cache_bytes(Shape.from_config(config), sequences=2, tokens=9, dtype_bytes=4) == real
    assert Shape.from_config(config).intermediate_size == {"llama": 688, "qwen2": 688}.get(config.model_type, 1024)


def test_a_config_the_planner_cannot_read_is_one_clear_line(tmp_path, capsys):
    from lorarlhf.cli import main

    FAMILIES["gpt2"]().save_pretrained(tmp_path / "gpt2")  # n_embd, n_layer, n_head, n_inner=None
    assert main(["plan", str(tmp_path / "gpt2"), "--gpu-memory-gb", "24"]) == 0
    assert "memory plan" in capsys.readouterr().out
    MambaConfig(vocab_size=300, hidden_size=64, num_hidden_layers=2).save_pretrained(tmp_path)  # no attention
    with pytest.raises(UnreadableConfig, match=r"model_type='mamba': the config has no num heads \(looked for "):
        plan(tmp_path)
    assert main(["plan", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model_type='mamba'") and "num_attention_heads" in err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("name", ["llama", "falcon", "gpt2"])
def test_the_plan_reports_the_nf4_share_the_loaded_model_has(name, tmp_path):
    """`plan` states what NF4 covers, computed on the weightless copy; it is what the loaded Hydra measures."""
    from model_families import FAMILIES, save_family_model

    from lorarlhf import HydraModel

    config = FAMILIES[name]()
    memory_plan = plan(config, method="dpo", batch_size=1, max_length=64, quantize="nf4")
    hydra = HydraModel.from_pretrained(save_family_model(tmp_path, config), quantize="nf4", roles=("actor",))
    assert f"NF4 holds {100 * hydra.quantized_fraction:.1f}% of the decoder's matrix weights in 4-bit" in str(
        memory_plan
    )


# --------------------------------------------------------------------------- CPU runs: no NF4, no checkpointing

TINY_SIZES = dict(batch_size=4, max_length=128, max_new_tokens=32, group_size=4, lora_r=4)


def test_a_cpu_run_drops_nf4_and_checkpointing_when_memory_allows(tiny_model_dir):
    from lorarlhf.planner import cpu_settings

    chosen = cpu_settings(tiny_model_dir, method="grpo", memory_bytes=8 * GiB, **TINY_SIZES)
    assert chosen.quantize is None and chosen.gradient_checkpointing is False
    assert any("quantize=None" in note for note in chosen.notes) and any("save only" in note for note in chosen.notes)


def test_a_cpu_run_keeps_checkpointing_where_activations_outgrow_the_model():
    from lorarlhf.model.tiny import tiny_llama_config
    from lorarlhf.planner import CPU_CHECKPOINT_SAVING_BYTES, cpu_settings

    # The shape of benchmarks/peers.py's 64m rows: 75M parameters, 4 pairs of up to 512 tokens.
    config = tiny_llama_config(vocab_size=8192, hidden_size=768, intermediate_size=2048, num_hidden_layers=10,
                               num_attention_heads=12, num_key_value_heads=4)  # fmt: skip
    chosen = cpu_settings(config, method="dpo", quantize=None, memory_bytes=64 * GiB, batch_size=4, max_length=512)
    assert chosen.gradient_checkpointing is True
    saved = float(chosen.notes[-1].split("saves ~")[1].split(" GiB")[0]) * GiB
    assert saved > CPU_CHECKPOINT_SAVING_BYTES and "gradient_checkpointing=False" in chosen.notes[-1]
    small = cpu_settings(config, method="dpo", quantize=None, memory_bytes=64 * GiB, batch_size=1, max_length=16)
    assert small.gradient_checkpointing is False


def test_a_cpu_run_keeps_what_the_user_set(tiny_model_dir):
    from lorarlhf.planner import cpu_settings

    chosen = cpu_settings(
        tiny_model_dir, method="grpo", explicit={"quantize", "gradient_checkpointing"}, memory_bytes=8 * GiB,
        **TINY_SIZES,
    )  # fmt: skip
    assert chosen.quantize == "nf4" and chosen.gradient_checkpointing is True and chosen.notes == []
    off = cpu_settings(tiny_model_dir, method="dpo", quantize=None, gradient_checkpointing=False, **TINY_SIZES)
    assert off.quantize is None and off.gradient_checkpointing is False and off.notes == []


def test_a_cpu_run_keeps_checkpointing_when_the_update_would_not_fit(tiny_model_dir):
    from lorarlhf.planner import CUDA_CONTEXT_BYTES, cpu_settings

    sizes = {**TINY_SIZES, "group_size": 1}
    without = plan(tiny_model_dir, method="grpo", quantize=None, dtype="float32", gradient_checkpointing=False, **sizes)
    need = max(without.phases.values()) - CUDA_CONTEXT_BYTES
    tight = cpu_settings(tiny_model_dir, method="grpo", memory_bytes=need, **sizes)  # needs the 25% margin too
    assert tight.gradient_checkpointing is True and "stays on" in tight.notes[-1]
    roomy = cpu_settings(tiny_model_dir, method="grpo", memory_bytes=2 * need, **sizes)
    assert roomy.gradient_checkpointing is False


def test_align_on_a_cpu_writes_the_cpu_choice_into_its_config(tiny_model_dir):
    from lorarlhf.methods.grpo import GRPOConfig
    from lorarlhf.planner import settle_cpu_settings

    config = GRPOConfig(batch_size=2, group_size=2, max_length=64, max_new_tokens=8, lora_r=4)
    settle_cpu_settings(config, "grpo", tiny_model_dir, explicit=set())
    assert config.quantize is None and config.gradient_checkpointing is False
    config = GRPOConfig(batch_size=2, group_size=2, max_length=64, max_new_tokens=8, lora_r=4, quantize="nf4")
    settle_cpu_settings(config, "grpo", tiny_model_dir, explicit={"quantize"})
    assert config.quantize == "nf4"
