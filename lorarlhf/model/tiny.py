"""A tiny Llama-shaped model and a byte-level tokenizer, both built locally.

Tests, the CPU demo and offline experiments need a real causal LM without a
download. The tokenizer is byte-level BPE with no merges: every string encodes
losslessly into its UTF-8 bytes, so any prompt (any script, emoji, control
characters) round-trips, and nothing has to be trained or fetched.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from lorarlhf.model.quiet import quiet

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
SPECIAL_TOKENS = (PAD, BOS, EOS)


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer: ids 0-2 are <pad>, <s>, </s>; ids 3-258 are the 256 bytes."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):  # sorted: the set's order varies by run
        vocab.setdefault(symbol, len(vocab))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD)


def tiny_llama_config(vocab_size: int = 259, **overrides) -> LlamaConfig:
    """A 2-layer Llama of ~0.1M parameters (hidden 64: one NF4 block per row)."""
    fields = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    fields.update(overrides)
    return LlamaConfig(**fields)


def save_tiny_model(path: str | Path, *, seed: int = 0, **config_overrides) -> Path:
    """Write a randomly initialised tiny Llama and its tokenizer to `path`, loadable by from_pretrained."""
    path = Path(path)
    tokenizer = build_tiny_tokenizer()
    config = tiny_llama_config(vocab_size=len(tokenizer), **config_overrides)
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)  # the caller's random stream is not ours to move
    with quiet():  # no "Writing model shards" bar
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    return path
