"""The training curves figure, asserted on its matplotlib objects: labelled axes, a raw/smoothed legend, RL
stages at the optimizer step the progress bar counts (a point per iteration), and the headline panel first."""

from __future__ import annotations

import json

import pytest

from lorarlhf.plots import HEADLINE, RAW, SMOOTHED, plot_run, plot_training_curves, training_curves_figure

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def sft_records(n: int = 20) -> list[dict]:
    return [{"stage": "sft", "step": s, "sft/loss": 3.0 - 0.1 * s, "sft/lr": 1e-3} for s in range(1, n + 1)]


def rm_records(n: int = 30) -> list[dict]:
    return [
        {"stage": "rm", "step": s, "rm/loss": 0.7 - 0.01 * s, "rm/accuracy": min(1.0, 0.5 + 0.02 * s)}
        for s in range(1, n + 1)
    ]


def rl_records(stage: str = "ppo", iterations: int = 12, steps_per_iteration: int = 2) -> list[dict]:
    """One record per iteration, at the optimizer step it ended on (as RLLoop.log writes them)."""
    return [
        {
            "stage": stage,
            "step": i * steps_per_iteration,
            "rl/reward_mean": 0.1 * i,
            "rl/kl": 0.01 * i,
            "rl/response_length": 10.0 + i,
        }
        for i in range(1, iterations + 1)
    ]


def curves_of(ax) -> dict[str, list]:
    """label -> x data of each line drawn on the axes."""
    return {line.get_label(): list(line.get_xdata()) for line in ax.get_lines()}


def test_every_panel_has_a_title_and_labelled_axes():
    figure = training_curves_figure(sft_records() + rm_records() + rl_records(), final={"sft/eval_loss": 1.2})
    panels = [ax for ax in figure.axes if ax.axison]
    assert len(panels) == 6  # headline (ppo reward), sft loss, rm accuracy, rm loss, ppo KL, ppo length
    for ax in panels:
        assert ax.get_title().strip()
        assert ax.get_xlabel().strip()
        assert ax.get_ylabel().strip()


def test_the_legend_names_raw_and_smoothed_curves():
    figure = training_curves_figure(rm_records())
    (legend,) = figure.legends
    labels = [text.get_text() for text in legend.get_texts()]
    assert RAW in labels and SMOOTHED in labels
    assert "raw" in RAW and "smoothed" in SMOOTHED
    # and each curve is drawn both ways, the raw one faint
    lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
    assert lines[RAW].get_alpha() < 1 and lines[SMOOTHED].get_linewidth() > lines[RAW].get_linewidth()


@pytest.mark.parametrize("stage", ["ppo", "grpo"])
def test_an_rl_stage_is_drawn_at_its_records_steps_one_point_per_iteration(stage):
    records = rl_records(stage, iterations=12, steps_per_iteration=2)
    figure = training_curves_figure(rm_records() + records)
    steps = [r["step"] for r in records]  # what the progress bar counts: 2, 4, ..., 24
    panels = [ax for ax in figure.axes if ax.get_title().startswith(stage) or ax.get_gid() == HEADLINE]
    assert len(panels) == 3  # the headline (reward), KL and response length
    for ax in panels:
        xs = curves_of(ax)
        assert xs[RAW] == steps and xs[SMOOTHED] == steps
        assert "optimizer step" in ax.get_xlabel() and "iteration" in ax.get_xlabel()


def test_the_headline_is_the_first_panel_emphasized():
    records = sft_records() + rm_records() + rl_records()
    headline = training_curves_figure(records).axes[0]
    assert headline.get_gid() == HEADLINE
    assert "reward" in headline.get_title() and headline.get_title().startswith("headline")
    assert headline.title.get_fontweight() == "bold"
    assert headline.get_position().width > training_curves_figure(records).axes[1].get_position().width
    # the method's stage's headline: accuracy for a reward model or DPO, loss (and held-out loss) for SFT
    assert "accuracy" in training_curves_figure(rm_records()).axes[0].get_title()
    sft = training_curves_figure(sft_records(), final={"sft/eval_loss": 1.25}).axes[0]
    assert "loss" in sft.get_title()
    marker = [line for line in sft.get_lines() if line.get_marker() == "D"]
    assert len(marker) == 1 and list(marker[0].get_ydata()) == [1.25] and list(marker[0].get_xdata()) == [20]


def test_the_demo_headline_is_the_gold_rule_before_and_after():
    report = {"gold_before": 0.4, "gold_after": 0.8, "fluent_before": 0.9, "fluent_after": 0.85}
    report["rm_gold_accuracy"] = 0.9
    figure = training_curves_figure(rm_records() + rl_records(), demo_report=report)
    headline = figure.axes[0]
    assert headline.get_gid() == HEADLINE and "gold" in headline.get_title()
    heights = sorted(round(bar.get_height(), 6) for bar in headline.patches)
    assert heights == [0.4, 0.8, 0.85, 0.9]
    assert headline.get_ylabel() and headline.get_xlabel()
    titles = [ax.get_title() for ax in figure.axes[1:] if ax.axison]
    assert titles == [
        "rm: pair accuracy",
        "rm: loss",
        "ppo: reward",
        "ppo: KL to the reference",
        "ppo: response length",
    ]


def test_the_figure_is_deterministic_and_nothing_to_plot_is_none(tmp_path):
    records = sft_records() + rl_records()
    first, second = training_curves_figure(records), training_curves_figure(records)
    assert [curves_of(ax) for ax in first.axes] == [curves_of(ax) for ax in second.axes]
    assert [ax.get_title() for ax in first.axes] == [ax.get_title() for ax in second.axes]
    assert training_curves_figure([{"stage": "unknown", "step": 1}]) is None
    assert plot_training_curves([], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


def test_non_finite_values_are_left_out():
    records = rm_records(10)
    records[3]["rm/accuracy"] = float("nan")
    xs = curves_of(training_curves_figure(records).axes[0])
    assert xs[RAW] == [1, 2, 3, 5, 6, 7, 8, 9, 10]


def test_plot_run_reads_the_run_directory(tmp_path):
    records = rm_records() + rl_records()
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "metrics.json").write_text(json.dumps({"rm/eval_accuracy": 0.75}))
    assert plot_run(tmp_path).read_bytes().startswith(PNG_MAGIC)
    assert (tmp_path / "training_curves.png").is_file()
