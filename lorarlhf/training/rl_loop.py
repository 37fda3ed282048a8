"""Pieces both RL trainers (PPO, GRPO) share: the prompt stream, collecting a scored rollout, timing, records.

Kept out of the trainers so each trainer file reads as its algorithm.
"""

from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
from contextlib import contextmanager
from functools import partial

import torch

from lorarlhf.model.memory import peak_memory_gb
from lorarlhf.model.tokenization import TokenizedBatch
from lorarlhf.training.rewards import NonFiniteReward, score_rollout
from lorarlhf.training.rollout import Rollout, SamplingConfig, generate_in_pieces
from lorarlhf.training.supervised_loop import rng_state_from_json, rng_state_to_json

log = logging.getLogger("lorarlhf.rl")


class PromptStream:
    """Prompts in a fresh seeded order each epoch, each draw with its own sampling seed.

    The seed of the k-th sample drawn is (seed, k)-determined, so a run is reproducible and a prompt's
    response does not depend on the other prompts in its batch.
    """

    def __init__(self, prompts: list[str], seed: int):
        if not prompts:
            raise ValueError("no prompts: RL needs at least one prompt to sample responses for")
        self.prompts, self.rng, self.order, self.drawn = list(prompts), random.Random(seed), [], 0
        self.seed = seed

    def next(self, n: int, repeats: int = 1) -> tuple[list[str], list[int]]:
        """n prompts, each repeated `repeats` times in a row (GRPO groups), and one seed per sample."""
        chosen = []
        for _ in range(n):
            if not self.order:
                self.order = list(range(len(self.prompts)))
                self.rng.shuffle(self.order)
            chosen.append(self.prompts[self.order.pop()])
        samples = [prompt for prompt in chosen for _ in range(repeats)]
        seeds = [hash((self.seed, self.drawn + i)) & 0x7FFFFFFF for i in range(len(samples))]
        self.drawn += len(samples)
        return samples, seeds

    def state_dict(self) -> dict:
        return {"rng": rng_state_to_json(self.rng.getstate()), "order": list(self.order), "drawn": self.drawn}

    def load_state_dict(self, state: dict) -> None:
        self.rng.setstate(rng_state_from_json(state["rng"]))
        self.order, self.drawn = list(state["order"]), int(state["drawn"])


class PhaseTimer:
    """Seconds spent per phase (generate, score, reference, train) of one iteration."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.seconds[phase] += time.perf_counter() - start


def collect(hydra, prompts, seeds, sampling: SamplingConfig, functions, config, timer: PhaseTimer, backoff):
    """Sample and score one batch: (rollout, (raw, shaped) rewards), the rewards None when one is NaN or
    infinite (the caller skips and counts it). Out of memory, it samples the batch in smaller pieces."""
    with timer("generate"):
        rollout = backoff.run(partial(generate_in_pieces, hydra, prompts, sampling, seeds), "generation")
    with timer("score"):
        try:
            rewards = score_rollout(
                hydra,
                rollout,
                functions,
                missing_eos_penalty=config.missing_eos_penalty,
                normalize=config.reward_normalize,
                clip=config.reward_clip,
            )
        except NonFiniteReward as error:
            log.warning("skipping a rollout: %s", error)
            return rollout, None
    return rollout, rewards


def sampling_of(config) -> SamplingConfig:
    return SamplingConfig(
        max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p, top_k=config.top_k
    )


def last_token_scores(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) sequence scores placed at each row's last response token of a (B, T) grid."""
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = (positions * mask).argmax(dim=1)  # (B,)
    grid = torch.zeros(mask.shape, dtype=scores.dtype, device=scores.device)
    return grid.scatter(1, last[:, None], scores[:, None])


def rollout_record(rollout: Rollout, raw: torch.Tensor, shaped: torch.Tensor, timer: PhaseTimer) -> dict[str, float]:
    """What every RL iteration logs about its rollout: reward (as scored, and as shaped for the losses),
    lengths, throughput, memory, time per phase."""
    lengths = rollout.response_lengths.float()
    seconds = sum(timer.seconds.values())
    return {
        "rl/reward_mean": raw.mean().item(),
        "rl/reward_std": raw.std().item() if raw.numel() > 1 else 0.0,
        "rl/shaped_reward_mean": shaped.mean().item(),
        "rl/response_length": lengths.mean().item(),
        "rl/finished_fraction": rollout.finished.float().mean().item(),
        "rl/tokens_per_s": lengths.sum().item() / max(seconds, 1e-9),
        "peak_memory_gb": peak_memory_gb(rollout.response_ids.device),
        **{f"time/{phase}": value for phase, value in timer.seconds.items()},
    }


def rows_of(batch: TokenizedBatch, rows: torch.Tensor) -> TokenizedBatch:
    return TokenizedBatch(batch.input_ids[rows], batch.attention_mask[rows], batch.response_mask[rows])


def unique_params(params) -> list:
    """Parameters without repeats (a shared critic's adapter is also the actor's)."""
    seen, unique = set(), []
    for param in params:
        if id(param) not in seen:
            seen.add(id(param))
            unique.append(param)
    return unique


def mean_stats(stats: list[dict[str, float]]) -> dict[str, float]:
    """Per-update statistics averaged over an iteration's updates."""
    if not stats:
        return {}
    return {key: sum(s[key] for s in stats) / len(stats) for key in stats[0]}


def final_metrics(history: list[dict[str, float]]) -> dict[str, float]:
    """The metrics AlignResult reports for an RL stage: first and last reward, last KL."""
    if not history:
        return {}
    return {
        "rl/reward_first": history[0]["rl/reward_mean"],
        "rl/reward_last": history[-1]["rl/reward_mean"],
        "rl/kl_last": history[-1]["rl/kl"],
        "rl/iterations": float(len(history)),
    }


def in_chunks(batch: TokenizedBatch, chunks: int, fn, **kwargs):
    """fn(slice, **kwargs) over `chunks` row slices of the batch, outputs concatenated: the peak
    activations are those of one slice."""
    parts = [fn(rows_of(batch, rows), **kwargs) for rows in torch.arange(batch.input_ids.shape[0]).chunk(chunks)]
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(column) for column in zip(*parts, strict=True))
    return torch.cat(parts)


def fit_prompts(tokenizer, prompts: list[str], config) -> list[str]:
    """Drop (and report) prompts that leave no room for max_new_tokens within max_length; never silently."""
    room = config.max_length - config.max_new_tokens
    if room < 1:
        raise ValueError(f"max_length={config.max_length} leaves no room for max_new_tokens={config.max_new_tokens}")
    lengths = [len(ids) for ids in tokenizer(list(prompts), add_special_tokens=True)["input_ids"]]
    kept = [prompt for prompt, n in zip(prompts, lengths, strict=True) if n <= room]
    if len(kept) < len(prompts):
        log.warning(
            "dropped %d of %d prompts longer than max_length - max_new_tokens = %d tokens",
            len(prompts) - len(kept), len(prompts), room,
        )  # fmt: skip
    if not kept:
        raise ValueError(f"every prompt is longer than max_length - max_new_tokens = {room} tokens")
    return kept
