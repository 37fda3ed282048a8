"""`lorarlhf doctor`: what this machine would run, and whether it works, in one screen for a bug report.

Every check is a function of the device and compute dtype a run would use, returning a `Check` (name,
ok / failed / skipped, a one-line summary carrying the number behind it, and the raw values):

    environment   versions, device, compute dtype (the loader's rule), kernel path (the kernels' rule),
                  NF4 availability, torch.mm(..., out_dtype=float32)
    card          name, compute capability, free / total memory, bf16 native or only emulated
    numbers       bitsandbytes' 4-bit matmul forward and backward against its dequantized weight; each fused
                  kernel (values and gradients) against its float64 PyTorch reference at a real vocabulary;
                  a short align() on a config-built small model beside the memory planner's estimate

The numeric checks run by default on a GPU (well under two minutes on one card) and with `full=True`
(`lorarlhf doctor --full`) on a CPU. Their tensors go to `Target.tensors`, which is the device itself unless
a test runs the GPU branch on CPU tensors with only the `torch.cuda` queries faked.

    from lorarlhf.doctor import run_checks
    report = run_checks(full=True)   # JSON-serialisable: report["ok"], report["device"], report["checks"]
"""

from __future__ import annotations

import contextlib
import inspect
import io
import math
import os
import platform
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import torch

STATUSES = ("ok", "failed", "skipped")
PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "triton", "accelerate", "datasets", "lorarlhf")
OPTIONAL = {"triton": "Linux only; without it every device runs the PyTorch kernel path"}
NO_GPU = "no CUDA device (lorarlhf doctor --full runs it on the CPU)"

# Elementwise |got - ref| <= atol + rtol |ref| against a float64 reference computed from the same, already
# rounded inputs, plus a norm-wise relative error bound: the kernel tests' table (tests/kernel_testing.py).
# The kernels' outputs are float32 whatever the input dtype (the logits are float32), so one output tolerance
# serves every dtype. Gradients come back in the input dtype, and a 16-bit head's gradient matmuls read the
# float32 row gradients rounded to 16 bits (as tensor cores do): rtol is that dtype's epsilon (2^-7 bf16,
# 2^-10 fp16) and atol the epsilon times the largest reference entry.
OUT_TOL = {"atol": 1e-5, "rtol": 1e-5}
GRAD_TOL = {torch.float32: {"atol": 1e-5, "rtol": 1e-4}, torch.bfloat16: 2**-7, torch.float16: 2**-10}
REL_ERR = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-2}
# NF4 keeps 4 bits of a Gaussian weight: the dequantized weight is ~9% off the original (norm-wise) by design;
# far more means the quantizer is broken, not lossy.
NF4_MAX_REL_ERR = 0.12


@dataclass(frozen=True)
class Sizes:
    """How big each numeric check is. The defaults are a real case on a GPU; tests pass small ones."""

    tokens: int = 257
    """Rows (tokens) of the kernel and bitsandbytes checks: odd, so no tile divides them evenly."""
    hidden: int = 1024
    """Hidden size of the kernel checks and the 4-bit layer's input features."""
    vocab: int = 128_256
    """Vocabulary of the kernel checks: Llama 3's."""
    bnb_out: int = 2048
    """Output features of the 4-bit layer."""
    align_steps: int = 10
    """Optimizer steps of the short align() run (GRPO with a reward function)."""
    model_hidden: int = 256
    """Hidden size of the config-built Llama the align() check trains."""
    model_layers: int = 2
    batch_size: int = 4
    """Prompts per GRPO step."""
    group_size: int = 4
    max_new_tokens: int = 16
    max_length: int = 64
    quantize: str | None = "auto"
    """The align() check's base: "auto" is "nf4" on CUDA and None (the compute dtype) on CPU."""


@dataclass(frozen=True)
class Target:
    """What the checks examine: the device and compute dtype a run would use, and where tensors go."""

    device: torch.device
    dtype: torch.dtype
    tensors: torch.device
    """`device`, unless a test runs the GPU branch's numeric checks on CPU tensors."""


@dataclass
class Check:
    name: str
    status: str
    """"ok", "failed" or "skipped"."""
    summary: str
    """One line: the number behind the status, or why it failed or was skipped."""
    values: dict = field(default_factory=dict)
    seconds: float = 0.0

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")


