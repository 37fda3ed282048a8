"""Pictures worth looking at, as PNG files.

The training curves of a run (`plot_training_curves`, or `plot_run(dir)` to redraw a finished run or one still
going), read from the records align() writes to metrics.jsonl, one per step and tagged with its stage. On top,
emphasized, the run's headline: the last stage's headline metric (reward for PPO/GRPO, pair accuracy for rm/DPO,
loss for SFT, with the held-out value from metrics.json after training), or for the demo the gold rule's share
of positive reviews before and after. Below, a row per stage, a panel per metric worth watching. Every curve is
drawn twice: faint as recorded, bold as a trailing mean. The x axis is the records' `step`: optimizer steps, the
count the progress bars show and `steps=` sets; an RL stage records one point per iteration (a rollout and its
ppo_epochs x num_minibatches updates), at the optimizer step it ended on.

And how annotators agree, two by two (`plot_annotator_agreement`): the first place to look when a reward model
learns little from votes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Panel:
    """One metric of a stage's records, and how to read it."""

    metric: str
    """The key in the stage's metrics.jsonl records."""
    title: str
    ylabel: str
    """What the number is, with its unit."""
    held_out: str | None = None
    """The final metric (metrics.json) measured on held-out data after the stage, marked at its last step."""


# Each stage's panels in the order shown; the first is the stage's headline.
PANELS = {
    "sft": (Panel("sft/loss", "loss", "NLL per response token (nats)", held_out="sft/eval_loss"),),
    "rm": (
        Panel("rm/accuracy", "pair accuracy", "share of pairs scored\nchosen > rejected", held_out="rm/eval_accuracy"),
        Panel("rm/loss", "loss", "-log sigmoid(chosen - rejected)\n(nats per pair)"),
    ),
    "dpo": (
        Panel(
            "dpo/accuracy",
            "pair accuracy",
            "share of pairs with implicit\nreward chosen > rejected",
            "dpo/eval_accuracy",
        ),
        Panel("dpo/loss", "loss", "preference loss (per pair)"),
        Panel("dpo/margin", "implicit reward margin", "chosen - rejected\nimplicit reward (nats)"),
    ),
    "ppo": (
        Panel("rl/reward_mean", "reward", "mean reward per response\n(as scored, before KL)"),
        Panel("rl/kl", "KL to the reference", "KL(actor || reference)\n(nats per response)"),
        Panel("rl/response_length", "response length", "mean response length\n(tokens)"),
    ),
}
PANELS["grpo"] = PANELS["ppo"]
RL_STAGES = ("ppo", "grpo")
COLORS = {"sft": "tab:purple", "rm": "tab:orange", "dpo": "tab:green", "ppo": "tab:blue", "grpo": "tab:blue"}
HEADLINE = "headline"  # the gid of the emphasized first panel
RAW, SMOOTHED, HELD_OUT = "raw (as recorded)", "smoothed (trailing mean, ~10% of points)", "held-out, after the stage"


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of a run's metrics.jsonl."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def x_label(stage: str) -> str:
    """The x axis of a stage's panels: the records' step, which is what its progress bar counts."""
    if stage in RL_STAGES:
        return "optimizer step (as the progress bar counts)\none point per RL iteration"
    return "optimizer step (one batch each)"


