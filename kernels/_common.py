"""Shared pieces of the chunked LM-head kernels: the chunk-size rule, the compute dtype and argument checks.

Kept in one place so the PyTorch path here and the Triton path that will sit beside it size their tiles and
reject bad arguments in exactly the same way.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator

import torch

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
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, temperature: float
) -> torch.Tensor:
    """(hidden @ weight.T + bias) / temperature for one chunk; all operands already in the compute dtype."""
    logits = hidden @ weight.T if bias is None else torch.addmm(bias, hidden, weight.T)  # (rows, V)
    if temperature != 1.0:
        logits.div_(temperature)  # in place: no second (rows, V) buffer
    return logits


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


def autocast_off(device: torch.device) -> torch.autocast:
    """The kernels choose their own precision (float32 logits); an enclosing autocast region would otherwise
    run their matmuls in bfloat16/float16 and lose ~2 significant digits of every log-prob."""
    return torch.autocast(device_type=device.type, enabled=False)
