"""The step loop of the methods that learn from preference pairs directly: DPO and its variants (methods/dpo.py),
ORPO (methods/orpo.py) and SimPO (methods/simpo.py), on supervised_loop.py's SupervisedLoop. No reward model
and no sampling: each step scores a batch of pairs under the actor, and under the reference when the method has
one, and takes the method's loss of those scores.

    for step in 1..steps:
        batch     <- next shuffled pairs
        scores    <- actor log p(chosen), log p(rejected) and their lengths, one forward pass over the stacked
                     batch (in slices if memory runs out)
        ref_logp  <- reference log-probs (adapters off), when the method has a reference and they were not
                     precomputed
        loss      <- the method's loss of them, with each pair's implicit-reward margin
        update    <- AdamW on the actor adapter, gradient norm clipped
    evaluate on held-out pairs: implicit-reward accuracy and margin
"""

from __future__ import annotations

from functools import partial

import torch

from lorarlhf.data import PreferencePair
from lorarlhf.training.steps import StageRun
from lorarlhf.training.supervised_loop import SupervisedLoop, sliced_backward


def pair_logprobs(hydra, pairs: list[PreferencePair], role: str, max_length: int | None = None):
    """Summed response log-probs of chosen and rejected under `role`, one forward pass: (B,), (B,)."""
    scores = pair_scores(hydra, pairs, role, max_length)
    return scores[:, 0], scores[:, 1]


def pair_scores(hydra, pairs: list[PreferencePair], role: str, max_length: int | None = None) -> torch.Tensor:
    """(B, 4) per pair: summed response log-probs of chosen and rejected under `role`, and their lengths in
    tokens (EOS included), from one forward pass over the stacked batch."""
    prompts = [p.prompt for p in pairs]
    batch = hydra.encode(
        prompts + prompts, [p.chosen for p in pairs] + [p.rejected for p in pairs], max_length=max_length
    )
    logp = hydra.token_logprobs(batch, role=role).sum(dim=1)  # (2B,)
    lengths = batch.response_mask.sum(dim=1).to(logp.dtype)  # (2B,)
    n = len(pairs)
    return torch.stack([logp[:n], logp[n:], lengths[:n], lengths[n:]], dim=1)


