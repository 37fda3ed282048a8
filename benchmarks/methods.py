"""The sampling methods side by side on one sample budget: which raises an unseen reward, at what KL, how fast.

    nice -n 10 python benchmarks/methods.py                  # 5 methods x 3 tasks x 3 seeds, ~12 min on 2 idle cores
    python benchmarks/methods.py --methods ppo grpo --seeds 0 1 --steps 20

Why: a method that learns slower than its peers on the same samples is a bug until shown otherwise (PPO once
moved a fresh-sample reward from 0.027 to 0.041 where GRPO reached 0.073). Each method sees the same number of
sampled responses: `--steps` rollouts of 16 samples each (GRPO and RLOO: 4 prompts x 4 samples; PPO: 16
prompts x 1), and a method that makes k optimizer steps per rollout (PPO's ppo_epochs) gets k x steps. The
learning rate, LoRA rank, sampling and each method's own defaults (its KL coefficient among them) are as
shipped.

The model is the bundled demo model (lorarlhf/demo/model: a 3-layer word-level Llama that writes product
reviews), unquantized. The rewards are programmatic and unseen by its training:
    short    brevity: 1 - words / 12, floored at 0
    family   the share of words that are a family member (husband, wife, son, daughter, friend)
    answer   a reward of the row: its `answer` column holds the product the prompt names, and the reward is
             1 when the response names that product, minus 0.5 when it names another one

After training, 64 fresh samples per role (new sampling seeds) give the actor's and the reference's mean
reward and the actor's KL to the reference per sequence (sum over the response of log pi - log ref on actor
samples). A method not in lorarlhf.methods.table.METHODS is recorded as missing, not skipped silently.

Raw rows (one per method, task and seed, with the learning curve) go to benchmarks/results/methods-cpu.json,
the curves to docs/methods-curves.png, and the median / spread table to stdout (BENCHMARKS.md shows it).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import math
import statistics
import time
from pathlib import Path

import torch
from plumbing import write_results

ROOT = Path(__file__).resolve().parent.parent
PLOT = ROOT / "docs" / "methods-curves.png"
METHOD_NAMES = ("ppo", "grpo", "rloo", "reinforce_pp", "online_dpo")
SAMPLES_PER_ROLLOUT = 16
GROUP = 4  # samples per prompt of the methods that compare a prompt's samples
EVAL_SAMPLES = 64
# The settings every method shares; each method's own options keep their defaults.
SHARED = dict(
    lr=5e-3, lora_r=8, lora_alpha=16, quantize=None, max_length=48, max_new_tokens=16,
    gradient_checkpointing=False,
)  # fmt: skip
# The config fields that multiply a method's optimizer steps per rollout.
UPDATES_PER_ROLLOUT = ("ppo_epochs", "num_iterations", "num_minibatches")
FAMILY = ("husband", "wife", "son", "daughter", "friend")


def short(prompts, completions):
    return [max(0.0, 1.0 - len(text.split()) / 12) for text in completions]


def family(prompts, completions):
    return [sum(w in FAMILY for w in text.split()) / max(len(text.split()), 1) for text in completions]


def answer(prompts, completions, answer):
    from lorarlhf.demo.world import PRODUCTS

    rewards = []
    for text, product in zip(completions, answer, strict=True):
        words = set(text.split())
        rewards.append(float(product in words) - 0.5 * bool(words & (set(PRODUCTS) - {product})))
    return rewards


def tasks() -> dict[str, tuple]:
    """name -> (prompts, columns, reward function)."""
    from lorarlhf.demo.world import PRODUCTS, PROMPT_TEMPLATES

    rows = [(template.format(product=p), p) for p in PRODUCTS for template in PROMPT_TEMPLATES]
    prompts = [prompt for prompt, _ in rows]
    return {
        "short": (prompts, {}, short),
        "family": (prompts, {}, family),
        "answer": (prompts, {"answer": [product for _, product in rows]}, answer),
    }


def config_for(method, seed: int, rollouts: int, overrides: dict | None = None):
    """The method's config with the shared settings and a rollout of SAMPLES_PER_ROLLOUT samples."""
    names = {field.name for field in dataclasses.fields(method.config)}
    options = {**SHARED, "seed": seed, **({"group_size": GROUP} if "group_size" in names else {})}
    options |= overrides or {}
    config = method.config(**options)
    updates = math.prod(getattr(config, name, 1) for name in UPDATES_PER_ROLLOUT)
    batch_size = SAMPLES_PER_ROLLOUT // config.samples_per_prompt
    return dataclasses.replace(config, batch_size=batch_size, steps=rollouts * updates)