# --------------------------------------------------------------------------- environment


def versions() -> dict[str, str | None]:
    """Python, every package a run imports (None: not installed), and the CUDA build of torch."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    found["torch_cuda_build"] = torch.version.cuda
    return found


def check_versions(found: dict[str, str | None]) -> Check:
    missing = [name for name in PACKAGES if found.get(name) is None and name not in OPTIONAL and name != "lorarlhf"]
    optional = [f"{name} ({OPTIONAL[name]})" for name in OPTIONAL if found.get(name) is None]
    build = f"CUDA {found['torch_cuda_build']} build" if found["torch_cuda_build"] else "CPU-only build"
    summary = f"torch {found['torch']} ({build})"
    if missing:
        return Check("versions", "failed", f"not installed: {', '.join(missing)}", found)
    return Check("versions", "ok", summary + (f"; missing optional {', '.join(optional)}" if optional else ""), found)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model and the threads torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    name = platform.processor() or platform.machine()
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name} ({torch.get_num_threads()} threads)"


def check_device(device: torch.device) -> Check:
    """The device lorarlhf picks (resolve_device(None)) and why."""
    name = device_name(device)
    values = {"device": str(device), "name": name, "cuda_devices": torch.cuda.device_count()}
    if device.type == "cuda":
        return Check("device", "ok", f"{device}: {name} (first of {values['cuda_devices']} CUDA devices)", values)
    if torch.version.cuda is None:
        why = "torch is a CPU-only build"
    else:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        why = f"torch has CUDA {torch.version.cuda} but sees no GPU (driver?"
        why += f" CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ")"
    return Check("device", "ok", f"cpu: {why}; {name}", values)


def check_dtype(target: Target) -> Check:
    """The compute dtype by the loader's rule (lorarlhf.model.loading.resolve_dtype)."""
    name = str(target.dtype).removeprefix("torch.")
    if target.device.type != "cuda":
        why = "CPU: half-precision matmuls are slow and inexact there"
    else:
        major, minor = torch.cuda.get_device_capability(target.device)
        native = "native bf16 (compute capability >= 8.0)" if major >= 8 else "no native bf16 before sm_80"
        why = f"sm_{major}{minor}: {native}"
    return Check("compute dtype", "ok", f"{name}: {why}", {"dtype": name})


def check_kernel_path(device: torch.device) -> Check:
    """Which row kernels lorarlhf.kernels runs on `device`, by the kernels' own rule (_common.backend_for)."""
    from lorarlhf.kernels import backend_for, interpreting, triton_available

    backend = backend_for(device)
    values = {"backend": backend, "triton_installed": triton_available(), "triton_interpret": interpreting()}
    if backend == "triton":
        path = "Triton, interpreted (TRITON_INTERPRET=1)" if interpreting() else "Triton, compiled"
    elif not triton_available():
        path = "PyTorch chunked path: triton is not installed"
    else:
        path = f"PyTorch chunked path: {device.type} tensors without TRITON_INTERPRET=1"
    values["path"] = path
    return Check("kernel path", "ok", path, values)


def check_nf4(target: Target) -> Check:
    """Whether 4-bit NF4 works here: bitsandbytes imports, its native library suits the device, and a weight
    survives a quantize / dequantize round trip on it."""
    try:
        import bitsandbytes as bnb
        import bitsandbytes.functional as bnb_functional
    except ImportError as error:
        return Check("nf4 quantization", "failed", f"unavailable: bitsandbytes does not import ({error})")
    from bitsandbytes import cextension

    backend = str(getattr(cextension, "BNB_BACKEND", "unknown"))
    library = type(getattr(cextension, "lib", None)).__name__
    values = {"bitsandbytes": bnb.__version__, "backend": backend, "library": library}
    if target.tensors.type == "cuda" and "ErrorHandler" in library:
        return Check("nf4 quantization", "failed", "unavailable: bitsandbytes found no CUDA library for this torch")
    weight = torch.randn(128, 64, generator=torch.Generator().manual_seed(0)).to(target.tensors, target.dtype)
    packed, state = bnb_functional.quantize_4bit(weight, quant_type="nf4", compress_statistics=True)
    error = _rel_err(bnb_functional.dequantize_4bit(packed, state), weight.double())
    values["round_trip_rel_err"] = error
    status = "ok" if error <= NF4_MAX_REL_ERR else "failed"
    return Check(
        "nf4 quantization",
        status,
        f"bitsandbytes {bnb.__version__} ({backend} backend); round trip error {error:.3f} (NF4 <= {NF4_MAX_REL_ERR})",
        values,
    )


