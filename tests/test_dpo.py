"""DPO, IPO and CPL on the Hydra: the actor learns the preferences, the reference stays the base."""

from __future__ import annotations

import random

import pytest
import torch
from kernel_testing import learning_run_once

import lorarlhf
from lorarlhf import HydraModel
from lorarlhf.data import PreferencePair
from lorarlhf.methods.dpo import DPOConfig, pair_logprobs, reference_logprobs, train_dpo

WORDS = ["the", "cat", "sat", "on", "a", "mat", "blue", "sky"]


def preference_pairs(n: int, seed: int) -> list[PreferencePair]:
    """Known rule: the chosen answer ends with "yes", the rejected one with "no"."""
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        stem = " ".join(rng.choice(WORDS) for _ in range(2))
        pairs.append(PreferencePair(f"Question {i}:", f"{stem} yes", f"{stem} no"))
    return pairs


def build(path, seed=0):
    torch.manual_seed(seed)
    return HydraModel.from_pretrained(path, device="cpu", quantize=None, lora_r=8)


@pytest.mark.parametrize(
    "loss", ["sigmoid", pytest.param("ipo", marks=learning_run_once), pytest.param("cpl", marks=learning_run_once)]
)
@pytest.mark.kernels
def test_each_loss_learns_held_out_preferences(tiny_model_dir, loss, stat_seed, measured):
    hydra = build(tiny_model_dir, seed=stat_seed)
    train, held_out = preference_pairs(48, seed=stat_seed + 1), preference_pairs(24, seed=stat_seed + 2)
    config = DPOConfig(steps=40, lr=5e-3, batch_size=8, loss=loss, beta=0.5, eval_fraction=0.0, seed=stat_seed)
    before = train_dpo(
        hydra, train, DPOConfig(steps=1, lr=1e-12, batch_size=8, loss=loss, seed=stat_seed), eval_pairs=held_out,
        progress=False,
    )  # fmt: skip
    run = train_dpo(hydra, train, config, eval_pairs=held_out, progress=False)
    margin_gain = run.metrics["dpo/eval_margin"] - before.metrics["dpo/eval_margin"]
    loss_change = run.history[-1]["dpo/loss"] - run.history[0]["dpo/loss"]
    measured("dpo/eval_accuracy", run.metrics["dpo/eval_accuracy"], above=0.9)
    measured("dpo/eval_margin gain", margin_gain, above=0)
    measured("dpo/loss last - first", loss_change, below=0)
    # Seed 0 (triton the same) against the spread over 5 seeds, per loss (benchmarks/seed_spread.py):
    # bar 0.9: 1.0 for each loss; spread 0.
    assert run.metrics["dpo/eval_accuracy"] > 0.9, run.metrics
    # bar 0: sigmoid 4.3, ipo 0.49, cpl 0.87; spreads 0.35, 0.045, 0.071.
    assert margin_gain > 0
    # bar 0: sigmoid -0.68, ipo -1.0, cpl -0.47; spreads 0.005, 0.004, 0.048.
    assert loss_change < 0


@pytest.mark.kernels
def test_reference_is_the_base_and_precomputing_it_changes_nothing(tiny_model_dir, base_checksum):
    pairs = preference_pairs(16, seed=3)
    runs = []
    for precompute in (False, True):
        hydra = build(tiny_model_dir)
        with torch.no_grad():
            ref_before = reference_logprobs(hydra, pairs, DPOConfig(batch_size=8))
        checksum = base_checksum(hydra)
        config = DPOConfig(steps=5, lr=5e-3, batch_size=8, precompute_ref=precompute)
        runs.append(train_dpo(hydra, pairs, config, progress=False))
        with torch.no_grad():
            assert torch.equal(reference_logprobs(hydra, pairs, DPOConfig(batch_size=8)), ref_before)
            chosen, _ = pair_logprobs(hydra, pairs[:2], "actor")
            assert not torch.allclose(chosen, ref_before[:2, 0])  # the actor moved away from it
        assert base_checksum(hydra) == checksum
    losses = [[record["dpo/loss"] for record in run.history] for run in runs]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


@pytest.mark.kernels
def test_untrained_actor_has_zero_margin_and_log_two_loss(tiny_model_dir):
    hydra = build(tiny_model_dir)
    run = train_dpo(hydra, preference_pairs(8, seed=4), DPOConfig(steps=1, lr=1e-12, batch_size=8), progress=False)
    assert run.history[0]["dpo/margin"] == pytest.approx(0.0, abs=1e-6)
    assert run.history[0]["dpo/loss"] == pytest.approx(torch.log(torch.tensor(2.0)).item(), rel=1e-5)


@pytest.mark.kernels
def test_align_dpo(tiny_model_dir, tmp_path):
    records = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in preference_pairs(16, seed=5)]
    result = lorarlhf.align(
        str(tiny_model_dir), records, method="dpo", output_dir=tmp_path / "run", steps=3, batch_size=4,
        eval_fraction=0.25, quantize=None,
    )  # fmt: skip
    assert {"dpo/eval_accuracy", "dpo/eval_margin", "peak_memory_gb"} <= set(result.metrics)
    with pytest.raises(ValueError, match=r"reward_fn is for the RL methods"):
        lorarlhf.align(str(tiny_model_dir), records, method="dpo", reward_fn=lambda p, r: [0.0] * len(r))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"loss": "kto"}, r"loss='kto' is not supported; choose one of \('sigmoid', 'ipo', 'cpl'\)"),
        ({"beta": 0}, r"beta=0 must be a positive number"),
        ({"label_smoothing": 0.5}, r"label_smoothing=0.5 must be in \[0, 0.5\)"),
        ({"cpl_lambda": 1.5}, r"cpl_lambda=1.5 must be in \(0, 1\]"),
    ],
)
def test_dpo_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        DPOConfig(**overrides)
