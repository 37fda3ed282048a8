"""Plumbing shared by the benchmarks: a config-built model on disk, peak memory from a reset point, and the
results file with the device and versions that produced it."""

from __future__ import annotations

import ctypes
import json
import resource
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch
from device_info import device_name

# A Llama shape of ~112M parameters (hidden 768, 10 layers, vocabulary 32,000).
LLAMA_112M = dict(
    vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=10, num_attention_heads=12,
    num_key_value_heads=4,
)  # fmt: skip


def make_model_dir(path: Path, shape: dict) -> Path:
    """A randomly initialised Llama of `shape` and the tiny byte-level tokenizer, saved like a hub checkpoint."""
    from transformers import LlamaForCausalLM

    from lorarlhf.model.tiny import build_tiny_tokenizer, tiny_llama_config

    torch.manual_seed(0)
    LlamaForCausalLM(tiny_llama_config(**shape)).save_pretrained(path)
    build_tiny_tokenizer().save_pretrained(path)
    return path


def reset_peak(device: str) -> None:
    """Start the peak-memory count now, so model loading's transient copies are not counted.

    On CPU (Linux): freed memory goes back to the OS (malloc_trim) and the kernel's high-water mark of the
    resident set is reset (/proc/self/clear_refs); what stays resident (the model) still counts.
    """
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")


def peak_bytes(device: str) -> int:
    """Peak memory since reset_peak: CUDA allocations on a GPU, resident set size (VmHWM) on CPU."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def write_results(name: str, device: str, rows: list[dict], **extra) -> Path:
    versions = {}
    for package in ("lorarlhf", "torch", "transformers", "peft", "trl", "bitsandbytes"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    out = Path(__file__).parent / "results" / f"{name}-{device}.json"
    record = {
        "device": device,
        "device_name": device_name(device),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": versions,
        **extra,
        "rows": rows,
    }
    out.write_text(json.dumps(record, indent=2) + "\n")
    return out
