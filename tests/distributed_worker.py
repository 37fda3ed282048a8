"""One process of a data-parallel test run (tests/test_distributed.py starts one per rank, or one alone).

    python distributed_worker.py METHOD MODEL_DIR OUT_DIR BATCH_SIZE
    python distributed_worker.py align MODEL_DIR RUN_DIR BATCH_SIZE fresh|resume

Trains METHOD on a fixed synthetic task, records a hash of the trainable weights after every step, and
writes them, the history and the final weights to OUT_DIR/rank<r>.json and .safetensors.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from lorarlhf import HydraModel
from lorarlhf.data import PreferencePair
from lorarlhf.training import distributed


def run_align(model_dir: str, out_dir: str, batch_size: int, resume: bool) -> None:
    """The whole align() call, checkpointing every 2 steps; with resume, continuing from the newest."""
    import lorarlhf

    records = [
        {"prompt": f"Question {i}:", "chosen": f"{w} yes", "rejected": f"{w} no"}
        for i, w in enumerate(["cat", "sky"] * 8)
    ]
    lorarlhf.align(
        model_dir, records, method="dpo", output_dir=out_dir, steps=6, batch_size=batch_size, lr=1e-2, quantize=None,
        save_every=2, keep_checkpoints=5, samples=0, eval_fraction=0.0, resume=resume, gradient_checkpointing=False,
    )  # fmt: skip


def main() -> None:
    torch.set_num_threads(1)
    if sys.argv[1] == "align":
        run_align(sys.argv[2], sys.argv[3], int(sys.argv[4]), resume=sys.argv[5] == "resume")
        return
    method, model_dir, out_dir, batch_size = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    distributed.init_from_environment()
    torch.manual_seed(0)
    roles = {"dpo": ("actor",), "rm": ("reward",), "grpo": ("actor",), "sft": ("sft",), "ppo": ("actor", "critic")}[
        method
    ]
    hydra = HydraModel.from_pretrained(model_dir, quantize=None, lora_r=4, roles=roles)
    role = roles[0]
    hashes, history = [], []

    def on_step(record):
        digest = hashlib.sha256()
        for param in hydra.trainable_parameters(role):
            digest.update(param.detach().contiguous().numpy().tobytes())
        hashes.append(digest.hexdigest())
        history.append(record)

    pairs = [PreferencePair(f"Question {i}:", f"{w} yes", f"{w} no") for i, w in enumerate(["cat", "sky"] * 8)]
    if method == "dpo":
        from lorarlhf.methods.dpo import DPOConfig, train_dpo

        config = DPOConfig(steps=4, batch_size=batch_size, lr=1e-2, gradient_checkpointing=False)
        train_dpo(hydra, pairs, config, on_step=on_step, progress=False)
    elif method == "rm":
        from lorarlhf.methods.reward import RewardConfig, train_reward_model

        config = RewardConfig(steps=4, batch_size=batch_size, lr=1e-2, gradient_checkpointing=False)
        train_reward_model(hydra, pairs, config, on_step=on_step, progress=False)
    elif method == "sft":
        from lorarlhf.data.demonstrations import Demonstration
        from lorarlhf.methods.sft import SFTConfig, train_sft

        demos = [Demonstration(p.prompt, p.chosen) for p in pairs]
        config = SFTConfig(steps=4, batch_size=batch_size, lr=1e-2, gradient_checkpointing=False)
        train_sft(hydra, demos, config, on_step=on_step, progress=False)
    else:
        from lorarlhf.methods.grpo import GRPOConfig, train_grpo
        from lorarlhf.methods.ppo import PPOConfig, train_ppo

        def lowercase(prompts, responses):
            return [sum(c.islower() for c in r) / max(len(r), 1) for r in responses]

        prompts = [p.prompt for p in pairs]
        if method == "grpo":
            config = GRPOConfig(steps=3, batch_size=batch_size, group_size=2, max_new_tokens=6, lr=1e-2)
            train_grpo(hydra, prompts, config, reward_fn=lowercase, on_step=on_step, progress=False)
        else:
            config = PPOConfig(steps=4, batch_size=batch_size, max_new_tokens=6, lr=1e-2)
            train_ppo(hydra, prompts, config, reward_fn=lowercase, on_step=on_step, progress=False)
    rank = distributed.rank()
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = {f"{i}": p.detach().contiguous() for i, p in enumerate(hydra.trainable_parameters(role))}
    save_file(weights, out_dir / f"rank{rank}.safetensors")
    (out_dir / f"rank{rank}.json").write_text(json.dumps({"hashes": hashes, "history": history}))


if __name__ == "__main__":
    main()
