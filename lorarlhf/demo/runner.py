"""`lorarlhf demo`: the whole RLHF loop on the bundled review model, on a CPU, in a few minutes.

    votes     simulated annotators compare pairs of reviews (hidden preference: positive sentiment)
    pairs     their votes aggregated by majority, agreement reported
    reward    the reward adapter learns the preference from the pairs
    PPO       the actor adapter learns to write what the reward adapter likes, held near the reference by KL
    judge     the gold rule scores fresh samples of the reference and of the actor

The gold rule is never seen by training: it only measures whether the model learnt the annotators' hidden
preference from their noisy votes.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from lorarlhf.demo.world import PROMPTS, gold_sentiment, is_well_formed, prompt_product, sample_review, simulated_votes
from lorarlhf.plots import plot_run
from lorarlhf.training.rollout import SamplingConfig, generate_rollout

# The demo's settings: small batches of short reviews, so the loop runs in minutes on 2 CPU cores.
DEMO_SETTINGS = dict(
    quantize="nf4",
    lora_r=8,
    lora_alpha=16,
    max_length=48,
    max_new_tokens=20,
    gradient_checkpointing=False,
    rm_steps=150,
    rm_lr=3e-3,
    steps=60,
    lr=2e-3,
    batch_size=16,
    # A KL budget: at 0.2 the actor drifted to KL ~4 and wrote what the reward adapter over-rewards (lists of
    # positive words, "... worth every penny . waste of money ."); at 1.0 it stays fluent, at KL ~0.8
    # (benchmarks/demo_numbers.py measures both shares and the KL over seeds).
    kl_coef=1.0,
    lam=1.0,
    eval_fraction=0.2,
    samples=4,
)
QUICK_SETTINGS = dict(rm_steps=40, steps=8)  # a smoke run: every stage, few steps (for tests)


@dataclass
class DemoReport:
    """What the demo measured; str() is the before/after table."""

    output_dir: str
    gold_before: float
    """Mean gold sentiment (1 positive, 0 negative) of reference samples: the model before alignment."""
    gold_after: float
    """The same for the aligned actor."""
    fluent_before: float
    """Share of reference samples that are well-formed reviews of the prompted product."""
    fluent_after: float
    """The same for the actor: alignment should not cost fluency."""
    kl: float
    """Mean KL(actor || reference) per sampled review, in nats (an unbiased estimate on actor samples)."""
    rm_eval_accuracy: float
    """Held-out accuracy of the reward adapter on the annotators' aggregated votes."""
    rm_gold_accuracy: float
    """Its accuracy on fresh positive-vs-negative pairs, judged by the gold rule."""
    kappa: float | None
    """Fleiss' kappa of the simulated annotators."""
    seconds: float
    side_by_side: list[dict] = field(default_factory=list)
    """A few prompts with a reference and an actor sample each."""

    def __str__(self) -> str:
        rows = [
            ("positive reviews (gold rule)", f"{self.gold_before:.2f}", f"{self.gold_after:.2f}"),
            ("well-formed reviews of the product", f"{self.fluent_before:.2f}", f"{self.fluent_after:.2f}"),
            ("KL to the reference (nats per review)", "0", f"{self.kl:.2f}"),
            ("reward model, held-out vote accuracy", "", f"{self.rm_eval_accuracy:.2f}"),
            ("reward model, gold pair accuracy", "", f"{self.rm_gold_accuracy:.2f}"),
        ]
        width = max(len(name) for name, _, _ in rows)
        lines = [f"{'':<{width}}   {'before':>8}   {'after':>8}"]
        lines += [f"{name:<{width}}   {before:>8}   {after:>8}" for name, before, after in rows]
        kappa = "n/a" if self.kappa is None else f"{self.kappa:.2f}"
        lines.append(f"\nannotators' agreement (Fleiss' kappa): {kappa}; time: {self.seconds:.0f} s")
        for sample in self.side_by_side:
            lines.append(f"\n{sample['prompt']}")
            lines.append(f"  before: {sample['before']}")
            lines.append(f"  after:  {sample['after']}")
        lines.append(f"\nrun, plot and samples in {self.output_dir}")
        return "\n".join(lines)


