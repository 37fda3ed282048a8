"""Shared pieces of the chunked LM-head kernels: backend choice, chunk size, logits in fp32, argument checks.

Every kernel runs the same loop on every device: a chunk of rows goes through the LM head as one matmul
(cuBLAS on a GPU) into a (rows, V) float32 tile, and a row kernel reduces the tile. The row kernel is Triton
on CUDA (and on CPU tensors under TRITON_INTERPRET=1, which is how CI tests it) and plain PyTorch otherwise.
Sharing the loop keeps the two backends' memory behaviour identical by construction.
"""

from __future__ import annotations

import importlib.util
import math
import numbers
import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # triton is a Linux-only dependency; elsewhere the torch row kernels serve every device
    triton = tl = None

BACKENDS = ("triton", "torch")
FP_FUSION = True
"""Whether Triton may fuse a multiply and an add into one FMA in the row kernels, pinned at every launch and
compile: Triton 3.9 fuses by default and warns when nothing is said, 3.10 stops fusing by default, and the
kernels' numerics (tested at their tolerances with fusion on) should not change with a Triton upgrade."""
_forced_backend: str | None = None
backend_calls: Counter[str] = Counter()
"""How many kernel calls each backend has served in this process. The tests read it to know which tests reach
the kernels: those run a second time through the Triton interpreter."""


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def block_v(vocab: int) -> int:
    """Vocabulary columns a row kernel handles per step: 1024 float32 values (4 KiB per row in flight) stream
    at full bandwidth without spilling registers; a smaller vocabulary (tests) takes the next power of two."""
    return min(1024, triton.next_power_of_2(vocab))


