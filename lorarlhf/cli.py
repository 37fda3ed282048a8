"""The `lorarlhf` command."""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import logging
import os
import sys
import textwrap
from pathlib import Path

from lorarlhf.methods.table import METHODS
from lorarlhf.model.chat import plain_text
from lorarlhf.model.quiet import VERBOSE_ENV, is_verbose


def _info(args) -> int:
    """Versions and the device a run would use: the first thing to paste into a bug report."""
    import platform
    from importlib import metadata

    import torch

    report = {"python": platform.python_version()}
    for package in ("lorarlhf", "torch", "transformers", "peft", "bitsandbytes", "triton", "safetensors", "gradio"):
        try:
            report[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            report[package] = None
    report["cuda"] = torch.cuda.is_available()
    if report["cuda"]:
        report["gpu"] = torch.cuda.get_device_name(0)
        from lorarlhf.model.loading import resolve_dtype

        # The loader's rule (native bf16 from compute capability 8): a T4 emulates bf16 and runs fp16.
        report["dtype"] = str(resolve_dtype(None, torch.device("cuda", 0))).removeprefix("torch.")
        report["bf16"] = report["dtype"] == "bfloat16"
    report["nf4"] = report["bitsandbytes"] is not None
    for key, value in report.items():
        print(f"{key:<13} {value}")
    print("(lorarlhf doctor checks more: the kernels, 4-bit and memory on this machine)")
    return 0


def _doctor(args) -> int:
    """Versions, what a run would use and why, and (on a GPU, or with --full) whether the numbers come out
    right: 1 when a check failed."""
    from lorarlhf.doctor import format_report, run_checks

    report = run_checks(full=True if args.full else None)
    print(json.dumps(report, indent=2, allow_nan=False) if args.json else format_report(report))
    return 0 if report["ok"] else 1


def _tiny_model(args) -> int:
    from lorarlhf.model.tiny import save_tiny_model

    out = Path(args.out_dir)
    if out.exists() and any(out.iterdir()):
        print(f"error: {out} exists and is not empty; choose a new directory", file=sys.stderr)
        return 2
    save_tiny_model(out, seed=args.seed)
    print(f"wrote a tiny Llama and its tokenizer to {out}")
    return 0


def _score(args) -> int:
    import torch

    from lorarlhf.model.hydra import HydraModel
    from lorarlhf.model.saving import MANIFEST

    source = Path(args.model)
    if (source / MANIFEST).is_file():
        hydra = HydraModel.load(source, device=args.device)
    else:
        hydra = HydraModel.from_pretrained(args.model, device=args.device, **_quantize_given(args))
    with torch.no_grad():
        reward = hydra.score([args.prompt], [args.response]).item()
        logprob = hydra.sequence_logprobs([args.prompt], [args.response], role="actor").item()
    print(json.dumps({"reward": reward, "actor_logprob": logprob}))
    return 0


def _align(args) -> int:
    # The user's mistakes first, each answered at once: the model code (seconds to import) and the hub
    # (minutes of retries when it is out of reach) come after.
    if args.method not in METHODS:
        raise ValueError(f"--method {args.method!r} is not a method; choose one of {tuple(METHODS)}")
    _check_local_data(args.data, METHODS[args.method].data)
    from lorarlhf.model.loading import check_source, model_source

    check_source(model_source(args.model))  # a missing local model directory, named
    reward_fn = _import_reward_fn(args.reward_fn) if args.reward_fn else None
    overrides = _overrides(args.method, args.set or [])
    overrides.update({flag: True for flag in ("resume", "overwrite") if getattr(args, flag)})
    from lorarlhf.pipeline import align

    result = align(
        args.model, args.data, method=args.method, output_dir=args.output_dir, reward_fn=reward_fn, **overrides
    )
    from lorarlhf.training import distributed

    if not distributed.is_main():  # under a launcher, the first process reports
        return 0
    print(f"\nwrote {result.output_dir}")
    for name, value in result.metrics.items():
        print(f"  {name:<28} {value:.4g}")
    return 0


DATA_FILE_NAMES = {
    "pairs": "preference",
    "demonstrations": "demonstration",
    "prompts": "prompt",
    "feedback": "thumbs-up/down (or preference)",
}
"""What a missing file of each kind of data (methods/table.py DATA_KINDS) is called in the error."""


def _check_local_data(data: str, kind: str) -> None:
    """A data argument meant as a local file (a data-file extension, or a path: ./x, /x, ~/x, a/b/c) that
    does not exist is an error now, before the model is loaded; anything else may be a hub dataset id."""
    from lorarlhf.data import SUPPORTED_EXTENSIONS

    if Path(data).expanduser().exists():
        return
    as_path = data.lower().endswith(SUPPORTED_EXTENSIONS) or data.startswith((".", "/", "~"))
    if as_path or data.count("/") > 1 or "\\" in data:
        raise FileNotFoundError(f"{DATA_FILE_NAMES[kind]} data file not found: {data}")


def _overrides(method: str, assignments: list[str]) -> dict:
    """--set key=value pairs as typed config values; a malformed pair or an unknown key is a clear error.

    The names and types come from the config's source where it can be read, so a typo is answered before
    torch is imported."""
    from lorarlhf.training.config import parse_typed, unknown_option

    types = config_types(METHODS[method].config_path)
    overrides = {}
    for assignment in assignments:
        name, sep, text = assignment.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"--set {assignment!r} must look like key=value, e.g. --set steps=100")
        if name not in types:
            raise unknown_option(name, list(types), method)
        overrides[name] = parse_typed(name, types[name], text.strip())
    return overrides


