"""Scoring rollouts: the reward role, programmatic reward functions, or a weighted mix, then shaping.

A reward function is `fn(prompts: list[str], completions: list[str], **columns) -> list[float]`: `columns` are the
other fields of each prompt's row (TRL's convention; fn(prompts, completions) works too). The reward role scores
the sampled token ids themselves. Shaping follows common RLHF practice: a penalty for responses cut off
before EOS (TRL's missing_eos_penalty), optional batch normalisation and clipping. A NaN or infinite reward
is never passed on: `NonFiniteReward` names the function and the sample, and the trainer skips that step.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch

from lorarlhf.model.chat import jsonable
from lorarlhf.training.rollout import Rollout
from lorarlhf.validation import is_number

RewardFn = Callable[[list[str], list[str]], Sequence[float]]
NORMALIZE = ("none", "batch")  # validated by RLConfig.reward_normalize


class NonFiniteReward(ValueError):
    """A reward that is NaN or infinite, named by its source and sample index."""


def check_reward_columns(functions: list[tuple[RewardFn, float]], columns) -> None:
    """Refuse, before any model loads, a reward function that asks for a column the prompts do not have.

    A function is fn(prompts, completions) or fn(prompts, completions, **columns) (TRL's convention): its
    parameters after the first two name the columns it receives; one without a default must be there."""
    available = sorted(columns)
    for fn, _ in functions:
        if hasattr(fn, "terms"):  # a weighted sum (lorarlhf.rewards.weighted): its terms ask for the columns
            check_reward_columns(list(fn.terms), columns)
            continue
        name = getattr(fn, "__name__", repr(fn))
        try:
            parameters = list(inspect.signature(fn).parameters.values())
        except (TypeError, ValueError):
            continue  # a builtin or C callable: nothing to check
        positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if len(positional) < 2 and not any(p.kind is p.VAR_POSITIONAL for p in parameters):
            raise TypeError(f"reward function {name} must take (prompts, completions, ...); it takes {len(positional)}")
        for parameter in parameters[2:]:
            variadic = parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
            if parameter.default is parameter.empty and not variadic and parameter.name not in columns:
                raise ValueError(
                    f"reward function {name} needs a column {parameter.name!r}, which the prompts' rows do not have; "
                    f"their columns: {available or 'none (the data holds prompts only)'}"
                )


def reward_functions(reward_fn) -> list[tuple[RewardFn, float]]:
    """Accept one function, a list of functions (equal weights) or a list of (function, weight) pairs."""
    if reward_fn is None:
        return []
    items = [reward_fn] if callable(reward_fn) else list(reward_fn)
    weighted = []
    for i, item in enumerate(items):
        fn, weight = item if isinstance(item, tuple) else (item, 1.0)
        if not callable(fn):
            raise TypeError(f"reward_fn[{i}] is {type(fn).__name__}, not a function(prompts, responses)")
        if not is_number(weight):
            raise TypeError(f"reward_fn[{i}] has weight {weight!r}; weights are finite numbers")
        weighted.append((fn, float(weight)))
    if not weighted:
        raise ValueError("reward_fn is an empty list; pass at least one reward function")
    return weighted


@torch.no_grad()
def score_rollout(
    hydra,
    rollout: Rollout,
    functions: list[tuple[RewardFn, float]],
    *,
    missing_eos_penalty: float | None = None,
    normalize: str = "none",
    clip: float | None = None,
    columns: dict[str, list] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(raw, shaped) rewards per response, (B,) float32 each.

    raw: the weighted reward functions, or the reward role when there are none; what a user reads in the
    logs. shaped: after the missing-EOS penalty, normalisation and clipping; what the losses use.
    columns: the other fields of each response's prompt row, one list each, aligned with the responses.
    """
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize={normalize!r} is not supported; choose one of {NORMALIZE}")
    if functions:
        total = torch.zeros(len(rollout.responses))
        for fn, weight in functions:
            total += weight * _call(fn, rollout.prompts, rollout.responses, columns or {})
        rewards = total.to(hydra.device)
    else:
        batch = rollout.batch()
        rewards = hydra.rewards(batch.input_ids, batch.attention_mask).float()
        _check_finite(rewards, "the reward model")
    raw = rewards
    if missing_eos_penalty:
        rewards = rewards - missing_eos_penalty * (~rollout.finished).float()
    if normalize == "batch" and rewards.numel() > 1:
        rewards = (rewards - rewards.mean()) / (rewards.std() + 1e-8)
    if clip is not None:
        rewards = rewards.clamp(-clip, clip)
    return raw, rewards


def _call(fn: RewardFn, prompts: list, responses: list[str], columns: dict[str, list]) -> torch.Tensor:
    name = getattr(fn, "__name__", repr(fn))
    prompts = [jsonable(p) for p in prompts]  # a conversation reaches it as message dicts, as in TRL
    values = fn(prompts, responses, **columns_for(fn, columns))
    try:
        values = torch.as_tensor([float(v) for v in values], dtype=torch.float32)
    except (TypeError, ValueError) as error:
        raise TypeError(f"reward function {name} must return a list of numbers ({error})") from error
    if values.numel() != len(responses):
        raise ValueError(f"reward function {name} returned {values.numel()} rewards for {len(responses)} responses")
    _check_finite(values, f"reward function {name}")
    return values


def columns_for(fn, columns: dict[str, list]) -> dict[str, list]:
    """The columns `fn` takes: all of them with **kwargs, else those it names; none for fn(prompts, completions)."""
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return dict(columns)
    return {name: values for name, values in columns.items() if name in list(parameters)[2:]}


def _check_finite(values: torch.Tensor, source: str) -> None:
    bad = (~torch.isfinite(values)).nonzero().flatten()
    if bad.numel():
        i = int(bad[0])
        raise NonFiniteReward(f"{source} returned {values[i].item()} for sample {i} ({bad.numel()} non-finite in all)")
