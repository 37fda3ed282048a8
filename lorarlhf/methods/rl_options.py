"""Options PPO and GRPO share: sampling, rewards, KL, and the stages that may run before them (SFT, reward model)."""

from __future__ import annotations

from dataclasses import dataclass

from lorarlhf.methods.reward import RewardConfig
from lorarlhf.methods.sft import SFTStageOptions
from lorarlhf.training.config import CommonConfig
from lorarlhf.training.rewards import NORMALIZE
from lorarlhf.validation import check_choice, check_int, check_number, check_optional_number

# What the reward-model stage takes from the RL run it precedes: everything but its own steps and lr.
SHARED_WITH_REWARD_STAGE = (
    "batch_size", "seed", "quantize", "lora_r", "lora_alpha", "max_length", "eval_fraction",
    "gradient_checkpointing", "grad_accumulation", "max_skipped_steps",
)  # fmt: skip


@dataclass
class RLConfig(CommonConfig, SFTStageOptions):
    """Options shared by the RL methods (PPO, GRPO): sampling, rewards, KL, and the reward-model stage."""

    batch_size: int = 8
    """Prompts per rollout (GRPO samples group_size responses for each)."""
    lr: float = 1e-5
    """AdamW learning rate of the actor (and critic) adapters."""
    max_new_tokens: int = 64
    """Longest sampled response in tokens."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts (and of the log-probs the losses use)."""
    top_p: float = 1.0
    """Nucleus sampling threshold (1 keeps every token)."""
    top_k: int = 0
    """Top-k sampling (0 keeps every token)."""
    kl_coef: float = 0.05
    """Weight of the KL to the reference (PPO: in the per-token reward; GRPO: beta in the loss)."""
    missing_eos_penalty: float | None = None
    """Subtracted from the reward of a response that hit max_new_tokens without EOS (None: no penalty)."""
    reward_normalize: str = "none"
    """"none" or "batch" (whiten each rollout batch's rewards)."""
    reward_clip: float | None = None
    """Clip rewards to [-reward_clip, reward_clip] after normalisation (None: no clipping)."""
    rm_steps: int = 200
    """Reward-model steps trained first when the data is preference pairs and no reward_fn is given."""
    rm_lr: float = 1e-4
    """Learning rate of that reward-model stage."""

    def __post_init__(self):
        super().__post_init__()
        self._check_sft_stage()
        check_int("rm_steps", self.rm_steps)
        check_number("rm_lr", self.rm_lr, low=0, open_low=True)
        check_int("top_k", self.top_k, minimum=0, hint=" (0 disables it)")
        check_number("top_p", self.top_p, low=0, high=1, open_low=True)
        check_number("kl_coef", self.kl_coef, low=0)
        check_choice("reward_normalize", self.reward_normalize, NORMALIZE)
        for name in ("missing_eos_penalty", "reward_clip"):
            check_optional_number(name, getattr(self, name), low=0)

    @property
    def samples_per_prompt(self) -> int:
        """Responses sampled for each prompt of a rollout."""
        return 1

    def reward_stage_config(self) -> RewardConfig:
        """The reward-model stage run first when the data is preferences and no reward_fn is given."""
        shared = {name: getattr(self, name) for name in SHARED_WITH_REWARD_STAGE}
        return RewardConfig(steps=self.rm_steps, lr=self.rm_lr, **shared)
