"""Tiny random-weight models of several families, built from each family's transformers config with realistic
flags, and saved like a hub checkpoint with the local byte-level tokenizer (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM

from lorarlhf.model.tiny import build_tiny_tokenizer

VOCAB = len(build_tiny_tokenizer())
IDS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)  # the tiny tokenizer's <s>, </s>, <pad>

# Small but shaped like the real checkpoints: hidden 256, each family's own MLP width rule, GQA / multi-query
# attention, learned positions, biases and tied embeddings where the family has them.
FAMILIES = {
    "llama": lambda: transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=2, tie_word_embeddings=False, **IDS,
    ),
    "qwen2": lambda: transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=2, tie_word_embeddings=True, **IDS,
    ),
    "gemma": lambda: transformers.GemmaConfig(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, head_dim=64, **IDS,
    ),
    "gpt2": lambda: transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=256, n_layer=2, n_head=8, n_positions=512, **IDS
    ),  # n_inner=None: 4 x n_embd
    "opt": lambda: transformers.OPTConfig(
        vocab_size=VOCAB, hidden_size=256, ffn_dim=1024, num_hidden_layers=2, num_attention_heads=8,
        max_position_embeddings=512, word_embed_proj_dim=256, **IDS,
    ),
    "falcon": lambda: transformers.FalconConfig(
        vocab_size=VOCAB, hidden_size=256, num_hidden_layers=2, num_attention_heads=8, **IDS
    ),  # multi-query attention, ffn_hidden_size=None: 4 x hidden, FalconLinear layers
    "gpt_neox": lambda: transformers.GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=8,
        max_position_embeddings=512, **IDS,
    ),
    "phi": lambda: transformers.PhiConfig(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=8,
        max_position_embeddings=512, **IDS,
    ),
}  # fmt: skip


# More families, for the matrix of tests/test_families.py. Kept apart from FAMILIES, whose planner and quantization
# tests pin numbers (e.g. each MLP width) to those eight. Rope settings, norms and flags follow each family's
# published config (named in the comment), at the same tiny scale.
MORE_FAMILIES = {
    "llama3": lambda: transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=131072,
        rope_parameters=dict(
            rope_type="llama3", rope_theta=500000.0, factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
            original_max_position_embeddings=8192,
        ), **IDS,
    ),  # Llama 3.2 1B: GQA 4:1, tied head, llama3 rope scaling
    "qwen3": lambda: transformers.Qwen3Config(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=768, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=4, head_dim=64, tie_word_embeddings=True, rope_parameters=dict(
            rope_type="default", rope_theta=1000000.0
        ), **IDS,
    ),  # Qwen3 0.6B: q/k RMSNorm, head_dim wider than hidden / heads, tied head
    "mistral": lambda: transformers.MistralConfig(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=896, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=2, sliding_window=16, tie_word_embeddings=False, **IDS,
    ),  # Mistral 7B v0.1: GQA 4:1, sliding-window attention (4096 there; 16 here, shorter than the test texts)
    "gemma2": lambda: transformers.Gemma2Config(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=64, query_pre_attn_scalar=64, sliding_window=16,
        final_logit_softcapping=30.0, attn_logit_softcapping=50.0, **IDS,
    ),  # Gemma 2 2B: both soft-caps, sliding / global layers alternating, tied head
    "gemma3_text": lambda: transformers.Gemma3TextConfig(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, head_dim=64, query_pre_attn_scalar=64, sliding_window=16,
        layer_types=["sliding_attention", "full_attention"], **IDS,
    ),  # Gemma 3 1B (text only): q/k norm, local (10k rope) and global (1M rope) layers, tied head
    "phi3": lambda: transformers.Phi3Config(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=8, max_position_embeddings=4096, original_max_position_embeddings=4096,
        sliding_window=2047, tie_word_embeddings=False, **IDS,
    ),  # Phi-3 mini: fused qkv_proj and gate_up_proj Linear layers
    "stablelm": lambda: transformers.StableLmConfig(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=8, use_qkv_bias=True, partial_rotary_factor=0.25, tie_word_embeddings=False, **IDS,
    ),  # StableLM 2 1.6B: LayerNorm, q/k/v biases, rotary on a quarter of each head
    "olmo2": lambda: transformers.Olmo2Config(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=8, tie_word_embeddings=False, rope_parameters=dict(
            rope_type="default", rope_theta=500000.0
        ), **IDS,
    ),  # OLMo 2 1B: norms after attention and MLP, q/k RMSNorm over all heads
    "smollm3": lambda: transformers.SmolLM3Config(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=2, no_rope_layer_interval=4, tie_word_embeddings=True, rope_parameters=dict(
            rope_type="default", rope_theta=2000000.0
        ), **IDS,
    ),  # SmolLM3 3B: GQA 4:1, every 4th layer without rotary positions (NoPE), tied head
    "granite": lambda: transformers.GraniteConfig(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=768, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=2, embedding_multiplier=12.0, logits_scaling=8.0, residual_multiplier=0.22,
        attention_multiplier=0.015625, tie_word_embeddings=True, **IDS,
    ),  # Granite 3 2B: scaled embeddings, residuals and attention, LM head output divided by logits_scaling
    "cohere": lambda: transformers.CohereConfig(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=2, logit_scale=0.0625, tie_word_embeddings=True, **IDS,
    ),  # Command R 08-2024: parallel attention and MLP, LM head output multiplied by logit_scale, tied head
    "mixtral": lambda: transformers.MixtralConfig(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=384, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, tie_word_embeddings=False, **IDS,
    ),  # Mixtral 8x7B: top-2 of 8 experts (4 here), the experts as 3-D parameters of one MixtralExperts module
    "qwen3_moe": lambda: transformers.Qwen3MoeConfig(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=768, moe_intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=8, num_key_value_heads=2, head_dim=32, num_experts=8, num_experts_per_tok=2,
        norm_topk_prob=True, tie_word_embeddings=False, **IDS,
    ),  # Qwen3-30B-A3B: top-8 of 128 experts (2 of 8 here), q/k RMSNorm, every layer sparse
}  # fmt: skip
ALL_FAMILIES = {**FAMILIES, **MORE_FAMILIES}


def save_family_model(path: str | Path, config, *, seed: int = 0) -> Path:
    """Write a randomly initialised model of `config` and the tiny tokenizer to `path`."""
    path = Path(path)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    finally:
        torch.random.set_rng_state(state)
    model.save_pretrained(path)
    build_tiny_tokenizer().save_pretrained(path)
    return path