def check_mm_out_dtype(target: Target) -> Check:
    """Whether torch.mm(a, b, out_dtype=torch.float32) exists for 16-bit operands on the device: the kernels'
    16-bit LM head keeps a float32 result with it; without it, CPU upcasts the operands (exact, slower) and
    CUDA rounds the logits through 16 bits."""
    half = torch.bfloat16 if target.dtype == torch.float32 else target.dtype
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(shape, generator=gen).to(target.tensors, half) for shape in ((33, 64), (64, 17)))
    values = {"operands": str(half).removeprefix("torch.")}
    try:
        out = torch.mm(a, b, out_dtype=torch.float32)
    except (RuntimeError, TypeError, NotImplementedError) as error:
        values["exists"] = False
        first = str(error).splitlines()[0][:80]
        if target.tensors.type == "cuda":
            return Check("mm out_dtype", "failed", f"missing ({first}): CUDA logits round through 16 bits", values)
        return Check("mm out_dtype", "ok", "missing on CPU: the kernels upcast the operands to float32", values)
    error = _rel_err(out, a.double() @ b.double())
    values.update(exists=True, result_dtype=str(out.dtype).removeprefix("torch."), rel_err=error)
    ok = out.dtype == torch.float32 and error <= REL_ERR[torch.float32]
    return Check("mm out_dtype", "ok" if ok else "failed", f"exists: {out.dtype}, rel err {error:.1e}", values)


# --------------------------------------------------------------------------- the card


def check_card(device: torch.device) -> Check:
    if device.type != "cuda":
        return Check("gpu", "skipped", "no CUDA device")
    major, minor = torch.cuda.get_device_capability(device)
    free, total = torch.cuda.mem_get_info(device)
    values = {
        "name": torch.cuda.get_device_name(device),
        "capability": f"{major}.{minor}",
        "free_gib": free / 2**30,
        "total_gib": total / 2**30,
    }
    summary = f"{values['name']}, sm_{major}{minor}, {values['free_gib']:.1f} of {values['total_gib']:.1f} GiB free"
    return Check("gpu", "ok", summary, values)


def check_bf16(device: torch.device) -> Check:
    """bf16 that is real: the loader's rule (capability >= 8.0, resolve_dtype), beside what torch says, which
    also counts emulation (a T4, sm_75, says True)."""
    from lorarlhf.model.loading import resolve_dtype

    if device.type != "cuda":
        return Check("bf16", "skipped", "no CUDA device")
    native = resolve_dtype(None, device) == torch.bfloat16
    torch_says = bool(torch.cuda.is_bf16_supported())
    major, minor = torch.cuda.get_device_capability(device)
    values = {"native": native, "torch_is_bf16_supported": torch_says, "capability": f"{major}.{minor}"}
    if native:
        return Check("bf16", "ok", f"native (sm_{major}{minor} >= 8.0): runs compute in bfloat16", values)
    how = "emulated only (torch says supported)" if torch_says else "not supported"
    return Check("bf16", "ok", f"{how} on sm_{major}{minor} < 8.0: runs compute in float16", values)


# --------------------------------------------------------------------------- the numbers


