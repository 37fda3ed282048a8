"""Options of supervised fine-tuning (see sft_trainer.py)."""

from __future__ import annotations

from dataclasses import dataclass

from lorarlhf.config import CommonConfig


@dataclass
class SFTConfig(CommonConfig):
    lr: float = 2e-4
    """AdamW learning rate of the sft adapter."""
