"""The numbers README.md shows for `lorarlhf demo`, from one run, and how far they move over seeds.

Why: the README's before/after table is the demo's shop window, and hand-copied numbers drift from what a
fresh install prints (they once read KL 2.22 while every run gave 4.00, with reward-hacked samples). This
script makes the table from a run, and tests/test_demo.py checks the README against it: the README's numbers
must equal this file's seed-0 run, and a fresh run of the demo must land within a margin at least as wide
as the spread measured here.

What: runs the demo with its default settings (lorarlhf.demo.runner.DEMO_SETTINGS, as `lorarlhf demo` does)
for seeds 0, 1 and 2, and writes benchmarks/results/demo_numbers-cpu.json: per seed the gold rule's positive
share, the well-formed share and the KL before/after, the reward model's accuracies, kappa, seconds and the
side-by-side samples; per quantity the spread (max - min over the seeds); and the README block, which is the
seed-0 run's table as `lorarlhf demo` prints it.

    nice -n 10 python benchmarks/demo_numbers.py             # about 3-4 minutes on 2 cores
    nice -n 10 python benchmarks/demo_numbers.py --readme    # also writes the block into README.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "benchmarks" / "results" / "demo_numbers-cpu.json"
README = ROOT / "README.md"
SEEDS = (0, 1, 2)
README_SEED = 0
QUANTITIES = (
    "gold_before", "gold_after", "fluent_before", "fluent_after", "kl", "rm_eval_accuracy", "rm_gold_accuracy",
    "kappa",
)  # fmt: skip
# The README's block is the fenced code block right after this line.
README_ANCHOR = "`lorarlhf demo` prints what it measured"


def readme_block(report) -> str:
    """The table `lorarlhf demo` prints, without its last line (the run directory, which differs per run)."""
    lines = str(report).splitlines()
    return "\n".join(lines[:-1]).rstrip() + "\n"


def write_readme(block: str) -> None:
    text = README.read_text()
    pattern = re.compile(rf"({re.escape(README_ANCHOR)}[^\n]*\n\n```\n)(.*?)(```)", re.DOTALL)
    if len(pattern.findall(text)) != 1:
        raise SystemExit(f"README.md: expected one code block after {README_ANCHOR!r}")
    README.write_text(pattern.sub(lambda m: m[1] + block + m[3], text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", action="store_true", help="write the seed-0 block into README.md")
    args = parser.parse_args()

    import torch
    import transformers

    from lorarlhf.demo.runner import DEMO_SETTINGS, run_demo

    started = time.perf_counter()
    runs, block = [], None
    for seed in SEEDS:
        with tempfile.TemporaryDirectory() as tmp:
            report = run_demo(Path(tmp) / "demo", seed=seed, progress=False)
        row = {name: value for name, value in asdict(report).items() if name != "output_dir"}
        runs.append({"seed": seed, **row})
        if seed == README_SEED:
            block = readme_block(report)
        print(
            f"seed {seed}: positive {report.gold_before:.3f} -> {report.gold_after:.3f}, well-formed "
            f"{report.fluent_before:.3f} -> {report.fluent_after:.3f}, KL {report.kl:.2f}, {report.seconds:.0f} s",
            flush=True,
        )
    spread = {name: max(r[name] for r in runs) - min(r[name] for r in runs) for name in QUANTITIES}
    machine = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    result = {
        "machine": machine,
        "settings": DEMO_SETTINGS,
        "seeds": list(SEEDS),
        "readme_seed": README_SEED,
        "elapsed_s": round(time.perf_counter() - started),
        "spread": spread,
        "runs": runs,
        "readme_block": block,
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print("spread over seeds: " + ", ".join(f"{name} {value:.3f}" for name, value in spread.items()))
    print(f"wrote {RESULT.relative_to(ROOT)}")
    if args.readme:
        write_readme(block)
        print("wrote the block into README.md")
    else:
        print(block, file=sys.stdout)


if __name__ == "__main__":
    main()
