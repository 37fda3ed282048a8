"""Byte counting: 4-bit weights count their quantization state, shared tensors count once."""

from __future__ import annotations

import torch
from torch import nn

from lorarlhf.model.loading import load_base_model
from lorarlhf.model.memory import module_bytes, parameter_bytes, tensors_bytes


def test_tied_and_repeated_tensors_count_once():
    embedding = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = embedding.weight
    assert parameter_bytes([embedding.weight, head.weight]) == 10 * 4 * 4
    x = torch.zeros(3, dtype=torch.float16)
    assert tensors_bytes([x, x, torch.zeros(2, dtype=torch.int8)]) == 3 * 2 + 2


def test_nf4_linear_counts_packed_codes_and_block_scales(tiny_model_dir):
    model = load_base_model(str(tiny_model_dir), quantize="nf4", device=torch.device("cpu"), dtype=torch.float32)
    layer = model.model.layers[0].mlp.up_proj  # 64 -> 128
    weight = layer.weight
    state = weight.quant_state
    numbers = 128 * 64
    packed = numbers // 2  # two 4-bit codes per byte
    scales = state.absmax.numel() * state.absmax.element_size()  # one per 64-block, 8-bit under double quant
    assert weight.numel() * weight.element_size() == packed
    assert state.absmax.dtype == torch.uint8 and state.absmax.numel() == numbers // 64
    nested = state.state2
    expected = packed + scales + state.code.numel() * 4 + state.offset.numel() * 4
    expected += nested.absmax.numel() * nested.absmax.element_size() + nested.code.numel() * 4
    assert parameter_bytes([weight]) == expected
    full = load_base_model(str(tiny_model_dir), quantize=None, device=torch.device("cpu"), dtype=torch.float32)
    assert module_bytes(model) < module_bytes(full)
