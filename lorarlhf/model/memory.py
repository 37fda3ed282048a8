"""Counting the bytes a model really holds, 4-bit weights and their quantization state included.

`numel() * element_size()` undercounts an NF4 weight: bitsandbytes packs two
4-bit codes per uint8 and keeps per-block scales (absmax, themselves quantized
under double quantization) in a side `quant_state`. Shared tensors (tied
embeddings, a lookup table used by every layer) are counted once.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Iterable, Iterator

import torch
from torch import nn


def _quant_state_tensors(param: torch.Tensor) -> Iterator[torch.Tensor]:
    state = getattr(param, "quant_state", None)
    while state is not None:
        for name in ("absmax", "code", "offset"):
            value = getattr(state, name, None)
            if isinstance(value, torch.Tensor):
                yield value
        state = getattr(state, "state2", None)  # double quantization nests a second state


def tensors_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of `tensors`, each distinct tensor once (tied weights share their data)."""
    seen, total = set(), 0
    for tensor in tensors:
        key = (tensor.device, tensor.data_ptr(), tensor.numel(), tensor.dtype)
        if key in seen:
            continue
        seen.add(key)
        total += tensor.numel() * tensor.element_size()
    return total


def parameter_bytes(params: Iterable[torch.Tensor]) -> int:
    """Bytes held by `params`, counting each 4-bit weight's quantization state too."""

    def with_quant_state():
        for param in params:
            yield param
            yield from _quant_state_tensors(param)

    return tensors_bytes(with_quant_state())


def module_bytes(module: nn.Module) -> int:
    return parameter_bytes(module.parameters())


def available_memory_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (Linux); None where it cannot be read."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory of this process so far: CUDA allocations on a GPU, resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**30 if sys.platform == "darwin" else peak / 2**20  # bytes on macOS, KiB on Linux
