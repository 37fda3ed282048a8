"""Rollouts, rewards, PPO and GRPO on a tiny model: they raise a programmatic reward, and nothing else moves."""

from __future__ import annotations

import gc
import json
import string

import pytest
import torch

import lorarlhf
from lorarlhf import HydraModel
from lorarlhf.methods.grpo import GRPOConfig, train_grpo
from lorarlhf.methods.ppo import PPOConfig, train_ppo
from lorarlhf.model.tiny import save_tiny_model
from lorarlhf.training.rewards import NonFiniteReward, reward_functions, score_rollout
from lorarlhf.training.rollout import SamplingConfig, generate_rollout

PROMPTS = [f"Say something {i}:" for i in range(16)]


def lowercase(prompts, responses):
    """Share of a response's characters that are ASCII lowercase letters (about 0.1 for random bytes)."""
    return [sum(c in string.ascii_lowercase for c in r) / max(len(r), 1) for r in responses]


@pytest.fixture(scope="module")
def peaked_model_dir(tmp_path_factory, stat_seed):
    """A tiny Llama whose LM head is initialised 15x wider than usual, so its next-token distributions are
    peaked like a trained model's (the default is nearly uniform, and no adapter can sharpen it quickly)."""
    return save_tiny_model(tmp_path_factory.mktemp("peaked"), seed=stat_seed, initializer_range=0.3)


def build(path, seed=0, **kwargs):
    torch.manual_seed(seed)
    return HydraModel.from_pretrained(path, device="cpu", lora_r=8, **kwargs)


def mean_reward(hydra, role, seed=1000, n=32):
    rollout = generate_rollout(
        hydra, PROMPTS * 2, SamplingConfig(max_new_tokens=8), list(range(seed, seed + n)), role=role
    )
    return sum(lowercase(None, rollout.responses)) / n


# --------------------------------------------------------------------------- rollouts and rewards


def test_greedy_rollout_matches_transformers_generate(tiny_model_dir):
    hydra = build(tiny_model_dir, quantize=None)
    prompts = ["a", "a much longer prompt"]
    rollout = generate_rollout(hydra, prompts, SamplingConfig(max_new_tokens=6, temperature=0), seeds=[0, 1])
    assert rollout.responses == hydra.generate(prompts, max_new_tokens=6, do_sample=False)
    assert rollout.response_ids.shape == (2, 6) and rollout.prompt_ids.shape[0] == 2


def test_a_prompts_sample_depends_on_its_seed_not_on_its_batch(tiny_model_dir):
    hydra = build(tiny_model_dir)
    both = generate_rollout(hydra, ["first", "second prompt"], SamplingConfig(max_new_tokens=8), seeds=[3, 4])
    alone = generate_rollout(hydra, ["second prompt"], SamplingConfig(max_new_tokens=8), seeds=[4])
    assert torch.equal(both.response_ids[1], alone.response_ids[0])
    again = generate_rollout(hydra, ["first", "second prompt"], SamplingConfig(max_new_tokens=8), seeds=[3, 4])
    assert torch.equal(again.response_ids, both.response_ids)


def test_rollout_masks_stop_at_eos(tiny_model_dir):
    hydra = build(tiny_model_dir, quantize=None)
    greedy = generate_rollout(hydra, ["x", "y"], SamplingConfig(max_new_tokens=5, temperature=0), seeds=[0, 1])
    stop = int(greedy.response_ids[0, 2])  # make row 0's third greedy token the EOS token
    first = int((greedy.response_ids[0] == stop).nonzero()[0])  # it may occur earlier too
    hydra.tokenizer.eos_token = hydra.tokenizer.convert_ids_to_tokens(stop)
    rollout = generate_rollout(hydra, ["x", "y"], SamplingConfig(max_new_tokens=5, temperature=0), seeds=[0, 1])
    assert rollout.finished[0]
    assert rollout.response_mask[0].tolist() == [True] * (first + 1) + [False] * (
        rollout.response_ids.shape[1] - first - 1
    )
    assert (rollout.response_ids[0, first + 1 :] == hydra.tokenizer.pad_token_id).all()
    assert torch.equal(rollout.batch().response_mask.sum(1), rollout.response_lengths)


