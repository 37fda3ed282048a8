"""One GRPO step (generate + score + reference + update), lorarlhf vs TRL's GRPOTrainer, same model and sizes.

    python benchmarks/grpo_step.py          # CUDA when available, else CPU
    python benchmarks/grpo_step.py --cpu

Both train a LoRA adapter (r 16, all linear layers) on a randomly initialised ~112M-parameter Llama
shape, unquantized (lorarlhf also with its default NF4 base), with the same prompts, group size, completion
length, KL coefficient (beta 0.04, so both use the reference: the base with the adapter off) and a
programmatic reward, gradient checkpointing on. Each side runs in a fresh process: seconds per step (median
over the timed steps, after warm-up steps) and peak memory while training, model loading excluded
(max_memory_allocated on CUDA, peak RSS on CPU).
TRL is optional (`pip install lorarlhf[bench]`). Raw rows go to benchmarks/results/grpo_step-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from peers import LLAMA_112M, make_model_dir, peak_bytes, reset_peak, run_side, trl_step_timer, write_results

BETA = 0.04


def lowercase(prompts, completions, **kwargs):
    """Share of lowercase ASCII letters in each completion (TRL passes extra keyword arguments)."""
    return [sum(c.islower() and c.isascii() for c in text) / max(len(text), 1) for text in completions]


def make_prompts(n: int) -> list[str]:
    return [f"Write a short note number {i}:" for i in range(n)]


def run_ours(model_dir, args, device, quantize=None):
    from lorarlhf import HydraModel
    from lorarlhf.methods.grpo import GRPOConfig, train_grpo

    hydra = HydraModel.from_pretrained(
        model_dir, quantize=quantize, lora_r=16, lora_alpha=32, device=device, gradient_checkpointing=True
    )
    config = GRPOConfig(
        steps=args.warmup + args.steps, batch_size=args.prompts, group_size=args.group_size,
        max_new_tokens=args.completion_length, kl_coef=BETA, lr=1e-5, loss_type="token",
    )  # fmt: skip
    times, last = [], [time.perf_counter()]

    def on_step(record):
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    reset_peak(device)
    train_grpo(hydra, make_prompts(64), config, reward_fn=lowercase, on_step=on_step, progress=False)
    return times[args.warmup :]


def run_trl(model_dir, args, device):
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    times = []

    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            output_dir=out, per_device_train_batch_size=args.prompts * args.group_size,
            num_generations=args.group_size, max_completion_length=args.completion_length, beta=BETA,
            learning_rate=1e-5, max_steps=args.warmup + args.steps, report_to=[], logging_steps=10**6,
            save_strategy="no", use_cpu=device == "cpu", bf16=False, fp16=False, loss_type="dapo",
            gradient_checkpointing=True, dataloader_num_workers=0,
        )  # fmt: skip
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[lowercase],
            args=config,
            train_dataset=Dataset.from_list([{"prompt": p} for p in make_prompts(64)]),
            processing_class=tokenizer,
            peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
            callbacks=[trl_step_timer(device, times)],
        )
        trainer.train()
    return times[args.warmup :]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument("--prompts", type=int, default=2, help="prompts per step (default 2)")
    parser.add_argument("--group-size", type=int, default=4, help="completions per prompt (default 4)")
    parser.add_argument("--completion-length", type=int, default=32, help="max new tokens (default 32)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (default 5)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = "cpu" if args.cpu or not torch.cuda.is_available() else "cuda"
    if args.worker:
        side, model_dir = args.worker
        if side == "trl":
            times = run_trl(model_dir, args, device)
        else:
            times = run_ours(model_dir, args, device, quantize="nf4" if side == "lorarlhf-nf4" else None)
        print(json.dumps({"seconds_per_step": statistics.median(times), "steps_timed": len(times),
                          "peak_bytes": peak_bytes(device)}))  # fmt: skip
        return

    options = ["--prompts", str(args.prompts), "--group-size", str(args.group_size)]
    options += ["--completion-length", str(args.completion_length), "--steps", str(args.steps)]
    options += ["--warmup", str(args.warmup)] + (["--cpu"] if device == "cpu" else [])
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = make_model_dir(Path(scratch) / "model", LLAMA_112M)
        for side in ("lorarlhf", "lorarlhf-nf4", "trl"):
            row = run_side(__file__, side, model_dir, options)
            rows.append(row)
            if "error" in row:
                print(f"{side:<13} failed: {row['error']}")
            else:
                print(f"{side:<13} {row['seconds_per_step']:.2f} s/step  peak {row['peak_bytes'] / 2**20:.0f} MiB")
    sizes = {"prompts": args.prompts, "group_size": args.group_size, "completion_length": args.completion_length}
    print(f"wrote {write_results('grpo_step', device, rows, shape=LLAMA_112M, sizes=sizes)}")


if __name__ == "__main__":
    main()
