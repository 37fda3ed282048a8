"""`lorarlhf.align(model, data, method=...)`: the one call a user makes.

It builds (or takes) the Hydra, loads the data, runs the method's stages, and writes the run to
`output_dir`: the config, per-step metrics (metrics.jsonl, each record tagged with its stage), final
metrics (metrics.json) and the Hydra (adapters + heads + manifest). Methods run today: "rm" (reward
model), "ppo" and "grpo" (with a reward_fn, or after a reward-model stage on preference pairs), and "dpo"
(with its variants). "sft" is named here so a request for it gets a clear answer.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch

from lorarlhf.checkpoint import MANIFEST
from lorarlhf.data import PreferencePair, load_preferences, load_prompts, split_eval
from lorarlhf.dpo_config import DPOConfig
from lorarlhf.dpo_trainer import train_dpo
from lorarlhf.grpo_config import GRPOConfig
from lorarlhf.grpo_trainer import train_grpo
from lorarlhf.hydra import HydraModel
from lorarlhf.memory import peak_memory_gb
from lorarlhf.ppo_config import PPOConfig
from lorarlhf.ppo_trainer import train_ppo
from lorarlhf.reward_config import RewardConfig
from lorarlhf.reward_trainer import train_reward_model

METHODS = ("ppo", "grpo", "dpo", "rm", "sft")
AVAILABLE = {"rm": RewardConfig, "ppo": PPOConfig, "grpo": GRPOConfig, "dpo": DPOConfig}
RL_TRAINERS = {"ppo": train_ppo, "grpo": train_grpo}


@dataclass
class AlignResult:
    output_dir: Path
    """Where the run was written."""
    metrics: dict[str, float]
    """Final metrics, e.g. rm/eval_accuracy, peak_memory_gb."""
    model: HydraModel
    """The trained Hydra, ready to score or generate."""


def align(model, data, *, method: str = "ppo", output_dir=None, reward_fn=None, **overrides) -> AlignResult:
    """Align `model` with the preferences in `data` by `method`; any config field can be overridden by name.

    model: hub id, local path, or a HydraModel. data: a path (.jsonl/.json/.csv/.parquet), a hub dataset id,
    a list of dicts, of PreferencePairs or of prompt strings, or a datasets.Dataset.
    reward_fn: for "ppo"/"grpo", fn(prompts, responses) -> list[float] (or a list of them, or of
    (fn, weight) pairs). Without it the RL methods first train the reward role on the data's pairs.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not a method; choose one of {METHODS}")
    if method not in AVAILABLE:
        raise NotImplementedError(
            f"method={method!r} is not available in this version of lorarlhf; available: {tuple(AVAILABLE)}"
        )
    config = AVAILABLE[method].from_overrides(method, overrides)
    if reward_fn is not None and method in ("rm", "dpo"):
        raise ValueError(f"reward_fn is for the RL methods (ppo, grpo); method={method!r} learns from preference pairs")
    out = _prepare_output_dir(output_dir, method)
    hydra = _hydra_for(model, config)
    (out / "config.json").write_text(json.dumps({"method": method, **config.to_dict()}, indent=2) + "\n")

    metrics: dict[str, float] = {}
    with open(out / "metrics.jsonl", "w") as metrics_log:

        def writer(stage):
            def write(record):
                metrics_log.write(json.dumps({"stage": stage, **record}) + "\n")
                metrics_log.flush()

            return write

        if method == "dpo":
            pairs = _pairs_from(data, hydra, config, method)
            train_pairs, eval_pairs = split_eval(pairs, config.eval_fraction, seed=config.seed)
            run = train_dpo(hydra, train_pairs, config, eval_pairs=eval_pairs, on_step=writer("dpo"))
            metrics.update(run.metrics)
        elif method == "rm" or reward_fn is None:  # the RL methods learn their reward first when none is given
            pairs = _pairs_from(data, hydra, config, method)
            train_pairs, eval_pairs = split_eval(pairs, config.eval_fraction, seed=config.seed)
            rm_config = config if method == "rm" else _reward_stage_config(config)
            rm_run = train_reward_model(hydra, train_pairs, rm_config, eval_pairs=eval_pairs, on_step=writer("rm"))
            metrics.update(rm_run.metrics)
        if method in RL_TRAINERS:
            prompts = _prompts_from(data, hydra)
            rl_run = RL_TRAINERS[method](hydra, prompts, config, reward_fn=reward_fn, on_step=writer(method))
            metrics.update(rl_run.metrics)
    metrics["peak_memory_gb"] = peak_memory_gb(hydra.device)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    hydra.save(out)
    return AlignResult(output_dir=out, metrics=metrics, model=hydra)


def _reward_stage_config(config) -> RewardConfig:
    """The reward-model stage run before PPO/GRPO when the data is preferences and no reward_fn is given."""
    shared = ("seed", "quantize", "lora_r", "lora_alpha", "max_length", "eval_fraction", "gradient_checkpointing")
    return RewardConfig(
        steps=config.rm_steps, lr=config.rm_lr, batch_size=config.batch_size, **{k: getattr(config, k) for k in shared}
    )


def _prompts_from(data, hydra: HydraModel) -> list[str]:
    """RL prompts: given directly, taken from PreferencePairs, or read from any data source."""
    if _is_prompt_list(data):
        return list(data)
    if isinstance(data, list) and data and all(isinstance(item, PreferencePair) for item in data):
        return list(dict.fromkeys(pair.prompt for pair in data))
    return load_prompts(data, tokenizer=hydra.tokenizer)


def _is_prompt_list(data) -> bool:
    return isinstance(data, list | tuple) and bool(data) and all(isinstance(item, str) for item in data)


def _hydra_for(model, config) -> HydraModel:
    if isinstance(model, HydraModel):
        return model
    if not isinstance(model, str | os.PathLike):
        raise TypeError(f"model must be a hub id, a local path or a HydraModel, not {type(model).__name__}")
    torch.manual_seed(config.seed)  # adapter and head initialisation
    return HydraModel.from_pretrained(
        model,
        quantize=config.quantize,
        lora_r=config.lora_r,
        lora_alpha=config.lora_alpha,
        gradient_checkpointing=config.gradient_checkpointing,
        critic=getattr(config, "critic", "separate"),
    )


def _pairs_from(data, hydra: HydraModel, config, method: str) -> list[PreferencePair]:
    if isinstance(data, list) and data and all(isinstance(item, PreferencePair) for item in data):
        return data
    if _is_prompt_list(data):
        raise ValueError(f"method={method!r} got prompts only: pass reward_fn, or preference pairs to learn a reward")
    options = {}
    if isinstance(config, RewardConfig):
        options = dict(
            aggregate=config.aggregate, weight_rankings=config.weight_rankings, score_margin=config.score_margin
        )
    return load_preferences(data, tokenizer=hydra.tokenizer, max_length=config.max_length, **options)


def _prepare_output_dir(output_dir, method: str) -> Path:
    """A new directory, or one that holds only a previous run: a user's other files are never overwritten."""
    if output_dir is None:
        output_dir = Path("lorarlhf-runs") / f"{method}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output_dir {out} is a file")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).exists():
        raise FileExistsError(f"output_dir {out} is not empty and holds no lorarlhf run; choose a new directory")
    out.mkdir(parents=True, exist_ok=True)
    return out