@torch.no_grad()
def evaluate(hydra, prompts, columns, reward, seed: int) -> dict[str, float]:
    """Mean reward of fresh actor and reference samples, and the actor's KL to the reference per sequence."""
    from lorarlhf.training.rollout import SamplingConfig, generate_rollout

    rows = [i % len(prompts) for i in range(EVAL_SAMPLES)]
    chosen = [prompts[i] for i in rows]
    kwargs = {name: [values[i] for i in rows] for name, values in columns.items()}
    seeds = [10**6 + 1000 * seed + i for i in range(EVAL_SAMPLES)]  # never a training seed
    sampling = SamplingConfig(max_new_tokens=SHARED["max_new_tokens"])
    result = {}
    for role in ("actor", "reference"):
        rollout = generate_rollout(hydra, chosen, sampling, seeds, role=role)
        result[f"{role}_reward"] = statistics.fmean(reward(chosen, rollout.responses, **kwargs))
        if role == "actor":
            batch = rollout.batch()
            log_ratio = hydra.token_logprobs(batch, role="actor") - hydra.token_logprobs(batch, role="reference")
            result["kl"] = log_ratio.sum(dim=1).mean().item()
    return result


def run_one(name: str, task: str, seed: int, rollouts: int, overrides: dict | None = None) -> dict:
    from lorarlhf import HydraModel
    from lorarlhf.methods.table import METHODS
    from lorarlhf.model.loading import DEMO_MODEL_DIR

    prompts, columns, reward = tasks()[task]
    method = METHODS[name]
    config = config_for(method, seed, rollouts, overrides)
    torch.manual_seed(seed)
    hydra = HydraModel.from_pretrained(
        str(DEMO_MODEL_DIR), quantize=None, lora_r=config.lora_r, lora_alpha=config.lora_alpha,
        roles=method.roles, device="cpu",
    )  # fmt: skip
    started = time.perf_counter()
    run = method.trainer(hydra, prompts, config, reward_fn=reward, columns=columns or None, progress=False)
    seconds = time.perf_counter() - started
    per_rollout = config.batch_size * config.samples_per_prompt
    curve = [[(i + 1) * per_rollout, record["rl/reward_mean"]] for i, record in enumerate(run.history)]
    return {
        "method": name, "task": task, "seed": seed, "steps": config.steps, "batch_size": config.batch_size,
        "samples_per_prompt": config.samples_per_prompt, "samples": len(run.history) * per_rollout,
        "train_seconds": round(seconds, 2), **evaluate(hydra, prompts, columns, reward, seed), "curve": curve,
    }  # fmt: skip


def summary(rows: list[dict], methods: list[str], task_names: list[str]) -> list[dict]:
    """Per task and method: median over seeds and spread (max - min) of the gain over the reference, the
    actor's reward, the KL, and the median seconds."""
    table = []
    for task in task_names:
        for name in methods:
            done = [r for r in rows if r.get("task") == task and r["method"] == name and "actor_reward" in r]
            if not done:
                table.append({"task": task, "method": name, "missing": True})
                continue
            entry = {"task": task, "method": name, "seeds": len(done)}
            gains = [r["actor_reward"] - r["reference_reward"] for r in done]
            for key, values in (
                ("gain", gains),
                ("actor_reward", [r["actor_reward"] for r in done]),
                ("reference_reward", [r["reference_reward"] for r in done]),
                ("kl", [r["kl"] for r in done]),
            ):
                entry[key] = statistics.median(values)
                entry[f"{key}_spread"] = max(values) - min(values)
            entry["seconds"] = statistics.median(r["train_seconds"] for r in done)
            table.append(entry)
    return table


