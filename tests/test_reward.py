"""The reward-model stage: only the reward role learns, it learns a known rule, and align(method="rm") runs."""

from __future__ import annotations

import json
import random

import pytest
import torch

import lorarlhf
from lorarlhf import HydraModel
from lorarlhf.data import PreferencePair
from lorarlhf.methods.reward import (
    RewardConfig,
    expected_calibration_error,
    pair_rewards,
    rankings_of,
    train_reward_model,
)

FILLER = ["the", "cat", "sat", "on", "a", "mat", "blue", "sky", "runs", "fast", "tree", "with"]
POSITIVE, NEGATIVE = ["good", "great", "nice"], ["bad", "awful", "poor"]


def sentiment_pairs(n: int, *, noise: float, seed: int) -> list[PreferencePair]:
    """Known rule: the answer with a positive word beats the one with a negative word; `noise` flips labels."""
    rng = random.Random(seed)

    def answer(words):
        text = [rng.choice(FILLER) for _ in range(rng.randint(2, 4))]
        text.insert(rng.randint(0, len(text)), rng.choice(words))
        return " ".join(text)

    pairs = []
    for i in range(n):
        good, bad = answer(POSITIVE), answer(NEGATIVE)
        if rng.random() < noise:
            good, bad = bad, good
        pairs.append(PreferencePair(prompt=f"Review {i}:", chosen=good, rejected=bad))
    return pairs


def build(path, **kwargs):
    kwargs.setdefault("lora_r", 8)
    return HydraModel.from_pretrained(path, device="cpu", **kwargs)


def test_synthetic_rule_with_noisy_annotators_reaches_the_noise_ceiling(tiny_model_dir, stat_seed, measured):
    """10% label noise caps held-out accuracy at ~90%; the reward role gets within 10 points of it."""
    torch.manual_seed(stat_seed)
    train = sentiment_pairs(400, noise=0.1, seed=stat_seed + 1)
    held_out = sentiment_pairs(300, noise=0.1, seed=stat_seed + 2)
    ceiling = sum(any(w in p.chosen.split() for w in POSITIVE) for p in held_out) / len(held_out)
    hydra = build(tiny_model_dir, quantize="nf4")
    config = RewardConfig(steps=200, lr=3e-3, batch_size=16, seed=stat_seed, eval_fraction=0.0)

    run = train_reward_model(hydra, train, config, eval_pairs=held_out, progress=False)

    losses = [record["rm/loss"] for record in run.history]
    # Each step's loss is one batch's: the first and last 20 steps' means, so one odd batch decides nothing.
    loss_drop = sum(losses[-20:]) / 20 - sum(losses[:20]) / 20
    measured("noise ceiling", ceiling, above=0.85, below=0.96)
    measured("rm/eval_accuracy - ceiling", run.metrics["rm/eval_accuracy"] - ceiling, above=-0.1)
    measured("rm/loss last 20 - first 20 steps", loss_drop, below=0)
    measured("rm/eval_ece", run.metrics["rm/eval_ece"], above=0.0, below=0.5)
    measured("rm/eval_margin", run.metrics["rm/eval_margin"], above=0)
    # bar 0.96 (was 0.95): seed 0 gives 0.913 (triton 0.913); spread over 5 seeds 0.040 (benchmarks/seed_spread.py)
    assert 0.85 < ceiling < 0.96
    # bar ceiling - 0.1 (was - 0.03): seed 0 gives -0.033 (triton -0.033); spread 0.047 (benchmarks/seed_spread.py)
    assert run.metrics["rm/eval_accuracy"] >= ceiling - 0.1, (run.metrics, ceiling)
    # bar 0: seed 0 gives -0.19 (triton -0.19); spread 0.16 (the last step alone against the first: spread 0.61)
    assert loss_drop < 0, losses
    # bars 0/0.5: seed 0 gives 0.093 (triton 0.093); spread 0.035
    assert 0.0 <= run.metrics["rm/eval_ece"] <= 0.5
    # bar 0: seed 0 gives 1.86 (triton 1.86); spread 1.66
    assert run.metrics["rm/eval_margin"] > 0


