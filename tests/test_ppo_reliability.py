"""What keeps PPO learning: running reward statistics (against a float64 reference, resumable), the critic's
warm-up (the actor untouched, the critic trained), and the options' validation."""

from __future__ import annotations

import math

import pytest
import torch

from lorarlhf import HydraModel
from lorarlhf.methods.ppo import PPOConfig, train_ppo
from lorarlhf.model.tiny import save_tiny_model
from lorarlhf.training.rl_losses import RunningMoments

PROMPTS = [f"Say something {i}:" for i in range(8)]


def lowercase(prompts, responses):
    return [sum(c.islower() for c in r) / max(len(r), 1) for r in responses]


# ---------------------------------------------------------------- RunningMoments


def reference_moments(values: list[float]) -> tuple[float, float]:
    """Mean and population std of all values at once, in plain float64 Python."""
    mean = math.fsum(values) / len(values)
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))


def test_running_moments_equal_the_moments_of_everything_seen():
    generator = torch.Generator().manual_seed(0)
    moments, seen = RunningMoments(), []
    for size, scale, shift in [(1, 1.0, 0.0), (7, 3.0, 100.0), (41, 0.01, -5.0), (2, 10.0, 1e4), (16, 1.0, 0.5)]:
        batch = (torch.randn(size, generator=generator) * scale + shift).float()
        moments.update(batch)
        seen += batch.double().tolist()
        mean, std = reference_moments(seen)
        assert moments.count == len(seen)
        assert moments.mean == pytest.approx(mean, rel=1e-12, abs=1e-9)
        assert moments.std == pytest.approx(std, rel=1e-9)
    x = torch.tensor([0.0, 1e4, -3.0])
    expected = torch.tensor([(v - mean) / (std + 1e-8) for v in x.double().tolist()], dtype=torch.float32)
    torch.testing.assert_close(moments.normalize(x), expected)
    assert moments.normalize(x).dtype == torch.float32


def test_running_moments_before_any_value_and_with_one_value():
    moments = RunningMoments()
    x = torch.tensor([2.0, -1.0])
    assert torch.equal(moments.normalize(x), x) and moments.std == 1.0  # nothing seen: unchanged
    moments.update(torch.tensor([]))
    assert moments.count == 0
    moments.update(torch.tensor([3.0]))
    assert (moments.mean, moments.std) == (3.0, 0.0)
    torch.testing.assert_close(moments.normalize(torch.tensor([3.0, 4.0])), torch.tensor([0.0, 1e8]))


def test_running_moments_resume_from_their_state_and_refuse_bad_input():
    first, resumed = RunningMoments(), RunningMoments()
    first.update(torch.tensor([1.0, 2.0, 4.0]))
    resumed.load_state_dict(first.state_dict())
    for moments in (first, resumed):
        moments.update(torch.tensor([8.0, -1.0]))
    assert resumed.state_dict() == first.state_dict()
    assert resumed.count == 5 and resumed.mean == pytest.approx(2.8)
    with pytest.raises(ValueError, match=r"missing \['m2'\]"):
        resumed.load_state_dict({"count": 1, "mean": 0.0})
    with pytest.raises(ValueError, match="not a valid one"):
        resumed.load_state_dict({"count": 2, "mean": 0.0, "m2": -1.0})
    with pytest.raises(ValueError, match="nan or inf"):
        resumed.update(torch.tensor([1.0, float("nan")]))
    assert resumed.state_dict() == first.state_dict()  # a refused batch changes nothing


# ---------------------------------------------------------------- PPO options


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("peaked"), seed=0, initializer_range=0.3)


@pytest.mark.kernels
def test_critic_warmup_trains_the_critic_and_leaves_the_actor(model_dir):
    torch.manual_seed(0)
    hydra = HydraModel.from_pretrained(model_dir, quantize=None, lora_r=4, roles=("actor", "critic"))
    actor = [p.detach().clone() for p in hydra.trainable_parameters("actor")]
    critic = [p.detach().clone() for p in hydra.trainable_parameters("critic")]
    config = PPOConfig(steps=4, batch_size=8, max_new_tokens=6, lr=1e-2, ppo_epochs=1, critic_warmup_steps=2)
    run = train_ppo(hydra, PROMPTS, config, reward_fn=lowercase, progress=False)
    assert [r["rl/critic_warmup"] for r in run.history] == [1.0, 1.0, 0.0, 0.0]
    # After 4 steps the actor moved, but only in the last 2: the warm-up's records show a policy not yet moved
    # from the rollout's, and the value loss went down while only the critic trained.
    warm = run.history[:2]
    assert all(r["rl/ratio_mean"] == 1.0 and r["rl/approx_kl"] == 0.0 for r in warm)
    assert any(not torch.equal(a, p) for a, p in zip(actor, hydra.trainable_parameters("actor"), strict=True))
    assert any(not torch.equal(c, p) for c, p in zip(critic, hydra.trainable_parameters("critic"), strict=True))

    torch.manual_seed(0)
    hydra = HydraModel.from_pretrained(model_dir, quantize=None, lora_r=4, roles=("actor", "critic"))
    config = PPOConfig(steps=2, batch_size=8, max_new_tokens=6, lr=1e-2, ppo_epochs=1, critic_warmup_steps=2)
    train_ppo(hydra, PROMPTS, config, reward_fn=lowercase, progress=False)
    assert all(torch.equal(a, p) for a, p in zip(actor, hydra.trainable_parameters("actor"), strict=True))
    assert any(not torch.equal(c, p) for c, p in zip(critic, hydra.trainable_parameters("critic"), strict=True))


@pytest.mark.kernels
def test_running_reward_scaling_feeds_the_losses_normalised_scores(model_dir):
    """With running scaling the critic's targets are of unit scale whatever the reward's units: a reward 1000x
    larger trains exactly like the original (up to rounding)."""
    histories = []
    for scale in (1.0, 1000.0):
        torch.manual_seed(0)
        hydra = HydraModel.from_pretrained(model_dir, quantize=None, lora_r=4, roles=("actor", "critic"))
        config = PPOConfig(steps=2, batch_size=8, max_new_tokens=6, lr=1e-2, ppo_epochs=1, kl_coef=0.0)
        run = train_ppo(
            hydra, PROMPTS, config, reward_fn=lambda p, r, s=scale: [s * v for v in lowercase(p, r)], progress=False
        )
        histories.append(run.history)
    for small, large in zip(*histories, strict=True):
        assert large["rl/reward_mean"] == pytest.approx(1000 * small["rl/reward_mean"], rel=1e-5)
        assert large["rl/value_loss"] == pytest.approx(small["rl/value_loss"], rel=1e-3, abs=1e-6)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"critic_warmup_steps": -1}, r"critic_warmup_steps=-1 must be an integer >= 0 \(0: no warm-up\)"),
        ({"critic_warmup_steps": 1.5}, r"critic_warmup_steps=1.5 must be an integer >= 0"),
        (
            {"reward_scaling": "batch"},
            r"reward_scaling='batch' is not supported; choose one of \('auto', 'none', 'running'\)",
        ),
    ],
)
def test_ppo_reliability_options_are_validated(overrides, message):
    with pytest.raises(ValueError, match=message):
        PPOConfig(**overrides)
