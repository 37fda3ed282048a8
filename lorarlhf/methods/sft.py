"""Supervised fine-tuning on the Hydra: the sft adapter learns to write the demonstrations' completions.

The loss is the mean negative log-likelihood of the completion tokens (and the EOS that ends them) given
the prompt; prompt tokens are context, not targets. Log-probs come from the fused kernels, so the logits
are never built. When the stage ends, the actor adapter is set to a copy of the sft adapter, so RL or DPO
starts from the fine-tuned policy, while the sft adapter itself stays frozen as the reference: the
policy's KL is measured to the model it started from, not to the bare base.

    for step in 1..steps:
        batch <- next shuffled demonstrations
        loss  <- -mean log p(completion tokens | prompt), as the sft role (in slices if memory runs out)
        update <- AdamW on the sft adapter, gradient norm clipped
    evaluate on held-out prompts: mean token NLL (sft/eval_loss)
    actor <- copy of sft
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from lorarlhf.data.demonstrations import Demonstration
from lorarlhf.training.config import CommonConfig
from lorarlhf.training.steps import StageRun
from lorarlhf.training.supervised_loop import SupervisedLoop, sliced_backward
from lorarlhf.validation import check_bool, check_int, check_number


@dataclass
class SFTConfig(CommonConfig):
    lr: float = 2e-4
    """AdamW learning rate of the sft adapter."""


# What the optional SFT stage takes from the run it precedes: everything but its own steps and lr.
SHARED_WITH_SFT_STAGE = (
    "batch_size", "seed", "quantize", "lora_r", "lora_alpha", "max_length", "eval_fraction",
    "gradient_checkpointing", "max_grad_norm", "weight_decay", "grad_accumulation", "max_skipped_steps",
)  # fmt: skip


@dataclass
class SFTStageOptions:
    """The optional SFT stage before DPO, PPO or GRPO: the actor starts from it, the reference is it."""

    sft: bool = False
    """Fine-tune an sft adapter on demonstrations first (the data's completions, or the preferred answers of
    preference pairs); the actor then starts from it and the frozen reference is base + sft adapter."""
    sft_steps: int = 100
    """Optimizer steps of that SFT stage."""
    sft_lr: float = 2e-4
    """Learning rate of that SFT stage."""

    def _check_sft_stage(self) -> None:
        check_bool("sft", self.sft)
        check_int("sft_steps", self.sft_steps)
        check_number("sft_lr", self.sft_lr, low=0, open_low=True)

    def sft_stage_config(self) -> SFTConfig:
        """The SFTConfig of the pre-stage: this run's shared settings with the stage's own steps and lr."""
        shared = {name: getattr(self, name) for name in SHARED_WITH_SFT_STAGE}
        return SFTConfig(steps=self.sft_steps, lr=self.sft_lr, **shared)


def train_sft(
    hydra,
    train_demos: list[Demonstration],
    config: SFTConfig,
    *,
    eval_demos: list[Demonstration] | None = None,
    on_step: Callable[[dict[str, float]], None] | None = None,
    progress: bool = True,
    checkpoints=None,
) -> StageRun:
    """Train the sft adapter (added when missing) on `train_demos`; the actor then starts from it.

    checkpoints: a lorarlhf.training.checkpoints.StageCheckpoints to save through and resume from."""
    if not train_demos:
        raise ValueError("no training demonstrations: SFT needs at least one (prompt, completion)")
    if "sft" not in hydra.adapters:
        hydra.add_role("sft")
    torch.manual_seed(config.seed)
    params = hydra.trainable_parameters("sft")
    loop = SupervisedLoop(
        "sft", hydra, list(train_demos), params, config, on_step=on_step, progress=progress, checkpoints=checkpoints
    )
    forward = partial(completion_logprobs, hydra, max_length=config.max_length)

    with hydra.train_mode():
        for step, demos in loop:
            loss, tokens = loop.update(step, partial(sliced_backward, forward, demos, mean_token_nll))
            loop.log(step, {"sft/loss": loss.item(), "sft/tokens": float(tokens)})
    run = loop.finish({"sft/eval_loss": evaluate_sft(hydra, eval_demos, config)} if eval_demos else {})
    if "actor" in hydra.adapters:
        hydra.copy_adapter("sft", "actor")
    return run


def completion_logprobs(hydra, demos: list[Demonstration], max_length: int | None = None) -> torch.Tensor:
    """Per demonstration: the summed log-prob of its completion under the sft role, and its token count: (B, 2)."""
    batch = hydra.encode([d.prompt for d in demos], [d.completion for d in demos], max_length=max_length)
    logp = hydra.token_logprobs(batch, role="sft")  # (B, T), 0 off the completion
    return torch.stack([logp.sum(1), batch.response_mask.sum(1).to(logp.dtype)], dim=1)


def mean_token_nll(scalars: torch.Tensor):
    """Mean negative log-likelihood per completion token of a batch, and its token count."""
    tokens = scalars[:, 1].sum()
    return -scalars[:, 0].sum() / tokens, int(tokens.item())


@torch.no_grad()
def evaluate_sft(hydra, demos: list[Demonstration], config: SFTConfig) -> float:
    """Token-weighted mean NLL of the held-out completions."""
    parts = [
        completion_logprobs(hydra, demos[start : start + config.batch_size], config.max_length)
        for start in range(0, len(demos), config.batch_size)
    ]
    return mean_token_nll(torch.cat(parts))[0].item()