def run_demo(
    output_dir: str | Path | None = None,
    *,
    votes: int = 400,
    seed: int = 0,
    quick: bool = False,
    eval_samples: int = 256,
    progress: bool = True,
    **overrides,
) -> DemoReport:
    """Votes -> pairs -> reward adapter -> PPO on the bundled model; returns (and writes) the before/after report.

    quick: a smoke run with few steps (the numbers then show the loop works, not that it converged).
    overrides: any align() option for PPO, e.g. steps=100.
    """
    from lorarlhf.pipeline import align

    started = time.perf_counter()
    if output_dir is None:
        output_dir = Path("lorarlhf-runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    records = simulated_votes(votes, annotators=3, seed=seed)
    settings = {**DEMO_SETTINGS, **(QUICK_SETTINGS if quick else {}), "seed": seed, **overrides}
    result = align("demo", records, method="ppo", output_dir=output_dir, **settings)
    out, hydra = result.output_dir, result.model
    (out / "votes.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))

    sampling = SamplingConfig(max_new_tokens=settings["max_new_tokens"])
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(eval_samples)]
    seeds = list(range(10_000 + seed, 10_000 + seed + eval_samples))  # fresh draws, the same for both roles
    before = generate_rollout(hydra, prompts, sampling, seeds, role="reference")
    after = generate_rollout(hydra, prompts, sampling, seeds, role="actor")
    report = DemoReport(
        output_dir=str(out),
        gold_before=_mean([gold_sentiment(text) for text in before.responses]),
        gold_after=_mean([gold_sentiment(text) for text in after.responses]),
        fluent_before=_fluency(prompts, before.responses),
        fluent_after=_fluency(prompts, after.responses),
        kl=_sequence_kl(hydra, after),
        rm_eval_accuracy=result.metrics.get("rm/eval_accuracy", float("nan")),
        rm_gold_accuracy=_reward_gold_accuracy(hydra, seed),
        kappa=_kappa(records),
        seconds=time.perf_counter() - started,
        side_by_side=[
            {"prompt": p, "before": b, "after": a}
            for p, b, a in zip(prompts[:4], before.responses[:4], after.responses[:4], strict=True)
        ],
    )
    (out / "demo_report.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    plot_run(out, title="lorarlhf demo")  # again, now with the gold rule's verdict as the headline
    return report


@torch.no_grad()
def _sequence_kl(hydra, rollout) -> float:
    """Mean over reviews of sum_t log pi(y_t) - log ref(y_t) on the actor's own samples: KL(pi || ref)."""
    batch = rollout.batch()
    actor = hydra.token_logprobs(batch, role="actor").sum(1)
    reference = hydra.token_logprobs(batch, role="reference").sum(1)
    return (actor - reference).mean().item()


@torch.no_grad()
def _reward_gold_accuracy(hydra, seed: int, n: int = 128) -> float:
    """How often the reward adapter scores a fresh positive review above a fresh negative one."""
    rng = random.Random(seed + 1)
    products = [rng.choice(PROMPTS) for _ in range(n)]
    positive = [sample_review(rng, prompt_product(p), True) for p in products]
    negative = [sample_review(rng, prompt_product(p), False) for p in products]
    scores = hydra.score(products + products, positive + negative)
    return (scores[:n] > scores[n:]).float().mean().item()


def _fluency(prompts: list[str], responses: list[str]) -> float:
    return _mean([is_well_formed(text, prompt_product(p)) for p, text in zip(prompts, responses, strict=True)])


def _kappa(records: list[dict]) -> float | None:
    from lorarlhf.data import load_preferences

    return load_preferences(records).report.agreement.fleiss_kappa


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)