def _given(args, *names: str) -> dict:
    """The options among `names` given on the command line. The others are not passed, so they keep the
    defaults of what receives them (a config dataclass or a function): no default is written twice."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _quantize_given(args) -> dict:
    """--quantize as the keyword it sets ("none": keep the compute dtype), when given."""
    return {} if args.quantize is None else {"quantize": None if args.quantize == "none" else args.quantize}


def _config_values(args, config_cls, method: str, names: tuple[str, ...]) -> dict:
    """Config options given as flags, typed by their field; the others at the config's defaults. A flag
    the method's config does not have is the error `align()` gives for it."""
    from dataclasses import fields

    from lorarlhf.training.config import parse_option

    defaults = {f.name: f.default for f in fields(config_cls)}
    given = _given(args, *names)
    wanted = [name for name in names if name in defaults or name in given]
    return {name: parse_option(config_cls, method, name, given[name]) if name in given else defaults[name]
            for name in wanted}  # fmt: skip


def _import_reward_fn(spec: str):
    """A reward function named as file.py:name or package.module:name."""
    import importlib
    import importlib.util

    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise ValueError(f"--reward-fn {spec!r} must be file.py:function or module:function")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise FileNotFoundError(f"--reward-fn: file {target} not found")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as error:
            raise ValueError(f"--reward-fn: cannot import module {target!r} ({error})") from error
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"--reward-fn: {target} has no function {name!r}")
    return fn


def _options(args) -> int:
    """Every option of a method, its default and what it does: the same dataclass align() validates with."""
    options = config_options(METHODS[args.method].config_path)
    print(f"options of --method {args.method} (lorarlhf align ... --set name=value):\n")
    for name, (default, doc) in sorted(options.items()):
        print(f"  {name} = {default!r}")
        print(textwrap.fill(doc, width=100, initial_indent=" " * 6, subsequent_indent=" " * 6))
    return 0


def config_options(path: str) -> dict[str, tuple[object, str]]:
    """name -> (default, help text) of every field of the config dataclass "module:Class" (None: no default).

    Read from the source when every default there is a literal, since importing a method's module imports
    torch and its trainer (seconds); otherwise from the imported class. tests/test_cli.py checks that the
    two agree for every method.
    """
    static = _source_fields(path)
    if static is not None:
        return {name: (default, doc) for name, (_, default, doc) in static.items()}
    from dataclasses import MISSING, fields

    from lorarlhf.methods.table import resolve
    from lorarlhf.training.config import option_docs

    config_cls = resolve(path)
    docs = option_docs(config_cls)
    return {f.name: (None if f.default is MISSING else f.default, docs.get(f.name, "")) for f in fields(config_cls)}


