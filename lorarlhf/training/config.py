"""Configuration shared by every method: the names `align(..., steps=50)` means the same way everywhere.

Each method's config (e.g. methods.reward.RewardConfig) is a dataclass extending `CommonConfig`; every field
carries its help text as a docstring right under it, `__post_init__` validates with a message naming the
allowed values, and `from_overrides` turns `align()` keyword arguments into a config, refusing unknown names.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import json
import textwrap
from dataclasses import asdict, dataclass, fields

from lorarlhf.data.columns import check_columns
from lorarlhf.data.layouts import check_prefer_by
from lorarlhf.model.chat import check_chat_template
from lorarlhf.model.loading import QUANTIZE_CHOICES
from lorarlhf.validation import check_bool, check_choice, check_int, check_number, is_number

LR_SCHEDULES = ("constant", "linear", "cosine")
TRACKERS = ("tensorboard", "wandb")  # what report_to= may name (lorarlhf.reporting writes to them)
REPORT_TO = ("none", "all", *TRACKERS)


@dataclass
class CommonConfig:
    steps: int = 200
    """Optimizer steps."""
    lr: float = 1e-4
    """AdamW learning rate of the trained adapter and head."""
    batch_size: int = 8
    """Examples per optimizer step (pairs for the reward model)."""
    seed: int = 0
    """Seeds data order, the held-out split and adapter initialisation."""
    quantize: str | None = "nf4"
    """Base model quantization: "nf4" (4-bit, bitsandbytes) or None (keep the compute dtype)."""
    lora_r: int = 16
    """LoRA rank of every role's adapter."""
    lora_alpha: float = 32
    """LoRA scale numerator (update scaled by alpha / r)."""
    max_length: int = 512
    """Longest prompt + response in tokens; longer pairs are dropped and counted when the data is loaded."""
    eval_fraction: float = 0.1
    """Share of prompts held out for evaluation (split by prompt, so no prompt is on both sides)."""
    gradient_checkpointing: bool = True
    """Recompute activations in backward instead of keeping them: less memory, ~30% more compute."""
    max_grad_norm: float = 1.0
    """Gradient clipping threshold (global L2 norm)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    lr_schedule: str = "constant"
    """Learning rate over the steps: "constant", "linear" (decay to 0) or "cosine" (decay to 0)."""
    warmup_steps: int = 0
    """Steps of linear warmup from lr/warmup_steps to lr before the schedule."""
    grad_accumulation: int = 1
    """Micro-batches each update is computed in: the same update with 1/grad_accumulation of the activation
    memory (on a GPU, gpu_memory_gb may raise it to fit the card)."""
    gpu_memory_gb: float | str | None = "auto"
    """On a GPU, plan the run's memory (lorarlhf.plan) for this many GB, or "auto" for the free memory, and
    raise grad_accumulation until it fits; None: no planning (an out-of-memory error still backs off)."""
    max_skipped_steps: int = 3
    """Steps in a row with a NaN or infinite reward, loss or gradient (each skipped, never applied) before the
    run stops with an error saying where the NaN came from."""
    samples: int = 4
    """Prompts whose completions are sampled before and after training into samples.jsonl (0: none)."""
    max_new_tokens: int = 64
    """Longest sampled response in tokens: of the samples before and after training (PPO, GRPO: of every
    rollout)."""
    temperature: float = 1.0
    """Sampling temperature of the samples before and after training (PPO, GRPO: of the rollouts, and of the
    log-probs the losses use)."""
    merge: bool = False
    """Also save the actor merged into a full-precision copy of the base, as an ordinary transformers
    checkpoint in output_dir/merged (loads the base again, unquantized, on the CPU)."""
    save_every: int = 0
    """Write a checkpoint (weights, optimizer, generators, data position) to output_dir/checkpoints every
    this many optimizer steps, counted across the run's stages (0: never)."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep."""
    resume: bool = False
    """Continue the run in output_dir from its newest complete checkpoint, exactly where it stopped."""
    overwrite: bool = False
    """Allow replacing an earlier run in output_dir (otherwise refused, so no finished run is lost)."""
    trust_remote_code: bool = False
    """Run the model repository's own Python code when loading it (read it first: it runs as you)."""
    chat_template: str = "auto"
    """How prompts become tokens: "auto" (the model's chat template when its tokenizer has one: a string prompt
    is a user message), "never" (plain text: BOS + prompt, response + EOS) or a Jinja chat template string."""
    split: str = "train"
    """The split read when the data is a datasets.DatasetDict or a hub id (e.g. "train_prefs")."""
    columns: dict[str, str] | None = None
    """Our field names -> the data's, for a layout lorarlhf does not read as is, e.g. {"prompt": "question",
    "chosen": "good", "rejected": "bad"} (on the command line: --set 'columns={"prompt": "question"}')."""
    prefer_by: str | None = None
    """What orders a hub layout's responses: "fine-grained_score" (UltraFeedback), "safer_response_id"
    (PKU-SafeRLHF) or a HelpSteer attribute; None: each layout's default (overall_score, better_response_id,
    helpfulness)."""
    skip_bad_rows: bool = False
    """Skip bad data rows, counted and written with their reasons to output_dir/bad_rows.jsonl, instead of
    stopping at the first one."""
    report_to: str | list[str] = "none"
    """Also send every metrics.jsonl record to trackers: "none", "tensorboard" (event files in
    output_dir/tensorboard), "wandb" (a Weights & Biases run; WANDB_PROJECT, WANDB_NAME, WANDB_MODE=offline etc.
    as usual), "all", or a list of them (on the command line comma-separated: --set report_to=tensorboard,wandb).
    Needs the tracker's package: pip install "lorarlhf[tracking]"."""

    def __post_init__(self):
        positive = ("steps", "batch_size", "lora_r", "max_length", "max_new_tokens", "grad_accumulation")
        for name in (*positive, "keep_checkpoints", "max_skipped_steps"):
            check_int(name, getattr(self, name))
        check_int("seed", self.seed, minimum=None)
        for name in ("lr", "lora_alpha", "max_grad_norm"):
            check_number(name, getattr(self, name), low=0, open_low=True)
        if not is_number(self.temperature) or self.temperature <= 0:  # sampled, and a softmax's divisor
            raise ValueError(
                f"temperature={self.temperature!r} must be > 0 for RL (log-probs need a softmax) and samples"
            )
        if isinstance(self.quantize, str) and self.quantize.lower() == "none":
            self.quantize = None
        check_choice("quantize", self.quantize, QUANTIZE_CHOICES)
        check_number("eval_fraction", self.eval_fraction, low=0, high=1, open_high=True)
        check_number("weight_decay", self.weight_decay, low=0)
        check_int("samples", self.samples, minimum=0)
        for name in ("gradient_checkpointing", "merge", "resume", "overwrite", "trust_remote_code"):
            check_bool(name, getattr(self, name))
        check_int("save_every", self.save_every, minimum=0, hint=" (0: no checkpoints)")
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_int("warmup_steps", self.warmup_steps, minimum=0)
        card = self.gpu_memory_gb
        if card is not None and card != "auto" and (not is_number(card) or card <= 0):
            raise ValueError(f"gpu_memory_gb={self.gpu_memory_gb!r} must be 'auto', None or a positive number")
        check_chat_template(self.chat_template)
        if not isinstance(self.split, str) or not self.split:
            raise ValueError(f"split={self.split!r} must be a split name, e.g. 'train' or 'train_prefs'")
        check_columns(self.columns)
        check_prefer_by(self.prefer_by)
        check_bool("skip_bad_rows", self.skip_bad_rows)
        trackers_of(self.report_to)
        if self.resume and self.overwrite:
            raise ValueError("resume=True continues the run in output_dir and overwrite=True replaces it; pick one")

    @classmethod
    def from_overrides(cls, method: str, overrides: dict):
        """Build the config from keyword overrides; an unknown name is a TypeError naming close matches."""
        names = [f.name for f in fields(cls)]
        for name in overrides:
            if name not in names:
                raise unknown_option(name, names, method)
        return cls(**overrides)

    @property
    def trackers(self) -> tuple[str, ...]:
        """The trackers report_to names, each once, in order."""
        return trackers_of(self.report_to)

    def to_dict(self) -> dict:
        return asdict(self)

    def hydra_options(self) -> dict:
        """How HydraModel.from_pretrained builds the base and adapters for this run."""
        return dict(
            quantize=self.quantize,
            lora_r=self.lora_r,
            lora_alpha=self.lora_alpha,
            gradient_checkpointing=self.gradient_checkpointing,
            trust_remote_code=self.trust_remote_code,
            chat_template=self.chat_template,
        )

    def data_options(self) -> dict:
        """How every loader (pairs, demonstrations, prompts) reads this run's data."""
        return dict(split=self.split, columns=self.columns, prefer_by=self.prefer_by, skip_bad_rows=self.skip_bad_rows)

    def pair_options(self) -> dict:
        """How load_preferences reads this run's preference data (a method with reading options adds them)."""
        return {}


