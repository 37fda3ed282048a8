"""LoRA linear layers whose update is one multiply-add into the base output.

peft's LoRA forward computes y = base(x) + (B(A(x))) * s: three tensors of the layer's full output size per call
(B's output, its scaled copy, the sum; four on a 4-bit base, which clones the base output first) and as many
passes over memory, then a full-size scaled copy of the gradient in backward. Here base(x).addmm_(A(x), Bᵀ,
alpha=s): the same update written into the base's own output, so no full-size tensor besides it, and only
rank-sized tensors in backward. On a 75M-parameter Llama on the CPU that is three of the step's full-size
allocations per adapted linear, which is most of the allocator's churn besides the matmuls themselves.

The layers are peft's own classes (subclassed, registered through LoraConfig's custom-module mapping), so the
parameters, their names, merging, and the saved adapter format are peft's. Anything off the plain path (adapters
disabled or merged, several active adapters, dropout, DoRA and other variants, mixed adapter batches, an input
dtype other than the adapter's) takes peft's forward unchanged.
"""

from __future__ import annotations

import functools

import torch
from peft.tuners.lora.layer import Linear as PeftLinear
from torch import nn


def _plain_adapter(layer, x: torch.Tensor, args: tuple, kwargs: dict) -> str | None:
    """The one active adapter when this call is plain LoRA (no dropout, variant, bias or dtype cast), else None."""
    if args or kwargs or layer.disable_adapters or layer.merged:
        return None
    active = [name for name in layer.active_adapters if name in layer.lora_A]
    if len(active) != 1 or active[0] in layer.lora_variant:
        return None
    name = active[0]
    lora_a, lora_b = layer.lora_A[name], layer.lora_B[name]
    plain = (
        isinstance(layer.lora_dropout[name], nn.Identity)
        and lora_a.bias is None
        and lora_b.bias is None
        and x.dtype == lora_a.weight.dtype == lora_b.weight.dtype
    )
    return name if plain else None


def _add_update(layer, name: str, x: torch.Tensor) -> torch.Tensor:
    """base(x) + s·(x Aᵀ) Bᵀ: the update added in place to the base's own output when it has the adapter's dtype.

    The base output is a fresh (rows, out) tensor that no autograd node saves (a linear's backward keeps its input
    and weight), so addmm_ may write into it: no second full-size tensor, and no copy of the base output into one.
    """
    lora_b, scaling = layer.lora_B[name], layer.scaling[name]
    rows = x.reshape(-1, x.shape[-1])
    result = layer.base_layer(rows)  # (rows, out)
    down = nn.functional.linear(rows, layer.lora_A[name].weight)  # (rows, r)
    if result.dtype != down.dtype:  # a 4-bit base computing in another dtype: peft's expression
        result = result + (lora_b(down) * scaling).to(result.dtype)
    elif result._is_view() or not result.is_contiguous():  # not ours to write into
        result = torch.addmm(result, down, lora_b.weight.t(), alpha=scaling)
    else:
        result.addmm_(down, lora_b.weight.t(), alpha=scaling)
    return result.view(*x.shape[:-1], result.shape[-1])


class _FusedForward:
    """The fused forward, mixed in before a peft LoRA layer class, whose own forward takes every other call."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        name = _plain_adapter(self, x, args, kwargs)
        if name is None:
            return super().forward(x, *args, **kwargs)
        return _add_update(self, name, x)


class FusedLoraLinear(_FusedForward, PeftLinear):
    """peft's LoRA Linear, with the plain single-adapter forward fused (see the module docstring)."""


@functools.cache
def _fused_linear_4bit() -> type[nn.Module]:
    """The fused layer on a bitsandbytes 4-bit base, built on first use so that bitsandbytes loads only then."""
    from peft.tuners.lora.bnb import Linear4bit as PeftLinear4bit

    class FusedLoraLinear4bit(_FusedForward, PeftLinear4bit):
        """peft's LoRA layer on a 4-bit base, with the plain forward fused. peft clones the base output before
        adding to it; here the update goes into it in place, which is safe because bitsandbytes' 4-bit matmul
        returns a fresh tensor and its backward keeps only the packed weight (a view takes the out-of-place
        addmm instead)."""

    return FusedLoraLinear4bit


def fused_layer_mapping(quantized: bool) -> dict[type[nn.Module], type[nn.Module]]:
    """LoraConfig._register_custom_module's mapping: base layer type -> the fused LoRA layer for it.

    The 4-bit layer comes first (bitsandbytes' Linear4bit is an nn.Linear too) and is imported only when the base
    is quantized, so an unquantized run never imports bitsandbytes."""
    mapping: dict[type[nn.Module], type[nn.Module]] = {}
    if quantized:
        import bitsandbytes as bnb

        mapping[bnb.nn.Linear4bit] = _fused_linear_4bit()
    mapping[nn.Linear] = FusedLoraLinear
    return mapping
