"""Where one lorarlhf step's time goes: the phases the trainer records and PyTorch's profiler's top operators.

    python benchmarks/profile_step.py                 # GRPO, fp32 base, the 64m shape of peers.py
    python benchmarks/profile_step.py --row dpo --top 20

The same work as peers.py's rows (4 prompts x 4 samples x 32 new tokens, beta 0.04; or 4 pairs for DPO and the
reward model), in this process on one CPU thread, after one warm-up step. Writes
benchmarks/results/profile-<row>-<shape>-cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--row", default="grpo-fp32", choices=("grpo-fp32", "grpo-nf4", "dpo", "reward"))
    parser.add_argument("--shape", default="64m", choices=("64m", "112m"))
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import lorarlhf  # noqa: F401  (before torch: its CPU allocator rule needs that)

    sys.path.insert(0, str(HERE))
    import torch
    from peers import SHAPES
    from plumbing import make_model_dir
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = make_model_dir(Path(scratch) / "model", SHAPES[args.shape])
        records, profiler = [], profile(activities=[ProfilerActivity.CPU])

        def on_step(record):
            records.append({k: v for k, v in record.items() if k.startswith("time/")})
            if len(records) == 1:  # the warm-up step is done: profile the next one
                profiler.start()
            else:
                profiler.stop()

        start = time.perf_counter()
        run(args.row, model_dir, on_step)
        wall = time.perf_counter() - start
    total = sum(event.self_cpu_time_total for event in profiler.key_averages())
    top = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[: args.top]
    ops = [
        {"op": e.key, "self_seconds": round(e.self_cpu_time_total / 1e6, 3),
         "share": round(e.self_cpu_time_total / total, 3), "calls": e.count}
        for e in top
    ]  # fmt: skip
    result = {"row": args.row, "shape": args.shape, "profiled_step_phases": records[-1], "wall_seconds": round(wall),
              "profiled_self_seconds": round(total / 1e6, 2), "top_ops": ops}  # fmt: skip
    out = HERE / "results" / f"profile-{args.row}-{args.shape}-cpu.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(records[-1]))
    for op in ops:
        print(f"{op['share']:6.1%} {op['self_seconds']:8.3f} s {op['calls']:6d}  {op['op']}")
    print(f"wrote {out}")


def run(row: str, model_dir: Path, on_step) -> None:
    from peers import BETA, lowercase, pair_records, prompts_for

    from lorarlhf import HydraModel

    roles = ("reward",) if row == "reward" else ("actor",)
    quantize = "nf4" if row == "grpo-nf4" else None
    hydra = HydraModel.from_pretrained(
        model_dir, quantize=quantize, lora_r=16, lora_alpha=32, device="cpu", roles=roles, gradient_checkpointing=True
    )
    if row.startswith("grpo"):
        from lorarlhf.methods.grpo import GRPOConfig, train_grpo

        config = GRPOConfig(steps=2, batch_size=4, group_size=4, max_new_tokens=32, kl_coef=BETA, lr=1e-5,
                            loss_type="token", quantize=quantize, gradient_checkpointing=True)  # fmt: skip
        train_grpo(hydra, prompts_for(64), config, reward_fn=lowercase, on_step=on_step, progress=False)
    else:
        from lorarlhf.data import load_preferences

        common = dict(steps=2, batch_size=4, lr=1e-4, eval_fraction=0.0, max_length=512)
        pairs = load_preferences(pair_records(64))
        if row == "dpo":
            from lorarlhf.methods.dpo import DPOConfig, train_dpo

            train_dpo(hydra, pairs, DPOConfig(beta=0.1, **common), on_step=on_step, progress=False)
        else:
            from lorarlhf.methods.reward import RewardConfig, train_reward_model

            train_reward_model(hydra, pairs, RewardConfig(**common), on_step=on_step, progress=False)


if __name__ == "__main__":
    main()
