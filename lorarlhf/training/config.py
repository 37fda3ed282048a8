"""Configuration shared by every method: the names `align(..., steps=50)` means the same way everywhere.

Each method's config (e.g. reward_config.RewardConfig) is a dataclass extending `CommonConfig`; every field
carries its help text as a docstring right under it, `__post_init__` validates with a message naming the
allowed values, and `from_overrides` turns `align()` keyword arguments into a config, refusing unknown names.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import math
import textwrap
from dataclasses import asdict, dataclass, fields

from lorarlhf.model.loading import QUANTIZE_CHOICES

LR_SCHEDULES = ("constant", "linear", "cosine")


@dataclass
class CommonConfig:
    steps: int = 200
    """Optimizer steps."""
    lr: float = 1e-4
    """AdamW learning rate of the trained adapter and head."""
    batch_size: int = 8
    """Examples per optimizer step (pairs for the reward model)."""
    seed: int = 0
    """Seeds data order, the held-out split and adapter initialisation."""
    quantize: str | None = "nf4"
    """Base model quantization: "nf4" (4-bit, bitsandbytes) or None (keep the compute dtype)."""
    lora_r: int = 16
    """LoRA rank of every role's adapter."""
    lora_alpha: float = 32
    """LoRA scale numerator (update scaled by alpha / r)."""
    max_length: int = 512
    """Longest prompt + response in tokens; longer pairs are dropped and counted when the data is loaded."""
    eval_fraction: float = 0.1
    """Share of prompts held out for evaluation (split by prompt, so no prompt is on both sides)."""
    gradient_checkpointing: bool = True
    """Recompute activations in backward instead of keeping them: less memory, ~30% more compute."""
    max_grad_norm: float = 1.0
    """Gradient clipping threshold (global L2 norm)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    lr_schedule: str = "constant"
    """Learning rate over the steps: "constant", "linear" (decay to 0) or "cosine" (decay to 0)."""
    warmup_steps: int = 0
    """Steps of linear warmup from lr/warmup_steps to lr before the schedule."""
    grad_accumulation: int = 1
    """Micro-batches each update is computed in: the same update with 1/grad_accumulation of the activation
    memory (on a GPU, gpu_memory_gb may raise it to fit the card)."""
    gpu_memory_gb: float | str | None = "auto"
    """On a GPU, plan the run's memory (lorarlhf.plan) for this many GB, or "auto" for the free memory, and
    raise grad_accumulation until it fits; None: no planning (an out-of-memory error still backs off)."""
    max_skipped_steps: int = 3
    """Steps in a row with a NaN or infinite reward, loss or gradient (each skipped, never applied) before the
    run stops with an error saying where the NaN came from."""
    samples: int = 4
    """Prompts whose completions are sampled before and after training into samples.jsonl (0: none)."""
    merge: bool = False
    """Also save the actor merged into a full-precision copy of the base, as an ordinary transformers
    checkpoint in output_dir/merged (loads the base again, unquantized, on the CPU)."""
    save_every: int = 0
    """Write a checkpoint (weights, optimizer, generators, data position) to output_dir/checkpoints every
    this many optimizer steps, counted across the run's stages (0: never)."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep."""
    resume: bool = False
    """Continue the run in output_dir from its newest complete checkpoint, exactly where it stopped."""
    overwrite: bool = False
    """Allow replacing an earlier run in output_dir (otherwise refused, so no finished run is lost)."""
    trust_remote_code: bool = False
    """Run the model repository's own Python code when loading it (read it first: it runs as you)."""

    def __post_init__(self):
        _positive_int(self, "steps")
        _positive_int(self, "batch_size")
        _positive_int(self, "lora_r")
        _positive_int(self, "max_length")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed={self.seed!r} must be an integer")
        _positive_number(self, "lr")
        _positive_number(self, "lora_alpha")
        _positive_number(self, "max_grad_norm")
        if isinstance(self.quantize, str) and self.quantize.lower() == "none":
            self.quantize = None
        if self.quantize not in QUANTIZE_CHOICES:
            raise ValueError(f"quantize={self.quantize!r} is not supported; choose one of {QUANTIZE_CHOICES}")
        if not _is_number(self.eval_fraction) or not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction={self.eval_fraction!r} must be in [0, 1)")
        if not isinstance(self.gradient_checkpointing, bool):
            raise ValueError(f"gradient_checkpointing={self.gradient_checkpointing!r} must be True or False")
        if not _is_number(self.weight_decay) or self.weight_decay < 0:
            raise ValueError(f"weight_decay={self.weight_decay!r} must be >= 0")
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 0:
            raise ValueError(f"samples={self.samples!r} must be an integer >= 0")
        for name in ("merge", "resume", "overwrite", "trust_remote_code"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be True or False")
        if isinstance(self.save_every, bool) or not isinstance(self.save_every, int) or self.save_every < 0:
            raise ValueError(f"save_every={self.save_every!r} must be an integer >= 0 (0: no checkpoints)")
        _positive_int(self, "keep_checkpoints")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule={self.lr_schedule!r} is not supported; choose one of {LR_SCHEDULES}")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps={self.warmup_steps!r} must be an integer >= 0")
        _positive_int(self, "max_skipped_steps")
        _positive_int(self, "grad_accumulation")
        card = self.gpu_memory_gb
        if card is not None and card != "auto" and (not _is_number(card) or card <= 0):
            raise ValueError(f"gpu_memory_gb={self.gpu_memory_gb!r} must be 'auto', None or a positive number")
        if self.resume and self.overwrite:
            raise ValueError("resume=True continues the run in output_dir and overwrite=True replaces it; pick one")

    @classmethod
    def from_overrides(cls, method: str, overrides: dict):
        """Build the config from keyword overrides; an unknown name is a TypeError naming close matches."""
        names = [f.name for f in fields(cls)]
        for name in overrides:
            if name not in names:
                close = difflib.get_close_matches(name, names, n=3)
                hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
                raise TypeError(
                    f"align() got an unknown option {name!r} for method={method!r}{hint} "
                    f"Valid options: {', '.join(sorted(names))}"
                )
        return cls(**overrides)

    def to_dict(self) -> dict:
        return asdict(self)


