"""The demo end to end: votes -> pairs -> reward adapter -> PPO on the bundled model, judged by the gold rule."""

from __future__ import annotations

import json
import os

import pytest

from lorarlhf.cli import main
from lorarlhf.demo.runner import run_demo


def test_a_shortened_demo_makes_the_model_clearly_more_positive(tmp_path, stat_seed, measured):
    report = run_demo(tmp_path / "demo", rm_steps=80, steps=30, eval_samples=128, progress=False, seed=stat_seed)
    gold_gain = report.gold_after - report.gold_before
    measured("gold_before", report.gold_before, above=0.35, below=0.7)
    measured("gold_after - gold_before", gold_gain, above=0.25)
    measured("kl", report.kl, above=0, below=8)
    measured("fluent_after", report.fluent_after, above=0.7)
    measured("rm_gold_accuracy", report.rm_gold_accuracy, above=0.9)
    measured("rm_eval_accuracy", report.rm_eval_accuracy, above=0.7)
    measured("kappa", report.kappa, above=0.2, below=0.7)
    # Margins at seed 0 (triton the same) against the spread over 5 seeds, from benchmarks/seed_spread.py:
    # bars 0.35/0.7: seed 0 gives 0.54; spread 0.016. The pretrained model writes both kinds of review.
    assert 0.35 < report.gold_before < 0.7
    # bar 0.25: seed 0 gives 0.45; spread 0.055.
    assert gold_gain > 0.25, report
    # bar 8: seed 0 gives 1.35; spread 3.6. Held near the reference; 0 < kl (the actor moved) is a sign check.
    assert 0 < report.kl < 8, report
    # bar 0.7 (was 0.8): seed 0 gives 0.94; spread 0.20. And still writing reviews.
    assert report.fluent_after > 0.7, report
    # bars 0.9 and 0.7: seed 0 gives 1.0 and 0.83; spreads 0.023 and 0.091.
    assert report.rm_gold_accuracy > 0.9 and report.rm_eval_accuracy > 0.7, report
    # bars 0.2/0.7: seed 0 gives 0.37; spread 0.046. The annotators disagree, as people do.
    assert 0.2 < report.kappa < 0.7
    out = tmp_path / "demo"
    for name in ("votes.jsonl", "demo_report.json", "training_curves.png", "samples.jsonl", "hydra.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "demo_report.json").read_text())["gold_after"] == report.gold_after
    table = str(report)
    assert "positive reviews (gold rule)" in table and f"{report.gold_after:.2f}" in table


@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") == "1", reason="the command line: runs once, on the PyTorch kernels"
)
def test_cli_demo_quick_prints_the_table(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--quick", "--output-dir", str(tmp_path / "demo"), "--set", "samples=0"]) == 0
    out = capsys.readouterr().out
    assert "before" in out and "after" in out and "KL to the reference" in out
    assert main(["demo", "--quick", "--set", "kl_coef=-1"]) == 2
    assert "kl_coef=-1.0 must be >= 0" in capsys.readouterr().err
