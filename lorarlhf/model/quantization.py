"""What 4-bit NF4 covers: the Linear-like layers of the base, quantized, and measured after loading.

transformers' bitsandbytes integration replaces a module only when its type *is* nn.Linear (or GPT-2's Conv1D):
a subclass, such as Falcon's FalconLinear, keeps its weights in the compute dtype, so a Falcon "loaded in 4-bit"
held every matrix in 16 bits. `quantize_linear_subclasses` finishes the replacement on the loaded model, and
`quantization_coverage` says what share of the decoder's matrix weights is 4-bit and which module types are not
(a family's own projection class; MoE experts, 3-D parameters, until lorarlhf.model.experts quantizes them; the
routers, kept in the compute dtype), which the loader logs and warns about.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

log = logging.getLogger("lorarlhf.model")

COVERAGE_WARNING = 0.9
"""Below this share of 4-bit decoder matrix weights, the load warns: the memory plan assumed NF4 matrices."""


def linear_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """The layers NF4 quantizes and an "all-linear" LoRA adapts: every nn.Linear (subclasses and 4-bit layers
    included) and Conv1D, except the output embeddings (the LM head, which the fused kernels read)."""
    head = model.get_output_embeddings()
    for name, module in model.named_modules():
        if module is not head and isinstance(module, nn.Linear | Conv1D):
            yield name, module


def quantize_linear_subclasses(model: nn.Module, quantization_config) -> list[str]:
    """Replace each nn.Linear subclass the loader left in the compute dtype by an NF4 Linear4bit of its weights,
    with `quantization_config`'s settings; returns the replaced layers' names.

    The weights were loaded in the compute dtype, on their device, so the peak memory of such a model's load is
    that of its unquantized layers; each layer is quantized in turn and its full-precision weight released.
    """
    import bitsandbytes as bnb

    replaced = []
    for name, module in list(linear_layers(model)):
        # transformers converts plain nn.Linear and Conv1D itself: one left over was kept out on purpose
        if isinstance(module, bnb.nn.Linear4bit) or type(module) is nn.Linear or not _plain_linear(module):
            continue
        layer = nf4_linear(module.weight.data, module.bias, quantization_config)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer)
        replaced.append(name)
    return replaced


def nf4_linear(weight: torch.Tensor, bias: torch.Tensor | None, quantization_config) -> nn.Module:
    """A bitsandbytes Linear4bit computing x W^T + b, its (out, in) `weight` quantized on the weight's device with
    `quantization_config`'s settings (NF4, double quantization, compute dtype); the bias stays as it is."""
    import bitsandbytes as bnb

    out_features, in_features = weight.shape
    layer = bnb.nn.Linear4bit(
        in_features,
        out_features,
        bias=bias is not None,
        compute_dtype=quantization_config.bnb_4bit_compute_dtype,
        compress_statistics=quantization_config.bnb_4bit_use_double_quant,
        quant_type=quantization_config.bnb_4bit_quant_type,
        quant_storage=quantization_config.bnb_4bit_quant_storage,
        device="meta",
    )
    layer.weight = bnb.nn.Params4bit(
        weight,
        requires_grad=False,
        compress_statistics=quantization_config.bnb_4bit_use_double_quant,
        quant_type=quantization_config.bnb_4bit_quant_type,
        quant_storage=quantization_config.bnb_4bit_quant_storage,
        module=layer,
    ).to(weight.device)  # quantizes
    layer.bias = bias if bias is None or isinstance(bias, nn.Parameter) else nn.Parameter(bias, requires_grad=False)
    return layer


def _plain_linear(module: nn.Module) -> bool:
    """An nn.Linear subclass whose forward is the plain affine map x W^T + b (no extra state to carry over):
    its parameters are exactly the weight and the bias."""
    return isinstance(module, nn.Linear) and {n for n, _ in module.named_parameters()} <= {"weight", "bias"}


@dataclass(frozen=True)
class Coverage:
    """How much of a model's decoder is 4-bit: matrix weights (2-D and up) outside embeddings and the LM head."""

    quantized: int
    """Entries of the matrix weights held in 4-bit (counted in weights, not in packed bytes)."""
    full_precision: dict[str, int]
    """Module type -> entries of its matrix weights left in the compute dtype."""

    @property
    def fraction(self) -> float:
        total = self.quantized + sum(self.full_precision.values())
        return self.quantized / total if total else 0.0


def quantization_coverage(model: nn.Module) -> Coverage:
    """Count, by parameter entries, the decoder's matrix weights that are 4-bit and those that are not."""
    head = model.get_output_embeddings()
    quantized, full = 0, Counter()
    for module in model.modules():
        if module is head or isinstance(module, nn.Embedding):
            continue
        for param in module.parameters(recurse=False):
            state = getattr(param, "quant_state", None)
            if state is not None:  # a bitsandbytes Params4bit: packed codes, the original shape in its state
                quantized += math.prod(state.shape)
            elif param.dim() >= 2:
                full[type(module).__name__] += param.numel()
    return Coverage(quantized, dict(full))


def report_coverage(model: nn.Module, name: str) -> Coverage:
    """Log the 4-bit share of `model`'s decoder matrices; warn, naming the module types left, when it is low."""
    coverage = quantization_coverage(model)
    log.info("%s: %.1f%% of the decoder's matrix weights are 4-bit NF4", name, 100 * coverage.fraction)
    if coverage.fraction < COVERAGE_WARNING:
        left = ", ".join(f"{kind} ({n:,} weights)" for kind, n in sorted(coverage.full_precision.items()))
        log.warning(
            "%s: only %.1f%% of the decoder's matrix weights are 4-bit NF4; left in full precision: %s. "
            "Memory is higher than a 4-bit model's and than `lorarlhf plan` assumes.",
            name,
            100 * coverage.fraction,
            left,
        )
    return coverage
