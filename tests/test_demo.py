"""The demo end to end: votes -> pairs -> reward adapter -> PPO on the bundled model, judged by the gold rule."""

from __future__ import annotations

import json
import os

import pytest

from lorarlhf.cli import main
from lorarlhf.demo.runner import run_demo


def test_a_shortened_demo_makes_the_model_clearly_more_positive(tmp_path):
    report = run_demo(tmp_path / "demo", rm_steps=80, steps=30, eval_samples=128, progress=False)
    assert 0.35 < report.gold_before < 0.7  # the pretrained model writes both kinds of review
    assert report.gold_after > report.gold_before + 0.25, report
    assert 0 < report.kl < 8, report  # held near the reference
    assert report.fluent_after > 0.8, report  # and still writing reviews
    assert report.rm_gold_accuracy > 0.9 and report.rm_eval_accuracy > 0.7, report
    assert 0.2 < report.kappa < 0.7  # the annotators disagree, as people do
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