def interpreting() -> bool:
    """TRITON_INTERPRET=1 runs @triton.jit kernels in Python on CPU tensors (read once, at kernel definition)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def backend_for(device: torch.device) -> str:
    """'triton' on CUDA, and on CPU when the Triton interpreter is on; 'torch' otherwise."""
    if _forced_backend is not None:
        backend = _forced_backend
    elif triton_available() and (device.type == "cuda" or (device.type == "cpu" and interpreting())):
        backend = "triton"
    else:
        backend = "torch"
    backend_calls[backend] += 1
    return backend


@contextmanager
def force_backend(name: str):
    """Run the enclosed kernels on one backend (tests and benchmarks compare them side by side)."""
    global _forced_backend
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    if name == "triton" and not triton_available():
        raise RuntimeError("the triton backend was requested but triton is not installed")
    previous, _forced_backend = _forced_backend, name
    try:
        yield
    finally:
        _forced_backend = previous


# Bytes of logits one chunk may hold. A chunk is a (rows, V) tile of logits in the compute dtype (float32, or
# float64 when the inputs are float64), so
#     rows * V * itemsize <= LOGITS_CHUNK_BYTES   =>   rows = max(1, LOGITS_CHUNK_BYTES // (V * itemsize)).
# The floor of one row keeps a vocabulary wider than the budget working (that tile is then just over budget).
# A step also holds a few temporaries of the tile's shape (probabilities, the logits gradient), so the peak
# extra memory is a small multiple of this budget, whatever N is. For V = 151,936 (Qwen2) in float32 this
# gives 55 rows per chunk; for V = 32,000 (Llama 2) it gives 262.
LOGITS_CHUNK_BYTES = 32 * 1024 * 1024


def chunk_rows(vocab_size: int, dtype: torch.dtype, override: int | None = None) -> int:
    """Rows per chunk for a vocabulary of ``vocab_size`` in ``dtype``; ``override`` (tests only) wins."""
    if override is not None:
        if isinstance(override, bool) or not isinstance(override, int) or override < 1:
            raise ValueError(f"_chunk_rows must be an int >= 1, got {override!r}")
        return override
    itemsize = torch.empty((), dtype=dtype).element_size()
    return max(1, LOGITS_CHUNK_BYTES // (max(vocab_size, 1) * itemsize))


def row_chunks(n: int, rows: int) -> Iterator[tuple[int, int]]:
    """(start, end) row ranges of at most ``rows`` rows covering ``range(n)``."""
    for start in range(0, n, rows):
        yield start, min(start + rows, n)


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float32, or float64 when any input is float64 (so gradcheck can run the kernels in double)."""
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def chunk_logits(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    temperature: float,
    softcap: float | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """softcap(hidden @ weight.T + bias) / temperature for one chunk of rows, as a (rows, V) tile in `dtype`.

    softcap(x) = cap * tanh(x / cap) (Gemma 2's final-logit soft-capping), the identity when cap is None. It
    comes before the temperature, as in transformers, where the model's forward caps and sampling then
    divides by the temperature. Both are applied in place on the tile, so neither costs a second buffer.

    A 16-bit head stays 16-bit: the matmul reads it as is and writes float32 logits (cuBLAS accumulates in
    float32 anyway), so no float32 copy of the [V, H] weight is ever made.
    """
    if weight.dtype == dtype:
        logits = hidden.to(dtype) @ weight.T  # (rows, V)
    else:
        logits = matmul_float32_out(hidden.to(weight.dtype), weight.T)  # (rows, V)
    if bias is not None:
        logits += bias.to(dtype)
    if softcap is not None:
        logits.div_(softcap).tanh_().mul_(softcap / temperature)  # cap * tanh(x / cap) / T, in place
    elif temperature != 1.0:
        logits.div_(temperature)  # in place: no second (rows, V) buffer
    return logits


def softcap_slope(temperature: float, softcap: float | None) -> float:
    """T / cap, which turns a tile entry z = cap * tanh(x / cap) / T back into tanh(x / cap); 0 without a cap.

    The row kernels' backward multiplies each logit gradient by d softcap / dx = 1 - tanh(x / cap)^2
    = 1 - (z * T / cap)^2, read from the tile they already hold, so the uncapped logits are never kept.
    """
    return 0.0 if softcap is None else temperature / softcap


_MM_OUT_DTYPE: dict[str, bool] = {}


def matmul_float32_out(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b for 16-bit operands with a float32 result.

    torch.mm(..., out_dtype=float32) keeps the float32 accumulator on CUDA. Where that overload is missing
    (CPU, older torch) the CPU path upcasts the operands and CUDA rounds through 16-bit, like the peers do.
    """
    device = a.device.type
    if _MM_OUT_DTYPE.get(device, True):
        try:
            return torch.mm(a, b, out_dtype=torch.float32)
        except (RuntimeError, TypeError, NotImplementedError):
            _MM_OUT_DTYPE[device] = False
    if device == "cpu":
        return a.float() @ b.float()
    return (a @ b).float()


def matmul_into(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """a (float32 row gradients) @ b (a weight) read in b's precision, returned in `dtype`."""
    if b.dtype == a.dtype:
        return (a @ b).to(dtype)
    if dtype == b.dtype:
        return a.to(b.dtype) @ b  # 16-bit in, 16-bit out: the result is wanted in 16 bits anyway
    return matmul_float32_out(a.to(b.dtype), b).to(dtype)


def check_floating(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must have a floating dtype, got {t.dtype}")


def check_hidden_weight(hidden: torch.Tensor, weight: torch.Tensor, hidden_name: str = "hidden") -> None:
    """hidden [N, H] and weight [V, H], floating, on one device."""
    check_floating(hidden_name, hidden)
    check_floating("weight", weight)
    if hidden.dim() != 2:
        raise ValueError(f"{hidden_name} must be 2-D [N, H], got shape {tuple(hidden.shape)}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [V, H], got shape {tuple(weight.shape)}")
    if weight.shape[1] != hidden.shape[1]:
        raise ValueError(
            f"weight must have shape [V, H] with H = {hidden.shape[1]} (from {hidden_name}), got {tuple(weight.shape)}"
        )
    if weight.shape[0] == 0:
        raise ValueError("weight must have shape [V, H] with V >= 1, got V = 0")
    if weight.device != hidden.device:
        raise ValueError(f"weight is on {weight.device} but {hidden_name} is on {hidden.device}")


def check_temperature(temperature: float) -> None:
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, numbers.Real)
        or not math.isfinite(temperature)
        or temperature <= 0
    ):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")


def check_softcap(softcap: float | None) -> None:
    if softcap is None:
        return
    if isinstance(softcap, bool) or not isinstance(softcap, numbers.Real) or not math.isfinite(softcap) or softcap <= 0:
        raise ValueError(f"softcap must be None (no soft-capping) or a finite number > 0, got {softcap!r}")


def autocast_off(device: torch.device) -> torch.autocast:
    """The kernels choose their own precision (float32 logits); an enclosing autocast region would otherwise
    run their matmuls in bfloat16/float16 and lose ~2 significant digits of every log-prob."""
    return torch.autocast(device_type=device.type, enabled=False)
