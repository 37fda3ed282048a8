"""Every GPU figure of BENCHMARKS.md from one command: doctor, kernels, fit in 24 GB, planner accuracy, rollout speed.

    python benchmarks/gpu_suite.py                  # CUDA; < 9 min on one H100/H200
    python benchmarks/gpu_suite.py --only kernels   # rerun one step, merged into the same results file
    python benchmarks/gpu_suite.py --dry-run        # every step on tiny shapes on the CPU, into a temp dir
    python benchmarks/gpu_suite.py --tables-from benchmarks/results/gpu_suite-nvidia-h200.json
    python benchmarks/gpu_suite.py --fetch-wheels   # here, with pip: the wheels the GPU box lacks, into .whl/

Steps, each with its time budget on an H100/H200 (the whole suite stops within --total-budget, 530 s):

    doctor     30 s   lorarlhf.doctor.run_checks(full=True), the report kept whole
    kernels    70 s   token log-probs from hidden states, forward + backward, frozen LM head; N in {4096, 8192,
                      16384}, H 4096, V 128,256, bf16: lorarlhf, Liger-Kernel's fused linear cross-entropy, TRL's
                      chunked log-probs, eager PyTorch, and the h @ W^T matmul alone (the GEMM floor is two of
                      them: logits and hidden-state gradient); many interleaved rounds timed with CUDA events,
                      medians; extra memory = peak minus the inputs
    fit_24gb  240 s   PPO 8 x (512 + 512) and GRPO 4 x 8 x (512 + 512) on the Llama-3-8B shape (config-built,
                      random weights), NF4, LoRA r 16, micro-batches planned for 24 GB (fit_24gb.run_method):
                      peak memory per phase, seconds per phase, tokens/s; then the same PPO iteration with the
                      four roles as four separate NF4 models, and the per-sample latency ratio; one iteration each
    planner    90 s   lorarlhf.planner.plan against the measured peak of each phase (generation, no-grad scoring,
                      update) of a PPO iteration, NF4: Llama-3-8B, Qwen2.5-3B, 1.5B and 0.5B shapes (largest first;
                      a shape that no longer fits the budget is left out) x batch {2, 8} x length {512, 1024}
    rollout    45 s   tokens/s of lorarlhf.training.rollout.generate_rollout through a HydraModel against
                      transformers' model.generate on the same NF4 8B-shaped model with the same adapter active

A step over its budget stops cleanly and keeps the rows it finished (status "stopped"); one that will not stop is
killed 10 s later (status "killed", rows kept); a failing step records its error and the suite goes on. Each step
runs in a fresh process on the GPU (a CUDA error in one cannot poison the next, and each starts with a clean
allocator), in this process with --dry-run. Raw figures go to benchmarks/results/gpu_suite-<device>.json after each
step; the generated sections of BENCHMARKS.md (between <!-- gpu_suite:NAME --> markers) are rewritten at the end.
Nothing but the one progress line per step is printed; the steps' own output goes to <work-dir>/gpu_suite.log.

JSON layout: {"suite", "device" ("cuda" | "cpu"), "device_name", "dry_run", "date", "versions", "total_budget_s",
"steps": {NAME: {"status": "ok" | "stopped" | "killed" | "skipped" | "error", "budget_s", "seconds", "date",
"reason" (skipped) | "stopped" | "error" + "traceback", and the step's figures: "rows" (a list of dicts), "sizes",
and per step: doctor "ok", "report"; kernels "timer"; planner "cuda_context_gb"; rollout "ratio"}}}.

On the lent GPU machine (no network there; bitsandbytes, liger-kernel and trl travel as wheels). Here, once:
`python benchmarks/gpu_suite.py --fetch-wheels` (about 45 MiB into .whl/, which it adds to .git/info/exclude), then
run with carry [".whl"] and timeout_s 600 the command that `python benchmarks/gpu_suite.py --device-command` prints.
A wheel that is missing there is no failure: Liger and TRL rows read "not installed" (TRL's chunked approach is
then timed as the plain-torch equivalent below), and fit_24gb is skipped with the reason when bitsandbytes is.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GRACE_S = 10.0  # after its budget a step has this long to stop by itself before it is killed
TOTAL_BUDGET_S = 530.0  # under the device machine's 10-minute command limit, with room to copy the results back
WHEELS = ("bitsandbytes==0.50.2", "liger-kernel==0.8.5", "trl==1.16.0")
WHEEL_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
                   "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")  # fmt: skip
DEVICE_COMMAND = (
    "python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir "
    "--target /tmp/site .whl/*.whl . && export PYTHONPATH=/tmp/site || exit 1; "
    "PYTHONUNBUFFERED=1 python3 benchmarks/gpu_suite.py --work-dir /tmp/suite; rc=$?; "
    "cp benchmarks/results/gpu_suite-*.json BENCHMARKS.md /tmp/suite/gpu_suite.log $OUT/; exit $rc"
)

# Model shapes, built from their configs with random weights (nothing is downloaded). The Qwen2.5 shapes tie their
# embeddings, as the released models do.
QWEN = dict(model_type="qwen2", vocab_size=151936, tie_word_embeddings=True)
SHAPES = {
    "Qwen2.5-0.5B": dict(QWEN, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2),
    "Qwen2.5-1.5B": dict(QWEN, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2),
    "Qwen2.5-3B": dict(QWEN, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                       num_attention_heads=16, num_key_value_heads=2),
    "Llama-3-8B": dict(model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,  # = fit_24gb
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0),
    # --dry-run: 2-layer Llamas over the byte-level tokenizer's 259 ids (hidden 64: one NF4 block per row)
    "tiny": dict(model_type="llama", vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2),
    "tiny-deep": dict(model_type="llama", vocab_size=259, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2),
}  # fmt: skip

# What each step runs, on the GPU and in the dry run. Sized so every step ends inside its budget on an H100/H200.
SIZES = {
    "gpu": {
        "doctor": {},  # run_checks(full=True), its default sizes
        "kernels": dict(ns=[4096, 8192, 16384], hidden=4096, vocab=128256, dtype="bfloat16", min_rounds=5,
                        max_rounds=30),
        "fit_24gb": dict(shape="Llama-3-8B", iterations=1, prompt_tokens=512, new_tokens=512, ppo_batch=8,
                         grpo_prompts=4, group_size=8),
        "planner": dict(shapes=["Llama-3-8B", "Qwen2.5-3B", "Qwen2.5-1.5B", "Qwen2.5-0.5B"], batches=[2, 8],
                        lengths=[512, 1024], new_tokens=16),
        "rollout": dict(shape="Llama-3-8B", batch=8, prompt_tokens=128, new_tokens=128, rounds=3),
    },
    "dry": {
        "doctor": dict(tokens=37, hidden=64, vocab=1031, bnb_out=96, align_steps=2, model_hidden=64, batch_size=2,
                       group_size=2, max_new_tokens=4, max_length=32),
        "kernels": dict(ns=[32, 64], hidden=16, vocab=512, dtype="float32", min_rounds=3, max_rounds=3),
        "fit_24gb": dict(shape="tiny", iterations=1, prompt_tokens=8, new_tokens=4, ppo_batch=2, grpo_prompts=1,
                         group_size=2),
        "planner": dict(shapes=["tiny-deep", "tiny"], batches=[1, 2], lengths=[12, 16], new_tokens=4),
        "rollout": dict(shape="tiny", batch=2, prompt_tokens=8, new_tokens=6, rounds=2),
    },
}  # fmt: skip


# --------------------------------------------------------------------------- how a step runs


class StepEnd(BaseException):
    """Ends a step early. A BaseException, so a step's own `except Exception` (a peer failing) never swallows it."""


