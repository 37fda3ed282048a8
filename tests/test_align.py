"""align() end to end on tiny models: each method learns, and the run directory holds everything it promises."""

from __future__ import annotations

import json
import random
import string

import pytest
import torch
from kernel_testing import learning_run_once
from peft import PeftModel
from transformers import AutoModelForCausalLM

import lorarlhf
from lorarlhf import HydraModel
from lorarlhf.data import Conversation, PreferenceDataError, PreferencePair, load_preferences
from lorarlhf.data.demonstrations import Demonstration, load_demonstrations, winners
from lorarlhf.model.tiny import save_tiny_model

WORDS = ["the", "cat", "sat", "on", "a", "mat", "blue", "sky"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def yes_no_pairs(n: int, seed: int) -> list[dict]:
    """Known rule: the chosen answer ends with "yes", the rejected one with "no"."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        stem = " ".join(rng.choice(WORDS) for _ in range(2))
        records.append({"prompt": f"Question {i}:", "chosen": f"{stem} yes", "rejected": f"{stem} no"})
    return records


def lowercase(prompts, responses):
    return [sum(c in string.ascii_lowercase for c in r) / max(len(r), 1) for r in responses]


@pytest.fixture(scope="module")
def peaked_model_dir(tmp_path_factory, stat_seed):
    """Peaked next-token distributions like a trained model's (see test_rl.py)."""
    return save_tiny_model(tmp_path_factory.mktemp("peaked"), seed=stat_seed, initializer_range=0.3)


def actor_logprobs(hydra, prompts, responses, role="actor"):
    with torch.no_grad():
        return hydra.sequence_logprobs(prompts, responses, role=role)


# --------------------------------------------------------------------------- every method learns


@pytest.mark.kernels
def test_sft_learns_the_demonstrations_then_actor_and_reference_start_from_them(
    peaked_model_dir, tmp_path, stat_seed, measured
):
    demos = [{"prompt": f"Question {i}:", "completion": "the answer is yes"} for i in range(24)]
    result = lorarlhf.align(
        str(peaked_model_dir), demos, method="sft", output_dir=tmp_path / "run", steps=30, lr=1e-2,
        batch_size=8, eval_fraction=0.25, quantize=None, samples=2, seed=stat_seed,
    )  # fmt: skip
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["stage"] == "sft"
    ratio = measured("sft/eval_loss / first sft/loss", result.metrics["sft/eval_loss"] / first["sft/loss"], below=0.3)
    # bar 0.3: seed 0 gives 0.0002 (triton 0.0002); spread over 5 seeds 0.0001 (benchmarks/seed_spread.py)
    assert ratio < 0.3, (result.metrics, first)
    hydra, prompts, answers = result.model, ["Question 99:"], ["the answer is yes"]
    sft = actor_logprobs(hydra, prompts, answers, role="sft")
    assert torch.equal(actor_logprobs(hydra, prompts, answers, role="actor"), sft)  # the actor starts from sft
    assert torch.equal(actor_logprobs(hydra, prompts, answers, role="reference"), sft)  # reference = base + sft
    bare = HydraModel.from_pretrained(str(peaked_model_dir), quantize=None, roles=("actor",))
    gain = measured(
        "sft log-prob gain over the base", sft - actor_logprobs(bare, prompts, answers, role="reference"), above=5
    )
    # bar 5 nats: seed 0 gives 163 (triton 163); spread 25. Far likelier than under the base.
    assert gain > 5


@pytest.mark.kernels
@learning_run_once
def test_dpo_learns_a_held_out_rule_and_exports_a_loadable_actor(tiny_model_dir, tmp_path, stat_seed, measured):
    result = lorarlhf.align(
        str(tiny_model_dir), yes_no_pairs(64, seed=stat_seed + 1), method="dpo", output_dir=tmp_path / "run",
        steps=40, lr=5e-3, batch_size=8, beta=0.5, eval_fraction=0.25, quantize=None, samples=3, seed=stat_seed,
    )  # fmt: skip
    assert result.metrics["dpo/eval_pairs"] == 16
    accuracy = measured("dpo/eval_accuracy", result.metrics["dpo/eval_accuracy"], above=0.9)
    # bar 0.9: seed 0 gives 1.0 (triton 1.0); spread over 5 seeds 0 (benchmarks/seed_spread.py)
    assert accuracy > 0.9, result.metrics
    out = result.output_dir

    # The actor as a standard PEFT adapter directory gives the Hydra actor's log-probs on a plain transformers model.
    batch = result.model.encode(["Question 7:"], ["sky mat yes"])
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, result.actor_dir)
    with torch.no_grad():
        logits = peft_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
    targets = batch.input_ids[:, 1:]
    logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, targets[..., None])[..., 0]
    expected = result.model.token_logprobs(batch, role="actor")[:, 1:]
    assert torch.allclose(logp[batch.response_mask[:, 1:]], expected[batch.response_mask[:, 1:]], atol=1e-4)

    # A reloaded run reproduces the actor; the outputs are all there.
    reloaded = HydraModel.load(out)
    prompts, responses = ["Question 3:", "Question 9:"], ["a cat yes", "blue sky no"]
    assert torch.equal(actor_logprobs(reloaded, prompts, responses), actor_logprobs(result.model, prompts, responses))
    assert (out / "training_curves.png").read_bytes().startswith(PNG_MAGIC)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [sorted(s) for s in samples] == [["after", "before", "prompt"]] * 3 and samples == result.samples
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == "dpo" and config["beta"] == 0.5 and config["steps"] == 40