def check_bnb_matmul(target: Target, sizes: Sizes) -> Check:
    """bitsandbytes' 4-bit matmul (what every NF4 layer runs) against x @ dequantize_4bit(W).T in float64:
    the training path (many rows, forward and backward) and the one-token inference path (generation)."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnb_functional

    gen = torch.Generator().manual_seed(0)
    weight = (torch.randn(sizes.bnb_out, sizes.hidden, generator=gen) / math.sqrt(sizes.hidden)).to(target.tensors)
    weight = weight.to(target.dtype)
    packed, state = bnb_functional.quantize_4bit(weight, quant_type="nf4", compress_statistics=True)
    dequantized = bnb_functional.dequantize_4bit(packed, state).double()  # (out, in)
    x = torch.randn(sizes.tokens, sizes.hidden, generator=gen).to(target.tensors, target.dtype).requires_grad_()
    y = bnb.matmul_4bit(x, packed.t(), quant_state=state)  # (N, out)
    upstream = torch.randn(y.shape, generator=gen).to(target.tensors, y.dtype)
    y.backward(upstream)
    with torch.no_grad():
        y_one = bnb.matmul_4bit(x[:1].detach(), packed.t(), quant_state=state)  # the gemv kernel on CUDA
    x_ref = x.detach().double()
    y_ref = x_ref @ dequantized.T
    results = {
        "forward": _compare(y, y_ref, target.dtype),
        "backward d x": _compare(x.grad, upstream.double() @ dequantized, target.dtype),
        "one-token forward": _compare(y_one, y_ref[:1], target.dtype),
    }
    values = {"shape": [sizes.tokens, sizes.hidden, sizes.bnb_out], "dtype": _name(target.dtype), **results}
    nf4_error = _rel_err(dequantized, weight.double())
    values["nf4_weight_rel_err"] = nf4_error
    shape = f"{sizes.tokens}x{sizes.hidden} @ nf4 {sizes.hidden}x{sizes.bnb_out} {_name(target.dtype)}"
    check = _verdict("bnb 4-bit matmul", results, shape, values)
    check.summary += f"; NF4 error {nf4_error:.3f}"
    if nf4_error > NF4_MAX_REL_ERR:
        check.status, check.summary = "failed", check.summary + f" > {NF4_MAX_REL_ERR}: the quantizer is broken"
    return check


def check_logprobs_kernel(target: Target, sizes: Sizes) -> Check:
    """fused_linear_logprobs(return_entropy=True) against full-logits log_softmax in float64: log-probs,
    entropies, and the gradients of hidden and weight under upstream gradients that are not 1."""
    from lorarlhf.kernels import backend_for, fused_linear_logprobs
    from lorarlhf.kernels.logprobs import logprobs_reference

    gen = torch.Generator().manual_seed(1)
    hidden, weight = _hidden_and_head(target, sizes, gen)
    targets = torch.randint(0, sizes.vocab, (sizes.tokens,), generator=gen)
    targets[::7] = -100  # ignored rows: zero and no gradient
    targets = targets.to(target.tensors)
    temperature = 0.7
    logp, entropy = fused_linear_logprobs(hidden, weight, targets, temperature=temperature, return_entropy=True)
    g, e = (torch.randn(sizes.tokens, generator=gen).to(target.tensors) for _ in range(2))
    ((logp * g).sum() + (entropy * e).sum()).backward()
    hidden_ref, weight_ref = (t.detach().double().requires_grad_() for t in (hidden, weight))
    logp_ref, entropy_ref = logprobs_reference(hidden_ref, weight_ref, targets, temperature=temperature)
    ((logp_ref * g.double()).sum() + (entropy_ref * e.double()).sum()).backward()
    results = {
        "logp": _compare(logp, logp_ref),
        "entropy": _compare(entropy, entropy_ref),
        "d hidden": _compare(hidden.grad, hidden_ref.grad, target.dtype),
        "d weight": _compare(weight.grad, weight_ref.grad, target.dtype),
    }
    values = {"backend": backend_for(target.tensors), **_kernel_shape(target, sizes), **results}
    return _verdict("fused_linear_logprobs", results, _shape_words(target, sizes), values)


def check_kl_kernel(target: Target, sizes: Sizes) -> Check:
    """fused_linear_kl against full-vocabulary KL in float64, a policy close to its reference as in RLHF:
    KL values and the gradients of both hidden states and the weight."""
    from lorarlhf.kernels import backend_for, fused_linear_kl
    from lorarlhf.kernels.linear_kl import linear_kl_reference

    gen = torch.Generator().manual_seed(2)
    hidden, weight = _hidden_and_head(target, sizes, gen)
    noise = 0.1 * torch.randn(hidden.shape, generator=gen).to(target.tensors, target.dtype)
    ref_hidden = (hidden.detach() + noise).requires_grad_()
    kl = fused_linear_kl(hidden, ref_hidden, weight)
    g = torch.randn(sizes.tokens, generator=gen).to(target.tensors)
    (kl * g).sum().backward()
    refs = [t.detach().double().requires_grad_() for t in (hidden, ref_hidden, weight)]
    kl_ref = linear_kl_reference(*refs)
    (kl_ref * g.double()).sum().backward()
    results = {
        "kl": _compare(kl, kl_ref),
        "d hidden": _compare(hidden.grad, refs[0].grad, target.dtype),
        "d ref_hidden": _compare(ref_hidden.grad, refs[1].grad, target.dtype),
        "d weight": _compare(weight.grad, refs[2].grad, target.dtype),
    }
    values = {"backend": backend_for(target.tensors), **_kernel_shape(target, sizes), **results}
    return _verdict("fused_linear_kl", results, _shape_words(target, sizes), values)


def check_token_kl(target: Target, sizes: Sizes) -> Check:
    """token_kl k1, k2, k3 against their textbook formulas in float64, values and gradients of both inputs.
    The inputs are float32, as the fused kernels return log-probs."""
    from lorarlhf.kernels import token_kl
    from lorarlhf.kernels.token_kl import ESTIMATORS, token_kl_reference

    gen = torch.Generator().manual_seed(3)
    logp = -torch.rand(sizes.tokens, generator=gen).mul(10).to(target.tensors)
    ref_logp = logp + 0.5 * torch.randn(sizes.tokens, generator=gen).to(target.tensors)
    g = torch.randn(sizes.tokens, generator=gen).to(target.tensors)
    results = {}
    for estimator in ESTIMATORS:
        a, b = (t.clone().requires_grad_() for t in (logp, ref_logp))
        (token_kl(a, b, estimator=estimator) * g).sum().backward()
        a_ref, b_ref = (t.double().requires_grad_() for t in (logp, ref_logp))
        value_ref = token_kl_reference(a_ref, b_ref, estimator)
        (value_ref * g.double()).sum().backward()
        results[estimator] = _compare(token_kl(logp, ref_logp, estimator=estimator), value_ref.detach())
        results[f"{estimator} d logp"] = _compare(a.grad, a_ref.grad, torch.float32)
        results[f"{estimator} d ref_logp"] = _compare(b.grad, b_ref.grad, torch.float32)
    values = {"tokens": sizes.tokens, "dtype": "float32", **results}
    return _verdict("token_kl", results, f"k1/k2/k3, N={sizes.tokens} float32", values)


def check_align(target: Target, sizes: Sizes) -> Check:
    """A short GRPO align() on a config-built Llama (NF4 on CUDA), with the planner's estimate beside the peak
    CUDA allocations measured around generation and the run, and the resident bytes after loading. The
    planner counts the CUDA context, which allocations never include, so it is left out of the comparison. A
    measurement above the estimate by more than the planner's safety margin fails: align() sizes its
    micro-batches by the estimate, within that margin of the card."""
    from transformers import LlamaForCausalLM

    from lorarlhf.methods.grpo import GRPOConfig
    from lorarlhf.model.hydra import HydraModel
    from lorarlhf.model.tiny import build_tiny_tokenizer, tiny_llama_config
    from lorarlhf.pipeline import align
    from lorarlhf.planner import plan

    quantize = sizes.quantize if sizes.quantize != "auto" else ("nf4" if target.device.type == "cuda" else None)
    options = dict(
        steps=sizes.align_steps,
        batch_size=sizes.batch_size,
        group_size=sizes.group_size,
        max_new_tokens=sizes.max_new_tokens,
        max_length=sizes.max_length,
        quantize=quantize,
        samples=0,
        seed=0,
    )
    config = GRPOConfig(**options)  # the config align() builds from the same options
    tokenizer = build_tiny_tokenizer()
    model_config = tiny_llama_config(
        vocab_size=len(tokenizer),
        hidden_size=sizes.model_hidden,
        intermediate_size=2 * sizes.model_hidden,
        num_hidden_layers=sizes.model_layers,
    )
    estimate = plan(
        model_config,
        method="grpo",
        batch_size=config.batch_size,
        max_length=config.max_length,
        max_new_tokens=config.max_new_tokens,
        group_size=config.group_size,
        lora_r=config.lora_r,
        quantize=quantize,
        dtype=_name(target.dtype),
        gradient_checkpointing=config.gradient_checkpointing,
        reward_model=False,
    )
    context = estimate.items.get("CUDA context", 0)
    planned = {
        "load": estimate.items["base weights"] + estimate.items["actor adapter"],
        "generation": estimate.phases["generation"] - context,
        "align": max(estimate.phases.values()) - context,
    }
    margin = inspect.signature(plan).parameters["safety_margin"].default
    measure = target.device.type == "cuda"
    measured: dict[str, int | None] = {}
    prompts = [f"doctor prompt {i}:" for i in range(2 * sizes.batch_size)]
    with tempfile.TemporaryDirectory(prefix="lorarlhf-doctor-") as tmp, _quiet() as captured:
        generator_state = torch.random.get_rng_state()
        try:
            torch.manual_seed(0)
            LlamaForCausalLM(model_config).save_pretrained(tmp)
        finally:
            torch.random.set_rng_state(generator_state)
        tokenizer.save_pretrained(tmp)
        with _peak(target.device, measured, "load peak"):
            hydra = HydraModel.from_pretrained(
                tmp, roles=("actor",), device=target.tensors, dtype=target.dtype, **config.hydra_options()
            )
        measured["load"] = int(torch.cuda.memory_allocated(target.device)) if measure else None  # resident
        with _peak(target.device, measured, "generation"), torch.no_grad():
            hydra.generate(
                prompts[: sizes.batch_size] * sizes.group_size, max_new_tokens=sizes.max_new_tokens, do_sample=True
            )
        with _peak(target.device, measured, "align"):
            result = align(hydra, prompts, method="grpo", reward_fn=_doctor_reward, output_dir=Path(tmp) / "run",
                           **options)  # fmt: skip
    metrics = result.metrics
    phases = {
        name: {
            "planned_bytes": planned[name],
            "measured_bytes": measured.get(name),
            "ok": measured.get(name) is None or measured[name] * (1 - margin) <= planned[name],
        }
        for name in planned
    }
    phases["load"]["peak_bytes"] = measured.get("load peak")  # transient copies while quantizing: not planned
    finite = all(math.isfinite(metrics.get(k, math.nan)) for k in ("rl/reward_last", "rl/kl_last"))
    values = {
        "quantize": quantize,
        "dtype": _name(target.dtype),
        "steps": sizes.align_steps,
        "iterations": metrics.get("rl/iterations"),
        "rl/reward_last": metrics.get("rl/reward_last"),
        "rl/kl_last": metrics.get("rl/kl_last"),
        "safety_margin": margin,
        "phases": phases,
        "stderr_tail": captured.getvalue().strip().splitlines()[-3:],
    }
    ok = finite and all(phase["ok"] for phase in phases.values())
    base = f"{sizes.align_steps} GRPO steps, {quantize or _name(target.dtype)} base"
    if not finite:
        return Check("align + planner", "failed", f"{base}: non-finite reward or KL", _finite(values))
    if measure:
        words = ", ".join(
            f"{name} {phase['measured_bytes'] / 2**20:.3g}/{phase['planned_bytes'] / 2**20:.3g}"
            for name, phase in phases.items()
        )
        summary = f"{base}; MiB measured/planned: {words}"
    else:
        planned_mib = planned["align"] / 2**20
        summary = f"{base}, kl {metrics['rl/kl_last']:.2g}; planned peak {planned_mib:.3g} MiB (not measured on CPU)"
    return Check("align + planner", "ok" if ok else "failed", summary, _finite(values))


# --------------------------------------------------------------------------- running and reporting


def run_checks(
    full: bool | None = None,
    *,
    sizes: Sizes | None = None,
    device: str | torch.device | None = None,
    tensor_device: str | torch.device | None = None,
    extra_checks: Iterable[Callable[[Target, Sizes], Check]] = (),
) -> dict:
    """Every check, as a JSON-serialisable report: {"ok", "device", "device_type", "dtype", "full", "sizes",
    "versions", "checks": [{"name", "status", "summary", "values", "seconds"}], "seconds"}.

    full: also run the numeric checks (bitsandbytes, kernels, align); None: on CUDA only. device: the device
    to examine (None: the one a run would pick). tensor_device: where the numeric checks put tensors (tests
    run the GPU branch on "cpu"). extra_checks: more checks, each called with (target, sizes).
    """
    from lorarlhf.model.loading import resolve_device, resolve_dtype

    start = time.perf_counter()
    sizes = sizes or Sizes()
    resolved = resolve_device(device)
    if resolved.type == "cuda" and resolved.index is None:
        resolved = torch.device("cuda", 0)
    target = Target(resolved, resolve_dtype(None, resolved), torch.device(tensor_device or resolved))
    full = resolved.type == "cuda" if full is None else full
    found = versions()
    checks = [
        _run("versions", check_versions, found),
        _run("device", check_device, resolved),
        _run("compute dtype", check_dtype, target),
        _run("kernel path", check_kernel_path, target.tensors),
        _run("nf4 quantization", check_nf4, target),
        _run("mm out_dtype", check_mm_out_dtype, target),
        _run("gpu", check_card, resolved),
        _run("bf16", check_bf16, resolved),
    ]
    numeric = (
        ("bnb 4-bit matmul", check_bnb_matmul),
        ("fused_linear_logprobs", check_logprobs_kernel),
        ("fused_linear_kl", check_kl_kernel),
        ("token_kl", check_token_kl),
        ("align + planner", check_align),
    )
    for name, fn in numeric:
        checks.append(_run(name, fn, target, sizes) if full else Check(name, "skipped", NO_GPU))
    checks += [_run(getattr(fn, "__name__", "extra check"), fn, target, sizes) for fn in extra_checks]
    return {
        "ok": not any(check.status == "failed" for check in checks),
        "device": _safe(lambda: device_name(resolved), str(resolved)),
        "device_type": resolved.type,
        "dtype": _name(target.dtype),
        "full": full,
        "sizes": asdict(sizes),
        "versions": found,
        "checks": [asdict(check) for check in checks],
        "seconds": time.perf_counter() - start,
    }


def format_report(report: dict) -> str:
    """The report as one screen of text: versions, then one line per check."""
    found = report["versions"]
    cuda = f"CUDA {found['torch_cuda_build']}" if found.get("torch_cuda_build") else "CPU build"
    packages = [f"{name} {found.get(name) or '-'}" for name in PACKAGES if name != "torch"]
    lines = [
        f"lorarlhf doctor: {report['device']} ({report['device_type']}, {report['dtype']})",
        f"  python {found['python']}, torch {found['torch']} ({cuda})",
        "  " + ", ".join(packages),
        "",
    ]
    width = max(len(check["name"]) for check in report["checks"])
    for check in report["checks"]:
        lines.append(f"  {check['name']:<{width}}  {check['status']:<7}  {check['summary']}")
    counts = {status: sum(c["status"] == status for c in report["checks"]) for status in STATUSES}
    verdict = "ok" if report["ok"] else "FAILED"
    lines += ["", f"{verdict}: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped "
              f"in {report['seconds']:.1f} s"]  # fmt: skip
    return "\n".join(lines)


def _run(name: str, fn, *args) -> Check:
    """fn(*args), timed; an exception is the check failing, with its message (a doctor never crashes)."""
    start = time.perf_counter()
    try:
        check = fn(*args)
    except Exception as error:  # noqa: BLE001 - any error is what the report is for
        where = traceback.extract_tb(error.__traceback__)[-1]
        check = Check(
            name,
            "failed",
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:200],
            {"error": repr(error)[:1000], "at": f"{Path(where.filename).name}:{where.lineno}"},
        )
    check.seconds = time.perf_counter() - start
    return check


def _compare(got: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype | None = None) -> dict:
    """got against its float64 reference: elementwise |got - ref| <= atol + rtol |ref| ("worst" is the largest
    share of that allowance any entry uses; <= 1 passes), as the kernel tests' assert_close.

    dtype None: an output of the kernels (float32 logits): OUT_TOL. Else a tensor in `dtype` (a gradient, a
    16-bit matmul's result): GRAD_TOL; in 16 bits, whose atol scales with the largest entry, the norm-wise
    relative error must also be within REL_ERR (in float32 it is reported only: a KL near zero, the RLHF
    regime, makes it a ratio of two tiny numbers).
    """
    got, ref = got.detach().double(), ref.detach().double().to(got.device)
    bound = None
    if dtype is None:
        atol, rtol = OUT_TOL["atol"], OUT_TOL["rtol"]
    elif isinstance(GRAD_TOL[dtype], dict):
        atol, rtol = GRAD_TOL[dtype]["atol"], GRAD_TOL[dtype]["rtol"]
    else:
        rtol, bound = GRAD_TOL[dtype], REL_ERR[dtype]
        atol = rtol * float(ref.abs().max()) if ref.numel() else rtol
    diff = (got - ref).abs()
    worst = float((diff / (atol + rtol * ref.abs())).max()) if diff.numel() else 0.0
    rel = _rel_err(got, ref)
    if bound is not None:
        worst = max(worst, rel / bound)
    return {
        "max_abs_err": float(diff.max()) if diff.numel() else 0.0,
        "rel_err": rel,
        "worst": worst,
        "atol": atol,
        "rtol": rtol,
        "rel_bound": bound,
        "ok": worst <= 1.0,
    }


def _rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.detach().double(), ref.detach().double().to(got.device)
    return float((got - ref).norm() / ref.norm().clamp_min(1e-30))


def _hidden_and_head(target: Target, sizes: Sizes, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states [N, H] and an LM head [V, H] in the card's dtype, scaled so logits have std ~2 (peaked
    enough that the softmax is not flat), both leaves that want gradients."""
    hidden = torch.randn(sizes.tokens, sizes.hidden, generator=gen)
    weight = torch.randn(sizes.vocab, sizes.hidden, generator=gen) * (2 / math.sqrt(sizes.hidden))
    return tuple(t.to(target.tensors, target.dtype).requires_grad_() for t in (hidden, weight))


def _kernel_shape(target: Target, sizes: Sizes) -> dict:
    return {"tokens": sizes.tokens, "hidden": sizes.hidden, "vocab": sizes.vocab, "dtype": _name(target.dtype)}


def _shape_words(target: Target, sizes: Sizes) -> str:
    return f"N={sizes.tokens} H={sizes.hidden} V={sizes.vocab} {_name(target.dtype)}"


def _verdict(name: str, results: dict[str, dict], words: str, values: dict) -> Check:
    """ok when every comparison passed; the summary names the worst one and the share of its tolerance used
    (0.1x tol: a tenth of what is allowed)."""
    failed = [part for part, result in results.items() if not result["ok"]]
    worst = max(results, key=lambda part: results[part]["worst"])
    share = f"worst {worst} at {results[worst]['worst']:.2g}x tol"
    summary = f"{words}: FAILED {', '.join(failed)}; {share}" if failed else f"{words}: {share}"
    return Check(name, "failed" if failed else "ok", summary, _finite(values))


@contextlib.contextmanager
def _peak(device: torch.device, into: dict, phase: str):
    """Peak CUDA allocations of the enclosed block, stored as into[phase] (None on CPU: no per-phase peak)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        into[phase] = int(torch.cuda.max_memory_allocated(device))
    else:
        into[phase] = None


@contextlib.contextmanager
def _quiet():
    """Progress bars and warnings of the run go to a buffer, not over the report."""
    buffer = io.StringIO()
    with contextlib.redirect_stderr(buffer), contextlib.redirect_stdout(buffer):
        yield buffer


def _doctor_reward(prompts: list[str], completions: list[str]) -> list[float]:
    """Any cheap reward does: the share of lowercase letters."""
    return [sum(c.islower() for c in text) / max(len(text), 1) for text in completions]


def _finite(values):
    """`values` with every non-finite float as None: the report is strict JSON."""
    if isinstance(values, dict):
        return {key: _finite(value) for key, value in values.items()}
    if isinstance(values, list | tuple):
        return [_finite(value) for value in values]
    if isinstance(values, float) and not math.isfinite(values):
        return None
    return values


def _safe(fn, default):
    try:
        return fn()
    except Exception:  # noqa: BLE001 - a name is not worth a crash
        return default


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