def trackers_of(report_to) -> tuple[str, ...]:
    """The trackers `report_to` names ("all": every one, "none": none; a string may list several, comma-separated),
    each once, in order; anything else is a ValueError naming the allowed values."""
    names = report_to.split(",") if isinstance(report_to, str) else report_to
    if not isinstance(names, list | tuple):
        names = [report_to]  # refused below, as given
    chosen = []
    for name in names:
        name = name.strip().lower() if isinstance(name, str) else name
        if name not in REPORT_TO:
            raise ValueError(
                f"report_to={report_to!r} is not supported; choose one of {REPORT_TO} "
                "or a list of them, e.g. ['tensorboard', 'wandb'] (--set report_to=tensorboard,wandb)"
            )
        chosen += TRACKERS if name == "all" else [] if name == "none" else [name]
    return tuple(dict.fromkeys(chosen))


# --------------------------------------------------------------------------- options as text (the CLI's --set)

_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def option_docs(cls) -> dict[str, str]:
    """Each field's help text: the docstring written under it in its dataclass (the nearest class wins)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, following in zip(body, body[1:], strict=False):
            named = isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
            if named and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
                docs[node.target.id] = " ".join(str(following.value.value).split())
    return docs


def parse_option(cls, method: str, name: str, text: str):
    """`text` as the value of option `name` of `method`'s config class `cls`, by the field's type."""
    types = {f.name: str(f.type) for f in fields(cls)}
    if name not in types:
        raise unknown_option(name, list(types), method)
    return parse_typed(name, types[name], text)


def parse_typed(name: str, annotation: str, text: str):
    """`text` as a value of the type `annotation` names ("int", "float | None", "dict[str, str]", ...): the
    field's annotation as written, which the command line reads from the source without importing it."""
    kinds = [kind.strip() for kind in annotation.split("|")]
    if "None" in kinds and text.strip().lower() in ("none", "null"):
        return None
    for kind in kinds:
        if kind == "bool":
            if text.lower() in _TRUE + _FALSE:
                return text.lower() in _TRUE
        elif kind == "int":
            try:
                return int(text)
            except ValueError:
                pass
        elif kind == "float":
            try:
                return float(text)
            except ValueError:
                pass
        elif kind == "str":
            return text
        elif kind.startswith("dict"):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    words = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string", "None": "none"}
    words["dict[str, str]"] = 'a JSON object, e.g. {"prompt": "question"}'
    allowed = " or ".join(words.get(kind, kind) for kind in kinds)
    raise ValueError(f"{name}={text!r} is not valid: {name} takes {allowed}")


def unknown_option(name: str, names: list[str], method: str) -> TypeError:
    """The error for an option `method`'s config does not have, naming its close matches and every option."""
    close = difflib.get_close_matches(name, names, n=3)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    return TypeError(
        f"align() got an unknown option {name!r} for method={method!r}{hint} Valid options: {', '.join(sorted(names))}"
    )