@pytest.mark.kernels
def test_dpo_after_sft_measures_its_kl_from_the_sft_policy(tiny_model_dir, tmp_path):
    result = lorarlhf.align(
        str(tiny_model_dir), yes_no_pairs(32, seed=2), method="dpo", output_dir=tmp_path / "run", steps=5,
        lr=5e-3, batch_size=8, sft=True, sft_steps=10, sft_lr=1e-2, quantize=None, samples=0,
    )  # fmt: skip
    stages = [json.loads(line)["stage"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert stages == ["sft"] * 10 + ["dpo"] * 5
    hydra = result.model
    assert hydra.adapter_for("reference") == "sft"
    prompts, chosen = ["Question 40:"], ["a cat yes"]
    sft = actor_logprobs(hydra, prompts, chosen, role="sft")
    assert torch.equal(actor_logprobs(hydra, prompts, chosen, role="reference"), sft)
    assert not torch.equal(actor_logprobs(hydra, prompts, chosen, role="actor"), sft)  # DPO moved the actor
    assert HydraModel.load(result.output_dir).adapter_for("reference") == "sft"
    assert not (result.output_dir / "samples.jsonl").exists()  # samples=0


@pytest.mark.kernels
@learning_run_once
def test_grpo_with_a_reward_function_raises_the_reward(peaked_model_dir, tmp_path, stat_seed, measured):
    prompts = [f"Say something {i}:" for i in range(16)]
    result = lorarlhf.align(
        str(peaked_model_dir), prompts, method="grpo", reward_fn=lowercase, output_dir=tmp_path / "run",
        steps=30, lr=1e-2, batch_size=4, group_size=4, max_new_tokens=8, samples=2, seed=stat_seed,
    )  # fmt: skip
    gain = measured(
        "rl/reward_last - rl/reward_first",
        result.metrics["rl/reward_last"] - result.metrics["rl/reward_first"],
        above=0.3,
    )
    # bar 0.3: seed 0 gives 0.93 (triton 0.93); spread over 5 seeds 0.35 (benchmarks/seed_spread.py)
    assert gain > 0.3, result.metrics
    assert result.model.adapters == ("actor",)  # a reward function needs no reward or critic adapter
    assert [s["prompt"] for s in result.samples] == prompts[:2]


def test_rm_learns_and_trains_nothing_but_the_reward_role(tiny_model_dir, tmp_path, stat_seed, measured):
    records = [
        {"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]}
        for r in yes_no_pairs(48, stat_seed + 3)
    ]
    result = lorarlhf.align(
        str(tiny_model_dir), records, method="rm", output_dir=tmp_path / "run", steps=40, lr=5e-3,
        batch_size=8, eval_fraction=0.25, quantize=None, seed=stat_seed,
    )  # fmt: skip
    accuracy = measured("rm/eval_accuracy", result.metrics["rm/eval_accuracy"], above=0.9)
    # bar 0.9: seed 0 gives 1.0 (triton 1.0); spread over 5 seeds 0 (benchmarks/seed_spread.py)
    assert accuracy > 0.9, result.metrics
    assert result.model.adapters == ("reward",)
    assert not (result.output_dir / "samples.jsonl").exists()  # the policy did not change
    with pytest.raises(ValueError, match="merge=True merges the actor, which method='rm' does not train"):
        lorarlhf.align(str(tiny_model_dir), records, method="rm", output_dir=tmp_path / "r2", merge=True)


# --------------------------------------------------------------------------- outputs and options


@pytest.mark.kernels
def test_merge_writes_a_transformers_checkpoint_equal_to_the_actor(tiny_model_dir, tmp_path):
    result = lorarlhf.align(
        str(tiny_model_dir), yes_no_pairs(16, seed=4), method="dpo", output_dir=tmp_path / "run", steps=3,
        lr=1e-2, batch_size=8, quantize=None, merge=True, samples=0,
    )  # fmt: skip
    merged_dir = result.output_dir / "merged"
    assert (merged_dir / "model.safetensors").is_file() and not list(merged_dir.glob("adapter_*"))
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    batch = result.model.encode(["Question 2:"], ["cat sat yes"])
    with torch.no_grad():
        logits = merged(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]
    mask = batch.response_mask[:, 1:]
    expected = result.model.token_logprobs(batch, role="actor")[:, 1:]
    assert torch.allclose(logp[mask], expected[mask], atol=1e-4)


def test_unknown_and_invalid_options_are_named(tiny_model_dir, tmp_path):
    data = yes_no_pairs(4, seed=5)
    with pytest.raises(TypeError, match=r"unknown option 'sft_step' for method='dpo'; did you mean 'sft_steps'"):
        lorarlhf.align(str(tiny_model_dir), data, method="dpo", sft_step=3)
    with pytest.raises(TypeError, match=r"unknown option 'beta' for method='sft'"):
        lorarlhf.align(str(tiny_model_dir), data, method="sft", beta=0.1)
    with pytest.raises(ValueError, match=r"samples=-1 must be an integer >= 0"):
        lorarlhf.align(str(tiny_model_dir), data, method="dpo", samples=-1)
    with pytest.raises(ValueError, match=r"sft=1 must be True or False"):
        lorarlhf.align(str(tiny_model_dir), data, method="ppo", sft=1)
    with pytest.raises(ValueError, match=r"SFT got prompts only"):
        lorarlhf.align(str(tiny_model_dir), ["a prompt", "b"], method="sft", output_dir=tmp_path / "r", samples=0)
    with pytest.raises(TypeError, match=r"model must be a hub id, a local path, \"demo\" or a HydraModel"):
        lorarlhf.align(42, data, method="dpo")


# --------------------------------------------------------------------------- demonstrations


def test_demonstrations_in_every_shape(tmp_path):
    records = [
        {"prompt": "p1", "completion": "c1"},
        {"prompt": "p2", "response": "c2"},
        {"messages": [{"role": "user", "content": "p3"}, {"role": "assistant", "content": "c3"}]},
        {"prompt": "p1", "completion": "c1"},  # a duplicate, dropped
    ]
    demos = load_demonstrations(records)
    p3 = Conversation([{"role": "user", "content": "p3"}])
    assert demos == [Demonstration("p1", "c1"), Demonstration("p2", "c2"), Demonstration(p3, "c3")]
    path = tmp_path / "demos.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records[:2]) + json.dumps({"prompt": "p", "completion": 3}))
    with pytest.raises(PreferenceDataError, match=r"demos.jsonl, row 3, field 'completion': must be a string"):
        load_demonstrations(path)
    with pytest.raises(PreferenceDataError, match=r"records, row 2: fields \['chosen', 'prompt', 'rejected'\] are not"):
        load_demonstrations([records[0], {"prompt": "p", "chosen": "a", "rejected": "b"}])
    bad = {"messages": [{"role": "user", "content": "q"}]}
    with pytest.raises(PreferenceDataError, match=r"row 1, field 'messages': the last message must be the assistant"):
        load_demonstrations([bad])


def test_preference_data_gives_its_winning_answers_as_demonstrations():
    records = [
        {"prompt": "p", "chosen": "good", "rejected": "bad"},
        {"prompt": "q", "responses": ["best", "mid", "worst"], "ranks": [1, 2, 3]},
        {"prompt": "v", "a": "A", "b": "B", "votes": ["a", "a", "b"]},
    ]
    expected = [Demonstration("p", "good"), Demonstration("q", "best"), Demonstration("v", "A")]
    assert load_demonstrations(records) == expected
    assert winners(load_preferences(records)) == expected
    assert winners([PreferencePair("x", "y", "z")]) == [Demonstration("x", "y")]


@pytest.mark.kernels
def test_rl_on_prompts_reuses_the_reward_adapter_of_a_previous_rm_run(peaked_model_dir, tmp_path):
    records = yes_no_pairs(16, seed=6)
    rm = lorarlhf.align(str(peaked_model_dir), records, method="rm", output_dir=tmp_path / "rm", steps=5, quantize=None)
    reward = [p.detach().clone() for p in rm.model.trainable_parameters("reward")]
    prompts = [r["prompt"] for r in records]
    result = lorarlhf.align(
        str(tmp_path / "rm"), prompts, method="grpo", output_dir=tmp_path / "grpo", steps=2, batch_size=2,
        group_size=2, max_new_tokens=4, samples=0,
    )  # fmt: skip
    stages = {json.loads(line)["stage"] for line in (tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()}
    assert stages == {"grpo"}  # no reward-model stage: the saved one scores the rollouts
    assert set(result.model.adapters) == {"actor", "reward"}
    assert all(torch.equal(a, b) for a, b in zip(reward, result.model.trainable_parameters("reward"), strict=True))
    untrained = HydraModel.from_pretrained(str(peaked_model_dir), quantize=None)  # its reward adapter is fresh
    with pytest.raises(ValueError, match="got prompts only: pass reward_fn, preference pairs to learn a reward"):
        lorarlhf.align(untrained, prompts, method="grpo", output_dir=tmp_path / "x", steps=1)