def _module_file(module: str) -> Path | None:
    """The .py file of a lorarlhf module, found without importing it or its packages (a package's
    __init__ may import torch or gradio)."""
    top, *parts = module.split(".")
    spec = importlib.util.find_spec(top)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        base = Path(folder).joinpath(*parts)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def config_types(path: str) -> dict[str, str]:
    """name -> the annotation of every field of the config dataclass "module:Class", as written ("int",
    "float | None"); read from the source when config_options can be, else from the imported class."""
    static = _source_fields(path)
    if static is not None:
        return {name: annotation for name, (annotation, _, _) in static.items()}
    from dataclasses import fields

    from lorarlhf.methods.table import resolve

    return {f.name: str(f.type) for f in fields(resolve(path))}


def _source_fields(path: str) -> dict[str, tuple[str, object, str]] | None:
    """name -> (annotation, default, help text), read from the class's source and its bases' (resolved
    through the module's `from X import Name` lines); None where that cannot be done exactly (a default that
    is not a literal, a base defined elsewhere)."""
    module, _, name = path.partition(":")
    source = _module_file(module)
    if source is None:
        return None
    tree = ast.parse(source.read_text(encoding="utf-8"))
    imported = {
        alias.asname or alias.name: f"{node.module}:{alias.name}"
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
        for alias in node.names
    }
    node = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name), None)
    if node is None:
        return None
    options: dict[str, tuple[str, object, str]] = {}
    for base in reversed(node.bases):  # the first base's fields win, as in the dataclass's MRO
        if not isinstance(base, ast.Name):
            return None
        base_path = imported.get(base.id) or (f"{module}:{base.id}" if base.id != "object" else None)
        inherited = _source_fields(base_path) if base_path else {}
        if inherited is None:
            return None
        options.update(inherited)
    body = node.body
    for item, following in zip(body, [*body[1:], None], strict=True):
        if not (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)):
            continue
        if "ClassVar" in ast.unparse(item.annotation):
            continue
        try:
            default = None if item.value is None else ast.literal_eval(item.value)
        except ValueError:
            return None  # field(...), a named constant: only the class knows
        documented = isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
        inherited_doc = options.get(item.target.id, ("", None, ""))[2]
        doc = " ".join(str(following.value.value).split()) if documented else inherited_doc
        options[item.target.id] = (ast.unparse(item.annotation), default, doc)
    return options


def _demo(args) -> int:
    from lorarlhf.demo.runner import DemoReport, run_demo

    overrides = _overrides("ppo", args.set or [])  # the demo's options are PPO's
    report: DemoReport = run_demo(args.output_dir, quick=args.quick, seed=args.seed, **overrides)
    print()
    print(report)
    return 0


def _plan(args) -> int:
    from lorarlhf.methods.table import method_named
    from lorarlhf.planner import plan

    method = method_named(args.method)
    options = _config_values(args, method.config, method.name, (*PLANNED_OPTIONS, "quantize"))
    if args.no_gradient_checkpointing:
        options["gradient_checkpointing"] = False
    options.update(_given(args, "gpu_memory_gb", "dtype"))
    from lorarlhf.model.loading import model_source

    print(plan(model_source(args.model), method=method.name, reward_model=not args.reward_fn, **options))
    return 0


def _sample(args) -> int:
    from lorarlhf.labelling import sample_candidates
    from lorarlhf.training.rollout import SamplingConfig

    sampling = SamplingConfig(**_given(args, "max_new_tokens", "temperature", "top_p", "top_k"))
    report = sample_candidates(
        args.model,
        args.prompts,
        args.out,
        sampling=sampling,
        trust_remote_code=args.trust_remote_code,
        overwrite=args.overwrite,
        **_given(args, "n", "seed", "batch_size"),
        **_quantize_given(args),
    )
    print(f"{args.out}: {report}")
    print(f"next: lorarlhf label {args.out} --annotator YOUR_NAME --out votes.jsonl")
    return 0