def _is_number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def _positive_int(config, name: str) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")


def _positive_number(config, name: str) -> None:
    value = getattr(config, name)
    if not _is_number(value) or value <= 0:
        raise ValueError(f"{name}={value!r} must be a positive number")


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
        if not isinstance(self.sft, bool):
            raise ValueError(f"sft={self.sft!r} must be True or False")
        _positive_int(self, "sft_steps")
        _positive_number(self, "sft_lr")

    def sft_stage_config(self):
        """The SFTConfig of the pre-stage: this run's shared settings with the stage's own steps and lr."""
        from lorarlhf.methods.sft import SFTConfig

        shared = ("batch_size", "seed", "quantize", "lora_r", "lora_alpha", "max_length", "eval_fraction")
        shared += ("gradient_checkpointing", "max_grad_norm", "weight_decay", "grad_accumulation", "max_skipped_steps")
        return SFTConfig(steps=self.sft_steps, lr=self.sft_lr, **{name: getattr(self, name) for name in shared})


ESTIMATORS = ("k1", "k3")
REWARD_NORMALIZE = ("none", "batch")


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
        for name in ("max_new_tokens", "rm_steps"):
            _positive_int(self, name)
        _positive_number(self, "rm_lr")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k={self.top_k!r} must be an integer >= 0 (0 disables it)")
        if not _is_number(self.temperature) or self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature!r} must be > 0 for RL (log-probs need a softmax)")
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p!r} must be in (0, 1]")
        if not _is_number(self.kl_coef) or self.kl_coef < 0:
            raise ValueError(f"kl_coef={self.kl_coef!r} must be >= 0")
        if self.reward_normalize not in REWARD_NORMALIZE:
            raise ValueError(
                f"reward_normalize={self.reward_normalize!r} is not supported; choose one of {REWARD_NORMALIZE}"
            )
        for name in ("missing_eos_penalty", "reward_clip"):
            value = getattr(self, name)
            if value is not None and (not _is_number(value) or value < 0):
                raise ValueError(f"{name}={value!r} must be None or a number >= 0")


# --------------------------------------------------------------------------- options as text (the CLI's --set)

_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def option_docs(cls) -> dict[str, str]:
    """Each field's help text: the docstring written under it in its dataclass (the nearest class wins)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, following in zip(body, body[1:], strict=False):
            named = isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
            if named and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
                docs[node.target.id] = " ".join(str(following.value.value).split())
    return docs


def parse_option(cls, method: str, name: str, text: str):
    """`text` as the value of option `name` of `method`'s config class `cls`, by the field's type."""
    types = {f.name: f.type for f in fields(cls)}
    if name not in types:
        cls.from_overrides(method, {name: None})  # raises the TypeError that names it and its close matches
    kinds = [kind.strip() for kind in str(types[name]).split("|")]
    if "None" in kinds and text.strip().lower() in ("none", "null"):
        return None
    for kind in kinds:
        if kind == "bool":
            if text.lower() in _TRUE + _FALSE:
                return text.lower() in _TRUE
        elif kind == "int":
            try:
                return int(text)
            except ValueError:
                pass
        elif kind == "float":
            try:
                return float(text)
            except ValueError:
                pass
        elif kind == "str":
            return text
    words = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string", "None": "none"}
    allowed = " or ".join(words.get(kind, kind) for kind in kinds)
    raise ValueError(f"{name}={text!r} is not valid: {name} takes {allowed}")
