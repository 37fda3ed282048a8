"""LoRA settings shared by every role's adapter on the Hydra (Hu et al. 2021; QLoRA, Dettmers et al. 2023)."""

from __future__ import annotations

from dataclasses import dataclass

from peft import LoraConfig


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
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"lora_r={self.r!r} must be a positive integer (e.g. 8, 16, 64)")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, int | float) or not self.alpha > 0:
            raise ValueError(f"lora_alpha={self.alpha!r} must be a positive number (e.g. 2 * lora_r)")
        if not isinstance(self.dropout, int | float) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora_dropout={self.dropout!r} must be in [0, 1)")
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

    def peft_config(self) -> LoraConfig:
        targets = self.target_modules if isinstance(self.target_modules, str) else list(self.target_modules)
        return LoraConfig(
            r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=targets, bias="none"
        )
