"""lorarlhf against TRL 1.16, row by row, on the same machine, the same config-built Llama and the same sizes.

    python benchmarks/peers.py --peer-python ../trl-venv/bin/python                 # every row
    python benchmarks/peers.py --peer-python ... --rows grpo-fp32,dpo --repeats 3 --shape 112m

Rows: one GRPO step with an fp32 base and with an NF4 base (4 prompts x 4 samples, 32 new tokens, beta 0.04),
one DPO step and one reward-model step (4 pairs of ~128 tokens), and rollout generation (8 prompts x 64 new
tokens, lorarlhf's seeded sampler against transformers' model.generate on the same LoRA-wrapped model). LoRA
r 16 on every linear layer everywhere. TRL runs in its own environment (--peer-python: a venv with trl, the
same torch / transformers / peft), so lorarlhf's locked versions never change.

Every measurement is a fresh process; the two sides alternate A B A B (the order flips each repeat) for
--repeats rounds, so a machine shared with other work slows both alike. Per side: median seconds per step over
its timed steps (after warm-up), and marginal peak memory: peak RSS (VmHWM) minus the RSS right after the
side's imports, so the model, optimizer and activations count and the libraries' code does not. Each side
uses its library's defaults on a CPU where it has them: lorarlhf the memory planner's CPU choice of gradient
checkpointing (lorarlhf.planner.cpu_settings) and its CPU allocator rule (lorarlhf.model.allocator: huge pages
and a fixed mmap threshold), TRL gradient checkpointing on (its configs' default). --variants adds, in the
training rows, TRL run under the same allocator settings ("trl-allocator") and lorarlhf without them
("lorarlhf-plain-allocator"). The 1- and 5-minute load averages
before and after each process are kept. Raw rows go to
benchmarks/results/versus_trl-<row>-<shape>-cpu.json; --write-md rewrites BENCHMARKS.md between its markers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SHAPES = {
    "64m": dict(vocab_size=8192, hidden_size=768, intermediate_size=2048, num_hidden_layers=10,
                num_attention_heads=12, num_key_value_heads=4),
    "112m": dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=10,
                 num_attention_heads=12, num_key_value_heads=4),
}  # fmt: skip
ROWS = ("grpo-fp32", "grpo-nf4", "dpo", "reward", "generation")
BETA = 0.04
LORA = dict(r=16, lora_alpha=32, target_modules="all-linear")


# --------------------------------------------------------------------------- memory, inside a worker


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


class Timer:
    """Seconds between consecutive calls of .tick(), the first one from .start()."""

    def __init__(self):
        self.times, self.last = [], None

    def start(self):
        self.last = time.perf_counter()

    def tick(self, *args, **kwargs):
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.last = now


# --------------------------------------------------------------------------- lorarlhf


def lowercase(prompts, completions, **kwargs):
    """Share of lowercase ASCII letters in each completion (the same reward for both sides)."""
    return [sum(c.islower() and c.isascii() for c in text) / max(len(text), 1) for text in completions]


def prompts_for(n: int) -> list[str]:
    return [f"Write a short note number {i}:" for i in range(n)]


WORDS = ["the", "cat", "sat", "on", "a", "mat", "blue", "sky", "runs", "fast", "tree", "with"]
WORDS += ["good", "great", "nice", "bad", "awful", "poor"]


def pair_records(n: int, length: int = 128, seed: int = 0) -> list[dict]:
    """Pairs whose prompt + response is about `length` tokens with the byte-level tokenizer."""
    rng = random.Random(seed)

    def text(chars):
        words = []
        while sum(len(w) + 1 for w in words) < chars:
            words.append(rng.choice(WORDS))
        return " ".join(words)[:chars]

    return [
        {"prompt": text(length // 4), "chosen": text(3 * length // 4), "rejected": text(3 * length // 4)}
        for _ in range(n)
    ]


def ours_checkpointing(model_dir, method: str, quantize, **sizes) -> bool:
    from lorarlhf.planner import cpu_settings

    return cpu_settings(
        model_dir, method=method, explicit={"quantize"}, quantize=quantize, **sizes
    ).gradient_checkpointing


def ours(row: str, model_dir: str, args) -> dict:
    from lorarlhf import HydraModel

    after_imports = _status_kib("VmRSS")
    timer, info = Timer(), {}
    if row.startswith("grpo"):
        from lorarlhf.methods.grpo import GRPOConfig, train_grpo

        quantize = "nf4" if row == "grpo-nf4" else None
        sizes = dict(batch_size=4, group_size=4, max_length=512, max_new_tokens=32, lora_r=16)
        checkpointing = ours_checkpointing(model_dir, "grpo", quantize, **sizes)
        hydra = HydraModel.from_pretrained(
            model_dir, quantize=quantize, lora_r=16, lora_alpha=32, device="cpu", roles=("actor",),
            gradient_checkpointing=checkpointing,
        )  # fmt: skip
        config = GRPOConfig(
            steps=args.warmup + args.steps, batch_size=4, group_size=4, max_new_tokens=32, kl_coef=BETA, lr=1e-5,
            loss_type="token", quantize=quantize, gradient_checkpointing=checkpointing,
        )  # fmt: skip
        timer.start()
        train_grpo(hydra, prompts_for(64), config, reward_fn=lowercase, on_step=timer.tick, progress=False)
        info = {"gradient_checkpointing": checkpointing, "quantize": quantize}
    elif row in ("dpo", "reward"):
        from lorarlhf.data import load_preferences

        method = "dpo" if row == "dpo" else "rm"
        sizes = dict(batch_size=4, max_length=512, lora_r=16)
        checkpointing = ours_checkpointing(model_dir, method, None, **sizes)
        roles = ("actor",) if row == "dpo" else ("reward",)
        hydra = HydraModel.from_pretrained(
            model_dir, quantize=None, lora_r=16, lora_alpha=32, device="cpu", roles=roles,
            gradient_checkpointing=checkpointing,
        )  # fmt: skip
        pairs = load_preferences(pair_records(64))
        common = dict(steps=args.warmup + args.steps, batch_size=4, lr=1e-4, eval_fraction=0.0, max_length=512)
        timer.start()
        if row == "dpo":
            from lorarlhf.methods.dpo import DPOConfig, train_dpo

            train_dpo(hydra, pairs, DPOConfig(beta=0.1, **common), on_step=timer.tick, progress=False)
        else:
            from lorarlhf.methods.reward import RewardConfig, train_reward_model

            train_reward_model(hydra, pairs, RewardConfig(**common), on_step=timer.tick, progress=False)
        info = {"gradient_checkpointing": checkpointing}
    else:  # generation
        from lorarlhf.training import rollout

        if args.rollout_file:  # another version of the sampler, e.g. the one before a change, for before/after
            import importlib.util

            spec = importlib.util.spec_from_file_location("rollout_under_test", args.rollout_file)
            rollout = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = rollout  # dataclasses look their module up there
            spec.loader.exec_module(rollout)
        hydra = HydraModel.from_pretrained(model_dir, quantize=None, lora_r=16, lora_alpha=32, device="cpu",
                                           roles=("actor",))  # fmt: skip
        hydra.merge_sampling = args.merge  # off by default, as in the library
        _perturb_lora(hydra.peft)
        sampling = rollout.SamplingConfig(max_new_tokens=64)
        tokens = []
        for call in range(args.warmup + args.steps):
            timer.start()
            out = rollout.generate_rollout(hydra, prompts_for(8), sampling, seeds=list(range(8 * call, 8 * call + 8)))
            timer.tick()
            tokens.append(int(out.response_mask.sum()))
        info = {"tokens": tokens[args.warmup :], "merged": args.merge, "rollout_file": args.rollout_file}
    return _result(timer.times[args.warmup :], after_imports, info)


def _perturb_lora(model) -> None:
    """LoRA B starts at zero; a trained adapter does not (the same draw on both sides)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)


