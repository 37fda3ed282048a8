"""A rollout trained on once is scored by the update's own forward: no separate no-grad pass of the actor (or
the critic), the same loss and gradients as with it; a rollout trained on again keeps the pass.

The "with the pass" side is the same run with two epochs (PPO) or iterations (GRPO, RLOO, REINFORCE++) and
steps=1: its one update is exactly the first update of a reused rollout, for which the pass runs.
"""

from __future__ import annotations

import pytest
import torch

from lorarlhf import HydraModel
from lorarlhf.methods.grpo import GRPOConfig, train_grpo
from lorarlhf.methods.ppo import PPOConfig, train_ppo
from lorarlhf.methods.reinforce_pp import ReinforcePPConfig, train_reinforce_pp
from lorarlhf.methods.rloo import RLOOConfig, train_rloo
from lorarlhf.model.tiny import save_tiny_model

pytestmark = pytest.mark.kernels  # every test here reaches the kernels

PROMPTS = [f"Say something {i}:" for i in range(8)]
GROUP_METHODS = {  # methods that sample a group per prompt: (config, trainer)
    "grpo": (GRPOConfig, train_grpo),
    "rloo": (RLOOConfig, train_rloo),
    "reinforce_pp": (ReinforcePPConfig, train_reinforce_pp),
}
METHODS = ["ppo", *GROUP_METHODS]


def lowercase(prompts, responses):
    return [sum(c.islower() for c in r) / max(len(r), 1) for r in responses]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("peaked"), seed=0, initializer_range=0.3)


class PassSpy:
    """Counts the Hydra's log-prob and value passes by role and by whether autograd was on, through instance
    attributes that wrap this one object's bound methods (the class and the library are untouched)."""

    def __init__(self, hydra):
        self.calls: list[tuple[str, str, bool]] = []  # (what, role, grad enabled)
        token_logprobs, values = hydra.token_logprobs, hydra.values

        def spied_logprobs(batch, *, role=None, **kwargs):
            self.calls.append(("logprobs", role, torch.is_grad_enabled()))
            return token_logprobs(batch, role=role, **kwargs)

        def spied_values(input_ids, attention_mask):
            self.calls.append(("values", "critic", torch.is_grad_enabled()))
            return values(input_ids, attention_mask)

        hydra.token_logprobs, hydra.values = spied_logprobs, spied_values

    def count(self, what: str, role: str, grad: bool) -> int:
        return self.calls.count((what, role, grad))


def build(model_dir, method):
    """The Hydra with its actor already off the reference (LoRA B drawn, not zero), so the KL terms count."""
    torch.manual_seed(0)
    roles = ("actor", "critic") if method == "ppo" else ("actor",)
    hydra = HydraModel.from_pretrained(model_dir, quantize=None, lora_r=4, roles=roles)
    with torch.no_grad():
        for name, param in hydra.peft.named_parameters():
            if ".lora_B.actor." in name:
                param.copy_(torch.randn(param.shape) * 0.3)
    return hydra


def train(model_dir, method, reuse: int, **overrides):
    """One update; reuse = the epochs (PPO) or iterations (the others) the config asks for."""
    hydra = build(model_dir, method)
    spy = PassSpy(hydra)
    if method == "ppo":
        config = PPOConfig(steps=1, batch_size=8, max_new_tokens=6, lr=1e-2, ppo_epochs=reuse, **overrides)
        run = train_ppo(hydra, PROMPTS, config, reward_fn=lowercase, progress=False)
        params = hydra.trainable_parameters("actor") + hydra.trainable_parameters("critic")
    else:
        config_class, trainer = GROUP_METHODS[method]
        config = config_class(
            steps=1, batch_size=2, group_size=4, max_new_tokens=6, lr=1e-2, num_iterations=reuse, **overrides
        )
        run = trainer(hydra, PROMPTS, config, reward_fn=lowercase, progress=False)
        params = hydra.trainable_parameters("actor")
    grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]
    return run.history[0], grads, spy


