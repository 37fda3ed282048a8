"""`lorarlhf.align(model, data, method=...)`: the one call a user makes.

It builds (or takes) the Hydra, reads the data, runs the method's stages in order (from the table of methods,
methods/table.py), and writes the run:

    sft     SFT on demonstrations                          (also first, for dpo/ppo/grpo with sft=True)
    rm      reward model on preference pairs               (also first, for ppo/grpo on pairs without a reward_fn)
    dpo     DPO or a variant on preference pairs
    kto     KTO on unpaired thumbs up / down (preference pairs are split into them)
    orpo    ORPO, simpo SimPO on preference pairs, no reference model
    ppo     PPO on the data's prompts, rewarded by the reward role or by reward_fn
    grpo    GRPO likewise

output_dir holds config.json, metrics.jsonl (one record per step, tagged with its stage), metrics.json
(final metrics), the Hydra (hydra.json, heads, adapters/<role>/ as PEFT adapter directories, tokenizer),
samples.jsonl (completions of a few prompts before and after training), training_curves.png, with
skip_bad_rows=True bad_rows.jsonl (each skipped data row, its reason and its record), and with merge=True
the actor merged into the base as a transformers checkpoint in merged/.
"""

from __future__ import annotations

import json
import logging
import shutil
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path

import torch

from lorarlhf.data import (
    Feedback,
    PreferencePair,
    Prompts,
    is_feedback,
    load_feedback,
    load_preferences,
    load_prompts,
    open_source,
    split_eval,
    thumbs,
)
from lorarlhf.data.columns import rename
from lorarlhf.data.demonstrations import Demonstration, load_demonstrations, winners
from lorarlhf.methods.table import HELD_OUT_KEYWORD, METHODS, method_named, roles_of, stages_of
from lorarlhf.model.chat import ChatFormat, jsonable
from lorarlhf.model.export import export_merged
from lorarlhf.model.hydra import HydraModel, resolve_model
from lorarlhf.model.loading import load_tokenizer
from lorarlhf.model.memory import peak_memory_gb
from lorarlhf.model.saving import ADAPTERS, MANIFEST, load_weights
from lorarlhf.planner import MemoryPlan, UnreadableConfig, plan, settle_cpu_settings
from lorarlhf.plots import plot_training_curves, read_metrics
from lorarlhf.reporting import Reporter, check_installed
from lorarlhf.training import distributed
from lorarlhf.training.checkpoints import CHECKPOINTS, RunCheckpoints
from lorarlhf.training.rewards import check_reward_columns, reward_functions

CONFIGS = {name: method.config for name, method in METHODS.items()}  # each method's config class
SAMPLES = "samples.jsonl"
BAD_ROWS = "bad_rows.jsonl"
CURVES = "training_curves.png"
MERGED = "merged"

log = logging.getLogger("lorarlhf.pipeline")


@dataclass
class AlignResult:
    output_dir: Path
    """Where the run was written."""
    metrics: dict[str, float]
    """Final metrics, e.g. rm/eval_accuracy, rl/reward_last, peak_memory_gb."""
    model: HydraModel
    """The trained Hydra, ready to score or generate."""
    samples: list[dict] = field(default_factory=list)
    """{"prompt", "before", "after"}: completions sampled with the same seed before and after training."""

    @property
    def actor_dir(self) -> Path:
        """The actor as a PEFT adapter directory: peft.PeftModel.from_pretrained(base, result.actor_dir)."""
        return self.output_dir / ADAPTERS / "actor"