@pytest.mark.kernels
def test_training_moves_only_the_reward_role(tiny_model_dir, base_checksum, pairs):
    hydra = build(tiny_model_dir)
    batch = hydra.encode(*pairs)
    with torch.no_grad():
        before = {
            "actor": hydra.sequence_logprobs(*pairs, role="actor"),
            "reference": hydra.sequence_logprobs(*pairs, role="reference"),
            "critic": hydra.values(batch.input_ids, batch.attention_mask),
            "reward": hydra.score(*pairs),
        }
    checksum = base_checksum(hydra)
    train_reward_model(hydra, sentiment_pairs(16, noise=0.0, seed=3), RewardConfig(steps=3, lr=1e-2), progress=False)
    with torch.no_grad():
        assert torch.equal(hydra.sequence_logprobs(*pairs, role="actor"), before["actor"])
        assert torch.equal(hydra.sequence_logprobs(*pairs, role="reference"), before["reference"])
        assert torch.equal(hydra.values(batch.input_ids, batch.attention_mask), before["critic"])
        assert not torch.equal(hydra.score(*pairs), before["reward"])
    assert base_checksum(hydra) == checksum


def test_pair_rewards_in_one_pass_equal_separate_scores(tiny_model_dir):
    hydra = build(tiny_model_dir)
    batch = sentiment_pairs(3, noise=0.0, seed=4)
    with torch.no_grad():
        chosen, rejected = pair_rewards(hydra, batch)
        torch.testing.assert_close(chosen, hydra.score([p.prompt for p in batch], [p.chosen for p in batch]))
        torch.testing.assert_close(rejected, hydra.score([p.prompt for p in batch], [p.rejected for p in batch]))


def test_rankings_are_rebuilt_best_first_from_a_records_pairs():
    order = ["best", "second", "third", "worst"]
    pairs = [PreferencePair("p", order[i], order[j], group=7) for i in range(4) for j in range(i + 1, 4)]
    random.Random(0).shuffle(pairs)
    pairs.append(PreferencePair("q", "yes", "no"))  # a plain pair is a ranking of two
    rankings = rankings_of(pairs)
    assert [(r.prompt, r.responses) for r in rankings] == [("p", order), ("q", ["yes", "no"])]


def test_listwise_objective_learns_rankings(tiny_model_dir, stat_seed, measured):
    rng = random.Random(stat_seed + 5)
    pairs = []
    for g in range(24):  # rankings of 3: positive > neutral > negative
        answers = [f"{rng.choice(POSITIVE)} {rng.choice(FILLER)}", rng.choice(FILLER), f"{rng.choice(NEGATIVE)} it"]
        pairs += [PreferencePair(f"Q{g}", answers[i], answers[j], group=g) for i in range(3) for j in range(i + 1, 3)]
    hydra = build(tiny_model_dir, quantize=None)
    config = RewardConfig(steps=60, lr=3e-3, batch_size=8, objective="listwise", seed=stat_seed)
    run = train_reward_model(hydra, pairs, config, eval_pairs=pairs, progress=False)
    ratio = measured("rm/loss last / first", run.history[-1]["rm/loss"] / run.history[0]["rm/loss"], below=0.5)
    accuracy = measured("rm/eval_accuracy", run.metrics["rm/eval_accuracy"], above=0.9)
    # bar 0.5: seed 0 gives 0.0014 (triton 0.0014); spread over 5 seeds 0.0003 (benchmarks/seed_spread.py)
    assert ratio < 0.5
    # bar 0.9: seed 0 gives 1.0 (triton 1.0); spread 0
    assert accuracy > 0.9


def test_prompt_aware_utility_routes_closed_prompts_to_the_linear_utility():
    """Song et al. (2023): pairs of closed-ended prompts get U(x) = x on bounded rewards, the others log-sigmoid."""
    from lorarlhf.methods.reward import _pairwise_loss
    from lorarlhf.training.losses import bradley_terry_loss, linear_utility_loss

    pairs = [
        PreferencePair("2+2?", "4", "5", utility="closed"),
        PreferencePair("A poem?", "roses", "x", utility="open"),
    ]
    chosen, rejected = torch.tensor([0.3, 1.0]), torch.tensor([0.1, -0.5])
    got = _pairwise_loss(chosen, rejected, pairs, RewardConfig(utility="prompt_aware"))
    expected = (linear_utility_loss(chosen[:1], rejected[:1]) + bradley_terry_loss(chosen[1:], rejected[1:])) / 2
    torch.testing.assert_close(got, expected)
    plain = _pairwise_loss(chosen, rejected, pairs, RewardConfig())
    torch.testing.assert_close(plain, bradley_terry_loss(chosen, rejected))


