"""The RL loop PPO and GRPO share (`RLLoop`, the twin of SupervisedLoop) and its pieces: the prompt stream,
collecting a scored rollout, timing, records.

Kept out of the trainers so each trainer file reads as its algorithm: advantages, losses, and nothing else.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch
from tqdm.auto import tqdm

from lorarlhf.model.memory import peak_memory_gb
from lorarlhf.model.tokenization import TokenizedBatch, prompt_token_ids
from lorarlhf.training import distributed
from lorarlhf.training.rewards import NonFiniteReward, reward_functions, score_rollout
from lorarlhf.training.rollout import Rollout, SamplingConfig, generate_in_pieces
from lorarlhf.training.steps import (
    NonFiniteGuard,
    OutOfMemoryBackoff,
    StageRun,
    make_optimizer,
    rng_state_from_json,
    rng_state_to_json,
    synced_step,
)

log = logging.getLogger("lorarlhf.rl")


class PromptStream:
    """Prompts in a fresh seeded order each epoch, each draw with its own sampling seed.

    The seed of the k-th sample drawn is (seed, k)-determined, so a run is reproducible and a prompt's
    response does not depend on the other prompts in its batch.
    """

    def __init__(self, prompts: list[str], seed: int, columns: dict[str, list] | None = None):
        if not prompts:
            raise ValueError("no prompts: RL needs at least one prompt to sample responses for")
        self.prompts, self.rng, self.order, self.drawn = list(prompts), random.Random(seed), [], 0
        self.seed, self.columns = seed, columns or {}

    def next(self, n: int, repeats: int = 1) -> tuple[list[str], list[int], dict[str, list]]:
        """n prompts, each repeated `repeats` times in a row (GRPO groups), one seed per sample, and the
        prompts' columns aligned with the samples."""
        chosen = []
        for _ in range(n):
            if not self.order:
                self.order = list(range(len(self.prompts)))
                self.rng.shuffle(self.order)
            chosen.append(self.order.pop())
        rows = [i for i in chosen for _ in range(repeats)]
        seeds = [hash((self.seed, self.drawn + i)) & 0x7FFFFFFF for i in range(len(rows))]
        self.drawn += len(rows)
        columns = {name: [values[i] for i in rows] for name, values in self.columns.items()}
        return [self.prompts[i] for i in rows], seeds, columns

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


def collect(
    hydra, prompts, seeds, sampling: SamplingConfig, functions, config, timer: PhaseTimer, backoff, columns=None
):
    """Sample and score one batch: (rollout, (raw, shaped) rewards), the rewards None when one is NaN or
    infinite (the caller skips and counts it). Out of memory, it samples the batch in smaller pieces.
    columns: the prompts' other fields, aligned with them, for the reward functions."""
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
                columns=columns,
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


def first_forward_outputs(rows: torch.Tensor, outputs: tuple, total_rows: int, whole_pass) -> tuple:
    """The rollout policy's (B, T) outputs, for a rollout used once, from the first update's forward over `rows`:
    detached and put back in row order when that forward covered every row; otherwise, the update having come
    in micro-batches (memory ran out), whole_pass(chunks) over the whole rollout without autograd, in slices
    of that size, since advantages normalised over the rollout need every row before any micro-batch."""
    if len(rows) == total_rows:
        placed = tuple(torch.empty_like(x) for x in outputs)
        for buffer, x in zip(placed, outputs, strict=True):
            buffer[rows] = x.detach()
        return placed
    with torch.no_grad():
        return tuple(whole_pass(math.ceil(total_rows / len(rows))))


def fit_prompts(chat, prompts: list, config) -> list[int]:
    """The indices of the prompts that leave room for max_new_tokens within max_length; the others are dropped
    and reported, never silently."""
    room = config.max_length - config.max_new_tokens
    if room < 1:
        raise ValueError(f"max_length={config.max_length} leaves no room for max_new_tokens={config.max_new_tokens}")
    lengths = [len(ids) for ids in prompt_token_ids(chat, list(prompts))]
    kept = [i for i, n in enumerate(lengths) if n <= room]
    if len(kept) < len(prompts):
        log.warning(
            "dropped %d of %d prompts longer than max_length - max_new_tokens = %d tokens",
            len(prompts) - len(kept), len(prompts), room,
        )  # fmt: skip
    if not kept:
        raise ValueError(f"every prompt is longer than max_length - max_new_tokens = {room} tokens")
    return kept