def mean_logprobs(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Length-normalised log-probs (1/|y|) log p(y|x) of chosen and rejected from pair_scores' (B, 4): (B,), (B,)."""
    return scores[:, 0] / scores[:, 2], scores[:, 1] / scores[:, 3]


@torch.no_grad()
def reference_logprobs(hydra, pairs: list[PreferencePair], config) -> torch.Tensor:
    """(N, 2) reference log-probs of every pair's chosen and rejected answers, computed once."""
    rows = []
    for start in range(0, len(pairs), config.batch_size):
        rows.append(pair_scores(hydra, pairs[start : start + config.batch_size], "reference", config.max_length))
    return torch.cat(rows)[:, :2]


def train_pairwise(
    stage: str,
    loss_of,
    hydra,
    train_pairs: list[PreferencePair],
    config,
    *,
    reference: bool,
    ref_table: torch.Tensor | None = None,
    desc: str | None = None,
    eval_pairs=None,
    on_step=None,
    progress=True,
    checkpoints=None,
) -> StageRun:
    """Train the actor adapter on preference pairs by loss_of(scores (B, 4), ref (B, 2) or None) -> (loss,
    margin (B,)); evaluate on `eval_pairs` when given. Metrics are named "<stage>/...".

    reference: whether the loss reads reference log-probs (looked up in `ref_table` (N, 2) when given, else
    computed each step with the adapters off); without one, no reference pass runs at all.
    checkpoints: a lorarlhf.training.checkpoints.StageCheckpoints to save through and resume from."""
    if not train_pairs:
        raise ValueError(f"no training pairs: {stage} needs at least one preference pair")
    torch.manual_seed(config.seed)
    params = hydra.trainable_parameters("actor")
    loop = SupervisedLoop(stage, hydra, list(enumerate(train_pairs)), params, config, desc=desc or stage,
                          on_step=on_step, progress=progress, checkpoints=checkpoints)  # fmt: skip
    policy = partial(_policy, hydra, config)

    hydra.disable_dropout()  # the policy and the reference pass must see the same network
    with hydra.train_mode():
        for step, rows in loop:
            pairs = [pair for _, pair in rows]

            def backward(pieces, rows=rows, pairs=pairs):  # the whole batch's gradient, in `pieces` slices
                ref = None
                if reference:
                    ref = _reference(hydra, pairs, [i for i, _ in rows], ref_table, config, pieces)
                return sliced_backward(policy, pairs, partial(_with_scores, loss_of, ref), pieces)

            loss, (margin, scores) = loop.update(step, backward)
            loop.log(step, {
                f"{stage}/loss": loss.item(),
                f"{stage}/accuracy": (margin > 0).float().mean().item(),
                f"{stage}/margin": margin.mean().item(),
                f"{stage}/chosen_logp": scores[:, 0].mean().item(),
                f"{stage}/rejected_logp": scores[:, 1].mean().item(),
            })  # fmt: skip
    held_out = evaluate_pairwise(stage, loss_of, hydra, eval_pairs, config, reference=reference) if eval_pairs else {}
    return loop.finish(held_out)


def reference_free_trainer(stage: str, loss_of):
    """The trainer of a method whose loss reads the actor's pair scores alone (ORPO, SimPO), with no reference
    pass: loss_of(config, scores (B, 4), None) -> (loss, margin (B,))."""

    def train(hydra, train_pairs, config, *, eval_pairs=None, on_step=None, progress=True, checkpoints=None):
        return train_pairwise(
            stage, partial(loss_of, config), hydra, train_pairs, config, reference=False, eval_pairs=eval_pairs,
            on_step=on_step, progress=progress, checkpoints=checkpoints,
        )  # fmt: skip

    train.__name__ = train.__qualname__ = f"train_{stage}"
    train.__doc__ = f"Train the actor adapter on preference pairs by {stage}; evaluate on `eval_pairs` when given."
    return train


def _policy(hydra, config, pairs: list[PreferencePair]) -> torch.Tensor:
    """(B, 4): the actor's pair_scores."""
    return pair_scores(hydra, pairs, "actor", config.max_length)


def _with_scores(loss_of, ref, scores: torch.Tensor):
    """(loss, (margin, scores)): the loss with the detached scores, for the step's records."""
    loss, margin = loss_of(scores, ref)
    return loss, (margin.detach(), scores.detach())


@torch.no_grad()
def _reference(hydra, pairs, indices, ref_table, config, pieces: int = 1) -> torch.Tensor:
    """(B, 2) reference log-probs of the pairs: looked up when precomputed, else computed in `pieces` slices."""
    if ref_table is not None:
        return ref_table[torch.tensor(indices)].to(hydra.device)
    size = -(-len(pairs) // max(pieces, 1))
    parts = [
        pair_scores(hydra, pairs[i : i + size], "reference", config.max_length) for i in range(0, len(pairs), size)
    ]
    return torch.cat(parts)[:, :2]


@torch.no_grad()
def evaluate_pairwise(stage: str, loss_of, hydra, pairs: list[PreferencePair], config, *, reference: bool):
    """Held-out implicit-reward accuracy (the chosen answer's implicit reward is higher) and mean margin."""
    margins = []
    for start in range(0, len(pairs), config.batch_size):
        batch = pairs[start : start + config.batch_size]
        ref = _reference(hydra, batch, [], None, config) if reference else None
        _, margin = loss_of(_policy(hydra, config, batch), ref)
        margins.append(margin.float().cpu())
    margin = torch.cat(margins)
    return {
        f"{stage}/eval_accuracy": (margin > 0).float().mean().item(),
        f"{stage}/eval_margin": margin.mean().item(),
        f"{stage}/eval_pairs": float(len(pairs)),
    }