def _label(args) -> int:
    from lorarlhf.labelling import label

    server = label(
        args.candidates,
        annotator=args.annotator,
        out=args.out,
        thumbs=args.thumbs,
        guidelines=args.guidelines,
        host=args.host,
        port=args.port,
        open_browser=args.open,
        shuffle=not args.no_shuffle,
        allow_hosts=tuple(args.allow_host or ()),
    )
    session = server.session
    print(f"labelling {args.candidates} as {session.annotator}: {session.done} of {session.total} done")
    where = server.session.log.path
    print(f"open {server.url} ; every judgement is saved to {where} as it is made; Ctrl-C stops", flush=True)
    server.wait()  # until Ctrl-C
    print(f"\n{session.done} of {session.total} labelled; next: lorarlhf agreement {args.out}")
    return 0


def _agreement(args) -> int:
    from lorarlhf.data import vote_agreement

    if args.plot and Path(args.plot).exists() and not args.overwrite:
        raise FileExistsError(f"{args.plot} exists; choose another --plot, or add --overwrite to replace it")
    report = vote_agreement(args.votes)
    print(format_agreement(args.votes, report))
    if args.plot:
        from lorarlhf.plots import plot_annotator_agreement

        written = plot_annotator_agreement(report, args.plot)
        print(f"\nwrote {written}" if written else "\nno plot: no two named annotators voted on a common item")
    return 0


def format_agreement(source, report) -> str:
    """The agreement report as a terminal page; model text is quoted, so no control character reaches it."""
    who = f" from {report.annotators} annotators" if report.annotators is not None else ""
    lines = [f"{source}: {report.items} items, {report.votes} votes{who}"]
    if report.mean_pairwise_agreement is None:
        lines.append("no item has 2 or more votes yet: agreement needs the same item labelled twice")
    else:
        kappa = "undefined (every vote has one label)"
        if report.fleiss_kappa is not None:
            kappa = f"{report.fleiss_kappa:.2f} ({_kappa_words(report.fleiss_kappa)})"
        lines.append(
            f"Fleiss' kappa {kappa}; pairwise agreement {report.mean_pairwise_agreement:.2f} "
            f"over {report.rated_items} items with 2 or more votes"
        )
    if report.per_annotator:
        lines += ["", f"  {'annotator':<24} {'votes':>6}  agrees with others"]
        for person in report.per_annotator:
            agrees = "-" if person.agreement is None else f"{person.agreement:.2f} of {person.compared}"
            name = person.name if person.name.isprintable() else _quoted(person.name, 24)
            lines.append(f"  {name[:24]:<24} {person.votes:>6}  {agrees}")
    if report.most_disputed:
        lines += ["", "most disputed (least agreement first):"]
        for item in report.most_disputed:
            votes = " / ".join(f"{label} {n}" for label, n in item.votes.items())
            lines.append(f"  row {item.row}: {votes} (agreement {item.agreement:.2f})")
            for name, text in (("prompt", plain_text(item.prompt)), ("a", item.a), ("b", item.b)):
                lines.append(f"    {name:<6} {_quoted(text, 100)}")
    return "\n".join(lines)


def _kappa_words(kappa: float) -> str:
    """Landis & Koch's (1977) names for kappa bands."""
    bands = ((0.0, "poor"), (0.2, "slight"), (0.4, "fair"), (0.6, "moderate"), (0.8, "substantial"))
    return next((words for top, words in bands if kappa <= top), "almost perfect")


def _quoted(text: str, width: int) -> str:
    # Escaped like a Python string where not printable: no control or bidi character reaches the terminal.
    quoted = '"' + "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text) + '"'
    return quoted if len(quoted) <= width else quoted[: width - 4] + '..."'


QUANTIZE_FLAG = ("nf4", "none")
# `lorarlhf plan` options that are config fields of the planned method, and what they count.
PLANNED_OPTIONS = {
    "batch_size": "prompts (the sampling methods), pairs (rm, dpo...), rows (kto) or demonstrations (sft) per step",
    "max_length": "prompt + response tokens",
    "max_new_tokens": "sampled tokens (the sampling methods)",
    "group_size": "samples per prompt (grpo, rloo, reinforce_pp, online_dpo)",
    "lora_r": "LoRA rank",
}


class _DefaultsHelp(argparse.HelpFormatter):
    """Shows each option's default, read from where it is defined (a config dataclass, a function's
    signature) only when help is printed: `lorarlhf` starts without loading model code, and no default is
    written twice."""

    def _get_help_string(self, action):
        default_of = getattr(action, "default_of", None)
        return f"{action.help} (default: {default_of()})" if default_of else action.help