class SkipStep(StepEnd):
    """The step cannot run here; the message says why."""


class OverBudget(StepEnd):
    """The step's time is up before its next piece of work: what finished is kept."""


class HardLimit(StepEnd):
    """The step ran past its budget plus the grace time and was interrupted."""


@dataclass
class StepRun:
    """What a step function receives: its sizes, device, deadline, and the entry its figures go into."""

    name: str
    dry_run: bool
    work_dir: Path
    deadline: float
    """time.time() by which the step should have stopped."""
    entry: dict = field(default_factory=dict)
    sink: Path | None = None
    """Where the entry is written after every row (a step in its own process), so a killed step keeps its rows."""

    @property
    def device(self) -> str:
        return "cpu" if self.dry_run else "cuda"

    @property
    def sizes(self) -> dict:
        return SIZES["dry" if self.dry_run else "gpu"][self.name]

    def left(self) -> float:
        return self.deadline - time.time()

    def need(self, seconds: float, what: str) -> None:
        """Stop the step (keeping what finished) unless `seconds` are left for `what`."""
        if self.left() < seconds:
            raise OverBudget(f"stopped before {what}: {max(self.left(), 0):.0f} s left, it needs ~{seconds:.0f} s")

    def add(self, row: dict) -> None:
        self.entry.setdefault("rows", []).append(row)
        self.flush()

    def flush(self) -> None:
        if self.sink is not None:
            write_json(self.sink, self.entry)


@dataclass(frozen=True)
class Step:
    name: str
    budget_s: float
    """Seconds on an H100/H200."""
    dry_budget_s: float
    """Seconds in the dry run, on a small shared CPU."""
    run: Callable[[StepRun], None]
    title: str


def run_step(name: str, dry_run: bool, work_dir: Path, deadline: float, sink: Path | None = None) -> dict:
    """Run one step in this process; returns its entry. The step is interrupted GRACE_S after its deadline."""
    step = STEPS[name]
    budget = step.dry_budget_s if dry_run else step.budget_s
    entry = {"status": "running", "budget_s": budget, "date": now()}
    run = StepRun(name, dry_run, work_dir, deadline, entry, sink)
    start = time.time()
    with hard_limit(deadline + GRACE_S - start):
        try:
            step.run(run)
            entry["status"] = "ok"
        except SkipStep as reason:
            entry.update(status="skipped", reason=str(reason))
        except OverBudget as reason:
            entry.update(status="stopped", stopped=str(reason))
        except HardLimit as reason:
            entry.update(status="killed", error=str(reason))
        except Exception as error:  # a failing step is a result to record; the suite goes on
            entry.update(status="error", error=f"{type(error).__name__}: {error}"[:500])
            entry["traceback"] = traceback.format_exc().splitlines()[-12:]
    entry["seconds"] = round(time.time() - start, 2)
    run.flush()
    return entry


@contextlib.contextmanager
def hard_limit(seconds: float):
    """Raise HardLimit in this (main) thread after `seconds`, between two Python bytecodes."""

    def interrupt(signum, frame):
        raise HardLimit(f"ran past its budget + {GRACE_S:.0f} s and was interrupted")

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_step_isolated(name: str, dry_run: bool, work_dir: Path, deadline: float, log) -> dict:
    """Run one step in a fresh process (its own CUDA context); kill it if it outlives its deadline + grace."""
    sink = work_dir / f"step-{name}.json"
    sink.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--worker-out", str(sink),
               "--work-dir", str(work_dir), "--deadline", str(deadline)]  # fmt: skip
    command += ["--dry-run"] if dry_run else []
    start = time.time()
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        code = process.wait(timeout=max(deadline + 2 * GRACE_S - start, 1))
        killed = False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the step's process group: the step and whatever it started
        code, killed = process.wait(), True
    entry = json.loads(sink.read_text()) if sink.exists() else {"budget_s": STEPS[name].budget_s, "date": now()}
    if killed:
        entry.update(status="killed", error=f"still running {GRACE_S * 2:.0f} s after its budget; killed")
    elif entry.get("status") in (None, "running"):
        entry.update(status="error", error=f"the step's process ended with code {code} (see gpu_suite.log)")
    entry["seconds"] = round(time.time() - start, 2)
    return entry


# --------------------------------------------------------------------------- step: doctor


def step_doctor(run: StepRun) -> None:
    from lorarlhf.doctor import Sizes, run_checks

    # On the GPU exactly run_checks(full=True); the dry run passes the doctor's own tests' small sizes, since
    # its numeric checks at their defaults (a 128k vocabulary, a short align() run) take minutes on a CPU.
    report = run_checks(full=True, sizes=Sizes(**run.sizes)) if run.dry_run else run_checks(full=True)
    run.entry.update(ok=bool(report.get("ok")), doctor_device=report.get("device"), report=report)


# --------------------------------------------------------------------------- step: kernels