@pytest.mark.parametrize("method", METHODS)
def test_a_rollout_used_once_skips_the_rollout_policy_pass_and_trains_the_same(model_dir, method):
    once, once_grads, once_spy = train(model_dir, method, reuse=1)
    again, again_grads, again_spy = train(model_dir, method, reuse=2)

    assert once_spy.count("logprobs", "actor", grad=False) == 0  # no scoring pass of the actor
    assert again_spy.count("logprobs", "actor", grad=False) == 1  # reused: the pass runs, in one chunk
    for spy in (once_spy, again_spy):  # the reference pass runs either way, the whole rollout in one chunk
        assert spy.count("logprobs", "reference", grad=False) == 1
    if method == "ppo":
        assert once_spy.count("values", "critic", grad=False) == 0
        assert again_spy.count("values", "critic", grad=False) == 1

    assert once["rl/ratio_mean"] == 1.0 and once["rl/approx_kl"] == 0.0  # old_logp is this forward's, detached
    assert abs(once["rl/kl"]) > 1e-3  # the actor is off the reference: the KL terms are in the comparison
    logged = {"rloo": ("rl/penalised_reward_mean", "rl/advantage_abs"), "reinforce_pp": ("rl/return_mean",)}
    for key in ("rl/reward_mean", "rl/kl", "rl/entropy", "rl/grad_norm", "rl/clipfrac", *logged.get(method, ())):
        assert once[key] == pytest.approx(again[key], rel=1e-5, abs=1e-6), key
    loss_keys = ("rl/policy_loss", "rl/value_loss") if method == "ppo" else ("rl/loss",)
    for key in loss_keys:
        assert once[key] == pytest.approx(again[key], rel=1e-5, abs=1e-7), key
    assert any(g.abs().sum() > 0 for g in once_grads)
    for a, b in zip(once_grads, again_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("method", METHODS)
def test_gradient_accumulation_keeps_the_pass_where_advantages_need_every_row(model_dir, method):
    """PPO and REINFORCE++ whiten advantages over the whole rollout, and RLOO's baseline is the other samples'
    KL-penalised reward, so micro-batches need the rollout's targets first; GRPO's per-row ratio needs nothing
    of the other rows. Accumulated or not, the update is the same."""
    whole, whole_grads, _ = train(model_dir, method, reuse=1)
    accumulated, accumulated_grads, spy = train(model_dir, method, reuse=1, grad_accumulation=2)
    assert spy.count("logprobs", "actor", grad=False) == (0 if method == "grpo" else 1)
    assert accumulated["rl/loss" if method != "ppo" else "rl/policy_loss"] == pytest.approx(
        whole["rl/loss" if method != "ppo" else "rl/policy_loss"], rel=1e-5, abs=1e-7
    )
    for a, b in zip(whole_grads, accumulated_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def limit_rows(hydra, max_rows: int) -> None:
    """Raise CUDA's out-of-memory error for any decoder call on more than `max_rows` rows."""

    def hook(module, args, kwargs):
        if kwargs["input_ids"].shape[0] > max_rows:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    hydra.causal_lm.base_model.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("method", METHODS)
def test_out_of_memory_in_an_update_of_a_rollout_used_once_gives_the_same_update(model_dir, method, caplog):
    """The update retried in micro-batches (PPO, RLOO, REINFORCE++: its targets from a pass over the whole
    rollout first) trains exactly like the update that fitted."""
    weights = []
    for max_rows in (None, 4):
        hydra = build(model_dir, method)
        if max_rows is not None:
            limit_rows(hydra, max_rows)
        if method == "ppo":
            config = PPOConfig(steps=1, batch_size=8, max_new_tokens=6, lr=1e-2, ppo_epochs=1)
            train_ppo(hydra, PROMPTS, config, reward_fn=lowercase, progress=False)
        else:
            config_class, trainer = GROUP_METHODS[method]
            config = config_class(steps=2, batch_size=2, group_size=4, max_new_tokens=6, lr=1e-2)
            trainer(hydra, PROMPTS, config, reward_fn=lowercase, progress=False)
        weights.append([p.detach().clone() for p in hydra.trainable_parameters("actor")])
    # Generation ran out first: the update comes in micro-batches of 4 rows from the start.
    assert "out of memory in generation; retrying with micro-batches 2x smaller" in caplog.text
    assert "out of memory in the reference and rollout-policy passes" in caplog.text
    # The same update up to float32 summation order, which Adam's normalisation can amplify in an entry whose
    # gradient is near zero (one of 512 differed by 2.6e-5 on one CPU); a wrong update would be off by ~lr (1e-2).
    for a, b in zip(*weights, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
