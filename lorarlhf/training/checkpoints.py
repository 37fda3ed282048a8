"""Crash-safe training checkpoints and exact resume.

A run with save_every=N writes output_dir/checkpoints/step-NNNNNN/ every N optimizer steps (numbered across
the run's stages), each a complete picture of where training stands:

    hydra.json, heads.safetensors, adapters/, tokenizer/   every role's weights (lorarlhf.model.saving's layout)
    optimizer.safetensors                                  AdamW moments and step counts (tensors only)
    rng.safetensors                                        torch CPU and CUDA generator states
    state.json                                             stage and step, the trainer's loop state (data order,
                                                           KL coefficient, skip counters), the stages done and
                                                           their metrics, every metrics record so far, the
                                                           Python and NumPy generator states, optimizer settings

state.json is written last, into a temporary directory that is fsynced and renamed into place, so a
directory named step-* is complete unless a file was damaged afterwards; `latest` checks every file and
falls back to an older checkpoint, naming the one it skipped. Nothing is pickled.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from lorarlhf.model.saving import ADAPTER_WEIGHTS, ADAPTERS, HEADS, load_tensors, read_manifest
from lorarlhf.training import distributed
from lorarlhf.training.steps import rng_state_from_json, rng_state_to_json

log = logging.getLogger("lorarlhf.training.checkpoints")

CHECKPOINTS = "checkpoints"
STATE = "state.json"
OPTIMIZER = "optimizer.safetensors"
RNG = "rng.safetensors"
PREFIX = "step-"


@dataclass
class Checkpoint:
    """A complete checkpoint read back: its directory and state.json."""

    path: Path
    state: dict


@dataclass
class RunCheckpoints:
    """The checkpoints of one run: what every stage's checkpoints carry, and where they go.

    identity: what a resumed run must share with the checkpoint (method, model).
    The pipeline keeps `records` (every metrics line), `completed` (finished stages' metrics) and `extra`
    up to date; each checkpoint stores them, so a resumed run's outputs equal an uninterrupted run's.
    """

    run_dir: Path
    save_every: int
    keep: int
    identity: dict
    records: list[dict] = field(default_factory=list)
    completed: dict[str, dict] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    resume_from: Checkpoint | None = None

    @property
    def folder(self) -> Path:
        return self.run_dir / CHECKPOINTS

    def stage(self, name: str) -> StageCheckpoints:
        """The handle a trainer of stage `name` saves through and restores from."""
        steps_before = sum(int(metrics.get("_steps", 0)) for metrics in self.completed.values())
        resume = None
        if self.resume_from is not None and self.resume_from.state["stage"] == name:
            resume = self.resume_from
        return StageCheckpoints(self, name, steps_before, resume)

    def finish_stage(self, name: str, metrics: dict, steps: int) -> None:
        self.completed[name] = {**metrics, "_steps": steps}

    # ------------------------------------------------------------------ reading

    def checkpoint_dirs(self) -> list[Path]:
        """Checkpoint directories, newest first (temporary ones from an interrupted write excluded)."""
        if not self.folder.is_dir():
            return []
        found = [p for p in self.folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX)]
        return sorted(found, key=lambda p: p.name, reverse=True)

    def latest(self) -> Checkpoint | None:
        """The newest checkpoint whose every file reads back; damaged ones are skipped with a warning."""
        for path in self.checkpoint_dirs():
            try:
                return Checkpoint(path, validate(path))
            except (OSError, ValueError, KeyError) as error:
                log.warning("skipping checkpoint %s: %s", path, error)
        return None

    def check_identity(self, checkpoint: Checkpoint) -> None:
        saved = checkpoint.state.get("identity", {})
        for key, value in self.identity.items():
            if saved.get(key) != value:
                raise ValueError(
                    f"cannot resume from {checkpoint.path}: it was made with {key}={saved.get(key)!r}, "
                    f"this run has {key}={value!r}; resume with the same {key}, or start a new output_dir"
                )

    # ------------------------------------------------------------------ writing

    def write(self, step: int, stage: str, hydra, optimizer, trainer_state: dict) -> Path:
        """Write checkpoint step-<step> atomically, then keep only the newest `keep`."""
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / f"{PREFIX}{step:06d}"
        staging = self.folder / f".tmp-{final.name}-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        hydra.save(staging)
        tensors, optimizer_meta = optimizer_state(optimizer)
        save_file(tensors, staging / OPTIMIZER)
        save_file(torch_rng_tensors(), staging / RNG)
        state = {
            "identity": self.identity,
            "stage": stage,
            "step": step,
            "trainer": trainer_state,
            "optimizer": optimizer_meta,
            "completed": self.completed,
            "records": self.records,
            "extra": self.extra,
            "rng": host_rng_state(),
        }
        (staging / STATE).write_text(json.dumps(state) + "\n")
        _fsync_tree(staging)
        if final.exists():  # a checkpoint of the same step from a run that was resumed before it: replace it
            shutil.rmtree(final)
        os.replace(staging, final)
        _fsync(self.folder)
        for old in self.checkpoint_dirs()[self.keep :]:
            shutil.rmtree(old, ignore_errors=True)
        return final


@dataclass
class StageCheckpoints:
    """What a trainer sees: `restore` at its start, `due` and `save` in its loop."""

    run: RunCheckpoints
    stage: str
    steps_before: int
    resume: Checkpoint | None

    def restore(self, optimizer) -> dict | None:
        """The trainer's loop state to continue from (None: start fresh); restores optimizer and generators.

        The weights are not loaded here: the run that resumes loads every adapter and head of the
        checkpoint once, before any stage starts (finished stages need them too)."""
        if self.resume is None:
            return None
        path, state = self.resume.path, self.resume.state
        load_optimizer_state(optimizer, load_tensors(path / OPTIMIZER), state["optimizer"])
        restore_rng(state["rng"], load_tensors(path / RNG))
        log.info("resumed stage %s at step %d from %s", self.stage, state["trainer"]["step"], path)
        self.resume = None
        return state["trainer"]

    def due(self, step: int, previous: int | None = None) -> bool:
        """Whether a checkpoint falls at `step` (or between `previous` and `step`, for RL iterations)."""
        every = self.run.save_every
        if not every:
            return False
        previous = step - 1 if previous is None else previous
        return (self.steps_before + step) // every > (self.steps_before + previous) // every

    def save(self, step: int, hydra, optimizer, trainer_state: dict) -> Path | None:
        """Write the checkpoint (the first process only; the others wait for it); its path on that process."""
        path = None
        if distributed.is_main():
            path = self.run.write(
                self.steps_before + step, self.stage, hydra, optimizer, {**trainer_state, "step": step}
            )
        distributed.barrier()
        return path


def validate(path: Path) -> dict:
    """state.json of checkpoint `path`, after every file it needs has been read back whole."""
    state_path = path / STATE
    if not state_path.is_file():
        raise ValueError(f"{STATE} is missing (the write did not finish)")
    try:
        state = json.loads(state_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{STATE} is not valid JSON ({error})") from error
    manifest = read_manifest(path)
    for name in (OPTIMIZER, RNG, HEADS, *(f"{ADAPTERS}/{role}/{ADAPTER_WEIGHTS}" for role in manifest["roles"])):
        load_tensors(path / name)  # raises on a missing or truncated file
    for key in ("stage", "step", "trainer", "optimizer", "records", "completed", "rng"):
        if key not in state:
            raise ValueError(f"{STATE} lacks {key!r}")
    return state


# ---------------------------------------------------------------------- optimizer and generator states


def optimizer_state(optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer's state_dict as flat tensors (safetensors) and JSON (hyperparameters, scalar entries)."""
    state_dict = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entries in state_dict["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def load_optimizer_state(optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    groups = [{k: tuple(v) if k == "betas" else v for k, v in group.items()} for group in meta["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})  # JSON turned the betas tuple into a list


def torch_rng_tensors() -> dict[str, torch.Tensor]:
    tensors = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = state
    return tensors


def host_rng_state() -> dict:
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "python": rng_state_to_json(random.getstate()),
        "numpy": [kind, keys.tolist(), int(position), int(has_gauss), float(cached)],
    }


def restore_rng(host: dict, tensors: dict[str, torch.Tensor]) -> None:
    random.setstate(rng_state_from_json(host["python"]))
    kind, keys, position, has_gauss, cached = host["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(tensors["cpu"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])


# ---------------------------------------------------------------------- durability


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every file and directory under `root` to disk, so the rename that publishes it is durable."""
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync(Path(folder) / name)
        _fsync(Path(folder))