@dataclass
class ScoredRollout:
    """One iteration's sampled batch with its rewards, as the trainer's algorithm receives it.

    rollout: what was sampled; batch: prompt + response tokens, (B, T) each, response_mask (B, T) marking
    the sampled tokens; raw (B,): rewards as scored; rewards (B,): as shaped for the losses."""

    rollout: Rollout
    batch: TokenizedBatch
    raw: torch.Tensor
    rewards: torch.Tensor

    @property
    def mask(self) -> torch.Tensor:
        return self.batch.response_mask


class RLLoop:
    """The iteration loop PPO and GRPO share, so each trainer states only its advantages and losses.

        loop = RLLoop("ppo", hydra, prompts, params, config, reward_fn=..., on_step=..., checkpoints=...)
        for scored in loop:                                    # a scored rollout of this process's share
            ref_logp, ... = loop.scoring_passes(passes)        # passes(chunks), without autograd
            advantages = ...
            with loop.training():
                for minibatch in loop.minibatches(epochs, num_minibatches):
                    stats = loop.update(minibatch, loss_of)    # loss_of(rows) -> (loss, {name: float})
            loop.log({"rl/kl": ...})                           # + the rollout's reward, lengths, lr, times
        run = loop.finish()

    It owns the prompt stream, sampling and scoring, AdamW and its schedule, the non-finite guard, the
    out-of-memory backoff, the micro-batch accumulation, progress, records and checkpoints, and resumes all
    of them (and any `state` objects the trainer adds, such as a KL controller) from `checkpoints`.
    """

    def __init__(
        self,
        stage: str,
        hydra,
        prompts: list[str],
        params,
        config,
        *,
        reward_fn=None,
        columns: dict[str, list] | None = None,
        group_size: int = 1,
        state: dict | None = None,
        on_step=None,
        progress=True,
        checkpoints=None,
    ):
        self.functions = reward_functions(reward_fn)
        if not self.functions and "reward" not in hydra.roles:
            raise ValueError(f"{stage.upper()} needs a reward: pass reward_fn, or a Hydra with a trained reward role")
        self.stage, self.hydra, self.params, self.config = stage, hydra, params, config
        self.group_size, self.on_step, self.checkpoints = group_size, on_step, checkpoints
        hydra.disable_dropout()  # the rollout's log-probs and the update's must come from the same network
        torch.manual_seed(config.seed)
        kept = fit_prompts(hydra.chat, prompts, config)
        columns = {name: [values[i] for i in kept] for name, values in (columns or {}).items()}
        self.stream = PromptStream([prompts[i] for i in kept], config.seed, columns)
        self.sampling = sampling_of(config)
        self.optimizer, self.schedule = make_optimizer(params, config)
        self.guard, self.backoff = NonFiniteGuard("rl", config.max_skipped_steps), OutOfMemoryBackoff("rl")
        # The no-grad passes keep no activations for a backward, so they start with the whole rollout in one
        # piece and split only when memory runs out, down to the updates' smallest micro-batch.
        self.scoring_backoff = OutOfMemoryBackoff("rl", limit=4 + (config.grad_accumulation - 1).bit_length())
        self.state = {"stream": self.stream, "guard": self.guard, "schedule": self.schedule, **(state or {})}
        self.run, self.steps = StageRun(), 0
        if checkpoints is not None and (saved := checkpoints.restore(self.optimizer)) is not None:
            for name, part in self.state.items():
                part.load_state_dict(saved[name])
            self.run.history, self.steps = saved["history"], saved["step"]
        self.bar = tqdm(
            total=config.steps, initial=self.steps, desc=stage, disable=not progress or not distributed.is_main()
        )
        self.timer, self.stats, self.scored, self.steps_before = PhaseTimer(), [], None, self.steps

    def __iter__(self) -> Iterator[ScoredRollout]:
        while self.steps < self.config.steps:
            self.timer, self.stats, self.steps_before = PhaseTimer(), [], self.steps
            samples, seeds, columns = self.stream.next(self.config.batch_size, repeats=self.group_size)
            samples, seeds = distributed.shard(samples, self.group_size), distributed.shard(seeds, self.group_size)
            columns = {name: distributed.shard(values, self.group_size) for name, values in columns.items()}
            rollout, rewards = collect(
                self.hydra, samples, seeds, self.sampling, self.functions, self.config, self.timer, self.backoff,
                columns,
            )  # fmt: skip
            if rewards is None:
                self.guard.skip(f"a reward was NaN or infinite in the rollout after step {self.steps}")
                continue
            self.scored = ScoredRollout(rollout, rollout.batch(), *rewards)
            yield self.scored

    def scoring_passes(self, passes):
        """passes(chunks): the rollout's log-probs under fixed weights (reference, rollout policy, values),
        without autograd, in as few row chunks as memory allows: one, or more once memory ran out."""
        with self.timer("reference"), torch.no_grad():
            return self.scoring_backoff.run(passes, "the reference and rollout-policy passes")

    @contextmanager
    def training(self):
        """The updates of one rollout: timed, with the adapters in training mode."""
        with self.timer("train"), self.hydra.train_mode():
            yield

    def minibatches(self, epochs: int, num_minibatches: int) -> Iterator[torch.Tensor]:
        """Row indices of each minibatch, each pass over the rollout in a fresh order, until `steps` are done.
        A trainer that breaks out of it (an early stop) goes on to the next rollout."""
        rows = self.scored.mask.shape[0]
        for _ in range(epochs):
            if self.steps >= self.config.steps:
                return
            for minibatch in torch.randperm(rows).chunk(num_minibatches):
                if self.steps >= self.config.steps:
                    return
                yield minibatch

    def update(self, minibatch: torch.Tensor, loss_of, *, per_token: bool = True) -> dict[str, float] | None:
        """One optimizer step on `minibatch` through loss_of(rows) -> (loss, stats), accumulated over
        grad_accumulation micro-batches (more when memory runs out); its stats, or None when a loss or
        gradient was not finite (nothing applied, the guard counts it).

        per_token: the loss is a mean over tokens (True) or over sequences; each micro-batch's gradient is
        weighted by its share of them, so the accumulated gradient is the one of the whole minibatch."""
        stats = self.backoff.run(partial(self._accumulate, minibatch, loss_of, per_token), "the update")
        if stats is None:
            self.guard.skip(f"the loss or a gradient was not finite at step {self.steps + 1}")
            return None
        self.guard.ok()
        self.stats.append(stats)
        self.steps += 1
        self.schedule.step()
        self.bar.update(1)
        return stats

    def _accumulate(self, minibatch, loss_of, per_token: bool, smaller: int = 1) -> dict[str, float] | None:
        self.optimizer.zero_grad(set_to_none=True)
        mask, totals, finite = self.scored.mask, {}, True
        minibatch_tokens = mask[minibatch].sum().clamp_min(1)
        for rows in minibatch.chunk(self.config.grad_accumulation * smaller):
            share = (mask[rows].sum() / minibatch_tokens).item() if per_token else len(rows) / len(minibatch)
            loss, parts = loss_of(rows)
            if not torch.isfinite(loss):
                log.warning("skipping an update: the loss is %s", loss.item())
                finite = False
                break
            (loss * share).backward()
            for name, value in parts.items():
                totals[name] = totals.get(name, 0.0) + value * share
        grad_norm = synced_step(self.optimizer, self.params, self.config.max_grad_norm, finite)
        return None if grad_norm is None else {**totals, "rl/grad_norm": grad_norm}

    def log(self, metrics: dict[str, float]) -> dict[str, float]:
        """Record the iteration (averaged over processes), report it, and checkpoint when one is due."""
        scored = self.scored
        record = {
            "step": self.steps,
            **rollout_record(scored.rollout, scored.raw, scored.rewards, self.timer),
            "rl/kl": metrics["rl/kl"],
            "rl/lr": self.schedule.get_last_lr()[0],
            **metrics,
            **mean_stats(self.stats),
        }
        record = distributed.mean_record(record)
        self.run.history.append(record)
        self.bar.set_postfix(reward=f"{record['rl/reward_mean']:.3f}", kl=f"{record['rl/kl']:.3f}")
        if self.on_step is not None:
            self.on_step(record)
        if self.checkpoints is not None and self.checkpoints.due(self.steps, self.steps_before):
            state = {name: part.state_dict() for name, part in self.state.items()}
            self.checkpoints.save(self.steps, self.hydra, self.optimizer, {**state, "history": self.run.history})
        return record

    def finish(self) -> StageRun:
        """The stage's run: first and last reward, last KL, iterations, and the skipped-step count."""
        self.bar.close()
        self.run.metrics = {**final_metrics(self.run.history), **self.guard.metrics()}
        return self.run