def _result(times: list[float], after_imports_kib: int, info: dict) -> dict:
    peak = _status_kib("VmHWM")
    return {
        "seconds": statistics.median(times), "times": times, "marginal_peak_bytes": (peak - after_imports_kib) * 1024,
        "peak_bytes": peak * 1024, "after_imports_bytes": after_imports_kib * 1024, **info,
    }  # fmt: skip


# --------------------------------------------------------------------------- TRL (run by --peer-python)


def peer(row: str, model_dir: str, args) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        BitsAndBytesConfig,
        TrainerCallback,
    )

    if row != "generation":
        import trl

    after_imports = _status_kib("VmRSS")
    timer = Timer()

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            timer.start()

        def on_step_end(self, *a, **k):
            timer.tick()

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    steps = args.warmup + args.steps
    common = dict(
        per_device_train_batch_size=4, max_steps=steps, report_to=[], logging_steps=10**6, save_strategy="no",
        use_cpu=True, bf16=False, fp16=False, dataloader_num_workers=0, gradient_checkpointing=True,
    )  # fmt: skip
    info = {"gradient_checkpointing": True}
    with tempfile.TemporaryDirectory() as out:
        if row.startswith("grpo"):
            options = {}
            if row == "grpo-nf4":
                options["quantization_config"] = BitsAndBytesConfig(
                    load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                    bnb_4bit_compute_dtype=torch.float32,
                )  # fmt: skip
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **options)
            config = trl.GRPOConfig(
                output_dir=out, **{**common, "per_device_train_batch_size": 16}, num_generations=4,
                max_completion_length=32, beta=BETA, learning_rate=1e-5, loss_type="dapo",
            )  # fmt: skip
            trainer = trl.GRPOTrainer(
                model=model, reward_funcs=[lowercase], args=config, processing_class=tokenizer,
                train_dataset=Dataset.from_list([{"prompt": p} for p in prompts_for(64)]),
                peft_config=LoraConfig(**LORA, task_type="CAUSAL_LM"), callbacks=[StepTimer()],
            )  # fmt: skip
            trainer.train()
        elif row in ("dpo", "reward"):  # the same pairs; DPO on the causal LM, the reward model on a scalar head
            if row == "dpo":
                model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
                config = trl.DPOConfig(output_dir=out, **common, beta=0.1, learning_rate=1e-4, max_length=512)
                trainer_class, task = trl.DPOTrainer, "CAUSAL_LM"
            else:
                model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=torch.float32)
                model.config.pad_token_id = tokenizer.pad_token_id
                config = trl.RewardConfig(output_dir=out, **common, learning_rate=1e-4, max_length=512)
                trainer_class, task = trl.RewardTrainer, "SEQ_CLS"
            trainer = trainer_class(
                model=model, args=config, train_dataset=Dataset.from_list(pair_records(64)),
                processing_class=tokenizer, peft_config=LoraConfig(**LORA, task_type=task), callbacks=[StepTimer()],
            )  # fmt: skip
            trainer.train()
        else:  # generation: transformers' generate on the same LoRA-wrapped model
            model = get_peft_model(
                AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
                LoraConfig(**LORA, task_type="CAUSAL_LM"),
            )
            _perturb_lora(model)
            model.eval()
            tokenizer.padding_side = "left"
            batch = tokenizer(prompts_for(8), return_tensors="pt", padding=True)
            tokens = []
            for call in range(steps):
                torch.manual_seed(call)
                timer.start()
                with torch.no_grad():
                    output = model.generate(
                        **batch, do_sample=True, max_new_tokens=64, top_k=0, top_p=1.0, temperature=1.0,
                        pad_token_id=tokenizer.pad_token_id,
                    )  # fmt: skip
                timer.tick()
                new = output[:, batch["input_ids"].shape[1] :]
                ended = (new == tokenizer.eos_token_id).long().cumsum(1) - (new == tokenizer.eos_token_id).long()
                tokens.append(int((ended == 0).sum()))
            info = {"tokens": tokens[args.warmup :]}
    return _result(timer.times[args.warmup :], after_imports, info)


