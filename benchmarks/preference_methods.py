"""The DPO family side by side on one synthetic preference task: which learns the held-out rule, at what step time.

Why: DPO, IPO, conservative DPO, CPL, KTO, ORPO and SimPO all learn from the same preferences without sampling,
but differ in what they fit (a log-ratio to a reference, a regret, an odds ratio, a length-normalised likelihood)
and in how many forward passes a step costs (reference passes; KTO's mismatched pairs). The table shows both on
one task, so a choice between them starts from numbers rather than from each paper's own benchmark.

What: a tiny Llama (lorarlhf.model.tiny) learns "the chosen answer ends with a good word (yes, sure, right,
true), the rejected one with a bad word (no, never, wrong, false)" from 96 training pairs, a fifth of them with
the labels flipped (noisy annotators), and is scored on 48 held-out, clean pairs whose prompts and stems it
never saw. Each method trains 20 steps of 16 sequences (8 pairs; KTO: the same pairs split into 16 thumbs), lr 2e-3, its
other settings at their defaults (cDPO: label_smoothing 0.2, the true flip rate). Held-out accuracy is the share
of pairs whose chosen answer has the higher implicit reward by the method's own measure (DPO, IPO, cDPO and
KTO: the log-ratio to the reference; CPL and SimPO: the (length-normalised) log-prob; ORPO: the log odds), so 0.5
is chance. Step time is the mean time between the ends of consecutive steps (setup and evaluation excluded).
Three seeds (model init, data, order): the median and the spread (max - min).

Writes benchmarks/results/preference_methods-cpu.json (or -cuda) with every run's row.

    nice -n 10 python benchmarks/preference_methods.py    # about 6 minutes on 2 busy cores
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from plumbing import write_results

from lorarlhf import HydraModel
from lorarlhf.data import PreferencePair, thumbs
from lorarlhf.methods.dpo import DPOConfig, evaluate_dpo, train_dpo
from lorarlhf.methods.kto import KTOConfig, train_kto
from lorarlhf.methods.orpo import ORPOConfig, train_orpo
from lorarlhf.methods.simpo import SimPOConfig, train_simpo
from lorarlhf.model.tiny import save_tiny_model

SEEDS = (0, 1, 2)
STEPS, LR, PAIRS_PER_STEP = 20, 2e-3, 8
TRAIN_PAIRS, HELD_OUT_PAIRS, FLIPPED = 96, 48, 0.2
GOOD, BAD = ("yes", "sure", "right", "true"), ("no", "never", "wrong", "false")
WORDS = ["the", "cat", "sat", "on", "a", "mat", "blue", "sky", "red", "dog"]
COMMON = dict(steps=STEPS, lr=LR, batch_size=PAIRS_PER_STEP, eval_fraction=0.0, quantize=None)
# name -> (trainer, config, what it trains on: "pairs" or "thumbs")
METHODS = {
    "dpo": (train_dpo, lambda seed: DPOConfig(seed=seed, **COMMON), "pairs"),
    "ipo": (train_dpo, lambda seed: DPOConfig(loss="ipo", seed=seed, **COMMON), "pairs"),
    "cdpo": (train_dpo, lambda seed: DPOConfig(label_smoothing=FLIPPED, seed=seed, **COMMON), "pairs"),
    "cpl": (train_dpo, lambda seed: DPOConfig(loss="cpl", seed=seed, **COMMON), "pairs"),
    "kto": (train_kto, lambda seed: KTOConfig(seed=seed, **COMMON | {"batch_size": 2 * PAIRS_PER_STEP}), "thumbs"),
    "orpo": (train_orpo, lambda seed: ORPOConfig(seed=seed, **COMMON), "pairs"),
    "simpo": (train_simpo, lambda seed: SimPOConfig(seed=seed, **COMMON), "pairs"),
}


def preference_pairs(n: int, seed: int, flipped: float = 0.0) -> list[PreferencePair]:
    """The chosen answer ends with a GOOD word, the rejected one with a BAD word after the same stem; a share
    `flipped` of the pairs has the labels swapped."""
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        stem = " ".join(rng.choice(WORDS) for _ in range(3))
        good, bad = f"{stem} {rng.choice(GOOD)}", f"{stem} {rng.choice(BAD)}"
        if rng.random() < flipped:
            good, bad = bad, good
        pairs.append(PreferencePair(f"Question {seed}-{i}:", good, bad))
    return pairs


def held_out_accuracy(name: str, run, hydra, held_out: list[PreferencePair], config) -> float:
    """The method's own held-out accuracy; KTO's on pairs, by the implicit reward DPO's evaluation computes."""
    if name == "kto":
        return evaluate_dpo(hydra, held_out, DPOConfig(beta=config.beta, batch_size=PAIRS_PER_STEP))[
            "dpo/eval_accuracy"
        ]
    stage = "dpo" if name in ("dpo", "ipo", "cdpo", "cpl") else name
    return run.metrics[f"{stage}/eval_accuracy"]


