"""Trackers for `report_to=`: every metrics.jsonl record also goes to TensorBoard and/or Weights & Biases.

The run's own files stay the record of truth; the trackers are views of the same numbers, as TRL's
`report_to` gives them:

    tensorboard   torch.utils.tensorboard event files in output_dir/tensorboard, one scalar per metric, tagged
                  with the metric's own name ("rm/loss", "dpo/reward_margin", "rl/kl": the prefix groups them)
    wandb         a W&B run in output_dir/wandb (or $WANDB_DIR), its config the run's config.json, one
                  wandb.log per record, the final metrics (metrics.json) as its summary; project, name, entity,
                  mode (WANDB_MODE=offline) and the rest come from W&B's own environment variables, so lorarlhf
                  never decides whether a run goes online

Both share one step axis across the run's stages: a record's step is counted from the start of the run, so
`dpo` after `sft` (steps=10) logs its step 1 at 11, and the stages follow one another instead of overlaying.
Stage k's steps are offset by the configured steps of the stages before it, the count checkpoints use
(save_every), so a resumed run continues on the same axis. Records a resumed run replays from its checkpoint
were reported by the attempt that made them and are not sent again.

Only the main process reports; the packages are imported when a run asks for them, never by `import lorarlhf`.
"""

from __future__ import annotations

import importlib
import numbers
import os
from pathlib import Path

TENSORBOARD = "tensorboard"  # output_dir/tensorboard: the event files
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}  # tracker -> the package it needs


def check_installed(trackers) -> None:
    """Raise an ImportError saying what to install if a tracker's package is missing (called before the model
    loads, so a run never trains for an hour to fail at its first record)."""
    for tracker in trackers:
        try:
            importlib.import_module(PACKAGES[tracker])
        except ImportError as error:
            raise ImportError(
                f"report_to={tracker!r} needs the {PACKAGES[tracker]} package: pip install {PACKAGES[tracker]} "
                '(or pip install "lorarlhf[tracking]" for every tracker)'
            ) from error


class Reporter:
    """The run's trackers: `log` each record as it is written, `finish` with the final metrics, `close` always.

    A context manager: leaving it closes every tracker, a W&B run marked failed when an exception left it.
    stage_steps: each stage's configured steps, in the order the stages run (the shared step axis).
    """

    def __init__(self, trackers, output_dir: Path, config: dict, stage_steps: dict[str, int]):
        self.first_step, before = {}, 0
        for stage, steps in stage_steps.items():
            self.first_step[stage] = before
            before += steps
        self.tensorboard = self.wandb = None
        try:
            if "tensorboard" in trackers:
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(log_dir=str(Path(output_dir) / TENSORBOARD))
            if "wandb" in trackers:
                import wandb

                self.wandb = wandb.init(
                    project=os.environ.get("WANDB_PROJECT", "lorarlhf"),  # wandb's own default is "uncategorized"
                    name=os.environ.get("WANDB_NAME", Path(output_dir).name),
                    dir=os.environ.get("WANDB_DIR", str(output_dir)),
                    config=config,
                )
        except BaseException:
            self.close(failed=True)
            raise

    def step_of(self, record: dict) -> int:
        """The record's step on the run's axis: its stage's first step + its step within the stage."""
        return self.first_step.get(record["stage"], 0) + int(record["step"])

    def log(self, record: dict) -> None:
        """One metrics.jsonl record ({"stage", "step", metric: value, ...}): its numbers, at its run step."""
        step = self.step_of(record)
        values = {
            name: float(value)
            for name, value in record.items()
            if name not in ("stage", "step") and isinstance(value, numbers.Real) and not isinstance(value, bool)
        }
        if self.tensorboard is not None:
            for name, value in values.items():
                self.tensorboard.add_scalar(name, value, global_step=step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def finish(self, metrics: dict[str, float]) -> None:
        """The final metrics: the W&B run's summary (TensorBoard has the last step of every curve already)."""
        if self.wandb is not None:
            self.wandb.summary.update(metrics)

    def close(self, failed: bool = False) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
        if self.wandb is not None:
            run, self.wandb = self.wandb, None
            run.finish(exit_code=1 if failed else 0)

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.close(failed=kind is not None)
