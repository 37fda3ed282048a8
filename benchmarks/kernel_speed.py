"""Token log-probs from hidden states, forward + backward: eager PyTorch, Liger-Kernel, TRL, lorarlhf side by side.

    python benchmarks/kernel_speed.py            # CUDA: N in {4096, 8192, 16384}, H 4096, V 128,256, bf16
    python benchmarks/kernel_speed.py --cpu      # small sizes on the CPU, so the script runs everywhere

The LM head is frozen (the LoRA case): gradients flow to the hidden states only. For each provider and N it
records the median time of forward + backward (triton.testing.do_bench on CUDA; on CPU wall clock over --rounds
rounds that interleave the providers and the floor's matmul, in an order rotating each round); the peak
memory on top of the inputs (torch.cuda.max_memory_allocated on CUDA; on CPU the growth of the process's peak
RSS over one step, in a fresh Linux process per measurement); and the GEMM floor: the matmul FLOPs that a
frozen-head forward + backward cannot avoid (the logits and the hidden-state gradient, 2 x 2NHV) over the
measured rate of one (N x H) @ (H x V) matmul in the same dtype. Peers are optional
(`pip install lorarlhf[bench]`); a missing or failing peer is recorded as such. Raw rows go to
benchmarks/results/kernels-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch
from device_info import device_name

GPU_SIZES = dict(ns=(4096, 8192, 16384), hidden=4096, vocab=128_256, dtype="bfloat16")
CPU_SIZES = dict(ns=(256, 512, 1024), hidden=512, vocab=32_003, dtype="float32")
PROVIDERS = ("eager", "liger", "trl", "lorarlhf")


# --------------------------------------------------------------------------- providers: (h, W, targets) -> logp


def eager(hidden, weight, targets):
    logits = (hidden @ weight.T).float()  # (N, V): the tensor everyone else avoids
    return torch.log_softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1)


def liger(hidden, weight, targets):
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    return -LigerFusedLinearCrossEntropyLoss(reduction="none")(weight, hidden, targets)


def trl(hidden, weight, targets):
    from trl.kernels.chunked_logprob import ChunkedLogProbFunction

    return ChunkedLogProbFunction.apply(hidden, weight, None, targets, 1.0, 32768, None, 1.0, ())[0]


def ours(hidden, weight, targets):
    from lorarlhf.kernels import fused_linear_logprobs

    return fused_linear_logprobs(hidden, weight, targets)


FUNCTIONS = {"eager": eager, "liger": liger, "trl": trl, "lorarlhf": ours}


def make_inputs(n, hidden_size, vocab, dtype, device, seed=0):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    hidden = torch.randn(n, hidden_size, generator=gen).to(device=device, dtype=dtype).requires_grad_()
    weight = (torch.randn(vocab, hidden_size, generator=gen) / hidden_size**0.5).to(device=device, dtype=dtype)
    targets = torch.randint(0, vocab, (n,), generator=gen).to(device)
    upstream = torch.randn(n, generator=gen).to(device)
    return hidden, weight, targets, upstream


def step(fn, hidden, weight, targets, upstream):
    hidden.grad = None
    logp = fn(hidden, weight, targets)
    logp.backward(upstream.to(logp.dtype))


# --------------------------------------------------------------------------- measurements


def measure_cuda(provider, n, hidden_size, vocab, dtype):
    import triton.testing

    fn = FUNCTIONS[provider]
    hidden, weight, targets, upstream = make_inputs(n, hidden_size, vocab, dtype, "cuda")
    step(fn, hidden, weight, targets, upstream)  # compile / autotune outside the measurement
    torch.cuda.synchronize()
    hidden.grad = None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step(fn, hidden, weight, targets, upstream)
    torch.cuda.synchronize()
    peak_extra = torch.cuda.max_memory_allocated() - base
    median, low, high = triton.testing.do_bench(
        lambda: step(fn, hidden, weight, targets, upstream), quantiles=[0.5, 0.2, 0.8]
    )
    return {"median_ms": median, "p20_ms": low, "p80_ms": high, "peak_extra_bytes": peak_extra}


def measure_cpu_times(providers, n, hidden_size, vocab, dtype, rounds=8):
    """Wall-clock ms of one forward + backward per provider, and of the GEMM floor's matmul, interleaved.

    Every round times each provider once (and the floor's single (N x H) @ (H x V) matmul), in an order that
    rotates each round, so a machine shared with other work slows every provider alike instead of whichever
    ran during a busy spell. Returns {provider: [ms per round]} and the floor matmul's [ms per round].
    """
    inputs = make_inputs(n, hidden_size, vocab, dtype, "cpu")
    a = torch.randn(n, hidden_size, dtype=dtype)
    b = torch.randn(hidden_size, vocab, dtype=dtype)
    tasks = {p: (lambda fn=FUNCTIONS[p]: step(fn, *inputs)) for p in providers}
    tasks["floor"] = lambda: a @ b
    times = {name: [] for name in tasks}
    for task in tasks.values():  # warm-up: allocator, lazy imports
        task()
    names = list(tasks)
    for round_ in range(rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            tasks[name]()
            times[name].append((time.perf_counter() - start) * 1e3)
    floor = times.pop("floor")
    return times, floor


def _spread(times):
    quantiles = statistics.quantiles(times, n=5)
    return {"median_ms": statistics.median(times), "p20_ms": quantiles[0], "p80_ms": quantiles[-1], "times_ms": times}


def cpu_peak_worker(provider, n, hidden_size, vocab, dtype_name):
    """Runs in a fresh process: peak RSS growth over one forward + backward, inputs already built.

    Freed memory goes back to the OS first (malloc_trim) and the kernel's high-water mark is reset
    (/proc/self/clear_refs), so the peak counts this step alone, not the input construction before it.
    """
    import ctypes

    dtype = getattr(torch, dtype_name)
    hidden, weight, targets, upstream = make_inputs(n, hidden_size, vocab, dtype, "cpu")
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    step(FUNCTIONS[provider], hidden, weight, targets, upstream)
    print(json.dumps({"peak_extra_bytes": (_status_kib("VmHWM") - before) * 1024}))


def _status_kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure_cpu_memory(provider, n, hidden_size, vocab, dtype):
    args = [sys.executable, __file__, "--worker", provider, str(n), str(hidden_size), str(vocab), str(dtype)[6:]]
    result = subprocess.run(args, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(result.stderr.strip().splitlines()[-1])
    return json.loads(result.stdout.strip().splitlines()[-1])


def gemm_floor_ms(n, hidden_size, vocab, dtype, device):
    """Time of the unavoidable matmuls (2 x 2NHV FLOPs) at the measured rate of one such matmul."""
    a = torch.randn(n, hidden_size, device=device, dtype=dtype)
    b = torch.randn(hidden_size, vocab, device=device, dtype=dtype)
    if device == "cuda":
        import triton.testing

        seconds = triton.testing.do_bench(lambda: a @ b, quantiles=[0.5])[0] / 1e3
    else:
        a @ b
        start = time.perf_counter()
        for _ in range(3):
            a @ b
        seconds = (time.perf_counter() - start) / 3
    rate = 2 * n * hidden_size * vocab / seconds  # FLOP/s
    return 2 * (2 * n * hidden_size * vocab) / rate * 1e3, rate


def available(provider, device):
    if provider == "liger" and device != "cuda":
        return "needs CUDA"
    module = {"liger": "liger_kernel", "trl": "trl"}.get(provider)
    if module is not None:
        try:
            __import__(module)
        except ImportError:
            return f"{module} not installed (pip install lorarlhf[bench])"
    return None


def versions():
    found = {}
    for package in ("lorarlhf", "torch", "triton", "liger-kernel", "trl", "transformers"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="small sizes on the CPU (the default without CUDA)")
    parser.add_argument("--ns", type=int, nargs="+", help="token counts to run (default per device)")
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS, default=list(PROVIDERS))
    parser.add_argument("--rounds", type=int, default=8, help="CPU: interleaved rounds per N (default 8)")
    parser.add_argument("--out", type=Path, help="JSON output (default benchmarks/results/kernels-<device>.json)")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        provider, n, hidden_size, vocab, dtype_name = args.worker
        cpu_peak_worker(provider, int(n), int(hidden_size), int(vocab), dtype_name)
        return

    device = "cpu" if args.cpu or not torch.cuda.is_available() else "cuda"
    sizes = dict(GPU_SIZES if device == "cuda" else CPU_SIZES)
    ns = tuple(args.ns or sizes["ns"])
    dtype = getattr(torch, sizes["dtype"])
    name = device_name(device)
    print(f"{name}: H={sizes['hidden']} V={sizes['vocab']} {sizes['dtype']}, frozen head, forward + backward")
    rows = []
    for n in ns:
        cpu_times, floor_times = {}, []
        runnable = [p for p in args.providers if not available(p, device)]
        if device == "cpu":
            cpu_times, floor_times = measure_cpu_times(
                runnable, n, sizes["hidden"], sizes["vocab"], dtype, rounds=args.rounds
            )
            matmul_ms = statistics.median(floor_times)
            rate = 2 * n * sizes["hidden"] * sizes["vocab"] / (matmul_ms / 1e3)
            floor = 2 * matmul_ms
        else:
            floor, rate = gemm_floor_ms(n, sizes["hidden"], sizes["vocab"], dtype, device)
        for provider in args.providers:
            row = {"provider": provider, "n": n, "hidden": sizes["hidden"], "vocab": sizes["vocab"],
                   "dtype": sizes["dtype"], "gemm_floor_ms": floor, "matmul_tflops": rate / 1e12}  # fmt: skip
            if floor_times:
                row["floor_matmul_ms"] = _spread(floor_times)
            skip = available(provider, device)
            if skip:
                row["skipped"] = skip
            else:
                try:
                    if device == "cuda":
                        row.update(measure_cuda(provider, n, sizes["hidden"], sizes["vocab"], dtype))
                    else:
                        row.update(_spread(cpu_times[provider]))
                        row.update(measure_cpu_memory(provider, n, sizes["hidden"], sizes["vocab"], dtype))
                    row["x_floor"] = row["median_ms"] / floor
                except Exception as error:  # a peer failing is a result to record, not a crash
                    row["error"] = f"{type(error).__name__}: {error}"[:300]
            rows.append(row)
            print(format_row(row))
    out = args.out or Path(__file__).parent / "results" / f"kernels-{device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "device": device,
        "device_name": name,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in __import__("os").getloadavg()],
        "rounds": args.rounds if device == "cpu" else None,
        "rows": rows,
    }
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


def format_row(row):
    head = f"N={row['n']:>6} {row['provider']:<9}"
    if "skipped" in row or "error" in row:
        return f"{head} {row.get('skipped') or row.get('error')}"
    return (
        f"{head} {row['median_ms']:9.2f} ms (p20 {row['p20_ms']:.2f}, p80 {row['p80_ms']:.2f})  "
        f"peak extra {row['peak_extra_bytes'] / 2**20:8.1f} MiB  floor {row['gemm_floor_ms']:8.2f} ms  "
        f"{row['x_floor']:5.2f}x floor"
    )


if __name__ == "__main__":
    main()