def run_one(name: str, seed: int, model_dir: Path) -> dict:
    trainer, make_config, kind = METHODS[name]
    config = make_config(seed)
    train = preference_pairs(TRAIN_PAIRS, seed=100 + seed, flipped=FLIPPED)
    held_out = preference_pairs(HELD_OUT_PAIRS, seed=200 + seed)
    torch.manual_seed(seed)
    hydra = HydraModel.from_pretrained(model_dir, device=DEVICE, quantize=None, lora_r=8)
    data = thumbs(train) if kind == "thumbs" else train
    stamps = []  # each step's end: the steps' time without setup and held-out evaluation
    held = {"eval_feedback": thumbs(held_out)} if kind == "thumbs" else {"eval_pairs": held_out}
    run = trainer(hydra, data, config, on_step=lambda record: stamps.append(time.perf_counter()), progress=False,
                  **held)  # fmt: skip
    seconds = (stamps[-1] - stamps[0]) / (len(stamps) - 1) * STEPS
    accuracy = held_out_accuracy(name, run, hydra, held_out, config)
    row = {"method": name, "seed": seed, "held_out_accuracy": accuracy, "step_s": seconds / STEPS, "trained_on": kind}
    print(f"{name:6s} seed {seed}: held-out accuracy {accuracy:.3f}, {1000 * seconds / STEPS:.0f} ms/step", flush=True)
    return row


def summary(rows: list[dict]) -> list[dict]:
    table = []
    for name in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == name]
        acc, step = [r["held_out_accuracy"] for r in mine], [r["step_s"] for r in mine]
        table.append({
            "method": name,
            "accuracy_median": statistics.median(acc), "accuracy_spread": max(acc) - min(acc),
            "step_ms_median": 1000 * statistics.median(step), "step_ms_spread": 1000 * (max(step) - min(step)),
        })  # fmt: skip
    return table


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

if __name__ == "__main__":
    torch.set_num_threads(1)  # like the tests: one thread is faster for tiny models, and results are stable
    names = sys.argv[1:] or list(METHODS)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_tiny_model(Path(tmp) / "tiny", seed=0)
        rows = [run_one(name, seed, model_dir) for name in names for seed in SEEDS]
    table = summary(rows)
    print("| method | held-out accuracy (median, spread) | ms / step (median, spread) |")
    for t in table:
        print(f"| {t['method']} | {t['accuracy_median']:.3f} ({t['accuracy_spread']:.3f}) | "
                  f"{t['step_ms_median']:.0f} ({t['step_ms_spread']:.0f}) |")  # fmt: skip
    settings = dict(steps=STEPS, lr=LR, pairs_per_step=PAIRS_PER_STEP, train_pairs=TRAIN_PAIRS,
                    held_out_pairs=HELD_OUT_PAIRS, flipped=FLIPPED, seeds=list(SEEDS))  # fmt: skip
    print(write_results("preference_methods", DEVICE, rows, settings=settings, summary=table))