def _flag(parser, flag: str, default_of, **options) -> None:
    """An option whose absence means: the default of what receives it (`default_of()` tells it, for help)."""
    action = parser.add_argument(flag, default=None, **options)
    action.default_of = default_of


def _config_default(method: str, name: str):
    def default() -> str:
        value = config_options(METHODS[method].config_path).get(name, (None, ""))[0]
        return f"{value!r} for {method}; `lorarlhf options METHOD` lists them"

    return default


def _field_default(path: str, name: str):
    def default() -> str:
        return repr(config_options(path)[name][0])

    return default


def _signature_default(path: str, name: str):
    """A parameter's default, for help: read from the function's source when it is a literal (no import)."""

    def default() -> str:
        static = _source_parameter_default(path, name)
        if static is not None:
            return repr(static[0])
        import inspect

        from lorarlhf.methods.table import resolve

        return repr(inspect.signature(resolve(path)).parameters[name].default)

    return default


def _source_parameter_default(path: str, name: str) -> tuple[object] | None:
    """(default,) of parameter `name` of "module:function" or "module:Class.method", from the source."""
    module, _, qualname = path.partition(":")
    source = _module_file(module)
    if source is None:
        return None
    scope = ast.parse(source.read_text(encoding="utf-8")).body
    node = None
    for part in qualname.split("."):
        node = next((n for n in scope if getattr(n, "name", None) == part), None)
        if node is None:
            return None
        scope = getattr(node, "body", [])
    if not isinstance(node, ast.FunctionDef):
        return None
    args = node.args
    positional = [*args.posonlyargs, *args.args]
    pairs = [*zip(positional[len(positional) - len(args.defaults) :], args.defaults, strict=True)]
    pairs += [(arg, value) for arg, value in zip(args.kwonlyargs, args.kw_defaults, strict=True) if value is not None]
    for arg, value in pairs:
        if arg.arg == name:
            try:
                return (ast.literal_eval(value),)
            except ValueError:
                return None
    return None


def _command(commands, name: str, **options) -> argparse.ArgumentParser:
    return commands.add_parser(name, formatter_class=_DefaultsHelp, **options)


def _method_list() -> str:
    return " ".join(f"{name}: {method.summary}." for name, method in METHODS.items())