# --------------------------------------------------------------------------- the driver


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# lorarlhf's CPU allocator rule (lorarlhf.model.allocator) as environment variables, for TRL's process in the
# "trl-allocator" variant: how much of the memory difference is the allocator and how much the rest.
ALLOCATOR_VARIABLES = ("THP_MEM_ALLOC_ENABLE", "MALLOC_MMAP_THRESHOLD_")


def same_allocator(row: str) -> dict[str, str]:
    """The environment that gives TRL's process lorarlhf's rule for this row (the lower threshold on a 4-bit base)."""
    from lorarlhf.model.allocator import MMAP_THRESHOLD_BYTES, QUANTIZED_MMAP_THRESHOLD_BYTES

    threshold = QUANTIZED_MMAP_THRESHOLD_BYTES if row == "grpo-nf4" else MMAP_THRESHOLD_BYTES
    return {"THP_MEM_ALLOC_ENABLE": "1", "MALLOC_MMAP_THRESHOLD_": str(threshold)}


def run_worker(python: str, side: str, row: str, model_dir: Path, args, extra=(), env_extra=None) -> dict:
    command = [python, str(Path(__file__).resolve()), "--worker", side.split("-")[0], row, str(model_dir)]
    command += ["--steps", str(args.steps), "--warmup", str(args.warmup), *extra]
    before = load_average()
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    for name in ALLOCATOR_VARIABLES:  # each side starts from a plain environment; its library's own rules apply
        env.pop(name, None)
    env.update(env_extra or {})
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800, cwd=HERE, env=env)
    wall = time.perf_counter() - start
    record = {"side": side, "load_before": before, "load_after": load_average(), "process_seconds": round(wall, 1)}
    if result.returncode != 0:
        return {**record, "error": (result.stderr.strip().splitlines() or ["no output"])[-1][:400]}
    return {**record, **json.loads(result.stdout.strip().splitlines()[-1])}