def markdown(table: list[dict]) -> str:
    lines = [
        "| task | method | fresh reward, actor (ref) | gain over the reference | KL per sequence (nats) | s per run |",
        "|---|---|---|---|---|---|",
    ]
    for e in table:
        if e.get("missing"):
            lines.append(f"| {e['task']} | {e['method']} | missing | | | |")
            continue
        lines.append(
            f"| {e['task']} | {e['method']} | {e['actor_reward']:.3f} ({e['reference_reward']:.3f}) "
            f"| {e['gain']:+.3f} ± {e['gain_spread'] / 2:.3f} | {e['kl']:.2f} ± {e['kl_spread'] / 2:.2f} "
            f"| {e['seconds']:.0f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], methods: list[str], task_names: list[str], path: Path) -> Path:
    """Rollout reward against samples seen, one panel per task: the median over seeds, the seeds' range shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(task_names), figsize=(5 * len(task_names), 4), squeeze=False)
    for ax, task in zip(axes[0], task_names, strict=True):
        for name in methods:
            curves = [r["curve"] for r in rows if r.get("task") == task and r["method"] == name and r.get("curve")]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            x = [curves[0][i][0] for i in range(n)]
            per_point = [[c[i][1] for c in curves] for i in range(n)]
            median = _smooth([statistics.median(values) for values in per_point])
            (line,) = ax.plot(x, median, label=name)
            low, high = _smooth([min(v) for v in per_point]), _smooth([max(v) for v in per_point])
            ax.fill_between(x, low, high, color=line.get_color(), alpha=0.15)
        ax.set_title(f"task: {task}")
        ax.set_xlabel("samples seen")
        ax.set_ylabel("mean reward of the rollout")
        ax.grid(alpha=0.3)
        ax.legend()
    figure.suptitle("Reward while training: median over seeds (line), min-max (band), trailing mean of 5 rollouts")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _smooth(values: list[float], window: int = 5) -> list[float]:
    return [statistics.fmean(values[max(0, i - window + 1) : i + 1]) for i in range(len(values))]


def save(args, rows: list[dict], overrides: dict, started: float) -> tuple[Path, list[dict]]:
    table = summary(rows, args.methods, args.tasks)
    settings = {**SHARED, "samples_per_rollout": SAMPLES_PER_ROLLOUT, "group_size": GROUP, "rollouts": args.steps}
    settings["overrides"] = overrides
    elapsed = round(time.perf_counter() - started)
    out = write_results(args.name, "cpu", rows, settings=settings, seeds=args.seeds, elapsed_s=elapsed, summary=table)
    return out, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHOD_NAMES), help=f"default: {' '.join(METHOD_NAMES)}")
    parser.add_argument("--tasks", nargs="+", default=["short", "family", "answer"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=40, help="rollouts per run, 16 samples each (default 40)")
    parser.add_argument("--name", default="methods", help="results file benchmarks/results/<name>-cpu.json")
    parser.add_argument("--plot", type=Path, default=PLOT)
    parser.add_argument(
        "--set", nargs="+", default=[], metavar="METHOD.FIELD=VALUE", help="override an option, e.g. ppo.lam=1.0"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny matmuls: one thread is faster, and the numbers do not depend on scheduling

    from lorarlhf.methods.table import METHODS

    overrides: dict[str, dict] = {}
    for item in args.set:
        target, _, value = item.partition("=")
        name, _, field = target.partition(".")
        overrides.setdefault(name, {})[field] = ast.literal_eval(value)
    started, rows = time.perf_counter(), []
    available = [name for name in args.methods if name in METHODS]
    for name in args.methods:
        if name not in METHODS:
            print(f"{name}: missing (not in lorarlhf.methods.table.METHODS)", flush=True)
            rows.append({"method": name, "missing": True})
    out, table = save(args, rows, overrides, started)
    for task in args.tasks:
        for name in available:
            for seed in args.seeds:
                row = run_one(name, task, seed, args.steps, overrides.get(name))
                rows.append(row)
                print(
                    f"{task:<7} {name:<12} seed {seed}: actor {row['actor_reward']:.3f} reference "
                    f"{row['reference_reward']:.3f} KL {row['kl']:.2f} ({row['train_seconds']:.0f} s)",
                    flush=True,
                )
                out, table = save(args, rows, overrides, started)  # after every run: a stopped run keeps its rows
    elapsed = round(time.perf_counter() - started)
    print(markdown(table))
    print(f"wrote {out} and {plot(rows, available, args.tasks, args.plot)}")
    print(f"{elapsed} s")


if __name__ == "__main__":
    main()
