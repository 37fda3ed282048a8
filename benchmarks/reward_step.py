"""One reward-model training step, lorarlhf vs TRL's RewardTrainer, on the same config-built model and data.

    python benchmarks/reward_step.py            # CUDA when available, else CPU
    python benchmarks/reward_step.py --cpu

Both train a LoRA adapter (r 16, all linear layers) plus a scalar head on a randomly initialised
Llama-shaped model saved to a temporary directory, with the same pairs, batch size and token length,
unquantized (TRL's RewardTrainer loads a plain sequence-classification model), with gradient checkpointing
on (TRL's default, and lorarlhf's). Each side runs in a fresh process: seconds per step (median over the
timed steps, after warm-up steps) and peak memory counted from the start of training, loading excluded
(max_memory_allocated on CUDA, peak RSS on CPU). TRL is optional (`pip install lorarlhf[bench]`).
Raw rows go to benchmarks/results/reward_step-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from peers import make_model_dir, peak_bytes, reset_peak, run_side, trl_step_timer, write_results

SHAPE = dict(
    vocab_size=32000, hidden_size=512, intermediate_size=1408, num_hidden_layers=6, num_attention_heads=8,
    num_key_value_heads=4,
)  # fmt: skip
WORDS = ["the", "cat", "sat", "on", "a", "mat", "blue", "sky", "runs", "fast", "tree", "with"]
WORDS += ["good", "great", "nice", "bad", "awful", "poor"]


def make_records(n: int, length: int, seed: int = 0) -> list[dict]:
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


def run_ours(model_dir, records, batch_size, steps, warmup, device):
    from lorarlhf import HydraModel
    from lorarlhf.data import load_preferences
    from lorarlhf.methods.reward import RewardConfig, train_reward_model

    hydra = HydraModel.from_pretrained(
        model_dir, quantize=None, lora_r=16, lora_alpha=32, device=device, gradient_checkpointing=True
    )
    pairs = load_preferences(records)
    times = []
    last = [time.perf_counter()]

    def on_step(record):
        if device == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    reset_peak(device)
    config = RewardConfig(steps=warmup + steps, batch_size=batch_size, lr=1e-4, eval_fraction=0.0, max_length=4096)
    train_reward_model(hydra, pairs, config, on_step=on_step, progress=False)
    return times[warmup:]


def run_trl(model_dir, records, batch_size, steps, warmup, device):
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    times = []

    with tempfile.TemporaryDirectory() as out:
        args = RewardConfig(
            output_dir=out, per_device_train_batch_size=batch_size, max_steps=warmup + steps, learning_rate=1e-4,
            report_to=[], logging_steps=10**6, save_strategy="no", max_length=4096, use_cpu=device == "cpu",
            bf16=False, fp16=False, dataloader_num_workers=0,
        )  # fmt: skip
        trainer = RewardTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(records),
            processing_class=tokenizer,
            peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="SEQ_CLS"),
            callbacks=[trl_step_timer(device, times)],
        )
        trainer.train()
    return times[warmup:]


def worker(side, model_dir, batch_size, length, steps, warmup, device):
    records = make_records(max(64, batch_size * (steps + warmup)), length)
    runner = run_ours if side == "lorarlhf" else run_trl
    times = runner(model_dir, records, batch_size, steps, warmup, device)
    result = {"seconds_per_step": statistics.median(times), "steps_timed": len(times), "peak_bytes": peak_bytes(device)}
    print(json.dumps(result))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per step (default 8)")
    parser.add_argument("--length", type=int, default=128, help="tokens of prompt + response (default 128)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = "cpu" if args.cpu or not torch.cuda.is_available() else "cuda"
    if args.worker:
        side, model_dir = args.worker
        worker(side, model_dir, args.batch_size, args.length, args.steps, args.warmup, device)
        return

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = make_model_dir(Path(scratch) / "model", SHAPE)
        options = ["--batch-size", str(args.batch_size), "--length", str(args.length)]
        options += ["--steps", str(args.steps), "--warmup", str(args.warmup)] + (["--cpu"] if device == "cpu" else [])
        for side in ("lorarlhf", "trl"):
            row = {**run_side(__file__, side, model_dir, options), "batch_size": args.batch_size, "length": args.length}
            rows.append(row)
            if "error" in row:
                print(f"{side:<9} failed: {row['error']}")
            else:
                print(f"{side:<9} {row['seconds_per_step']:.3f} s/step  peak {row['peak_bytes'] / 2**20:.0f} MiB")
    print(f"wrote {write_results('reward_step', device, rows, shape=SHAPE)}")


if __name__ == "__main__":
    main()
