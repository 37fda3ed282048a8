"""Options of PPO (see ppo_trainer.py)."""

from __future__ import annotations

from dataclasses import dataclass

from lorarlhf.config import ESTIMATORS, RLConfig, _is_number, _positive_int
from lorarlhf.hydra import CRITIC_MODES


@dataclass
class PPOConfig(RLConfig):
    ppo_epochs: int = 2
    """Passes over each rollout batch; every minibatch of every pass is one optimizer step."""
    num_minibatches: int = 1
    """Minibatches each rollout batch is cut into per pass."""
    clip: float = 0.2
    """PPO ratio clipping epsilon."""
    value_clip: float = 0.2
    """Clipping of the value update around the rollout's values."""
    vf_coef: float = 0.1
    """Weight of the value loss in the joint actor + critic loss."""
    ent_coef: float = 0.0
    """Weight of the entropy bonus."""
    gamma: float = 1.0
    """Discount of GAE."""
    lam: float = 0.95
    """GAE lambda."""
    whiten_advantages: bool = True
    """Normalise advantages to zero mean and unit variance over each rollout batch."""
    kl_estimator: str = "k1"
    """Per-token KL folded into the reward: "k1" (log ratio, as InstructGPT) or "k3"."""
    adaptive_kl: bool = False
    """Adapt kl_coef toward kl_target (Ziegler et al. 2019)."""
    kl_target: float = 6.0
    """Target KL per sequence of the adaptive controller (adaptive_kl=True); not to confuse with target_kl."""
    kl_horizon: int = 10000
    """Horizon of the adaptive controller."""
    target_kl: float | None = None
    """Early stop: end a rollout's PPO epochs when the approx-KL between the updated and the rollout policy
    exceeds 1.5 x this (None: never). A trust region per rollout, unlike kl_target."""
    critic: str = "separate"
    """"separate": the critic has its own adapter. "shared": the actor adapter + a value head (joint Hydra)."""

    def __post_init__(self):
        super().__post_init__()
        _positive_int(self, "ppo_epochs")
        _positive_int(self, "num_minibatches")
        _positive_int(self, "kl_horizon")
        for name in ("clip", "value_clip", "kl_target"):
            if not _is_number(getattr(self, name)) or getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a positive number")
        for name in ("vf_coef", "ent_coef"):
            if not _is_number(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be >= 0")
        for name in ("gamma", "lam"):
            if not _is_number(getattr(self, name)) or not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be in [0, 1]")
        for name in ("adaptive_kl", "whiten_advantages"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be True or False")
        if self.adaptive_kl and self.kl_coef <= 0:
            raise ValueError("adaptive_kl=True needs kl_coef > 0 to start from (it is multiplied, never added to)")
        if self.kl_estimator not in ESTIMATORS:
            raise ValueError(f"kl_estimator={self.kl_estimator!r} is not supported; choose one of {ESTIMATORS}")
        if self.critic not in CRITIC_MODES:
            raise ValueError(f"critic={self.critic!r} is not supported; choose one of {CRITIC_MODES}")
        if self.target_kl is not None and (not _is_number(self.target_kl) or self.target_kl <= 0):
            raise ValueError(f"target_kl={self.target_kl!r} must be None or a positive number")
        if self.batch_size % self.num_minibatches:
            raise ValueError(
                f"batch_size={self.batch_size} must be a multiple of num_minibatches={self.num_minibatches}"
            )
        if (self.batch_size // self.num_minibatches) % self.grad_accumulation:
            raise ValueError("each minibatch (batch_size / num_minibatches) must be a multiple of grad_accumulation")