def trl_style_chunked(hidden, weight, targets, chunk: int = 4096):
    """TRL's chunked log-prob approach in plain torch, for when trl is not installed.

    As TRL's `selective_log_softmax` documents: the log-prob of each target is its logit minus the logsumexp of
    its row, computed a slice of rows at a time instead of a full log_softmax; here each slice's logits come from
    its hidden states and are recomputed in backward (checkpointed), so at most one (chunk, V) fp32 tile lives.
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    def piece(h, t):
        logits = (h @ weight.T).float()  # (chunk, V)
        return logits.gather(1, t[:, None]).squeeze(1) - logits.logsumexp(dim=-1)

    slices = zip(hidden.split(chunk), targets.split(chunk), strict=True)
    return torch.cat([checkpoint(piece, h, t, use_reentrant=False) for h, t in slices])


def kernel_providers(cuda: bool) -> dict[str, tuple[Callable | None, str]]:
    """provider -> (function or None, label): the function is None when the provider cannot run here."""
    import kernel_speed

    def version(package):
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    providers = {"eager": (kernel_speed.eager, "eager PyTorch"), "liger": (None, "needs CUDA")}  # Liger: Triton only
    if cuda:
        try:
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss  # noqa: F401

            providers["liger"] = (kernel_speed.liger, f"Liger-Kernel {version('liger-kernel')}")
        except Exception as error:  # not installed, or broken against this transformers
            providers["liger"] = (None, f"not installed ({type(error).__name__}: {str(error)[:80]})")
    try:
        from trl.kernels.chunked_logprob import ChunkedLogProbFunction  # noqa: F401

        providers["trl"] = (kernel_speed.trl, f"TRL {version('trl')} ChunkedLogProbFunction")
    except Exception:
        providers["trl"] = (trl_style_chunked, "TRL-style chunked log-probs, plain torch (trl not installed)")
    providers["lorarlhf"] = (kernel_speed.ours, "lorarlhf")
    return providers


def timed(fn, cuda: bool) -> float:
    """Milliseconds of one call: CUDA events on the GPU, the wall clock on the CPU."""
    import torch

    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    begin = time.perf_counter()
    fn()
    return (time.perf_counter() - begin) * 1e3


def extra_bytes(fn, cuda: bool) -> int:
    """Peak memory of one call above what was allocated before it (the inputs)."""
    import torch
    from plumbing import peak_bytes, reset_peak

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    reset_peak("cpu")  # the resident set's high-water mark, from now
    base = peak_bytes("cpu")
    fn()
    return max(peak_bytes("cpu") - base, 0)


def step_kernels(run: StepRun) -> None:
    import torch

    sizes, cuda = run.sizes, run.device == "cuda"
    providers = kernel_providers(cuda)
    run.entry.update(sizes=sizes, timer="CUDA events" if cuda else "perf_counter",
                     providers={name: label for name, (_, label) in providers.items()})  # fmt: skip
    dtype = getattr(torch, sizes["dtype"])
    # Drawn on the device: on the CPU, 128k x 4096 normal samples alone take seconds of the budget.
    generator = torch.Generator(device=run.device).manual_seed(0)
    weight = torch.randn(sizes["vocab"], sizes["hidden"], device=run.device, generator=generator)
    weight = (weight / sizes["hidden"] ** 0.5).to(dtype)  # (V, H), logits of order 1
    for index, n in enumerate(sizes["ns"]):
        run.need(1.0 if run.dry_run else 8.0, f"N={n}")
        allotted = run.left() / (len(sizes["ns"]) - index) - 1.0  # the rest of the budget, shared by the Ns left
        for row in kernel_rows(n, weight, sizes, providers, generator, allotted):
            run.add(row)
        if cuda:
            torch.cuda.empty_cache()


def kernel_rows(n: int, weight, sizes: dict, providers: dict, generator, allotted: float) -> list[dict]:
    """One row per provider (and the matmul alone) at N = n: extra memory of one call, then interleaved timed
    rounds, each in a rotated order so that drift (clocks, heat) hits every provider alike, for `allotted` s."""
    import torch
    from kernel_speed import step

    device, (vocab, hidden_size) = weight.device, weight.shape
    cuda = device.type == "cuda"
    hidden = torch.randn(n, hidden_size, device=device, generator=generator).to(weight.dtype).requires_grad_()
    targets = torch.randint(0, vocab, (n,), device=device, generator=generator)
    upstream = torch.randn(n, device=device, generator=generator)  # upstream gradients that are not 1
    common = {"n": n, "hidden": sizes["hidden"], "vocab": sizes["vocab"], "dtype": sizes["dtype"]}
    rows = {"matmul": {"provider": "matmul", "label": "h @ W^T alone", **common}}
    calls = {"matmul": lambda: hidden.detach() @ weight.T}
    for name, (fn, label) in providers.items():
        rows[name] = {"provider": name, "label": label, **common}
        if fn is None:
            rows[name]["skipped"] = label
            continue
        call = lambda fn=fn: step(fn, hidden, weight, targets, upstream)  # noqa: E731
        try:
            for _ in range(2):
                call()  # compile and autotune outside the measurement
            hidden.grad = None  # the call's own gradient counts as its memory
            rows[name]["peak_extra_bytes"] = extra_bytes(call, cuda)
            calls[name] = call
        except Exception as error:  # a peer failing is a result to record
            rows[name]["error"] = f"{type(error).__name__}: {error}"[:300]
    for _ in range(2):
        calls["matmul"]()
    names, times, started = list(calls), {name: [] for name in calls}, time.time()
    for rounds in range(1, sizes["max_rounds"] + 1):
        for name in names[rounds % len(names) :] + names[: rounds % len(names)]:
            times[name].append(timed(calls[name], cuda))
        if rounds >= sizes["min_rounds"] and time.time() - started > allotted:
            break
    floor = 2 * statistics.median(times["matmul"])  # logits + hidden-state gradient: 2 x 2NHV FLOPs
    for name, samples in times.items():
        median = statistics.median(samples)
        quantiles = statistics.quantiles(samples, n=5) if len(samples) > 1 else samples * 4
        rows[name].update(median_ms=median, p20_ms=quantiles[0], p80_ms=quantiles[-1], rounds=len(samples),
                          gemm_floor_ms=floor, x_floor=median / floor)  # fmt: skip
    rows["matmul"]["tflops"] = 2 * n * sizes["hidden"] * sizes["vocab"] / (rows["matmul"]["median_ms"] / 1e3) / 1e12
    return list(rows.values())


# --------------------------------------------------------------------------- models on disk, peaks per phase


def model_dir(run: StepRun, shape: str) -> Path:
    """The random-weight checkpoint of `shape` under the work dir, built once (atomically) and shared by steps."""
    import fit_24gb

    path = run.work_dir / "models" / shape
    if (path / "config.json").exists():
        return path
    partial = path.with_name(shape + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    start = time.time()
    fit_24gb.make_model_dir(partial, SHAPES[shape], device=run.device)  # random weights drawn on the GPU: fast
    partial.rename(path)
    run.entry.setdefault("checkpoint_seconds", {})[shape] = round(time.time() - start, 1)
    free_memory(run.device, collect=True)  # the bf16 model the weights were drawn in must not count as a peak
    return path


def quantization(run: StepRun) -> str | None:
    """NF4 when bitsandbytes imports, else None (the figures then say so)."""
    try:
        import bitsandbytes  # noqa: F401
    except Exception as error:
        run.entry["quantize_note"] = f"bitsandbytes not importable ({type(error).__name__}): unquantized bf16 base"
        return None
    return "nf4"


@contextlib.contextmanager
def phase_peaks(device: str):
    """Record the peak memory of each phase (generate, score, reference, train) of the RL iterations run inside.

    The trainers time their phases with rl_loop.PhaseTimer and have no memory hook; for the length of the block,
    in this benchmark process only, that class is swapped for a subclass that also resets and reads the peak
    around each phase. Yields the list of timers made (one per iteration), each with .peak_bytes {phase: bytes}.
    Because the peak is reset per phase, a whole run's peak is the largest phase peak, not peak_bytes() after it.
    """
    from unittest import mock

    from plumbing import peak_bytes, reset_peak

    from lorarlhf.training import rl_loop

    timers = []

    class PeakPhaseTimer(rl_loop.PhaseTimer):
        def __init__(self):
            super().__init__()
            self.peak_bytes: dict[str, int] = {}
            timers.append(self)

        @contextlib.contextmanager
        def __call__(self, phase: str):
            reset_peak(device)
            with super().__call__(phase):
                yield
            self.peak_bytes[phase] = max(self.peak_bytes.get(phase, 0), peak_bytes(device))

    with mock.patch.object(rl_loop, "PhaseTimer", PeakPhaseTimer):
        yield timers


def with_phase_peaks(row: dict, timers: list) -> dict:
    """Put the last iteration's per-phase peaks into `row` and correct its whole-run peak (see phase_peaks)."""
    measured = [t.peak_bytes for t in timers if t.peak_bytes]
    if not measured:
        return row
    row["peak_gb_per_phase"] = {phase: value / 2**30 for phase, value in measured[-1].items()}
    row["peak_gb"] = max(row.get("peak_gb", 0), max(max(t.values()) for t in measured) / 2**30)
    if "planned_peak_gb" in row:
        row["plan_error"] = (row["planned_peak_gb"] - row["peak_gb"]) / row["peak_gb"]
    return row