def training_curves_figure(
    records: list[dict], *, title: str | None = None, final: dict | None = None, demo_report: dict | None = None
):
    """The matplotlib Figure of the curves of every stage in `records`; None when there is nothing to plot.

    final: the run's final metrics (metrics.json), for the held-out markers; demo_report: the demo's
    demo_report.json, whose gold-rule scores become the headline. The headline axes is figure.axes[0], with
    gid "headline"."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no window, no display needed

    final = final or {}
    stages = [stage for stage in dict.fromkeys(r.get("stage") for r in records) if stage in PANELS]
    if not stages:
        return None
    rows = {stage: list(PANELS[stage]) for stage in stages}
    if demo_report is None:
        headline_stage = stages[-1]  # the method's own stage; the ones before it prepare for it
        headline = rows[headline_stage].pop(0)
    rows = {stage: panels for stage, panels in rows.items() if panels}
    columns = max([2, *(len(panels) for panels in rows.values())])
    figure = Figure(figsize=(4.6 * columns, 3.6 + 3.0 * len(rows)), layout="constrained")
    grid = figure.add_gridspec(1 + len(rows), columns, height_ratios=[1.25] + [1] * len(rows))
    top = figure.add_subplot(grid[0, :])
    top.set_gid(HEADLINE)
    if demo_report is None:
        _draw_curve(top, _stage_records(records, headline_stage), headline_stage, headline, final)
        top.set_title(f"headline - {headline_stage}: {headline.title}", fontsize=12, fontweight="bold")
    else:
        _draw_gold(top, demo_report)
    for spine in top.spines.values():
        spine.set_linewidth(2.0)
    for row, (stage, panels) in enumerate(rows.items(), 1):
        stage_records = _stage_records(records, stage)
        for column in range(columns):
            ax = figure.add_subplot(grid[row, column])
            if column >= len(panels):
                ax.axis("off")
                continue
            _draw_curve(ax, stage_records, stage, panels[column], final, demo_report)
            ax.set_title(f"{stage}: {panels[column].title}", fontsize=10)
    held_out = any(line.get_label() == HELD_OUT for ax in figure.axes for line in ax.get_lines())
    figure.legend(handles=_legend_handles(held_out), loc="outside lower center", ncols=3, frameon=False)
    if title:
        figure.suptitle(title, fontsize=13)
    return figure


def plot_training_curves(
    records: list[dict],
    path: str | Path,
    *,
    title: str | None = None,
    final: dict | None = None,
    demo_report: dict | None = None,
) -> Path | None:
    """Write the curves of every stage in `records` to `path` (PNG); None when there is nothing to plot.

    final and demo_report as in training_curves_figure."""
    figure = training_curves_figure(records, title=title, final=final, demo_report=demo_report)
    if figure is None:
        return None
    path = Path(path)
    figure.savefig(path, dpi=110)
    return path


def plot_run(run_dir: str | Path, path: str | Path | None = None, *, title: str | None = None) -> Path | None:
    """Redraw a run's curves from its directory: metrics.jsonl, with metrics.json's held-out values when the
    run has finished, and a demo's gold-rule scores when demo_report.json is there. To run_dir's
    training_curves.png unless `path` says otherwise."""
    run_dir = Path(run_dir)
    final, report = (run_dir / "metrics.json"), (run_dir / "demo_report.json")
    return plot_training_curves(
        read_metrics(run_dir),
        path or run_dir / "training_curves.png",
        title=title,
        final=json.loads(final.read_text()) if final.is_file() else None,
        demo_report=json.loads(report.read_text()) if report.is_file() else None,
    )


def _stage_records(records: list[dict], stage: str) -> list[dict]:
    return [r for r in records if r.get("stage") == stage]


def _draw_curve(ax, stage_records: list[dict], stage: str, panel: Panel, final: dict, demo_report=None) -> None:
    color = COLORS[stage]
    points = [(r["step"], r[panel.metric]) for r in stage_records if _finite(r.get(panel.metric))]
    if points:
        steps, values = zip(*points, strict=True)
        few = len(values) <= 40  # then each point is worth seeing: an RL point is a whole iteration
        ax.plot(
            steps, values, color=color, alpha=0.35, linewidth=1, marker="o" if few else None, markersize=3, label=RAW
        )
        ax.plot(steps, _smooth(values), color=color, linewidth=2.2, label=SMOOTHED)
        last = max(r["step"] for r in stage_records)
        if panel.held_out and _finite(final.get(panel.held_out)):
            _mark(ax, last, final[panel.held_out], "held-out")
        if demo_report and panel.metric == "rm/accuracy" and _finite(demo_report.get("rm_gold_accuracy")):
            _mark(ax, last, demo_report["rm_gold_accuracy"], "gold pairs", marker="s")
    else:
        ax.text(0.5, 0.5, f"no finite {panel.metric} recorded", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(x_label(stage))
    ax.set_ylabel(panel.ylabel)
    ax.grid(alpha=0.3)


def _mark(ax, step, value: float, name: str, marker: str = "D") -> None:
    """A value measured once after the stage (on held-out data), at the stage's last step."""
    ax.plot([step], [value], marker=marker, color="black", markersize=7, linestyle="none", label=HELD_OUT)
    ax.annotate(
        f"{name} {value:.2f}", (step, value), xytext=(-9, 0), textcoords="offset points", ha="right", va="center",
        bbox=dict(boxstyle="round,pad=0.2", facecolor="white", edgecolor="none", alpha=0.8),
    )  # fmt: skip


