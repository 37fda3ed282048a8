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
