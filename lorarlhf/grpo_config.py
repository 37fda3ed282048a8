"""Options of GRPO (see grpo_trainer.py)."""

from __future__ import annotations

from dataclasses import dataclass

from lorarlhf.config import RLConfig, _is_number, _positive_int
from lorarlhf.rl_losses import LOSS_TYPES


@dataclass
class GRPOConfig(RLConfig):
    kl_coef: float = 0.04
    """beta: weight of the k3 KL to the reference in the loss (DeepSeekMath uses 0.04)."""
    group_size: int = 8
    """Responses sampled per prompt; advantages are normalised within each prompt's group."""
    scale_rewards: bool = True
    """Divide group-centred rewards by the group's std (GRPO); False keeps only the centring (Dr. GRPO)."""
    clip: float = 0.2
    """Ratio clipping epsilon."""
    num_iterations: int = 1
    """Passes over each rollout batch (1: on-policy, the ratio is 1 at the first pass)."""
    num_minibatches: int = 1
    """Minibatches each rollout batch is cut into per pass; each is one optimizer step."""
    loss_type: str = "sequence"
    """"sequence": mean over each response's tokens, then over responses (GRPO). "token": mean over all
    tokens of the batch (DAPO / Dr. GRPO), so long responses are not down-weighted."""

    def __post_init__(self):
        super().__post_init__()
        for name in ("group_size", "num_iterations", "num_minibatches"):
            _positive_int(self, name)
        if self.group_size < 2:
            raise ValueError(f"group_size={self.group_size} must be >= 2: advantages compare samples of a prompt")
        if not _is_number(self.clip) or self.clip <= 0:
            raise ValueError(f"clip={self.clip!r} must be a positive number")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type={self.loss_type!r} is not supported; choose one of {LOSS_TYPES}")
        if not isinstance(self.scale_rewards, bool):
            raise ValueError(f"scale_rewards={self.scale_rewards!r} must be True or False")
        samples = self.batch_size * self.group_size
        if samples % self.num_minibatches or (samples // self.num_minibatches) % self.grad_accumulation:
            raise ValueError(
                f"batch_size x group_size = {samples} samples must split into num_minibatches={self.num_minibatches}"
                f" minibatches of a multiple of grad_accumulation={self.grad_accumulation}"
            )
