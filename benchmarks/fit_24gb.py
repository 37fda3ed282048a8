"""Full PPO and GRPO iterations on 7-8B model shapes within a 24 GB budget: peak memory, seconds per phase,
tokens/s, beside the memory planner's estimate.

    python benchmarks/fit_24gb.py            # CUDA: Llama-3-8B, Qwen2.5-7B and Mistral-7B shapes
    python benchmarks/fit_24gb.py --smoke    # CPU: a ~112M Llama shape, to check the script end to end

Each shape is built from its config with random weights (bf16, saved once as safetensors under --work-dir),
loaded as lorarlhf loads any model: NF4 base, LoRA r 16 on every linear layer, gradient checkpointing. The
run uses the batch and lengths the task names (PPO 8 x (512 prompt + 512 sampled) tokens; GRPO 4 prompts x 8
samples, same lengths), with micro-batches chosen by the planner for 24 GB, exactly as align() does on a GPU.
Random weights never emit EOS, so every response has the full length: the worst case for memory.
Raw rows go to benchmarks/results/fit_24gb-<device>.json with the device name.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from peers import LLAMA_112M, peak_bytes, reset_peak, write_results

SHAPES = {
    "Llama-3-8B": dict(
        model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0,
    ),
    "Qwen2.5-7B": dict(
        model_type="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4,
    ),
    "Mistral-7B": dict(
        model_type="mistral", vocab_size=32768, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8,
    ),
}  # fmt: skip
SMOKE = {"Llama-112M": dict(model_type="llama", **LLAMA_112M)}
BUDGET_GB = 24.0


def make_model_dir(path: Path, shape: dict) -> Path:
    """A random-weight causal LM of `shape` in bf16 and the tiny byte-level tokenizer (its ids fit any vocab)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from lorarlhf.tiny import build_tiny_tokenizer

    if (path / "config.json").exists():
        return path
    fields = dict(shape)
    config = AutoConfig.for_model(fields.pop("model_type"), tie_word_embeddings=False, **fields)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(path)
    build_tiny_tokenizer().save_pretrained(path)
    del model
    return path


def prompt_of_length(tokens: int) -> str:
    return "a" * (tokens - 1)  # byte-level: one token per character, plus BOS


def length_reward(prompts, responses):
    return [len(r) / 100 for r in responses]


def run_method(model_dir: Path, method: str, args, device: str) -> dict:
    from lorarlhf import HydraModel
    from lorarlhf.grpo_config import GRPOConfig
    from lorarlhf.grpo_trainer import train_grpo
    from lorarlhf.pipeline import fit_to_card
    from lorarlhf.ppo_config import PPOConfig
    from lorarlhf.ppo_trainer import train_ppo

    roles = ("actor", "critic", "reward") if method == "ppo" else ("actor", "reward")
    hydra = HydraModel.from_pretrained(
        model_dir, quantize="nf4", lora_r=16, device=device, gradient_checkpointing=True, roles=roles
    )
    lengths = dict(max_length=args.prompt_tokens + args.new_tokens, max_new_tokens=args.new_tokens)
    if method == "ppo":
        config = PPOConfig(steps=args.iterations * 2, batch_size=args.ppo_batch, ppo_epochs=2, **lengths)
    else:
        config = GRPOConfig(steps=args.iterations, batch_size=args.grpo_prompts, group_size=args.group_size, **lengths)
    memory_plan = fit_to_card(config, method, hydra, train_reward=True, gpu_memory_gb=BUDGET_GB)
    prompts = [prompt_of_length(args.prompt_tokens)] * 64
    records = []
    reset_peak(device)
    trainer = train_ppo if method == "ppo" else train_grpo
    trainer(hydra, prompts, config, reward_fn=None, on_step=records.append, progress=False)
    measured = peak_bytes(device)
    last = records[-1]
    phases = {key.removeprefix("time/"): value for key, value in last.items() if key.startswith("time/")}
    group = getattr(config, "group_size", 1)
    return {
        "method": method,
        "batch": f"{config.batch_size} x {group} x ({args.prompt_tokens} + {args.new_tokens})",
        "grad_accumulation": config.grad_accumulation,
        "peak_gb": measured / 2**30,
        "planned_peak_gb": memory_plan.peak_gb,
        "plan_error": (memory_plan.peak_gb * 2**30 - measured) / measured,
        "seconds_per_phase": phases,
        "tokens_per_s": last["rl/tokens_per_s"],
        "iterations": len(records),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU, a ~112M shape, short sequences")
    parser.add_argument("--work-dir", default=None, help="where the random-weight checkpoints are written")
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--shapes", nargs="*", default=None, help=f"a subset of {list(SHAPES)}")
    args = parser.parse_args()
    device = "cpu" if args.smoke or not torch.cuda.is_available() else "cuda"
    if device == "cpu" and not args.smoke:
        parser.error("no GPU: run with --smoke to check the script on the CPU")
    shapes = SMOKE if args.smoke else {name: SHAPES[name] for name in (args.shapes or SHAPES)}
    args.prompt_tokens, args.new_tokens = (32, 16) if args.smoke else (512, 512)
    args.ppo_batch, args.grpo_prompts, args.group_size = (4, 2, 2) if args.smoke else (8, 4, 8)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="lorarlhf-fit24-"))
    rows = []
    for name, shape in shapes.items():
        model_dir = make_model_dir(work / name, shape)
        for method in ("ppo", "grpo"):
            row = {"shape": name, **run_method(model_dir, method, args, device)}
            print(row, flush=True)
            rows.append(row)
    path = write_results("fit_24gb", device, rows, budget_gb=BUDGET_GB, smoke=args.smoke)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