def test_per_prompt_reward_spread_is_reported(tiny_model_dir):
    pairs = sentiment_pairs(12, noise=0, seed=6)
    hydra = build(tiny_model_dir, quantize=None)
    run = train_reward_model(
        hydra, pairs, RewardConfig(steps=10, lr=3e-3, batch_size=4), eval_pairs=pairs, progress=False
    )
    with torch.no_grad():
        chosen, rejected = pair_rewards(hydra, pairs)
    spreads = (chosen - rejected).abs()  # one pair per prompt here: the spread is |r_c - r_r|
    assert run.metrics["rm/prompt_spread_mean"] == pytest.approx(spreads.mean().item(), rel=1e-5)
    assert run.metrics["rm/prompt_spread_std"] == pytest.approx(spreads.std().item(), rel=1e-5)


def test_expected_calibration_error_hand_computed():
    # two bins of [0.5, 1]: confidences 0.6, 0.6 (one right) -> |0.5 - 0.6|; 0.9, 0.9 (both right) -> |1 - 0.9|
    p = torch.tensor([0.6, 0.4, 0.9, 0.9])
    assert expected_calibration_error(p, bins=2) == pytest.approx(0.5 * 0.1 + 0.5 * 0.1)
    assert expected_calibration_error(torch.tensor([1.0, 1.0]), bins=10) == pytest.approx(0.0)


# --------------------------------------------------------------------------- align(method="rm") and its config


def test_align_rm_writes_a_reloadable_run(tiny_model_dir, tmp_path):
    records = [
        {"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in sentiment_pairs(40, noise=0, seed=7)
    ]
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = lorarlhf.align(
        str(tiny_model_dir),
        str(data),
        method="rm",
        output_dir=tmp_path / "run",
        steps=5,
        batch_size=4,
        eval_fraction=0.25,
    )
    assert result.output_dir == tmp_path / "run"
    for key in ("rm/eval_accuracy", "rm/eval_ece", "rm/eval_margin", "rm/prompt_spread_mean", "peak_memory_gb"):
        assert key in result.metrics
    assert 0 < result.metrics["peak_memory_gb"] < 24
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4, 5]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["method"] == "rm"
    reloaded = HydraModel.load(tmp_path / "run")
    prompts, responses = [r["prompt"] for r in records[:3]], [r["chosen"] for r in records[:3]]
    with torch.no_grad():
        assert torch.equal(reloaded.score(prompts, responses), result.model.score(prompts, responses))


def test_align_refuses_unknown_options_methods_and_a_foreign_output_dir(tiny_model_dir, tmp_path):
    pairs = sentiment_pairs(4, noise=0, seed=8)
    with pytest.raises(TypeError, match=r"unknown option 'stpes'.*did you mean 'steps'"):
        lorarlhf.align(str(tiny_model_dir), pairs, method="rm", stpes=3)
    with pytest.raises(ValueError, match=r"method='rlhf' is not a method; choose one of"):
        lorarlhf.align(str(tiny_model_dir), pairs, method="rlhf")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty and holds no lorarlhf run"):
        lorarlhf.align(str(tiny_model_dir), pairs, method="rm", output_dir=tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"objective": "triplet"}, r"objective='triplet' is not supported; choose one of \('pairwise', 'listwise'\)"),
        ({"utility": "x"}, r"utility='x' is not supported"),
        ({"aggregate": "mean"}, r"aggregate='mean' is not supported; choose one of \('majority', 'bradley_terry'\)"),
        ({"utility": "prompt_aware", "objective": "listwise"}, r"prompt_aware' works with objective='pairwise'"),
        ({"center_coef": -1}, r"center_coef=-1 must be >= 0"),
        ({"steps": 0}, r"steps=0 must be a positive integer"),
        ({"lr": float("nan")}, r"lr=nan must be a positive number"),
        ({"eval_fraction": 1.0}, r"eval_fraction=1.0 must be in \[0, 1\)"),
        ({"quantize": "int8"}, r"quantize='int8' is not supported"),
        ({"weight_rankings": "yes"}, r"weight_rankings='yes' must be True or False"),
    ],
)
def test_reward_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        RewardConfig(**overrides)
