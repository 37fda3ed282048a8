"""A newcomer's first commands, timed: the demo idle and beside a busy process, and the quick CLI answers.

Why: the README promises a demo of about half a minute and instant answers to simple mistakes; on a shared
2-core machine the demo once took ten times longer because tiny models fought other work for threads. The
demo's time beside a busy process (this script starts one: a plain Python loop on every core) must stay
within 2x of its idle time, and `lorarlhf options ppo`, `lorarlhf --help`, a missing-path error and a
misspelt --set option each under 2 s. This measures; it does not assert (tests must not be timed).

Writes benchmarks/results/newcomer-cpu.json.

    python benchmarks/newcomer.py            # about 3 minutes on 2 cores
    python benchmarks/newcomer.py --quick    # the demo's --quick run instead of the full demo
    python benchmarks/newcomer.py --cli-only # only the CLI rows (seconds), the demo's rows kept
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "benchmarks" / "results" / "newcomer-cpu.json"
LORARLHF = [sys.executable, "-m", "lorarlhf"]


def _spin(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def timed(command: list[str], **kwargs) -> tuple[float, int]:
    """Wall seconds and exit code of one command in a fresh process (imports included, as a user sees it)."""
    started = time.perf_counter()
    code = subprocess.run(command, capture_output=True, cwd=ROOT, **kwargs).returncode
    return time.perf_counter() - started, code


def demo_seconds(quick: bool) -> float:
    with tempfile.TemporaryDirectory() as out:
        seconds, code = timed([*LORARLHF, "demo", "--output-dir", f"{out}/run", *(["--quick"] if quick else [])])
    if code:
        raise RuntimeError(f"lorarlhf demo exited with {code}")
    return seconds


def cli_seconds() -> dict[str, dict]:
    """The quick answers: help, a method's options, a missing data file, a misspelt --set option."""
    cli = {}
    with tempfile.TemporaryDirectory() as folder:
        model, prompts = Path(folder, "model"), Path(folder, "prompts.jsonl")
        model.mkdir()
        (model / "config.json").write_text("{}")
        prompts.write_text('{"prompt": "hi"}\n')
        for name, command in {
            "lorarlhf --help": ["--help"],
            "lorarlhf options ppo": ["options", "ppo"],
            "lorarlhf align (missing data file)": ["align", "Qwen/Qwen2.5-0.5B-Instruct", "missing-prefs.jsonl"],
            "lorarlhf align (--set stepz=3, a typo)": ["align", str(model), str(prompts), "--set", "stepz=3"],
        }.items():
            seconds, code = timed([*LORARLHF, *command])
            cli[name] = {"seconds": round(seconds, 2), "exit_code": code}
            print(f"{name:<40} {seconds:6.2f} s (exit {code})", flush=True)
    return cli


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="time the demo's --quick run")
    parser.add_argument("--cli-only", action="store_true", help="re-time the CLI answers, keep the demo's rows")
    args = parser.parse_args()

    cli = cli_seconds()
    if args.cli_only:
        result = json.loads(RESULT.read_text())
        load = [round(x, 2) for x in os.getloadavg()]  # 1, 5, 15 min: the CLI rows were timed beside this
        RESULT.write_text(json.dumps({**result, "cli": cli, "cli_load_average": load}, indent=2) + "\n")
        print(f"wrote {RESULT.relative_to(ROOT)}")
        return

    idle = demo_seconds(args.quick)
    print(f"{'demo, idle':<40} {idle:6.1f} s", flush=True)
    stop = multiprocessing.Event()
    busy_workers = [multiprocessing.Process(target=_spin, args=(stop,)) for _ in range(os.cpu_count() or 1)]
    for worker in busy_workers:
        worker.start()
    try:
        busy = demo_seconds(args.quick)
    finally:
        stop.set()
        for worker in busy_workers:
            worker.join()
    print(f"{'demo, beside a busy process per core':<40} {busy:6.1f} s ({busy / idle:.2f}x idle)", flush=True)

    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(
        json.dumps(
            {
                "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
                "demo": {"quick": args.quick, "idle_s": round(idle, 1), "busy_s": round(busy, 1),
                         "busy_over_idle": round(busy / idle, 2), "target": "busy within 2x of idle"},
                "cli": cli,
                "cli_target_s": 2.0,
            },
            indent=2,
        )
        + "\n"
    )  # fmt: skip
    print(f"wrote {RESULT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
