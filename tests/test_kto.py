"""KTO on the Hydra: the actor learns from unpaired thumbs up and down, around a KL reference point."""

from __future__ import annotations

import json
import logging
import random

import pytest
import torch
from kernel_testing import learning_run_once

import lorarlhf
from lorarlhf import HydraModel
from lorarlhf.data import Feedback, PreferencePair, thumbs
from lorarlhf.methods.kto import KTOConfig, check_weighting, evaluate_kto, mismatched, reference_point, train_kto

WORDS = ["the", "cat", "sat", "on", "a", "mat", "blue", "sky"]


def feedback_rows(n: int, seed: int) -> list[dict]:
    """Known rule, unpaired: a completion ending in "yes" is a thumbs up, one ending in "no" a thumbs down,
    each prompt labelled once (the trl-lib/kto-mix-14k layout)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        up = rng.random() < 0.5
        stem = " ".join(rng.choice(WORDS) for _ in range(2))
        rows.append({"prompt": f"Question {seed}-{i}:", "completion": f"{stem} {'yes' if up else 'no'}", "label": up})
    return rows


def as_feedback(rows: list[dict]) -> list[Feedback]:
    return [Feedback(r["prompt"], r["completion"], r["label"]) for r in rows]


def build(path, seed=0):
    torch.manual_seed(seed)
    return HydraModel.from_pretrained(path, device="cpu", quantize=None, lora_r=8)


@learning_run_once
@pytest.mark.kernels
def test_align_kto_learns_held_out_labels(tiny_model_dir, tmp_path, stat_seed, measured, base_checksum):
    hydra = build(tiny_model_dir, seed=stat_seed)
    held_out = as_feedback(feedback_rows(24, seed=stat_seed + 2))
    before = train_kto(hydra, held_out[:8], KTOConfig(steps=1, lr=1e-12, batch_size=8), eval_feedback=held_out,
                       progress=False)  # fmt: skip
    checksum = base_checksum(hydra)
    result = lorarlhf.align(
        hydra, feedback_rows(48, seed=stat_seed + 1), method="kto",
        output_dir=tmp_path / "run", steps=20, lr=5e-3, batch_size=8, beta=0.5, eval_fraction=0.0, samples=0,
        seed=stat_seed,
    )  # fmt: skip
    after = evaluate_kto(hydra, held_out, KTOConfig(beta=0.5, batch_size=8))
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    measured("kto/eval_accuracy", after["kto/eval_accuracy"], above=0.75)
    gap = after["kto/eval_reward_desirable"] - after["kto/eval_reward_undesirable"]
    measured("kto/eval reward gap", gap, above=0)
    # at the start the implicit reward is 0 everywhere: only the thumbs-down rows count as right
    assert before.metrics["kto/eval_reward_desirable"] == pytest.approx(0.0, abs=1e-5)
    assert before.metrics["kto/eval_accuracy"] == pytest.approx(sum(not f.label for f in held_out) / len(held_out))
    # Seeds 0-3: accuracy 1.0, 1.0, 1.0, 0.833 (a spread of 0.17 against the margin 0.25); reward gap 3.7-4.1.
    assert after["kto/eval_accuracy"] > 0.75, after
    assert gap > 0
    assert len(history) == 20 and history[-1]["kto/loss"] < history[0]["kto/loss"]
    assert result.metrics["kto/train_loss_last"] == history[-1]["kto/loss"]
    assert base_checksum(hydra) == checksum  # the reference (base, adapters off) did not move


@pytest.mark.kernels
def test_reference_point_comes_from_mismatched_pairs_clamped_at_zero(tiny_model_dir):
    rows = as_feedback(feedback_rows(4, seed=3))
    pairs = mismatched(rows)
    assert [p.prompt for p in pairs] == [r.prompt for r in rows]
    assert [p.completion for p in pairs] == [r.completion for r in rows[1:] + rows[:1]]
    hydra = build(tiny_model_dir)
    config = KTOConfig(batch_size=4)
    assert reference_point(hydra, rows, config).item() == 0.0  # an untrained actor is the reference
    train_kto(hydra, rows, KTOConfig(steps=3, lr=5e-2, batch_size=4), progress=False)
    with torch.no_grad():
        ratio = hydra.sequence_logprobs([p.prompt for p in pairs], [p.completion for p in pairs]) - (
            hydra.sequence_logprobs([p.prompt for p in pairs], [p.completion for p in pairs], role="reference")
        )
    z = reference_point(hydra, rows, config)
    assert not z.requires_grad
    assert z.item() == pytest.approx(max(0.0, ratio.mean().item()), abs=1e-5)


@pytest.mark.kernels
def test_kto_reads_pairs_and_votes_as_thumbs(tiny_model_dir, tmp_path):
    pairs = [PreferencePair("p", "good", "bad")]
    assert thumbs(pairs) == [Feedback("p", "good", True), Feedback("p", "bad", False)]
    votes = [
        {"prompt": f"Question {i}:", "a": "the cat yes", "b": "the cat no", "votes": ["a", "a", "b"]} for i in range(6)
    ]
    result = lorarlhf.align(
        str(tiny_model_dir), votes, method="kto", output_dir=tmp_path / "votes", steps=2, batch_size=4,
        eval_fraction=0.34, quantize=None, samples=0,
    )  # fmt: skip
    assert result.metrics["kto/eval_rows"] == 4.0  # 2 held-out prompts, each pair a thumbs up and a thumbs down
    pair_records = [{"prompt": f"Q{i}", "chosen": "yes", "rejected": "no"} for i in range(4)]
    result = lorarlhf.align(
        str(tiny_model_dir), pair_records, method="kto", output_dir=tmp_path / "pairs", steps=1, batch_size=4,
        eval_fraction=0.25, quantize=None, samples=0,
    )  # fmt: skip
    assert result.metrics["kto/eval_rows"] == 2.0
    # a thumbs log as `lorarlhf label` writes it: the unpaired-label layout with the annotation's own fields
    log = [
        {"prompt": f"Q{i}", "completion": "yes", "label": True, "annotators": ["ann"], "kind": "thumbs"}
        for i in range(3)
    ] + [{"prompt": "Q3", "completion": "no", "label": False, "annotators": ["ann"], "kind": "thumbs"}]
    result = lorarlhf.align(
        str(tiny_model_dir), log, method="kto", output_dir=tmp_path / "thumbs", steps=1, batch_size=4,
        eval_fraction=0.25, quantize=None, samples=0,
    )  # fmt: skip
    assert result.metrics["kto/eval_rows"] == 1.0


def test_the_desirable_undesirable_weighting_is_logged_and_warned_about(caplog):
    balanced = as_feedback([{"prompt": "p", "completion": "c", "label": i % 2 == 0} for i in range(8)])
    with caplog.at_level(logging.INFO, logger="lorarlhf.kto"):
        assert check_weighting(balanced, KTOConfig()) == pytest.approx(1.0)
    assert "= 1 (recommended [1, 1.33])" in caplog.text and not [r for r in caplog.records if r.levelname == "WARNING"]
    caplog.clear()
    skewed = balanced[:1] + [Feedback("p", "c", False)] * 9  # 1 up, 9 down
    with caplog.at_level(logging.INFO, logger="lorarlhf.kto"):
        assert check_weighting(skewed, KTOConfig()) == pytest.approx(1 / 9)
    warning = next(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "0.111" in warning and "undesirable_weight in [0.0833, 0.111]" in warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lorarlhf.kto"):
        check_weighting(skewed, KTOConfig(undesirable_weight=0.1))  # 1 / 0.9: inside the range
    assert not caplog.records


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"beta": 0}, r"beta=0 must be a positive number"),
        ({"desirable_weight": -1.0}, r"desirable_weight=-1.0 must be a positive number"),
        ({"undesirable_weight": "x"}, r"undesirable_weight='x' must be a positive number"),
        ({"sft": "yes"}, r"sft"),
        ({"batch_size": 1}, r"batch_size=1 must be at least 2 for KTO"),
    ],
)
def test_kto_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        KTOConfig(**overrides)