def test_reward_functions_weights_and_bad_returns(tiny_model_dir):
    hydra = build(tiny_model_dir, quantize=None)
    rollout = generate_rollout(hydra, ["a", "b"], SamplingConfig(max_new_tokens=4), seeds=[0, 1])

    def ones(prompts, responses):
        return [1.0] * len(responses)

    def twos(prompts, responses):
        return [2.0] * len(responses)

    raw, shaped = score_rollout(hydra, rollout, reward_functions([(ones, 0.5), (twos, 2.0)]))
    assert raw.tolist() == shaped.tolist() == [4.5, 4.5]
    raw, penalised = score_rollout(hydra, rollout, reward_functions(ones), missing_eos_penalty=1.0)
    assert raw.tolist() == [1.0, 1.0]  # logged as scored; the penalty only shapes what the losses see
    assert penalised.tolist() == [1.0 - (not f) for f in rollout.finished.tolist()]
    _, normalised = score_rollout(hydra, rollout, [(lambda p, r: [1.0, 3.0], 1.0)], normalize="batch", clip=0.5)
    assert normalised.tolist() == [-0.5, 0.5]  # whitened to -0.71, 0.71, then clipped
    with pytest.raises(NonFiniteReward, match=r"reward function nan_reward returned nan for sample 0"):
        score_rollout(hydra, rollout, [(nan_reward, 1.0)])
    with pytest.raises(ValueError, match=r"returned 1 rewards for 2 responses"):
        score_rollout(hydra, rollout, [(lambda p, r: [1.0], 1.0)])
    with pytest.raises(TypeError, match=r"reward_fn\[0\] is str"):
        reward_functions(["not a function"])


def nan_reward(prompts, responses):
    return [float("nan")] * len(responses)


# --------------------------------------------------------------------------- PPO and GRPO learn


@pytest.mark.kernels
def test_grpo_raises_the_reward_with_bounded_kl(peaked_model_dir, stat_seed, measured):
    hydra = build(peaked_model_dir, seed=stat_seed, quantize="nf4")
    eval_seed = 1000 * (stat_seed + 1)  # 32 fresh sampling seeds per test seed
    before = mean_reward(hydra, "actor", seed=eval_seed)
    config = GRPOConfig(steps=30, lr=1e-2, batch_size=4, group_size=4, max_new_tokens=8, seed=stat_seed)
    run = train_grpo(hydra, PROMPTS, config, reward_fn=lowercase, progress=False)
    actor, reference = mean_reward(hydra, "actor", seed=eval_seed), mean_reward(hydra, "reference", seed=eval_seed)
    kls = [record["rl/kl"] for record in run.history]
    gain = run.metrics["rl/reward_last"] - run.metrics["rl/reward_first"]
    measured("actor - reference reward", actor - reference, above=0.4)
    measured("rl/reward_last - rl/reward_first", gain, above=0.4)
    measured("min rl/kl", min(kls), above=-1)
    measured("max rl/kl", max(kls), below=30)
    assert reference == pytest.approx(before)  # the reference is the untouched base
    # bar 0.4: seed 0 gives 0.88 (triton 0.87); spread over 5 seeds 0.089 (benchmarks/seed_spread.py)
    assert actor > reference + 0.4, (actor, reference)
    # bar 0.4: seed 0 gives 0.93 (triton 0.93); spread 0.080
    assert gain > 0.4
    # Bounded: bar 30: seed 0 peaks at 4.9 nats per 8-token answer (triton 15.4); spread 10.5; the floor -1
    # (an estimate a little below 0) has margin 1.0, spread 0.
    assert all(-1 < kl < 30 for kl in kls), kls