# --------------------------------------------------------------------------- step: fit_24gb


def step_fit_24gb(run: StepRun) -> None:
    from types import SimpleNamespace

    import fit_24gb

    if quantization(run) is None:
        raise SkipStep(
            "bitsandbytes is not importable, and the step measures the NF4 base: carry its wheel "
            "(python benchmarks/gpu_suite.py --fetch-wheels, then carry .whl)"
        )
    sizes = dict(run.sizes)
    shape = sizes.pop("shape")
    run.entry.update(sizes={"shape": shape, **sizes}, budget_gb=fit_24gb.BUDGET_GB)
    path = model_dir(run, shape)
    args = SimpleNamespace(**sizes)
    hydra_ppo = None
    for method, seconds in (("ppo", 60), ("grpo", 75)):
        run.need(5 if run.dry_run else seconds, f"the Hydra's {method.upper()} iteration")
        start = time.time()
        with phase_peaks(run.device) as timers:
            row = fit_24gb.run_method(path, method, args, run.device)
        row = with_phase_peaks({"shape": shape, **row}, timers)
        row["wall_s"] = time.time() - start
        row["setup_s"] = row["wall_s"] - sum(row["seconds_per_phase"].values()) * row["iterations"]
        run.add(row)
        hydra_ppo = row if method == "ppo" else hydra_ppo
        free_memory(run.device, collect=True)
    # The classic layout loads four models: its time is about four setups plus one PPO iteration.
    estimate = 4 * hydra_ppo["setup_s"] + 1.5 * (hydra_ppo["wall_s"] - hydra_ppo["setup_s"])
    run.need(estimate, "the classic four-model PPO")
    with phase_peaks(run.device) as timers:
        classic = fit_24gb.run_classic_ppo(path, args, run.device, hydra_ppo["grad_accumulation"])
    classic = with_phase_peaks({"shape": shape, **classic}, timers)
    if "seconds_per_sample" in classic:
        classic["hydra_latency_ratio"] = hydra_ppo["seconds_per_sample"] / classic["seconds_per_sample"]
        classic["hydra_memory_ratio"] = hydra_ppo["peak_gb"] / classic["peak_gb"]
    run.add(classic)


def free_memory(device: str, collect: bool = False) -> None:
    """Hand cached CUDA blocks back; with `collect`, first free what only reference cycles held (a dropped model).
    A collection takes a second or more with torch and transformers loaded, so it runs between models only."""
    import gc

    import torch

    if collect:
        gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- step: planner


def step_planner(run: StepRun) -> None:
    import torch

    from lorarlhf import HydraModel

    sizes, cuda = run.sizes, run.device == "cuda"
    quantize = quantization(run)
    run.entry.update(sizes=dict(sizes, quantize=quantize, method="ppo", lora_r=16, gradient_checkpointing=True))
    if cuda:  # what the CUDA context holds outside the allocator: the planner counts it as a constant
        torch.zeros(1, device="cuda")
        free, total = torch.cuda.mem_get_info()
        run.entry["cuda_context_gb"] = (total - free - torch.cuda.memory_reserved()) / 2**30
    # Largest first: the 8B shape is the headline, and its checkpoint is already built by fit_24gb. A shape's time
    # is estimated from the one before it, scaled by the parameter count.
    last_point, previous = (1.0 if run.dry_run else 6.0), None
    for shape in sizes["shapes"]:
        params = approx_params(SHAPES[shape])
        run.need((2 if run.dry_run else 40) if previous is None else previous[1] * params / previous[0], shape)
        started = time.time()
        path = model_dir(run, shape)
        hydra = HydraModel.from_pretrained(
            path, quantize=quantize, lora_r=16, device=run.device, gradient_checkpointing=True,
            roles=("actor", "critic", "reward"),
        )  # fmt: skip
        hydra.disable_dropout()
        trainable = hydra.trainable_parameters("actor") + hydra.trainable_parameters("critic")
        optimizer = torch.optim.AdamW(trainable, lr=1e-6)
        for batch in sizes["batches"]:
            for length in sizes["lengths"]:
                run.need(1.5 * last_point, f"{shape} {batch} x {length}")
                start = time.time()
                row = measure_planned_phases(hydra, optimizer, batch, length, sizes["new_tokens"], quantize)
                last_point = time.time() - start
                run.add({"shape": shape, "batch": batch, "length": length, "seconds": last_point, **row})
        del hydra, optimizer, trainable
        free_memory(run.device, collect=True)
        previous = (params, time.time() - started)