def summarize(runs: list[dict]) -> dict:
    good = [r for r in runs if "error" not in r]
    if not good:
        return {"runs": len(runs), "errors": [r["error"] for r in runs]}
    seconds = [r["seconds"] for r in good]
    memory = [r["marginal_peak_bytes"] for r in good]
    summary = {
        "runs": len(good), "seconds_median": statistics.median(seconds), "seconds_min": min(seconds),
        "seconds_max": max(seconds), "marginal_peak_median": statistics.median(memory),
        "marginal_peak_min": min(memory), "marginal_peak_max": max(memory),
    }  # fmt: skip
    if "tokens" in good[0]:
        rates = [t / s for r in good for t, s in zip(r["tokens"], r["times"], strict=True)]
        summary["tokens_per_s_median"] = statistics.median(rates)
        summary["tokens_per_s_min"], summary["tokens_per_s_max"] = min(rates), max(rates)
    return summary


def versions(python: str) -> dict:
    code = (
        "import json; from importlib import metadata as m; print(json.dumps({p: m.version(p) for p in "
        "('torch','transformers','peft','trl','accelerate','datasets','bitsandbytes') "
        "if __import__('importlib').util.find_spec(p.replace('-','_'))}))"
    )
    return json.loads(subprocess.run([python, "-c", code], capture_output=True, text=True).stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer-python", help="python of an environment with trl 1.16 (not lorarlhf's venv)")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    parser.add_argument("--shape", default="64m", choices=tuple(SHAPES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per process (default per row)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument(
        "--threads", type=int, default=1,
        help="CPU threads of every worker, both sides (default 1: on a machine shared with other work, OpenMP "
        "threads that spin at barriers while the others are descheduled slow both sides several-fold)",
    )  # fmt: skip
    parser.add_argument(
        "--variants", action="store_true",
        help="generation: also merged sampling and --before-rollout; training rows: also TRL with lorarlhf's CPU "
        "allocator and lorarlhf without it",
    )  # fmt: skip
    parser.add_argument("--before-rollout", help="generation: a rollout.py to time as 'before' (with --variants)")
    parser.add_argument("--write-md", action="store_true", help="rewrite BENCHMARKS.md's table from results/")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--rollout-file", help=argparse.SUPPRESS)
    parser.add_argument("--merge", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        side, row, model_dir = args.worker
        sys.path.insert(0, str(HERE))
        print(json.dumps((peer if side == "trl" else ours)(row, model_dir, args)))
        return
    if args.write_md:
        write_markdown()
        return
    if not args.peer_python:
        parser.error("--peer-python is required: the python of an environment where trl 1.16 is installed")
    sys.path.insert(0, str(HERE))
    from plumbing import make_model_dir

    # (warm-up, timed) steps per process: few, so that 3 repeats of a row fit ~10 minutes on a busy 2-core machine;
    # the spread across the fresh processes is what the table reports.
    defaults = {"grpo-fp32": (1, 1), "grpo-nf4": (1, 1), "dpo": (1, 2), "reward": (1, 2), "generation": (1, 1)}
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = make_model_dir(Path(scratch) / "model", SHAPES[args.shape])
        for row in args.rows.split(","):
            if row not in ROWS:
                parser.error(f"row {row!r} is not one of {ROWS}")
            row_args = argparse.Namespace(**vars(args))
            row_args.warmup = args.warmup if args.warmup is not None else defaults[row][0]
            row_args.steps = args.steps if args.steps is not None else defaults[row][1]
            sides = [("lorarlhf", sys.executable, (), None), ("trl", args.peer_python, (), None)]
            if row != "generation" and args.variants:
                sides.append(("trl-allocator", args.peer_python, (), same_allocator(row)))
                sides.append(("lorarlhf-plain-allocator", sys.executable, (), {"LORARLHF_CPU_ALLOCATOR": "default"}))
            if row == "generation" and args.variants:
                sides.append(("lorarlhf-merged", sys.executable, ("--merge",), None))
                if args.before_rollout:
                    sides.append(
                        (
                            "lorarlhf-before",
                            sys.executable,
                            ("--rollout-file", str(Path(args.before_rollout).resolve())),
                            None,
                        )
                    )
            runs = {name: [] for name, *_ in sides}
            started = time.time()
            for repeat in range(args.repeats):
                order = sides if repeat % 2 == 0 else sides[::-1]  # A B, then B A
                for name, python, extra, env_extra in order:
                    run = run_worker(python, name, row, model_dir, row_args, extra, env_extra)
                    runs[name].append(run)
                    shown = run.get("error") or f"{run['seconds']:.2f} s, +{run['marginal_peak_bytes'] / 2**20:.0f} MiB"
                    print(f"{row:<11} {repeat} {name:<18} {shown}  load {run['load_before']}", flush=True)
                    out = write_row(row, args, row_args, runs, started)  # after every run: a cut-short row keeps it
            print(f"wrote {out}")


def write_row(row: str, args, row_args, runs: dict, started: float) -> Path:
    record = {
        "row": row, "shape": args.shape, "model": SHAPES[args.shape], "repeats": max(map(len, runs.values())),
        "warmup": row_args.warmup, "steps": row_args.steps, "threads": args.threads,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpus": os.cpu_count(),
        "wall_seconds": round(time.time() - started), "load_average_end": load_average(),
        "versions": {"lorarlhf": versions(sys.executable), "trl": versions(args.peer_python)},
        "summary": {name: summarize(r) for name, r in runs.items()}, "runs": runs,
    }  # fmt: skip
    out = RESULTS / f"versus_trl-{row}-{args.shape}-cpu.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    return out


# --------------------------------------------------------------------------- BENCHMARKS.md

MD_START, MD_END = "<!-- versus_trl:start -->", "<!-- versus_trl:end -->"
ROW_NAMES = {
    "grpo-fp32": "GRPO, fp32 base", "grpo-nf4": "GRPO, NF4 base (both sides)", "dpo": "DPO step, 4 pairs",
    "reward": "reward-model step, 4 pairs", "generation": "generation, 8 x 64 tokens (TRL: model.generate)",
}  # fmt: skip


def _seconds(summary: dict) -> str:
    return f"{summary['seconds_median']:.2f} ({summary['seconds_min']:.2f}-{summary['seconds_max']:.2f})"


def write_markdown() -> None:
    lines = [
        MD_START,
        "| shape | row | lorarlhf s (min-max) | TRL s (min-max) | time ratio | lorarlhf MiB | TRL MiB | memory ratio "
        "| load avg | runs |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for shape in SHAPES:
        for row in ROWS:
            path = RESULTS / f"versus_trl-{row}-{shape}-cpu.json"
            if not path.exists():
                continue
            record = json.loads(path.read_text())
            # generation: the default sampler (unmerged); results written before it was the main side had it
            # as the "lorarlhf-unmerged" variant
            a = record["summary"].get("lorarlhf-unmerged") or record["summary"]["lorarlhf"]
            b = record["summary"]["trl"]
            if "seconds_median" not in a or "seconds_median" not in b:
                lines.append(f"| {shape} | {ROW_NAMES[row]} | failed | failed | | | | | | |")
                continue
            loads = [run["load_before"][0] for side in record["runs"].values() for run in side]
            mib = 2**20
            time_ratio = a["seconds_median"] / b["seconds_median"]
            memory_ratio = a["marginal_peak_median"] / b["marginal_peak_median"]
            lines.append(
                f"| {shape} | {ROW_NAMES[row]} | {_seconds(a)} | {_seconds(b)} | **{time_ratio:.2f}x** "
                f"| {a['marginal_peak_median'] / mib:.0f} | {b['marginal_peak_median'] / mib:.0f} "
                f"| **{memory_ratio:.2f}x** | {min(loads):.1f}-{max(loads):.1f} | {a['runs']}+{b['runs']} |"
            )
            if "tokens_per_s_median" in a:
                extra = ", ".join(
                    f"{name} {s['tokens_per_s_median']:.0f}"
                    for name, s in record["summary"].items()
                    if "tokens_per_s_median" in s
                )
                lines.append(f"| {shape} | tokens/s (median): {extra} | | | | | | | | |")
    lines.append(MD_END)
    md = HERE.parent / "BENCHMARKS.md"
    text = md.read_text()
    if MD_START in text:
        head, rest = text.split(MD_START, 1)
        text = head + "\n".join(lines) + rest.split(MD_END, 1)[1]
    else:
        raise SystemExit(f"BENCHMARKS.md has no {MD_START} marker: add one where the table belongs")
    md.write_text(text)
    print(f"rewrote {md}")


if __name__ == "__main__":
    main()
