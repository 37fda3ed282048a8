"""Options of DPO and its variants (see dpo_trainer.py)."""

from __future__ import annotations

from dataclasses import dataclass

from lorarlhf.config import CommonConfig, SFTStageOptions, _is_number

LOSSES = ("sigmoid", "ipo", "cpl")


@dataclass
class DPOConfig(CommonConfig, SFTStageOptions):
    lr: float = 5e-5
    """AdamW learning rate of the actor adapter."""
    loss: str = "sigmoid"
    """"sigmoid" (DPO), "ipo" (IPO), or "cpl" (Contrastive Preference Learning: no reference model)."""
    beta: float = 0.1
    """Strength of the KL constraint to the reference (DPO, IPO): the scale of the implicit reward."""
    label_smoothing: float = 0.0
    """Conservative DPO: the assumed probability that a label is flipped, in [0, 0.5)."""
    cpl_alpha: float = 0.1
    """CPL temperature alpha: the regret of a response is alpha x its log-prob."""
    cpl_lambda: float = 1.0
    """CPL conservative bias on the rejected response, in (0, 1]."""
    precompute_ref: bool = False
    """Compute the reference log-probs of every pair once before training instead of at every step."""

    def __post_init__(self):
        super().__post_init__()
        self._check_sft_stage()
        if self.loss not in LOSSES:
            raise ValueError(f"loss={self.loss!r} is not supported; choose one of {LOSSES}")
        for name in ("beta", "cpl_alpha"):
            if not _is_number(getattr(self, name)) or getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a positive number")
        if not _is_number(self.label_smoothing) or not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing={self.label_smoothing!r} must be in [0, 0.5)")
        if not _is_number(self.cpl_lambda) or not 0 < self.cpl_lambda <= 1:
            raise ValueError(f"cpl_lambda={self.cpl_lambda!r} must be in (0, 1]")
        if not isinstance(self.precompute_ref, bool):
            raise ValueError(f"precompute_ref={self.precompute_ref!r} must be True or False")