@pytest.mark.filterwarnings("ignore::FutureWarning")  # gc.get_objects meets torch's deprecated module attributes
@pytest.mark.kernels
def test_ppo_raises_the_reward_and_leaves_reference_reward_and_base_alone(
    peaked_model_dir, base_checksum, stat_seed, measured
):
    hydra = build(peaked_model_dir, seed=stat_seed, quantize="nf4")
    reward_head = [p.detach().clone() for p in hydra.trainable_parameters("reward")]
    checksum = base_checksum(hydra)
    shape = hydra.causal_lm.get_input_embeddings().weight.shape

    def base_sized():  # storages of every tensor of the embedding's shape alive in the process
        return {t.data_ptr() for t in gc.get_objects() if _is_tensor(t) and t.shape == shape}

    gc.collect()
    before = base_sized()
    assert {
        hydra.causal_lm.get_input_embeddings().weight.data_ptr(),
        hydra.causal_lm.lm_head.weight.data_ptr(),
    } <= before
    copies = []

    def count_base_copies(record):
        copies.append(len(base_sized() - before))

    # Scores unscaled (reward_scaling="none"), as when the bars below were measured: the running scaling of a
    # reward function's scores weighs this reward 10x more against kl_coef (max rl/kl 53 at seed 0).
    config = PPOConfig(
        steps=60, lr=1e-2, batch_size=16, max_new_tokens=8, kl_coef=0.05, ppo_epochs=1, lam=1.0, seed=stat_seed,
        reward_scaling="none",
    )  # fmt: skip
    run = train_ppo(hydra, PROMPTS, config, reward_fn=lowercase, on_step=count_base_copies, progress=False)

    eval_seed = 1000 * (stat_seed + 1)  # 32 fresh sampling seeds per test seed
    actor, reference = mean_reward(hydra, "actor", seed=eval_seed), mean_reward(hydra, "reference", seed=eval_seed)
    kls = [record["rl/kl"] for record in run.history]
    measured("actor - reference reward", actor - reference, above=0.3)
    measured("max rl/kl", max(kls), below=50)
    # bar 0.3: seed 0 gives 0.88 (triton 0.88), but the spread over 5 seeds is 1.04 (benchmarks/seed_spread.py):
    # on seed 2's model the actor collapses to reward 0.0 (reference 0.11), at 100 steps too; seed 4 gives 0.26.
    # No bar covers that: open, for the PPO trainer.
    assert actor > reference + 0.3, (actor, reference)
    # bounded: bar 50 (was 40): seed 0 peaks at 24.6 nats per 8-token answer (triton 30.1); spread 11.3
    assert max(kls) < 50, kls
    assert base_checksum(hydra) == checksum
    assert all(torch.equal(a, b) for a, b in zip(reward_head, hydra.trainable_parameters("reward"), strict=True))
    assert copies and max(copies) == 0  # no new copy of the base's weights appeared during the run
    assert all(key in run.history[-1] for key in ("rl/kl", "rl/clipfrac", "rl/value_loss", "rl/explained_variance"))
    assert all(f"time/{phase}" in run.history[-1] for phase in ("generate", "score", "reference", "train"))


def _is_tensor(obj) -> bool:
    try:
        return isinstance(obj, torch.Tensor) and not obj.is_meta
    except ReferenceError:
        return False


@pytest.mark.kernels
def test_ppo_with_a_shared_critic(peaked_model_dir):
    hydra = build(peaked_model_dir, quantize=None, critic="shared")
    assert hydra.roles == ("reference", "actor", "reward", "critic")
    critic_params = {id(p) for p in hydra.trainable_parameters("critic")}
    assert {id(p) for p in hydra.trainable_parameters("actor")} < critic_params  # actor adapter + value head
    config = PPOConfig(steps=6, lr=1e-2, batch_size=8, max_new_tokens=6, ppo_epochs=1, critic="shared")
    run = train_ppo(hydra, PROMPTS, config, reward_fn=lowercase, progress=False)
    assert len(run.history) == 6 and all(torch.isfinite(torch.tensor(r["rl/value_loss"])) for r in run.history)


