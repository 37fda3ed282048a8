"""LoRA settings shared by every role's adapter on the Hydra (Hu et al. 2021; QLoRA, Dettmers et al. 2023)."""

from __future__ import annotations

from dataclasses import dataclass

from peft import LoraConfig
from torch import nn

from lorarlhf.model.experts import is_moe_model, lora_targets
from lorarlhf.model.lora_layers import fused_layer_mapping
from lorarlhf.validation import check_int, check_number


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyper-parameters shared by every role's adapter."""

    r: int = 16
    """Rank of each adapter's update; 8-64 is usual, bytes grow linearly with it."""
    alpha: float = 32
    """Scale numerator: the update is multiplied by alpha / r."""
    dropout: float = 0.0
    """Dropout on the adapter input. 0 by default: PPO's ratio must be exactly 1 before the first update."""
    target_modules: str | tuple[str, ...] = "all-linear"
    """"all-linear" (every Linear but the LM head, as QLoRA) or a tuple of module names such as ("q_proj", "v_proj")."""

    def __post_init__(self):
        check_int("lora_r", self.r, hint=" (e.g. 8, 16, 64)")
        check_number("lora_alpha", self.alpha, low=0, open_low=True, hint=" (e.g. 2 * lora_r)")
        check_number("lora_dropout", self.dropout, low=0, high=1, open_high=True)
        targets = self.target_modules
        if isinstance(targets, list):
            object.__setattr__(self, "target_modules", targets := tuple(targets))
        valid = targets == "all-linear" or (
            isinstance(targets, tuple) and targets and all(isinstance(t, str) and t for t in targets)
        )
        if not valid:
            raise ValueError(
                f"target_modules={targets!r} must be 'all-linear' or a non-empty list of module names "
                "such as ['q_proj', 'v_proj']"
            )

    def peft_config(self, model: nn.Module | None = None) -> LoraConfig:
        """peft's config for one adapter. Given the base `model`, "all-linear" on a mixture-of-experts model becomes
        the explicit list of `lora_targets` (attention and dense layers; no router, no expert): peft 0.21 itself
        would resolve "all-linear" there to LoRA on the router and on the 3-D expert parameters too."""
        targets = self.target_modules if isinstance(self.target_modules, str) else list(self.target_modules)
        if targets == "all-linear" and model is not None and is_moe_model(model):
            targets = lora_targets(model)
        config = LoraConfig(
            r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=targets, bias="none"
        )
        # The adapted linears are peft's layers with the plain forward fused (lorarlhf.model.lora_layers).
        config._register_custom_module(fused_layer_mapping(quantized=model is not None and has_4bit_layers(model)))
        return config


def has_4bit_layers(model: nn.Module) -> bool:
    """Whether any layer of `model` is a bitsandbytes 4-bit linear (told by name: no bitsandbytes import)."""
    return any(type(module).__name__ == "Linear4bit" for module in model.modules())