def build_parser() -> argparse.ArgumentParser:
    from lorarlhf import __version__

    parser = argparse.ArgumentParser(prog="lorarlhf", description="RLHF on one GPU with one 4-bit base model.")
    parser.add_argument("--version", action="version", version=f"lorarlhf {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help=f"show other libraries' progress bars and logs (transformers, datasets); or {VERBOSE_ENV}=1",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    info = _command(commands, "info", help="print versions and the device a run would use")
    info.set_defaults(run=_info)

    doctor = _command(
        commands,
        "doctor",
        help="check this machine: versions, device, dtype, kernels, 4-bit, memory plan (paste it in a bug report)",
        description="What a run would use here and why; on a GPU (or with --full) also bitsandbytes' 4-bit matmul "
        "and each fused kernel against PyTorch references, and a short align() beside the memory planner. "
        "Exits 1 when a check fails.",
    )
    doctor.add_argument("--json", action="store_true", help="the same report as JSON")
    doctor.add_argument("--full", action="store_true", help="run the numeric checks on a CPU too (minutes)")
    doctor.set_defaults(run=_doctor)

    tiny = _command(commands, "tiny-model", help="write a tiny random Llama and tokenizer (offline experiments)")
    tiny.add_argument("out_dir", help="a new or empty directory")
    tiny.add_argument("--seed", type=int, default=0, help="weight initialisation seed (default 0)")
    tiny.set_defaults(run=_tiny_model)

    score = _command(commands, "score", help="reward score and actor log-prob of one prompt/response pair")
    score.add_argument("model", help="hub id, model directory, or a saved run directory")
    score.add_argument("--prompt", required=True)
    score.add_argument("--response", required=True)
    _flag(
        score,
        "--quantize",
        _signature_default("lorarlhf.model.hydra:HydraModel.from_pretrained", "quantize"),
        choices=QUANTIZE_FLAG,
        help="base quantization",
    )
    score.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    score.set_defaults(run=_score)

    align = _command(
        commands,
        "align",
        help=f"align a model with preference data ({', '.join(METHODS)})",
        description="Run lorarlhf.align(MODEL, DATA, method=...) and write the run to --output-dir. "
        f"Methods: {_method_list()}",
        epilog="Every option of a method: lorarlhf options METHOD. Example: lorarlhf align demo prefs.jsonl "
        "--method dpo --output-dir runs/dpo --set steps=200 --set beta=0.1",
    )
    align.add_argument("model", help='hub id, local model directory, or "demo" (the bundled tiny model)')
    align.add_argument("data", help="a .jsonl/.json/.csv/.parquet file, a dataset directory, or a hub dataset id")
    align.add_argument("--method", default="ppo", metavar="METHOD", help=f"{', '.join(METHODS)} (default ppo)")
    align.add_argument(
        "--output-dir", default=None, help="a new directory, or a previous run's (default lorarlhf-runs/)"
    )
    align.add_argument(
        "--set", action="append", metavar="NAME=VALUE", help="set a config option, e.g. --set lr=1e-5 (repeatable)"
    )
    align.add_argument(
        "--reward-fn",
        default=None,
        metavar="FILE.py:NAME",
        help="a reward function for ppo/grpo instead of a reward model",
    )
    align.add_argument(
        "--resume", action="store_true", help="continue the run in --output-dir from its newest checkpoint"
    )
    align.add_argument("--overwrite", action="store_true", help="replace an earlier run in --output-dir")
    align.set_defaults(run=_align)

    demo = _command(
        commands,
        "demo",
        help="the whole loop on the bundled tiny model, on a CPU: votes, reward model, PPO, before/after",
        description="Simulated annotators vote on pairs of product reviews (hidden preference: positive ones); "
        "a reward adapter learns from the votes and PPO aligns the bundled tiny model. Prints a before/after table "
        "judged by the gold rule, and writes the run and its plot.",
    )
    demo.add_argument("--output-dir", default=None, help="a new directory (default lorarlhf-runs/demo-<time>)")
    demo.add_argument("--quick", action="store_true", help="a smoke run: every stage, few steps")
    demo.add_argument("--seed", type=int, default=0, help="seeds the votes, the adapters and the sampling (default 0)")
    demo.add_argument("--set", action="append", metavar="NAME=VALUE", help="override a PPO option, e.g. --set steps=80")
    demo.set_defaults(run=_demo)

    planner = _command(
        commands,
        "plan",
        help="estimate a run's peak GPU memory per phase from the model's config (no weights loaded)",
        description="An itemised estimate of peak GPU memory per phase and the micro-batch that fits the card.",
    )
    planner.add_argument("model", help='hub id, local model directory or "demo" (only config.json is read)')
    planner.add_argument("--method", default="ppo", choices=tuple(METHODS), help="(default ppo)")
    for name, words in PLANNED_OPTIONS.items():  # config options: typed and defaulted by the method's config
        default_of = _config_default("grpo" if name == "group_size" else "ppo", name)
        _flag(planner, "--" + name.replace("_", "-"), default_of, metavar="N", help=words)
    planner.add_argument("--gpu-memory-gb", type=float, default=None, help="the card's memory, e.g. 24")
    _flag(planner, "--quantize", _config_default("ppo", "quantize"), choices=QUANTIZE_FLAG, help="base quantization")
    _flag(planner, "--dtype", _signature_default("lorarlhf.planner:plan", "dtype"),
          choices=("bfloat16", "float16", "float32"), help="compute dtype")  # fmt: skip
    planner.add_argument("--no-gradient-checkpointing", action="store_true")
    planner.add_argument("--reward-fn", action="store_true", help="ppo/grpo rewarded by a function, no reward adapter")
    planner.set_defaults(run=_plan)

    sample = _command(
        commands,
        "sample",
        help="sample K different responses per prompt, to label",
        description="Sample --n different responses per prompt from MODEL (or a saved run's actor) and write "
        "them as candidates for `lorarlhf label`.",
    )
    sample.add_argument("model", help='hub id, local model directory, a saved run directory, or "demo"')
    sample.add_argument("prompts", help="prompts: a .jsonl/.json/.csv/.parquet file or dataset with a prompt field")
    candidates = "lorarlhf.labelling.candidates:sample_candidates"
    _flag(
        sample,
        "--n",
        _signature_default(candidates, "n"),
        type=int,
        help="responses per prompt: 2 to compare, more to rank",
    )
    sample.add_argument("--out", default="candidates.jsonl", help="the file to write (default candidates.jsonl)")
    for flag, kind, words in (
        ("--max-new-tokens", int, "longest response in tokens"),
        ("--temperature", float, "sampling temperature"),
        ("--top-p", float, "nucleus sampling mass (1: off)"),
        ("--top-k", int, "keep the k likeliest tokens (0: off)"),
    ):
        field = flag[2:].replace("-", "_")
        _flag(sample, flag, _field_default("lorarlhf.training.rollout:SamplingConfig", field), type=kind, help=words)
    _flag(sample, "--seed", _signature_default(candidates, "seed"), type=int, help="sampling seed")
    _flag(
        sample, "--batch-size", _signature_default(candidates, "batch_size"), type=int, help="responses sampled at once"
    )
    _flag(
        sample,
        "--quantize",
        _signature_default(candidates, "quantize"),
        choices=QUANTIZE_FLAG,
        help="base quantization",
    )
    sample.add_argument("--trust-remote-code", action="store_true", help="run the model repository's own code")
    sample.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    sample.set_defaults(run=_sample)

    labelling = _command(
        commands,
        "label",
        help="label candidates in the browser: A / B / tie, rank, or thumbs up/down; saved as they are made",
        description="Serve a labelling page for a candidates file (needs pip install 'lorarlhf[label]'). Every "
        "vote is appended to --out at once; running the command again continues where this annotator stopped.",
    )
    labelling.add_argument("candidates", help="a candidates file from `lorarlhf sample`")
    labelling.add_argument("--annotator", required=True, help="your name, recorded with each vote")
    labelling.add_argument(
        "--out", default=None, help="labels file, appended to (default votes.jsonl, feedback.jsonl with --thumbs)"
    )
    labelling.add_argument(
        "--thumbs", action="store_true", help="judge each response alone, thumbs up or down (data for --method kto)"
    )
    labelling.add_argument("--guidelines", default=None, help="a .md or .txt file of labelling instructions to show")
    labelling.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine)")
    labelling.add_argument("--port", type=int, default=None, help="port (default: the first free one from 7860)")
    labelling.add_argument(
        "--allow-host", action="append", metavar="NAME", help="another host name the page may be reached by"
    )
    labelling.add_argument("--open", action="store_true", help="open the page in the default browser")
    labelling.add_argument("--no-shuffle", action="store_true", help="show responses in file order, not shuffled")
    labelling.set_defaults(run=_label)

    agreement = _command(
        commands, "agreement", help="inter-annotator agreement of a votes file, and the items people disagree on most"
    )
    agreement.add_argument("votes", help="a votes file (from `lorarlhf label`) or any data with vote records")
    agreement.add_argument("--plot", default=None, metavar="FILE.png", help="also draw how each two annotators agree")
    agreement.add_argument("--overwrite", action="store_true", help="replace --plot if it exists")
    agreement.set_defaults(run=_agreement)

    options = _command(commands, "options", help="list a method's options, defaults and what they do")
    options.add_argument("method", choices=tuple(METHODS))
    options.set_defaults(run=_options)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # bitsandbytes warns on every CPU run with AVX512-BF16 that an optional hub kernel is not installed;
    # its pure-PyTorch path is what runs, and the line reads like an error to a user of this command.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    saved = dict(os.environ)
    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"  # read by lorarlhf.model.quiet around every load
    elif not is_verbose():
        # transformers' logs below errors and datasets' bars off from their import on (lorarlhf.model.quiet covers
        # only libraries already imported); a value the user set stays, and all is restored after the command.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    try:
        return args.run(args)
    except (ValueError, TypeError, ImportError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        for name in (VERBOSE_ENV, "TRANSFORMERS_VERBOSITY", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
            if name in saved:
                os.environ[name] = saved[name]
            else:
                os.environ.pop(name, None)


if __name__ == "__main__":
    sys.exit(main())
