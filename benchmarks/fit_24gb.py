"""Full PPO and GRPO iterations on 7-8B model shapes within a 24 GB budget: peak memory, seconds per phase,
tokens/s, beside the memory planner's estimate.

    python benchmarks/fit_24gb.py            # CUDA: Llama-3-8B, Qwen2.5-7B and Mistral-7B shapes
    python benchmarks/fit_24gb.py --smoke    # CPU: a ~112M Llama shape, to check the script end to end

Beside the Hydra's PPO, the same PPO iteration runs with the four roles as four separately loaded NF4
models (the classic layout), so the memory and per-sample latency ratios come from one run.

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
from plumbing import LLAMA_112M, peak_bytes, reset_peak, write_results

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


def make_model_dir(path: Path, shape: dict, device: str = "cpu") -> Path:
    """A random-weight causal LM of `shape` in bf16 and the tiny byte-level tokenizer (its ids fit any vocab).

    device: where the random weights are drawn; "cuda" draws an 8B model's in a second instead of a minute.
    The embeddings are untied unless `shape` says tie_word_embeddings=True.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from lorarlhf.model.tiny import build_tiny_tokenizer

    if (path / "config.json").exists():
        return path
    fields = {"tie_word_embeddings": False, **shape}
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    torch.manual_seed(0)
    with torch.device(device):
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
    from lorarlhf.methods.grpo import GRPOConfig, train_grpo
    from lorarlhf.methods.ppo import PPOConfig, train_ppo
    from lorarlhf.pipeline import fit_to_card

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
        "seconds_per_sample": sum(phases.values()) / (config.batch_size * group),
        "iterations": len(records),
    }


def run_classic_ppo(model_dir: Path, args, device: str, grad_accumulation: int) -> dict:
    """The same PPO iteration with the four roles as four separately loaded NF4 models (the classic layout):
    actor and critic each with their own base and adapter, a reward model, a frozen reference model."""
    from functools import partial

    from lorarlhf import HydraModel
    from lorarlhf.methods.ppo import PPOConfig, state_values
    from lorarlhf.training.rl_loop import PhaseTimer, in_chunks, last_token_scores, rows_of, sampling_of
    from lorarlhf.training.rl_losses import clipped_policy_loss, clipped_value_loss, gae, masked_whiten
    from lorarlhf.training.rollout import generate_rollout

    load = partial(HydraModel.from_pretrained, model_dir, quantize="nf4", lora_r=16, device=device)
    actor, critic = (
        load(roles=("actor",), gradient_checkpointing=True),
        load(roles=("critic",), gradient_checkpointing=True),
    )
    reward, reference = load(roles=("reward",)), load(roles=("actor",))  # the reference runs with its adapter off
    config = PPOConfig(
        batch_size=args.ppo_batch, max_length=args.prompt_tokens + args.new_tokens, max_new_tokens=args.new_tokens,
        grad_accumulation=grad_accumulation,
    )  # fmt: skip
    params = actor.trainable_parameters("actor") + critic.trainable_parameters("critic")
    optimizer = torch.optim.AdamW(params, lr=config.lr)
    prompts = [prompt_of_length(args.prompt_tokens)] * config.batch_size
    reset_peak(device)
    seconds = []
    try:
        for iteration in range(args.iterations):
            timer = PhaseTimer()
            seeds = list(range(iteration * config.batch_size, (iteration + 1) * config.batch_size))
            with timer("generate"):
                rollout = generate_rollout(actor, prompts, sampling_of(config), seeds)
            batch, ga = rollout.batch(), config.grad_accumulation
            mask = batch.response_mask
            with timer("score"), torch.no_grad():
                scores = in_chunks(batch, ga, lambda b: reward.rewards(b.input_ids, b.attention_mask))
            with timer("reference"), torch.no_grad():
                ref_logp = in_chunks(batch, ga, reference.token_logprobs, role="reference")
                old_logp = in_chunks(batch, ga, actor.token_logprobs, role="actor")
                old_values = in_chunks(batch, ga, partial(state_values, critic))
            token_rewards = -config.kl_coef * (old_logp - ref_logp) * mask + last_token_scores(scores, mask)
            advantages, returns = gae(token_rewards, old_values, mask, gamma=config.gamma, lam=config.lam)
            advantages = masked_whiten(advantages, mask)
            with timer("train"), actor.train_mode(), critic.train_mode():
                for _ in range(config.ppo_epochs):
                    optimizer.zero_grad(set_to_none=True)
                    for rows in torch.arange(len(prompts)).chunk(ga):
                        sub, share = rows_of(batch, rows), mask[rows].sum() / mask.sum()
                        logp = actor.token_logprobs(sub, role="actor")
                        pg, _ = clipped_policy_loss(
                            logp, old_logp[rows], advantages[rows], mask[rows], clip=config.clip
                        )
                        vf = clipped_value_loss(state_values(critic, sub), old_values[rows], returns[rows], mask[rows],
                                                clip=config.value_clip)  # fmt: skip
                        ((pg + config.vf_coef * vf) * share).backward()
                    torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                    optimizer.step()
            seconds.append(sum(timer.seconds.values()))
    except torch.OutOfMemoryError as error:
        return {"method": "ppo (classic: 4 models)", "error": f"out of memory: {str(error)[:120]}"}
    return {
        "method": "ppo (classic: 4 models)",
        "grad_accumulation": grad_accumulation,
        "peak_gb": peak_bytes(device) / 2**30,
        "seconds_per_sample": seconds[-1] / config.batch_size,
        "seconds_per_phase": dict(timer.seconds),
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
        hydra_ppo = rows[-2]
        classic = {"shape": name, **run_classic_ppo(model_dir, args, device, hydra_ppo["grad_accumulation"])}
        if "seconds_per_sample" in classic:
            classic["hydra_latency_ratio"] = hydra_ppo["seconds_per_sample"] / classic["seconds_per_sample"]
        print(classic, flush=True)
        rows.append(classic)
    path = write_results("fit_24gb", device, rows, budget_gb=BUDGET_GB, smoke=args.smoke)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
