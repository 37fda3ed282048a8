"""Mixture-of-experts layers in 4-bit NF4, and which layers of an MoE model LoRA adapts.

transformers 5 keeps a sparse MoE block's experts as 3-D parameters of one experts module (MixtralExperts,
Qwen3MoeExperts, GptOssExperts, ...: gate_up_proj (E, 2I, H) and down_proj (E, H, I), or their transposes with
biases for gpt-oss), not as Linear layers, so its bitsandbytes integration leaves them, 85-95% of an MoE model's
weights, in the compute dtype. `quantize_experts` replaces each such module of a loaded model by a `QuantizedExperts`
holding every expert's two matrices as bitsandbytes Linear4bit layers, with the forward of the module it replaces
(same arguments and output), so the model's own MoE block and router run unchanged.

An experts module qualifies when it follows transformers' experts interface (`@use_experts_implementation`, which
sets has_gate / has_bias / is_transposed on it): that contract fixes where its weights are and what they compute.

LoRA on an MoE model (`lora_targets`) adapts attention and the dense layers (a dense MLP, shared experts), never a
router (re-routing tokens while the experts are frozen is a different method) and, by default, not the experts:
one adapter over all 128 experts of Qwen3-30B-A3B at r=16 holds 629M fp32 weights (2.5 GB, 10 GB with its
gradient and AdamW moments), more than the 4-bit base it adapts, and the Hydra holds up to four adapters.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from lorarlhf.model.quantization import linear_layers, nf4_linear


def is_experts_module(module: nn.Module) -> bool:
    """A transformers experts module whose weights are 3-D parameters with the interface's known layout: the
    up (or fused gate and up) and the down projection of every expert, optional biases, no per-expert norm."""
    if not all(hasattr(module, flag) for flag in ("has_gate", "has_bias", "is_transposed")):
        return False
    if getattr(module, "has_post_expert_norm", False):
        return False
    up = getattr(module, "gate_up_proj" if module.has_gate else "up_proj", None)
    down = getattr(module, "down_proj", None)
    return all(isinstance(p, nn.Parameter) and p.dim() == 3 for p in (up, down))


def expert_weights(module: nn.Module) -> Iterator[tuple[str, torch.Tensor, torch.Tensor | None]]:
    """(projection name, weight (E, out, in), bias (E, out) or None) of each projection of an experts module:
    "gate_up" (or "up" for experts without a gate) first, then "down". Transposed layouts (gpt-oss stores
    (E, in, out)) are returned as views in nn.Linear's (out, in) order."""
    for name, param in (("gate_up" if module.has_gate else "up", "gate_up_proj" if module.has_gate else "up_proj"),
                        ("down", "down_proj")):  # fmt: skip
        weight = getattr(module, param)
        bias = getattr(module, f"{param}_bias", None) if module.has_bias else None
        yield name, weight.transpose(1, 2) if module.is_transposed else weight, bias


class QuantizedExpert(nn.Module):
    """One expert's two projections as Linear4bit layers: `gate_up` (or `up`) H -> 2I (I), `down` I -> H."""


class QuantizedExperts(nn.Module):
    """The experts of one MoE block in 4-bit: children "0" ... "E-1", each a QuantizedExpert.

    forward(hidden_states (N, H), top_k_index (N, K), top_k_weights (N, K)) -> (N, H) is the replaced module's:
    each token's output is the routing-weighted sum of its K experts' down(act(gate_up(x))). The activation is the
    family's own, the replaced module's `_apply_gate` (transformers' experts-interface hook: SiLU-gated for
    Mixtral and Qwen3-MoE, gpt-oss's clamped, interleaved SwiGLU), so that module is kept, its weights released.
    """

    def __init__(self, experts: nn.Module, quantization_config):
        super().__init__()
        self.num_experts = experts.num_experts
        self.has_gate = experts.has_gate
        projections = list(expert_weights(experts))
        for index in range(self.num_experts):
            expert = QuantizedExpert()
            for name, weight, bias in projections:
                # contiguous copies: each expert is quantized in turn, then the 3-D parameter is released whole
                part = None if bias is None else bias[index].detach().clone()
                expert.add_module(name, nf4_linear(weight[index].detach().contiguous(), part, quantization_config))
            self.add_module(str(index), expert)
        for param in ("gate_up_proj", "up_proj", "down_proj", "gate_up_proj_bias", "up_proj_bias", "down_proj_bias"):
            if hasattr(experts, param):
                delattr(experts, param)
        self.family = experts  # no parameters left: its activation (`_apply_gate`, `act_fn`) is what it keeps

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor):
        output = torch.zeros_like(hidden_states)  # (N, H)
        for index in torch.unique(top_k_index).tolist():
            if index >= self.num_experts:  # expert-parallel sentinel: a slot routed to no local expert
                continue
            expert = getattr(self, str(index))
            token, slot = torch.where(top_k_index == index)  # (n,), (n,): the tokens routed here, and in which slot
            if self.has_gate:
                inner = self.family._apply_gate(expert.gate_up(hidden_states[token]))  # (n, I)
            else:
                inner = self.family.act_fn(expert.up(hidden_states[token]))
            routed = expert.down(inner) * top_k_weights[token, slot, None]  # (n, H)
            output.index_add_(0, token, routed.to(output.dtype))
        return output


def quantize_experts(model: nn.Module, quantization_config) -> list[str]:
    """Replace every experts module of `model` (`is_experts_module`) by a QuantizedExperts of its weights; returns
    the replaced modules' names.

    The experts were loaded in the compute dtype on their device, so the load's peak memory is the unquantized
    model's; each expert matrix is quantized in turn and each module's full-precision parameters released.
    """
    replaced = []
    for name, module in list(model.named_modules()):
        if is_experts_module(module):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, QuantizedExperts(module, quantization_config))
            replaced.append(name)
    return replaced


def is_moe_block(module: nn.Module) -> bool:
    """A module with an experts child (3-D or quantized): a sparse MoE block."""
    return any(isinstance(child, QuantizedExperts) or is_experts_module(child) for child in module.children())


def is_moe_model(model: nn.Module) -> bool:
    return any(is_moe_block(module) for module in model.modules())


def lora_targets(model: nn.Module) -> list[str]:
    """Names of the layers an "all-linear" adapter adapts on `model`: every Linear-like layer but the LM head
    (`linear_layers`) except the experts' and a MoE block's own Linear children, which route (Qwen2-MoE's
    shared_expert_gate; Mixtral's and Qwen3-MoE's routers are not Linear layers at all). Shared experts are modules
    of their own inside the block, and are adapted."""
    excluded = set()
    for name, module in model.named_modules():
        if is_moe_block(module):
            for child_name, child in module.named_children():
                if isinstance(child, QuantizedExperts | nn.Linear):
                    excluded.add(f"{name}.{child_name}" if name else child_name)
    targets = []
    for name, _ in linear_layers(model):
        parts = name.split(".")
        if any(part.startswith("lora_") for part in parts):  # a model that already carries adapters: their own
            continue  # layers are no targets, the layers they wrap (`<name>.base_layer`) are
        name = name.removesuffix(".base_layer")
        if not any(_inside(name, prefix) for prefix in excluded):
            targets.append(name)
    return targets


def _inside(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")