def approx_params(shape: dict) -> int:
    """Parameters of a Llama-style shape: attention + gated MLP per layer, embeddings; enough to scale a time."""
    hidden, layers = shape["hidden_size"], shape["num_hidden_layers"]
    return layers * (4 * hidden * hidden + 3 * hidden * shape["intermediate_size"]) + shape["vocab_size"] * hidden


def measure_planned_phases(hydra, optimizer, batch: int, length: int, new_tokens: int, quantize) -> dict:
    """lorarlhf.planner.plan's peak per phase of a PPO iteration beside the measured one, on `hydra`.

    As the planner counts them, the base, three adapters, the trainable roles' gradients and AdamW state are
    resident in every phase (one update runs first, so the optimizer state exists). Generation samples
    `new_tokens` after a prompt of length - new_tokens tokens: its cache reaches the full length, as the planner's
    does. Scoring runs the no-grad passes (reference, rollout policy + entropy, values, reward); the update one
    forward + backward of the clipped policy + value losses and an optimizer step, gradient checkpointing on.
    """
    import torch
    from fit_24gb import prompt_of_length
    from plumbing import peak_bytes, reset_peak

    from lorarlhf.methods.ppo import state_values
    from lorarlhf.planner import plan
    from lorarlhf.training.rl_loop import rows_of
    from lorarlhf.training.rl_losses import clipped_policy_loss, clipped_value_loss
    from lorarlhf.training.rollout import SamplingConfig, generate_rollout

    device = hydra.device.type
    dtype = str(hydra.causal_lm.get_output_embeddings().weight.dtype).removeprefix("torch.")
    estimate = plan(hydra.causal_lm.config, method="ppo", batch_size=batch, max_length=length,
                    max_new_tokens=new_tokens, lora_r=hydra.lora.r, quantize=quantize, dtype=dtype,
                    gradient_checkpointing=True, reward_model=True)  # fmt: skip
    measured = {}

    def phase(name, fn):
        free_memory(device)
        reset_peak(device)
        result = fn()
        if device == "cuda":
            torch.cuda.synchronize()
            measured[name] = {"measured_gb": peak_bytes(device) / 2**30,
                              "reserved_gb": torch.cuda.max_memory_reserved() / 2**30}  # fmt: skip
        else:
            measured[name] = {"measured_gb": peak_bytes(device) / 2**30, "reserved_gb": None}
        return result

    def update(sub, old_logp, old_values, advantages, returns):
        mask = sub.response_mask
        with hydra.train_mode():
            optimizer.zero_grad(set_to_none=False)  # gradients stay allocated, as the planner counts them
            logp = hydra.token_logprobs(sub, role="actor")
            pg_loss, _ = clipped_policy_loss(logp, old_logp, advantages, mask, clip=0.2)
            vf_loss = clipped_value_loss(state_values(hydra, sub), old_values, returns, mask, clip=0.2)
            (pg_loss + 0.1 * vf_loss).backward()
            optimizer.step()

    def scoring(sub):
        with torch.no_grad():
            ref_logp = hydra.token_logprobs(sub, role="reference")
            old_logp, _ = hydra.token_logprobs(sub, role="actor", return_entropy=True)
            old_values = state_values(hydra, sub)
            hydra.rewards(sub.input_ids, sub.attention_mask)
        return ref_logp, old_logp, old_values

    prompts = [prompt_of_length(length - new_tokens)] * batch
    if not optimizer.state:  # the first point: one small update creates the AdamW state
        warm = generate_rollout(hydra, prompts[:1], SamplingConfig(max_new_tokens=2), [0]).batch()
        logp, values = scoring(warm)[1:]
        update(warm, logp, values, torch.zeros_like(logp), torch.zeros_like(values))
    sampling = SamplingConfig(max_new_tokens=new_tokens)
    rollout = phase("generation", lambda: generate_rollout(hydra, prompts, sampling, list(range(batch))))
    full = rollout.batch()
    sub = rows_of(full, torch.arange(min(estimate.micro_batch, batch)))  # the planner's micro-batch
    ref_logp, old_logp, old_values = phase("scoring (no-grad passes)", lambda: scoring(sub))
    advantages = torch.randn_like(old_logp) * sub.response_mask
    phase("update", lambda: update(sub, old_logp, old_values, advantages, old_values + advantages))
    phases = {}
    for name, planned in estimate.phases.items():
        got = measured[name]
        phases[name] = {"planned_gb": planned / 2**30, **got,
                        "error": planned / 2**30 / got["measured_gb"] - 1 if got["measured_gb"] else None}  # fmt: skip
    return {"micro_batch": estimate.micro_batch, "response_tokens": int(rollout.response_lengths.sum()),
            "phases": phases}  # fmt: skip


# --------------------------------------------------------------------------- step: rollout


