"""How a CPU run's freed activations go back to the operating system.

PyTorch allocates CPU tensors with the C library's malloc. glibc serves an allocation below its mmap threshold
from the heap, and that threshold rises to the size of each large block freed (up to 32 MiB), so after the first
step a layer's activations (a few MiB each) come from the heap. Freed heap memory stays resident, and the holes
between tensors that live on (saved inputs, gradients) are rarely reused whole: on a 75M-parameter Llama, a DPO
step with gradient checkpointing held 812 MiB above the model at its peak for ~180 MiB of live tensors.

With the threshold fixed at 4 MiB (glibc's mallopt), every block of a layer's widest activations (the MLP's
tokens x intermediate) is its own mapping and goes back to the OS when freed, so the resident peak follows the
live tensors much more closely (467 MiB on that step with a 2 MiB threshold). Mapping fresh memory costs page
faults: with 4 KiB pages that was +40% of the step, with 2 MiB transparent huge pages, which PyTorch requests
when THP_MEM_ALLOC_ENABLE=1 is set before torch is imported, +10-20%. A 4 MiB threshold leaves the smaller
tokens x hidden blocks, the most numerous, in the heap. On the 75M-parameter Llama of benchmarks/peers.py
(~1,000 tokens a batch, hidden 768: 3 MiB blocks) the reward-model, DPO and GRPO steps then took 6.5-6.8, 8.8
and 12.3 s, as with glibc's defaults (6.4-6.9, 9.2, 12.0 s) and against 7.8-7.9, 11.5 and 13.3 s with a 2 MiB
threshold, at 515-580 MiB above the imports (690-730 with the defaults, 430-485 with 2 MiB).

A 4-bit base keeps the 2 MiB threshold: bitsandbytes dequantizes each weight at every CPU matmul, a weight-sized
block per call (2.25 MiB for a 768 x 768 projection), and in the heap those blocks fragment it (that GRPO step on
an NF4 base: 677-716 MiB at 4 MiB, 525 at 2 MiB). NF4 on a CPU is only ever chosen to save memory.

The rule takes huge pages and the threshold both together or neither:

- `import lorarlhf` before torch sets THP_MEM_ALLOC_ENABLE=1 (unless the environment already sets it) when
  the kernel offers transparent huge pages;
- a CPU run then fixes the mmap threshold when PyTorch's huge pages are on (a later 4-bit load may lower it).

LORARLHF_CPU_ALLOCATOR=default leaves both alone; GPU runs never touch them (CUDA memory has its own allocator).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("lorarlhf.model")

ALLOCATOR_ENV = "LORARLHF_CPU_ALLOCATOR"
TORCH_THP_ENV = "THP_MEM_ALLOC_ENABLE"
MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024
QUANTIZED_MMAP_THRESHOLD_BYTES = 2 * 1024 * 1024
_M_MMAP_THRESHOLD = -3  # glibc's malloc.h
_THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")
_threshold: int | None = None  # what this process's mmap threshold is fixed at


def allocator_rule_on() -> bool:
    value = os.environ.get(ALLOCATOR_ENV, "auto").strip().lower()
    if value not in ("auto", "default"):
        raise ValueError(f"{ALLOCATOR_ENV}={value!r} is not one of 'auto' (the rule above) or 'default' (leave it)")
    return value == "auto" and sys.platform.startswith("linux")


def kernel_offers_huge_pages() -> bool:
    """Whether transparent huge pages are on for every mapping or on request ("[always]" or "[madvise]")."""
    try:
        setting = _THP_SETTING.read_text()
    except OSError:
        return False
    return "[always]" in setting or "[madvise]" in setting


def request_huge_pages_before_torch() -> None:
    """At `import lorarlhf`: ask PyTorch for huge pages for large CPU tensors, while it can still take effect."""
    if "torch" in sys.modules or not allocator_rule_on() or not kernel_offers_huge_pages():
        return
    os.environ.setdefault(TORCH_THP_ENV, "1")


def torch_uses_huge_pages() -> bool:
    return os.environ.get(TORCH_THP_ENV) == "1"


def apply_cpu_allocator(device, *, quantized: bool = False) -> bool:
    """On a CPU run, fix glibc's mmap threshold when PyTorch's huge pages are on; whether it is now fixed.

    quantized: the base is 4-bit (the lower threshold). A later call may lower a process's threshold, never raise it.
    """
    global _threshold
    wanted = QUANTIZED_MMAP_THRESHOLD_BYTES if quantized else MMAP_THRESHOLD_BYTES
    if _threshold is not None and _threshold <= wanted:
        return True
    if getattr(device, "type", device) != "cpu" or not allocator_rule_on() or not torch_uses_huge_pages():
        return _threshold is not None
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        if not libc.mallopt(_M_MMAP_THRESHOLD, wanted):
            return _threshold is not None
    except (OSError, AttributeError):  # not glibc
        return False
    _threshold = wanted
    log.info(
        "CPU run: blocks of %d MiB and more are mapped on their own and returned when freed; set %s=default "
        "to keep the C library's defaults", wanted >> 20, ALLOCATOR_ENV,
    )  # fmt: skip
    return True


def fixed_mmap_threshold() -> int | None:
    """The mmap threshold this process fixed, in bytes; None while the C library's dynamic one applies."""
    return _threshold