def align(model, data, *, method: str = "ppo", output_dir=None, reward_fn=None, **overrides) -> AlignResult:
    """Align `model` with the preferences in `data` by `method`; any config field can be overridden by name.

    model: hub id, local path, "demo" (the bundled tiny review model), a HydraModel, or a previous run's
    output_dir (its adapters continue; e.g. PPO on prompts with the reward adapter a method="rm" run trained).
    data: a path (.jsonl/.json/.csv/.parquet), a hub dataset id, a datasets.Dataset, or a list of dicts, of
    PreferencePairs or of prompt strings. Preference pairs for rm/dpo (and ppo/grpo without reward_fn),
    demonstrations (prompt + completion, or messages) or pairs for sft, prompts for ppo/grpo with reward_fn.
    reward_fn: for "ppo"/"grpo", fn(prompts, completions, **columns) -> list[float] (or a list of them, or of
    (fn, weight) pairs); columns are the other fields of the prompts' rows, one list each aligned with the
    prompts (e.g. `answer`), and fn(prompts, completions) works too. Without it the RL methods first train
    the reward role on the data's pairs.
    """
    entry = method_named(method)
    config = entry.config.from_overrides(method, overrides)
    if reward_fn is not None and not entry.samples:
        sampling = ", ".join(name for name, m in METHODS.items() if m.samples)
        raise ValueError(f"reward_fn is for the RL methods ({sampling}); method={method!r} does not sample responses")
    if config.merge and not entry.trains_actor:
        raise ValueError(
            f"merge=True merges the actor, which method={method!r} does not train; it trains the {entry.roles[0]} role"
        )
    check_installed(config.trackers)  # report_to= without its package fails now, not after the model loads
    distributed.init_from_environment()  # under accelerate launch / torchrun: one process per GPU
    main = distributed.is_main()  # only the first process writes files
    if output_dir is None and distributed.world_size() > 1:
        raise ValueError("running on several processes needs an explicit output_dir that all of them share")
    model = resolve_model(model, trust_remote_code=config.trust_remote_code)
    if isinstance(model, HydraModel):
        if "chat_template" in overrides:
            model.chat_template = config.chat_template
        chat = model.chat
    else:  # the data is read (and its tokens counted) before the model loads, by the same rule
        chat = ChatFormat(load_tokenizer(model, trust_remote_code=config.trust_remote_code), config.chat_template)
    reward_stage = "rm" in entry.before and reward_fn is None and not _reuses_reward(model, data, config)
    stages = stages_of(entry, config, reward_stage=reward_stage)
    inputs = _Inputs(data, chat, config, method, {stage.method.data for stage in stages})  # bad rows fail now
    if reward_fn is not None:  # a reward function asking for a column the rows lack fails before the model loads
        check_reward_columns(reward_functions(reward_fn), inputs.prompt_columns)
    prepare = partial(_prepare_output_dir, output_dir, method, resume=config.resume, overwrite=config.overwrite)
    out = prepare() if main else Path(output_dir)
    distributed.barrier()  # the others start once the first process has checked and made the directory
    if not isinstance(model, HydraModel) and distributed.local_device() is None and not torch.cuda.is_available():
        for note in settle_cpu_settings(config, method, model, explicit=set(overrides)).notes:  # planner.py
            log.info("%s", note)
    hydra = _hydra_for(model, config, roles_of(stages))
    checkpoints = _checkpoints(out, config, method, hydra)
    if hydra.device.type == "cuda" and config.gpu_memory_gb is not None:
        train_reward = "reward" in roles_of(stages)
        try:
            memory_plan = fit_to_card(config, method, hydra, train_reward, _card_gb(config.gpu_memory_gb, hydra.device))
        except UnreadableConfig as error:  # the run goes on at the user's batch sizes, unplanned
            log.warning("no memory plan for this model (%s); the batch sizes are used as given", error)
        else:
            if main:
                (out / "memory_plan.txt").write_text(str(memory_plan) + "\n")
    run_config = {"method": method, **config.to_dict()}
    if main:
        (out / "config.json").write_text(json.dumps(run_config, indent=2) + "\n")
        if config.skip_bad_rows:
            _write_bad_rows(out / BAD_ROWS, inputs.bad_rows)
    sample_prompts = inputs.sample_prompts(entry.data) if entry.trains_actor else []
    if "before" not in checkpoints.extra:  # a resumed run keeps the samples its first start took
        checkpoints.extra["before"] = _sample(hydra, sample_prompts, config)
    before = checkpoints.extra["before"]

    # TensorBoard / W&B (report_to=), main process only; closed however the run ends (a W&B run marked failed)
    stage_steps = {stage.name: stage.config.steps for stage in stages}
    with Reporter(config.trackers if main else (), out, run_config, stage_steps) as report:
        metrics: dict[str, float] = {}
        with open(out / "metrics.jsonl", "w") if main else nullcontext() as metrics_log:
            if main:
                metrics_log.writelines(json.dumps(record) + "\n" for record in checkpoints.records)  # a resumed past

            def writer(stage):
                def write(record):
                    record = {"stage": stage, **record}
                    checkpoints.records.append(record)
                    if main:
                        metrics_log.write(json.dumps(record) + "\n")
                        metrics_log.flush()
                        report.log(record)

                return write

            for stage in stages:
                if stage.name in checkpoints.completed:  # finished before the interruption: its adapters are loaded
                    metrics.update({k: v for k, v in checkpoints.completed[stage.name].items() if k != "_steps"})
                    continue
                data_of_stage, held_out = inputs.for_trainer(stage.method.data)
                train = partial(stage.method.trainer, hydra, data_of_stage, stage.config, **held_out)
                if stage.method.samples:
                    train = partial(train, reward_fn=reward_fn)
                stage_run = train(on_step=writer(stage.name), checkpoints=checkpoints.stage(stage.name))
                metrics.update(stage_run.metrics)
                checkpoints.finish_stage(stage.name, stage_run.metrics, stage.config.steps)

        samples = [
            {"prompt": jsonable(p), "before": b, "after": a}
            for p, b, a in zip(sample_prompts, before, _sample(hydra, sample_prompts, config), strict=True)
        ]
        if samples and main:
            (out / SAMPLES).write_text("".join(json.dumps(sample, ensure_ascii=False) + "\n" for sample in samples))
        skipped = sum(v for k, v in metrics.items() if k.endswith("/skipped_nonfinite_steps"))
        metrics["skipped_nonfinite_steps"] = skipped
        metrics["peak_memory_gb"] = peak_memory_gb(hydra.device)
        if main:
            (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
            report.finish(metrics)
            hydra.save(out)
            plot_training_curves(
                read_metrics(out), out / CURVES, title=f"lorarlhf {method}: {_short_name(hydra.source)}", final=metrics
            )
            if config.merge:
                export_merged(out, out / MERGED, trust_remote_code=config.trust_remote_code)
    distributed.barrier()
    return AlignResult(output_dir=out, metrics=metrics, model=hydra, samples=samples)


class _Inputs:
    """The data in the forms the run's stages need, read up front so bad data fails before the model
    loads: preference pairs and demonstrations split for evaluation by prompt, RL prompts, and the prompts
    shown before and after training."""

    def __init__(self, data, chat: ChatFormat, config, method: str, kinds: set[str]):
        self.data, self.chat, self.config, self.method = data, chat, config, method
        self.skipped = []  # the bad rows each loader skipped; one source read by two loaders skips a row twice
        self.demos = self._demonstrations() if "demonstrations" in kinds else None
        self.pairs = self._pairs() if "pairs" in kinds else None
        self.prompts = self._prompts() if "prompts" in kinds else None
        self.feedback = self._feedback() if "feedback" in kinds else None
        self.prompt_columns = self.prompts.columns if self.prompts is not None else {}

    @property
    def bad_rows(self) -> list:
        """The rows skipped (skip_bad_rows=True) by any of the loaders, each once, in row order."""
        unique = {(bad.row, bad.field, bad.reason): bad for bad in self.skipped}
        return sorted(unique.values(), key=lambda bad: bad.row)

    def for_trainer(self, kind: str) -> tuple[list, dict]:
        """A trainer's data: what it trains on, and its held-out part as the keyword the trainer takes."""
        if kind == "prompts":
            return self.prompts, {"columns": self.prompt_columns}
        train, held_out = self._split(kind)
        return train, {HELD_OUT_KEYWORD[kind]: held_out}

    def _split(self, kind: str) -> tuple[list, list] | None:
        """(train, held out) of a kind of data that holds some out; None for prompts."""
        return {"demonstrations": self.demos, "pairs": self.pairs, "feedback": self.feedback}.get(kind)

    def _feedback(self) -> tuple[list[Feedback], list[Feedback]]:
        """Unpaired labels (KTO): given as Feedback, read from prompt/completion/label rows, or split from
        preference pairs (and so from aggregated votes), each pair a thumbs up and a thumbs down."""
        if is_feedback(self.data, split=self.config.split, columns=self.config.columns):
            if isinstance(self.data, list | tuple) and isinstance(self.data[0], Feedback):
                items = list(self.data)
            else:
                options = {k: v for k, v in self.config.data_options().items() if k != "prefer_by"}
                items = load_feedback(self.data, tokenizer=self.chat, **options)
                self.skipped += items.bad_rows
        else:
            pairs = _pairs_from(self.data, self.chat, self.config, self.method)
            self.skipped += getattr(getattr(pairs, "report", None), "bad_rows", [])
            items = thumbs(pairs)
        return split_eval(items, self.config.eval_fraction, seed=self.config.seed)

    def _pairs(self) -> tuple[list[PreferencePair], list[PreferencePair]]:
        pairs = _pairs_from(self.data, self.chat, self.config, self.method)
        self.skipped += getattr(getattr(pairs, "report", None), "bad_rows", [])
        return split_eval(pairs, self.config.eval_fraction, seed=self.config.seed)

    def _demonstrations(self) -> tuple[list[Demonstration], list[Demonstration]]:
        if _is_prompt_list(self.data):
            raise ValueError("SFT got prompts only: it needs demonstrations (prompt + completion) or preference pairs")
        if _is_pair_list(self.data):
            demos = winners(self.data)
        else:
            demos = load_demonstrations(
                self.data, tokenizer=self.chat, max_length=self.config.max_length, **self.config.data_options()
            )
            self.skipped += demos.bad_rows
        return split_eval(demos, self.config.eval_fraction, seed=self.config.seed)

    def _prompts(self) -> Prompts:
        """RL prompts: given directly, taken from PreferencePairs, or read from any data source (with the other
        fields of their rows as columns)."""
        if _is_prompt_list(self.data):
            return Prompts(self.data)
        if _is_pair_list(self.data):
            return Prompts(dict.fromkeys(pair.prompt for pair in self.data))
        prompts = load_prompts(self.data, tokenizer=self.chat, **self.config.data_options())
        self.skipped += prompts.bad_rows
        return prompts

    def sample_prompts(self, kind: str) -> list[str]:
        """The first `samples` distinct prompts of the method's data, held-out ones first where it holds some
        out (a sampling method given pairs takes them from the pairs)."""
        split = self._split(kind)
        if split is None:
            return self.prompts[: self.config.samples]
        train, held_out = split
        return list(dict.fromkeys(item.prompt for item in held_out + train))[: self.config.samples]


@torch.no_grad()
def _sample(hydra: HydraModel, prompts: list[str], config) -> list[str]:
    """The actor's completions, sampled with the run's seed on a side stream of random numbers, so taking
    samples never changes the training run, and before and after draw the same random numbers."""
    if not prompts:
        return []
    devices = [hydra.device] if hydra.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(config.seed)
        return hydra.generate(
            prompts, max_new_tokens=config.max_new_tokens, role="actor", do_sample=True, temperature=config.temperature
        )


def fit_to_card(config, method: str, hydra: HydraModel, train_reward: bool, gpu_memory_gb: float) -> MemoryPlan:
    """Plan the run for a card of `gpu_memory_gb` and raise config.grad_accumulation until each micro-batch fits.

    The effective batch stays the user's: only how much of it is in memory at once changes. Under data
    parallelism the plan is for one process's share of the batch, on its own card.
    """
    entry = method_named(method)
    weights = hydra.causal_lm.get_output_embeddings().weight
    per_process = max(1, config.batch_size // distributed.world_size())  # each process holds its share
    group_size = config.samples_per_prompt if entry.samples else 1
    memory_plan = plan(
        hydra.causal_lm.config,
        method=method,
        batch_size=per_process,
        max_length=config.max_length,
        max_new_tokens=config.max_new_tokens,
        group_size=group_size,
        gpu_memory_gb=gpu_memory_gb,
        lora_r=config.lora_r,
        quantize=config.quantize,
        dtype=str(weights.dtype).removeprefix("torch."),
        gradient_checkpointing=config.gradient_checkpointing,
        reward_model=train_reward or (entry.samples and hydra.is_trained("reward")),
    )
    units = per_process  # what a process's update is cut into: prompts x samples for RL, pairs, demonstrations
    if entry.samples:
        units = max(1, per_process * group_size // config.num_minibatches)
    wanted = min(units, max(config.grad_accumulation, memory_plan.grad_accumulation))
    if entry.samples:  # micro-batches must split each minibatch evenly
        wanted = next(d for d in range(wanted, units + 1) if units % d == 0)
    if wanted != config.grad_accumulation:
        log.info("grad_accumulation %d -> %d to fit %.1f GB", config.grad_accumulation, wanted, gpu_memory_gb)
        config.grad_accumulation = wanted
    log.info("%s", memory_plan)
    if not memory_plan.fits:
        log.warning(
            "the plan does not fit %.1f GB even at one sequence per micro-batch; expect out-of-memory", gpu_memory_gb
        )
    return memory_plan


def _card_gb(setting, device) -> float:
    """The memory a run may use: the number given, or ("auto") what is free plus what this process holds."""
    if setting != "auto":
        return float(setting)
    free, _ = torch.cuda.mem_get_info(device)
    return (free + torch.cuda.memory_allocated(device)) / 1e9


def _checkpoints(out: Path, config, method: str, hydra: HydraModel) -> RunCheckpoints:
    """The run's checkpoints; with resume=True, loaded from the newest usable one (weights included)."""
    checkpoints = RunCheckpoints(
        out, config.save_every, config.keep_checkpoints, identity={"method": method, "model": hydra.source}
    )
    if not config.resume:
        return checkpoints
    found = checkpoints.latest()
    if found is None:
        raise FileNotFoundError(
            f"resume=True but {out / CHECKPOINTS} holds no usable checkpoint; "
            "start the run with save_every=N to write some, or drop resume=True"
        )
    checkpoints.check_identity(found)
    load_weights(hydra, found.path)  # every adapter and head; the interrupted stage restores the rest of its state
    checkpoints.resume_from = found
    checkpoints.records = list(found.state["records"])
    checkpoints.completed = dict(found.state["completed"])
    checkpoints.extra = dict(found.state.get("extra", {}))
    log.info("resuming %s from %s (stage %s)", out, found.path, found.state["stage"])
    return checkpoints


def _is_prompt_list(data) -> bool:
    return isinstance(data, list | tuple) and bool(data) and all(isinstance(item, str) for item in data)


def _is_pair_list(data) -> bool:
    return isinstance(data, list | tuple) and bool(data) and all(isinstance(item, PreferencePair) for item in data)


def _short_name(source: str) -> str:
    """A hub id as is; a local directory by its last two parts (".../lorarlhf/demo/model" -> "demo/model")."""
    path = Path(source)
    return "/".join(path.parts[-2:]) if path.is_absolute() else source


def _reuses_reward(model, data, config) -> bool:
    """RL without a reward_fn on prompts only, with a model whose reward adapter a previous run trained."""
    return isinstance(model, HydraModel) and model.is_trained("reward") and not _has_pairs(data, config)


def _has_pairs(data, config) -> bool:
    """Whether `data` holds preferences (not only prompts), judged from its first record."""
    if _is_pair_list(data):
        return True
    if _is_prompt_list(data):
        return False
    try:
        name, records = open_source(data, config.split)
        number, first = next(iter(records))
        first = rename(name, number, first, config.columns) if isinstance(first, dict) else first
    except (StopIteration, OSError, ValueError, TypeError):
        return True  # let the loader report what is wrong with it
    return not (isinstance(first, dict) and set(k for k, v in first.items() if v is not None) <= {"prompt"})


def _write_bad_rows(path: Path, bad_rows: list) -> None:
    """One JSON line per skipped row: its number, the field at fault, the reason and the record as read."""
    lines = [
        json.dumps({"row": bad.row, "field": bad.field, "reason": bad.reason, "record": bad.record}, default=str)
        for bad in bad_rows
    ]
    path.write_text("".join(line + "\n" for line in lines))
    if bad_rows:
        log.warning("skipped %d bad data rows; they and their reasons are in %s", len(bad_rows), path)


def _hydra_for(model, config, roles: tuple[str, ...]) -> HydraModel:
    """The Hydra with every adapter of `roles`: built, or a given one with the missing adapters added."""
    if isinstance(model, HydraModel):
        for role in roles:
            if role not in model.roles:
                model.add_role(role)
        return model
    torch.manual_seed(config.seed)  # adapter and head initialisation
    return HydraModel.from_pretrained(model, roles=roles, device=distributed.local_device(), **config.hydra_options())


def _pairs_from(data, chat: ChatFormat, config, method: str) -> list[PreferencePair]:
    if _is_pair_list(data):
        return list(data)
    if _is_prompt_list(data):
        raise ValueError(
            f"method={method!r} got prompts only: pass reward_fn, preference pairs to learn a reward, "
            "or a model whose reward adapter is trained (a HydraModel or the output_dir of a method='rm' run)"
        )
    return load_preferences(
        data, tokenizer=chat, max_length=config.max_length, **config.data_options(), **config.pair_options()
    )


def _prepare_output_dir(output_dir, method: str, *, resume: bool = False, overwrite: bool = False) -> Path:
    """A new or empty directory, or an earlier run's with resume=True (continue) or overwrite=True (replace).

    A finished or interrupted run is never replaced by accident, and a user's other files never are.
    """
    if output_dir is None:
        if resume:
            raise ValueError("resume=True needs the output_dir of the run to continue")
        output_dir = Path("lorarlhf-runs") / f"{method}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output_dir {out} is a file")
    has_run = out.is_dir() and any((out / name).exists() for name in (MANIFEST, CHECKPOINTS, "metrics.jsonl"))
    if out.is_dir() and any(out.iterdir()) and not has_run:
        raise FileExistsError(f"output_dir {out} is not empty and holds no lorarlhf run; choose a new directory")
    if resume and not has_run:
        raise FileNotFoundError(f"resume=True but output_dir {out} holds no run to continue")
    if has_run and not (resume or overwrite):
        raise FileExistsError(
            f"output_dir {out} holds an earlier run; pass resume=True to continue it, overwrite=True to replace it, "
            "or choose a new directory"
        )
    if has_run and overwrite:
        shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)  # the replaced run's checkpoints must not be resumed
    out.mkdir(parents=True, exist_ok=True)
    return out