def step_rollout(run: StepRun) -> None:
    import torch
    from fit_24gb import prompt_of_length

    from lorarlhf import HydraModel
    from lorarlhf.model.tokenization import encode_prompts_left_padded
    from lorarlhf.training.rollout import SamplingConfig, generate_rollout

    sizes = run.sizes
    quantize = quantization(run)
    run.entry["sizes"] = dict(sizes, quantize=quantize, lora_r=16, role="actor", temperature=1.0)
    path = model_dir(run, sizes["shape"])
    hydra = HydraModel.from_pretrained(path, quantize=quantize, lora_r=16, device=run.device, roles=("actor",))
    prompts = [prompt_of_length(sizes["prompt_tokens"])] * sizes["batch"]
    ids, mask = (t.to(hydra.device) for t in encode_prompts_left_padded(hydra.chat, prompts))
    ends = torch.tensor(hydra.end_ids, device=hydra.device)

    def ours(new_tokens):
        rollout = generate_rollout(hydra, prompts, SamplingConfig(max_new_tokens=new_tokens), list(range(len(prompts))))
        return int(rollout.response_mask.sum())

    def theirs(new_tokens):  # the same model, the actor adapter active, the same sampling (T = 1, no top-k/top-p)
        with hydra.role("actor"):
            output = hydra.causal_lm.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=True, temperature=1.0,
                top_k=0, top_p=1.0, pad_token_id=hydra.tokenizer.pad_token_id, eos_token_id=list(hydra.end_ids),
            )  # fmt: skip
        new = output[:, ids.shape[1] :]
        is_end = torch.isin(new, ends).long()
        return int(((is_end.cumsum(1) - is_end) == 0).sum())  # up to and including the end token, as a rollout

    sides = {"generate_rollout": ours, "model.generate": theirs}
    for fn in sides.values():
        fn(2)  # warm-up: cuBLAS handles, the cache's first allocation
    samples, round_s = {name: [] for name in sides}, 0.0
    try:
        for index in range(sizes["rounds"]):
            if index:
                run.need(round_s, f"round {index + 1}")
            start = time.time()
            for name in list(sides)[index % 2 :] + list(sides)[: index % 2]:  # alternate which side goes first
                begin = time.perf_counter()
                tokens = sides[name](sizes["new_tokens"])
                if run.device == "cuda":
                    torch.cuda.synchronize()
                samples[name].append({"tokens": tokens, "seconds": time.perf_counter() - begin})
            round_s = time.time() - start
            run.entry["rounds"] = index + 1
    finally:  # stopped or not, the rounds that finished are the figures
        rounds = run.entry.get("rounds", 0)
        for name, runs in samples.items():
            runs = runs[:rounds]
            if runs:
                run.add({"sampler": name, "tokens_per_s": statistics.median(r["tokens"] / r["seconds"] for r in runs),
                         "ms_per_step": statistics.median(r["seconds"] / sizes["new_tokens"] * 1e3 for r in runs),
                         "runs": runs})  # fmt: skip
        if rounds:
            rows = {row["sampler"]: row for row in run.entry["rows"]}
            run.entry["ratio"] = rows["generate_rollout"]["tokens_per_s"] / rows["model.generate"]["tokens_per_s"]
            run.flush()


STEPS = {
    step.name: step
    for step in (
        Step("doctor", 30, 120, step_doctor, "lorarlhf doctor, in full"),
        Step("kernels", 70, 60, step_kernels, "token log-probs from hidden states: lorarlhf, Liger, TRL, GEMM floor"),
        Step("fit_24gb", 240, 90, step_fit_24gb, "PPO and GRPO on the Llama-3-8B shape within 24 GB"),
        Step("planner", 90, 60, step_planner, "the memory planner against the measured peak per phase"),
        Step("rollout", 45, 60, step_rollout, "rollout tokens/s: generate_rollout against model.generate"),
    )
}


# --------------------------------------------------------------------------- the suite


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json(path: Path, data) -> None:
    """Write atomically: a reader (or a kill) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2, default=str) + "\n")
    partial.replace(path)


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60]


def versions() -> dict:
    found = {"python": sys.version.split()[0]}
    for package in ("lorarlhf", "torch", "triton", "transformers", "peft", "bitsandbytes", "liger-kernel", "trl"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def gpu_name() -> str | None:
    """The GPU's name, without initialising CUDA in this process (the steps each start their own)."""
    try:
        result = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                text=True, timeout=30)  # fmt: skip
        if result.returncode == 0 and result.stdout.strip():
            return result.stdout.strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    probe = "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    return result.stdout.strip() or None


def run_suite(args) -> tuple[Path, dict]:
    dry_run = args.dry_run
    if dry_run:
        import torch
        from device_info import device_name

        torch.set_num_threads(1)  # tiny matmuls: one thread is much faster than waking a pool on a small CPU
        name = device_name("cpu")
    else:
        name = gpu_name()
        if not name:
            sys.exit("no CUDA device here: --dry-run runs every step on tiny shapes on the CPU")
    work_dir = Path(args.work_dir or (tempfile.mkdtemp(prefix="gpu-suite-") if dry_run else
                                      Path(tempfile.gettempdir()) / "lorarlhf-gpu-suite"))  # fmt: skip
    work_dir.mkdir(parents=True, exist_ok=True)
    out_dir = Path(args.out_dir or (work_dir if dry_run else HERE / "results"))
    markdown = Path(args.benchmarks_md or (out_dir / "BENCHMARKS.md" if dry_run else ROOT / "BENCHMARKS.md"))
    if dry_run and not markdown.exists():
        shutil.copyfile(ROOT / "BENCHMARKS.md", markdown)
    out = out_dir / f"gpu_suite-{slug(name)}.json"
    record = json.loads(out.read_text()) if args.only and out.exists() else {}
    if record.get("device_name") != name or record.get("dry_run") != dry_run:
        record = {"steps": {}}
    record.update(suite="gpu_suite", device="cpu" if dry_run else "cuda", device_name=name, dry_run=dry_run,
                  date=now(), versions=versions(), total_budget_s=args.total_budget)  # fmt: skip
    names = args.only or list(STEPS)
    isolate = not dry_run if args.isolate is None else args.isolate
    suite_end = time.time() + args.total_budget
    where = f"{name} (dry run, CPU)" if dry_run else name
    print(f"gpu_suite on {where}: {len(names)} steps, log in {work_dir}/gpu_suite.log", flush=True)
    with open(work_dir / "gpu_suite.log", "a") as log:
        for position, step_name in enumerate(names, 1):
            step = STEPS[step_name]
            budget = step.dry_budget_s if dry_run else step.budget_s
            print(f"[{position}/{len(names)}] {step_name:<9}", end=" ", flush=True)
            log.write(f"\n===== {step_name} {now()}\n")
            log.flush()
            deadline = min(time.time() + budget, suite_end - GRACE_S)
            if isolate:
                entry = run_step_isolated(step_name, dry_run, work_dir, deadline, log)
            else:
                with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                    entry = run_step(step_name, dry_run, work_dir, deadline)
            record["steps"][step_name] = entry
            write_json(out, record)
            print(f"{entry['status']:<8} {entry['seconds']:6.1f} s of {budget:g} s  {step_note(entry)}", flush=True)
    record["steps"] = {k: record["steps"][k] for k in STEPS if k in record["steps"]}  # the suite's order
    write_json(out, record)
    update_benchmarks_md(markdown, record, display_path(out))
    print(f"wrote {out} and the GPU tables of {markdown}", flush=True)
    return out, record


