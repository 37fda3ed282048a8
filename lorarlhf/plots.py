"""Pictures worth looking at, as PNG files.

The training curves of a run: a row per stage, a panel per metric worth watching, read from the records
align() writes to metrics.jsonl, so a finished run (or one still going) can be plotted again with
`plot_training_curves(read_metrics(dir), path)`. And how annotators agree, two by two
(`plot_annotator_agreement`): the first place to look when a reward model learns little from votes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

PANELS = {  # stage -> (metric, label) in the order shown
    "sft": (("sft/loss", "loss (NLL per token)"),),
    "rm": (("rm/loss", "loss"), ("rm/accuracy", "batch accuracy")),
    "dpo": (("dpo/loss", "loss"), ("dpo/accuracy", "batch accuracy"), ("dpo/margin", "implicit reward margin")),
    "ppo": (("rl/reward_mean", "mean reward"), ("rl/kl", "KL to reference (per sequence)")),
    "grpo": (("rl/reward_mean", "mean reward"), ("rl/kl", "KL to reference (per sequence)")),
}


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of a run's metrics.jsonl."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_training_curves(records: list[dict], path: str | Path, *, title: str | None = None) -> Path | None:
    """Write the curves of every stage in `records` to `path` (PNG); None when there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")  # files only: never open a window, and work without a display
    import matplotlib.pyplot as plt

    stages = [stage for stage in dict.fromkeys(r.get("stage") for r in records) if stage in PANELS]
    if not stages:
        return None
    columns = max(len(PANELS[stage]) for stage in stages)
    figure, axes = plt.subplots(
        len(stages), columns, figsize=(4.2 * columns, 3.0 * len(stages)), squeeze=False, layout="constrained"
    )
    for row, stage in enumerate(stages):
        stage_records = [r for r in records if r.get("stage") == stage]
        for column in range(columns):
            ax = axes[row][column]
            if column >= len(PANELS[stage]):
                ax.axis("off")
                continue
            metric, label = PANELS[stage][column]
            points = [(i, r[metric]) for i, r in enumerate(stage_records, 1) if _finite(r.get(metric))]
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, color="tab:blue", alpha=0.35, linewidth=1)
                ax.plot(steps, _smooth(values), color="tab:blue", linewidth=2)
            ax.set_title(f"{stage}: {label}", fontsize=10)
            ax.set_xlabel("iteration" if stage in ("ppo", "grpo") else "step")
            ax.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    path = Path(path)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


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