@pytest.mark.kernels
def test_seeded_runs_are_reproducible(peaked_model_dir):
    config = GRPOConfig(steps=4, lr=1e-2, batch_size=2, group_size=4, max_new_tokens=6, seed=7)
    runs = [train_grpo(build(peaked_model_dir, quantize=None), PROMPTS, config, reward_fn=lowercase, progress=False)]
    runs.append(
        train_grpo(build(peaked_model_dir, quantize=None), PROMPTS, config, reward_fn=lowercase, progress=False)
    )
    strip = [
        [{k: v for k, v in r.items() if not k.startswith("time/") and k != "rl/tokens_per_s"} for r in run.history]
        for run in runs
    ]
    assert strip[0] == strip[1]


@pytest.mark.parametrize("method", ["ppo", "grpo"])
@pytest.mark.kernels
def test_gradient_accumulation_gives_the_gradient_of_the_whole_minibatch(peaked_model_dir, method):
    """Micro-batches of unequal response lengths: the accumulated gradient equals the one-shot gradient."""
    grads = []
    for accumulation in (1, 4):
        hydra = build(peaked_model_dir, quantize=None)
        if method == "ppo":
            config = PPOConfig(steps=1, batch_size=8, max_new_tokens=6, ppo_epochs=1, grad_accumulation=accumulation)
            train_ppo(hydra, PROMPTS, config, reward_fn=lowercase, progress=False)
        else:
            config = GRPOConfig(
                steps=1, batch_size=2, group_size=4, max_new_tokens=6, loss_type="token", grad_accumulation=accumulation
            )
            train_grpo(hydra, PROMPTS, config, reward_fn=lowercase, progress=False)
        grads.append(torch.cat([p.grad.flatten() for p in hydra.trainable_parameters("actor") if p.grad is not None]))
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-7)


@pytest.mark.kernels
def test_dropout_is_off_so_the_first_update_is_exactly_on_policy(tmp_path):
    path = save_tiny_model(tmp_path, initializer_range=0.3, attention_dropout=0.3)
    hydra = build(path, quantize=None, lora_dropout=0.2)
    config = GRPOConfig(steps=1, lr=1e-12, batch_size=2, group_size=4, max_new_tokens=6)
    run = train_grpo(hydra, PROMPTS, config, reward_fn=lowercase, progress=False)
    assert run.history[0]["rl/approx_kl"] == pytest.approx(0.0, abs=1e-7)
    assert run.history[0]["rl/clipfrac"] == 0.0
    assert not any(m.p for m in hydra.modules() if isinstance(m, torch.nn.Dropout))


@pytest.mark.kernels
def test_prompts_too_long_for_max_length_are_dropped_and_reported(peaked_model_dir, caplog):
    hydra = build(peaked_model_dir, quantize=None)
    long_prompt = "x" * 100
    config = GRPOConfig(steps=1, batch_size=1, group_size=2, max_new_tokens=4, max_length=40)
    with caplog.at_level("WARNING", logger="lorarlhf.rl"):
        train_grpo(hydra, [long_prompt, "short"], config, reward_fn=lowercase, progress=False)
    assert "dropped 1 of 2 prompts longer than max_length - max_new_tokens = 36 tokens" in caplog.text
    with pytest.raises(ValueError, match="every prompt is longer than max_length - max_new_tokens = 36 tokens"):
        train_grpo(hydra, [long_prompt], config, reward_fn=lowercase, progress=False)


def test_ppo_refuses_a_critic_mode_the_hydra_was_not_built_with(peaked_model_dir):
    hydra = build(peaked_model_dir, quantize=None)
    with pytest.raises(ValueError, match="config critic='shared' but the Hydra was built with critic='separate'"):
        train_ppo(hydra, PROMPTS, PPOConfig(steps=1, critic="shared"), reward_fn=lowercase, progress=False)