def _draw_gold(ax, report: dict) -> None:
    """The demo's headline: how the gold rule, never seen by training, judges fresh samples before and after."""
    groups = [("positive reviews\n(gold rule)", "gold"), ("well-formed reviews\nof the product", "fluent")]
    width = 0.36
    for offset, (when, name, color) in enumerate(
        (("before", "before: reference", "tab:gray"), ("after", "after: aligned actor", "tab:red"))
    ):
        values = [report[f"{key}_{when}"] for _, key in groups]
        xs = [i + (offset - 0.5) * width for i in range(len(groups))]
        bars = ax.bar(xs, values, width, color=color, label=name)
        ax.bar_label(bars, fmt="%.2f", padding=2)
    ax.set_xticks(range(len(groups)), [label for label, _ in groups])
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("share of fresh samples")
    kl = f"; KL(actor || reference) {report['kl']:.2f} nats per review" if _finite(report.get("kl")) else ""
    ax.set_xlabel(f"fresh samples of each model, judged after training{kl}")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3, axis="y")
    ax.set_title("headline - demo: what the gold rule says (never seen by training)", fontsize=12, fontweight="bold")


def _legend_handles(held_out: bool):
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color="dimgray", alpha=0.5, linewidth=1, marker="o", markersize=3, label=RAW),
        Line2D([], [], color="dimgray", linewidth=2.2, label=SMOOTHED),
    ]
    if held_out:
        handles.append(Line2D([], [], color="black", marker="D", linestyle="none", label=HELD_OUT))
    return handles


def _finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _smooth(values, window_fraction: float = 0.1) -> list[float]:
    """A trailing moving average over ~10% of the points, so the trend shows through batch noise."""
    window = max(1, round(len(values) * window_fraction))
    return [sum(values[max(0, i + 1 - window) : i + 1]) / (i + 1 - max(0, i + 1 - window)) for i in range(len(values))]


def plot_annotator_agreement(report, path: str | Path) -> Path | None:
    """Write a matrix of how often each two annotators agree (an AgreementReport's annotator_pairs) to `path`.

    None when fewer than two annotators share an item."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if not report.annotator_pairs:
        return None
    names = sorted({name for pair in report.annotator_pairs for name in (pair.first, pair.second)})
    index = {name: i for i, name in enumerate(names)}
    agreement = np.full((len(names), len(names)), np.nan)
    shared = np.zeros((len(names), len(names)), dtype=int)
    for pair in report.annotator_pairs:
        for i, j in ((index[pair.first], index[pair.second]), (index[pair.second], index[pair.first])):
            agreement[i, j], shared[i, j] = pair.agreement, pair.shared
    size = 1.6 + 0.9 * len(names)
    figure, axis = plt.subplots(figsize=(size + 1.5, size), layout="constrained")
    image = axis.imshow(np.ma.masked_invalid(agreement), vmin=0, vmax=1, cmap="viridis")
    for i in range(len(names)):
        for j in range(len(names)):
            if shared[i, j]:
                color = "black" if agreement[i, j] > 0.6 else "white"
                axis.text(j, i, f"{agreement[i, j]:.2f}\n{shared[i, j]} items", ha="center", va="center", color=color)
    labels = [name if len(name) <= 16 else name[:15] + "…" for name in names]
    axis.set_xticks(range(len(names)), labels, rotation=45, ha="right")
    axis.set_yticks(range(len(names)), labels)
    figure.colorbar(image, ax=axis, label="share of shared items with the same vote")
    kappa = "undefined" if report.fleiss_kappa is None else f"{report.fleiss_kappa:.2f}"
    axis.set_title(f"annotators' agreement (Fleiss' kappa {kappa})")
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