def failed(record: dict) -> bool:
    """Whether a step broke (an error, or killed past its budget): the exit status says so."""
    return any(entry["status"] in ("error", "killed") for entry in record["steps"].values())


def step_note(entry: dict) -> str:
    text = entry.get("reason") or entry.get("stopped") or entry.get("error") or ""
    return text[:100]


def display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------- BENCHMARKS.md tables

SECTIONS = ("kernels", "fit_24gb", "planner", "rollout", "summary")
PLACEHOLDER = "_Not run yet: `python benchmarks/gpu_suite.py` on a GPU writes this table._"


def update_benchmarks_md(path: Path, record: dict, source: str) -> None:
    """Rewrite the generated sections of `path` (between <!-- gpu_suite:NAME --> and <!-- /gpu_suite:NAME -->)
    from `record`; everything outside the markers stays as it is."""
    text = path.read_text()
    tables = render_tables(record, source)
    for name in SECTIONS:
        begin, end = f"<!-- gpu_suite:{name} -->", f"<!-- /gpu_suite:{name} -->"
        pattern = re.compile(re.escape(begin) + r"\n.*?" + re.escape(end), re.DOTALL)
        if not pattern.search(text):
            raise ValueError(f"{path} has no generated section {begin} ... {end}")
        text = pattern.sub(lambda _, block=f"{begin}\n{tables[name]}\n{end}": block, text)
    path.write_text(text)


def render_tables(record: dict, source: str) -> dict[str, str]:
    """Markdown for each generated section, from a gpu_suite record."""
    steps = record.get("steps", {})
    dry = " Dry run on the CPU, tiny shapes: these numbers check the script, they say nothing about a GPU." * bool(
        record.get("dry_run")
    )
    made = f"{record.get('device_name')}, {str(record.get('date', ''))[:10]} (`{source}`).{dry}"
    renderers = {"kernels": kernel_table, "fit_24gb": fit_table, "planner": planner_table, "rollout": rollout_table}
    tables = {}
    for name, render in renderers.items():
        entry = steps.get(name)
        if entry is None:
            tables[name] = PLACEHOLDER
        elif not entry.get("rows"):
            tables[name] = f"`python benchmarks/gpu_suite.py` on {made}\n\nNo figures: {entry['status']}. " + (
                step_note(entry) or "no rows finished."
            )
        else:
            note = f"\n\nStep {entry['status']}: {step_note(entry)}" if entry["status"] != "ok" else ""
            tables[name] = render(entry, made) + note
    tables["summary"] = summary_table(record, made)
    return tables