@pytest.mark.kernels
def test_non_finite_rewards_are_skipped_then_stop_the_run(peaked_model_dir):
    calls = []

    def flaky(prompts, responses):
        calls.append(1)
        return [float("inf") if len(calls) == 1 else 0.5] * len(responses)

    hydra = build(peaked_model_dir, quantize=None)
    run = train_grpo(
        hydra,
        PROMPTS,
        GRPOConfig(steps=2, batch_size=2, group_size=2, max_new_tokens=4),
        reward_fn=flaky,
        progress=False,
    )
    assert run.metrics["rl/skipped_nonfinite_steps"] == 1 and len(run.history) == 2
    with pytest.raises(
        RuntimeError, match=r"rl: 3 steps in a row were skipped, the last because a reward was NaN or infinite"
    ):
        train_grpo(
            hydra,
            PROMPTS,
            GRPOConfig(steps=2, batch_size=2, group_size=2, max_new_tokens=4),
            reward_fn=nan_reward,
            progress=False,
        )


# --------------------------------------------------------------------------- align()


@pytest.mark.kernels
def test_align_grpo_with_a_reward_function(peaked_model_dir, tmp_path):
    result = lorarlhf.align(
        str(peaked_model_dir), PROMPTS, method="grpo", reward_fn=lowercase, output_dir=tmp_path / "run",
        steps=3, batch_size=2, group_size=2, max_new_tokens=4, quantize=None,
    )  # fmt: skip
    for key in ("rl/reward_first", "rl/reward_last", "rl/kl_last", "peak_memory_gb"):
        assert key in result.metrics
    stages = [json.loads(line)["stage"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert stages == ["grpo"] * 3
    assert HydraModel.load(tmp_path / "run").roles == result.model.roles


@pytest.mark.kernels
def test_align_ppo_on_preferences_trains_the_reward_model_first(peaked_model_dir, tmp_path):
    pairs = [{"prompt": f"Q{i}:", "chosen": "good answer", "rejected": "bad"} for i in range(8)]
    result = lorarlhf.align(
        str(peaked_model_dir), pairs, method="ppo", output_dir=tmp_path / "run", steps=2, rm_steps=3,
        batch_size=4, max_new_tokens=4, eval_fraction=0.25, quantize=None,
    )  # fmt: skip
    assert "rm/eval_accuracy" in result.metrics and "rl/reward_last" in result.metrics
    stages = [json.loads(line)["stage"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert stages == ["rm"] * 3 + ["ppo"]  # one rollout: its two PPO epochs are the 2 optimizer steps
    with pytest.raises(ValueError, match="got prompts only: pass reward_fn, preference pairs to learn a reward"):
        lorarlhf.align(str(peaked_model_dir), PROMPTS, method="ppo", output_dir=tmp_path / "other", steps=1)


@pytest.mark.parametrize(
    ("cls", "overrides", "message"),
    [
        (PPOConfig, {"kl_estimator": "k2"}, r"kl_estimator='k2' is not supported; choose one of \('k1', 'k3'\)"),
        (PPOConfig, {"critic": "joint"}, r"critic='joint' is not supported; choose one of \('separate', 'shared'\)"),
        (PPOConfig, {"lam": 1.5}, r"lam=1.5 must be in \[0, 1\]"),
        (PPOConfig, {"batch_size": 6, "num_minibatches": 4}, r"batch_size=6 must be a multiple of num_minibatches=4"),
        (GRPOConfig, {"group_size": 1}, r"group_size=1 must be >= 2"),
        (
            GRPOConfig,
            {"loss_type": "dapo"},
            r"loss_type='dapo' is not supported; choose one of \('sequence', 'token'\)",
        ),
        (GRPOConfig, {"temperature": 0}, r"temperature=0 must be > 0 for RL"),
        (GRPOConfig, {"reward_normalize": "group"}, r"reward_normalize='group' is not supported"),
    ],
)
def test_rl_config_validation(cls, overrides, message):
    with pytest.raises(ValueError, match=message):
        cls(**overrides)
