"""The demo end to end: votes -> pairs -> reward adapter -> PPO on the bundled model, judged by the gold rule."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from kernel_testing import learning_run_once

from lorarlhf.cli import main
from lorarlhf.demo.runner import DEMO_SETTINGS, run_demo

pytestmark = pytest.mark.kernels  # every test here reaches the kernels

# The README's table rows, and how far its numbers may sit from a fresh run's: 2 x their spread over the seeds of
# benchmarks/demo_numbers.py (3 seeds understate the range), and never under the 2-decimal rounding plus a little.
README_ROWS = {
    "positive reviews (gold rule)": ("gold_before", "gold_after"),
    "well-formed reviews of the product": ("fluent_before", "fluent_after"),
    "KL to the reference (nats per review)": (None, "kl"),
}
NUMBERS = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "demo_numbers-cpu.json"
README = Path(__file__).resolve().parent.parent / "README.md"
FLUENCY_LOSS_BAR = 0.08
KL_BAR = 3.0


def readme_numbers() -> dict[str, float]:
    """The before/after numbers of the demo table in README.md, by DemoReport field."""
    text = README.read_text()
    numbers = {}
    for row, fields in README_ROWS.items():
        found = re.search(rf"^{re.escape(row)}\s+(\S+)\s+(\S+)$", text, re.MULTILINE)
        assert found, f"README.md has no demo row {row!r}"
        for field, value in zip(fields, found.groups(), strict=True):
            if field is not None:
                numbers[field] = float(value)
    return numbers


@learning_run_once
def test_a_shortened_demo_makes_the_model_clearly_more_positive(tmp_path, stat_seed, measured):
    # No longer shortened: the demo as `lorarlhf demo` runs it (the name stays, benchmarks/seed_spread.py lists it),
    # so that the README can be checked against this run. Aligned, and not by gaming the reward adapter.
    report = run_demo(tmp_path / "demo", progress=False, seed=stat_seed)
    gold_gain = report.gold_after - report.gold_before
    fluency_loss = report.fluent_before - report.fluent_after
    measured("gold_before", report.gold_before, above=0.35, below=0.7)
    measured("gold_after", report.gold_after, above=0.85)
    measured("gold_after - gold_before", gold_gain, above=0.25)
    measured("fluent_before - fluent_after", fluency_loss, below=FLUENCY_LOSS_BAR)
    measured("kl", report.kl, above=0, below=KL_BAR)
    measured("rm_gold_accuracy", report.rm_gold_accuracy, above=0.9)
    measured("rm_eval_accuracy", report.rm_eval_accuracy, above=0.65)
    measured("kappa", report.kappa, above=0.2, below=0.7)
    # Margins at seed 0 against the spread over seeds 0-2 (benchmarks/demo_numbers.py):
    # gold_before bars 0.35/0.7: seed 0 gives 0.53; spread 0.010. The pretrained model writes both kinds of review.
    # gold_after bar 0.85: seed 0 gives 0.96; spread 0.043. gain bar 0.25: seed 0 gives 0.43; spread 0.033.
    # fluency loss bar 0.08: seed 0 gives 0.012; spread 0.032 (seed 2 loses 0.043). KL bar 3: seed 0 gives 0.77;
    # spread 0.80 (at kl_coef 0.2 it was 4.0). rm bars 0.9 and 0.65 (was 0.7): seed 0 gives 0.97 and 0.78;
    # spreads 0.016 and 0.117. kappa bars 0.2/0.7: seed 0 gives 0.37; spread 0.040.
    assert 0.35 < report.gold_before < 0.7
    assert report.gold_after > 0.85 and gold_gain > 0.25, report
    # Not gamed: the actor still writes well-formed reviews of the product, and stays near the reference.
    assert fluency_loss < FLUENCY_LOSS_BAR, report
    assert 0 < report.kl < KL_BAR, report
    assert report.rm_gold_accuracy > 0.9 and report.rm_eval_accuracy > 0.65, report
    # The annotators disagree, as people do.
    assert 0.2 < report.kappa < 0.7
    out = tmp_path / "demo"
    for name in ("votes.jsonl", "demo_report.json", "training_curves.png", "samples.jsonl", "hydra.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "demo_report.json").read_text())["gold_after"] == report.gold_after
    table = str(report)
    assert "positive reviews (gold rule)" in table and f"{report.gold_after:.2f}" in table

    # The README shows the numbers benchmarks/demo_numbers.py measured, for the demo's current settings...
    numbers = json.loads(NUMBERS.read_text())
    assert numbers["settings"] == DEMO_SETTINGS, "the demo settings changed: run benchmarks/demo_numbers.py --readme"
    shown = next(run for run in numbers["runs"] if run["seed"] == numbers["readme_seed"])
    readme = readme_numbers()
    for field, value in readme.items():
        assert value == round(shown[field], 2), f"README {field} {value} is not the script's {shown[field]:.2f}"
    # ... and a fresh run lands within the seed spread of them (the margin covers it twice over).
    for field, value in readme.items():
        margin = max(2 * numbers["spread"][field], 0.2 if field == "kl" else 0.02)
        measured(f"README {field} - run", value - getattr(report, field), above=-margin, below=margin)
        assert abs(value - getattr(report, field)) <= margin, (field, value, getattr(report, field), margin)


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