def number(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


PROVIDER_NAMES = {"matmul": "h @ W^T alone", "eager": "eager PyTorch", "liger": "Liger-Kernel", "trl": "TRL",
                  "lorarlhf": "**lorarlhf**"}  # fmt: skip


def kernel_table(entry: dict, made: str) -> str:
    sizes = entry.get("sizes", {})
    lines = [
        f"`python benchmarks/gpu_suite.py --only kernels` — frozen LM head, forward + backward, H = "
        f"{number(sizes.get('hidden'))}, V = {number(sizes.get('vocab'))}, {sizes.get('dtype')}; median of the "
        f"interleaved rounds timed with {entry.get('timer')}; extra memory is the peak above the inputs; the GEMM "
        f"floor is twice the h @ W^T matmul alone; {made}",
        "",
        "| N | provider | median ms | p20-p80 ms | rounds | extra MiB | x GEMM floor |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in entry["rows"]:
        if "skipped" in row or "error" in row:
            name = PROVIDER_NAMES.get(row["provider"], row["provider"])
            lines.append(f"| {row['n']} | {name} | {row.get('skipped') or row.get('error')} | | | | |")
            continue
        head = f"| {row['n']} | {row['label'] if row['provider'] != 'lorarlhf' else '**lorarlhf**'} |"
        extra = row.get("peak_extra_bytes")
        lines.append(
            f"{head} {number(row['median_ms'])} | {number(row['p20_ms'])}-{number(row['p80_ms'])} | {row['rounds']} | "
            f"{number(extra / 2**20) if extra is not None else '-'} | "
            + (f"{number(row['tflops'])} TFLOP/s |" if row["provider"] == "matmul" else f"{row['x_floor']:.2f} |")
        )
    return "\n".join(lines)


def fit_table(entry: dict, made: str) -> str:
    sizes = entry.get("sizes", {})
    lines = [
        f"`python benchmarks/gpu_suite.py --only fit_24gb` — {sizes.get('shape')} shape, random weights, NF4, LoRA "
        f"r 16, gradient checkpointing, micro-batches planned for {number(entry.get('budget_gb'))} GB, "
        f"{sizes.get('iterations')} iteration(s) each (the first: warm-up included); peak is "
        f"`torch.cuda.max_memory_allocated` per phase; {made}",
        "",
        "| run | batch | peak GiB | planner GiB | peak GiB per phase | seconds per phase | tokens/s | s / sample |",
        "|---|---|---:|---:|---|---|---:|---:|",
    ]
    for row in entry["rows"]:
        if "error" in row:
            lines.append(f"| {row['method']} | | {row['error']} | | | | | |")
            continue
        phases = " / ".join(f"{k} {v:.2f}" for k, v in row.get("peak_gb_per_phase", {}).items()) or "-"
        seconds = " / ".join(f"{k} {v:.1f}" for k, v in row.get("seconds_per_phase", {}).items()) or "-"
        lines.append(
            f"| {row['method']} | {row.get('batch', '-')} | {row['peak_gb']:.2f} | "
            f"{number(row.get('planned_peak_gb'))} | {phases} | {seconds} | {number(row.get('tokens_per_s'))} | "
            f"{number(row.get('seconds_per_sample'))} |"
        )
    classic = [row for row in entry["rows"] if "hydra_latency_ratio" in row]
    if classic:
        lines += ["", f"The Hydra's PPO takes {classic[0]['hydra_latency_ratio']:.2f}x the classic layout's time "
                      f"per sample and {classic[0]['hydra_memory_ratio']:.2f}x its peak memory."]  # fmt: skip
    return "\n".join(lines)


def planner_table(entry: dict, made: str) -> str:
    sizes = entry.get("sizes", {})
    context = entry.get("cuda_context_gb")
    context = f"; the CUDA context held {context:.2f} GiB outside the allocator (planner: 0.5)" if context else ""
    lines = [
        f"`python benchmarks/gpu_suite.py --only planner` — `lorarlhf.planner.plan` (PPO, {sizes.get('quantize')}, "
        f"LoRA r 16, gradient checkpointing, {sizes.get('new_tokens')} new tokens) against the measured peak "
        f"(`max_memory_allocated`) of each phase; error = planned / measured - 1"
        f"{context}; {made}",
        "",
        "| shape | batch x length | generation GiB planned / measured | scoring | update | worst error |",
        "|---|---|---|---|---|---:|",
    ]
    for row in entry["rows"]:
        cells, errors = [], []
        for name in ("generation", "scoring (no-grad passes)", "update"):
            phase = row["phases"].get(name, {})
            cells.append(f"{number(phase.get('planned_gb'))} / {number(phase.get('measured_gb'))}")
            if phase.get("error") is not None:
                errors.append(phase["error"])
        worst = max(errors, key=abs) if errors else None
        lines.append(
            f"| {row['shape']} | {row['batch']} x {row['length']} | {' | '.join(cells)} | "
            f"{f'{worst:+.0%}' if worst is not None else '-'} |"
        )
    return "\n".join(lines)


def rollout_table(entry: dict, made: str) -> str:
    sizes = entry.get("sizes", {})
    lines = [
        f"`python benchmarks/gpu_suite.py --only rollout` — {sizes.get('shape')} shape, {sizes.get('quantize')}, "
        f"the actor adapter active, {sizes.get('batch')} prompts of {sizes.get('prompt_tokens')} tokens, "
        f"{sizes.get('new_tokens')} sampled tokens each at temperature 1; median of {entry.get('rounds')} "
        f"alternating rounds; {made}",
        "",
        "| sampler | tokens/s | ms per token step |",
        "|---|---:|---:|",
    ]
    labels = {"generate_rollout": "**lorarlhf** `generate_rollout`", "model.generate": "transformers `model.generate`"}
    for row in entry["rows"]:
        lines.append(f"| {labels.get(row['sampler'], row['sampler'])} | {number(row['tokens_per_s'])} | "
                     f"{number(row['ms_per_step'])} |")  # fmt: skip
    if entry.get("ratio"):
        lines += ["", f"`generate_rollout` runs at {entry['ratio']:.2f}x the tokens/s of `model.generate`."]
    return "\n".join(lines)


def summary_table(record: dict, made: str) -> str:
    steps = record.get("steps", {})
    if not steps:
        return PLACEHOLDER
    versions_text = ", ".join(f"{k} {v}" for k, v in record.get("versions", {}).items() if v)
    doctor = steps.get("doctor", {})
    verdict = {True: "all checks passed", False: "some checks FAILED (see the JSON)"}.get(doctor.get("ok"), "not run")
    lines = [
        f"`python benchmarks/gpu_suite.py` on {made} Versions: {versions_text}. `lorarlhf doctor` in full: {verdict}.",
        "",
        "| step | what | status | seconds | budget s | note |",
        "|---|---|---|---:|---:|---|",
    ]
    for name, entry in steps.items():
        title = STEPS[name].title if name in STEPS else ""
        lines.append(f"| {name} | {title} | {entry.get('status')} | {number(entry.get('seconds'))} | "
                     f"{number(entry.get('budget_s'))} | {step_note(entry).replace('|', '/')} |")  # fmt: skip
    return "\n".join(lines)


# --------------------------------------------------------------------------- wheels for the GPU machine


def fetch_wheels(dest: Path) -> None:
    """Download the wheels the GPU machine lacks (no network there), for Python 3.12 on x86-64 Linux."""
    platforms = [arg for p in WHEEL_PLATFORMS for arg in ("--platform", p)]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
               "3.12", "--implementation", "cp", *platforms, "-d", str(dest), *WHEELS]  # fmt: skip
    subprocess.run(command, check=True)
    if dest.resolve() == (ROOT / ".whl").resolve():  # keep the wheels out of git; they travel by `carry`
        exclude = ROOT / ".git" / "info" / "exclude"
        if exclude.parent.is_dir() and "/.whl/" not in (exclude.read_text() if exclude.exists() else ""):
            with open(exclude, "a") as file:
                file.write("/.whl/\n")
    print(f"wheels in {dest}; run with carry ['.whl']:\n{DEVICE_COMMAND}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="every step on tiny shapes on the CPU, in a temp dir")
    parser.add_argument("--only", nargs="+", choices=list(STEPS), help="run these steps; merge into the results")
    parser.add_argument("--out-dir", help="where the JSON goes (default benchmarks/results; dry run: the work dir)")
    parser.add_argument("--benchmarks-md", help="the markdown whose generated sections are rewritten")
    parser.add_argument("--work-dir", help="checkpoints and the log (default: a temp dir)")
    parser.add_argument("--total-budget", type=float, default=TOTAL_BUDGET_S, help="seconds for the whole suite")
    parser.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                        help="each step in a fresh process (default: on the GPU yes, in the dry run no)")  # fmt: skip
    parser.add_argument("--tables-from", help="only regenerate BENCHMARKS.md's GPU tables from this JSON")
    parser.add_argument("--fetch-wheels", nargs="?", const=str(ROOT / ".whl"), metavar="DIR",
                        help="download the wheels the GPU machine lacks (default into .whl/)")  # fmt: skip
    parser.add_argument("--device-command", action="store_true", help="print the command to run on the GPU machine")
    parser.add_argument("--worker", choices=list(STEPS), help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        if args.dry_run:
            import torch

            torch.set_num_threads(1)
        run_step(args.worker, args.dry_run, Path(args.work_dir), args.deadline, Path(args.worker_out))
    elif args.fetch_wheels:
        fetch_wheels(Path(args.fetch_wheels))
    elif args.device_command:
        print(DEVICE_COMMAND)
    elif args.tables_from:
        source = Path(args.tables_from)
        markdown = Path(args.benchmarks_md or ROOT / "BENCHMARKS.md")
        update_benchmarks_md(markdown, json.loads(source.read_text()), display_path(source))
        print(f"regenerated the GPU tables of {markdown} from {source}")
    else:
        _, record = run_suite(args)
        sys.exit(1 if failed(record) else 0)


if __name__ == "__main__":
    main()
