"""How many bytes does each role add to the shared base? Tiny and ~100M-parameter Llama shapes, fp32 and NF4.

    python benchmarks/hydra_bytes.py            # writes benchmarks/results/hydra_bytes-<device>.json

The base is config-built with random weights (no download). Roles should add only
their LoRA adapter (and, for critic and reward, an H->1 head): the base exists once.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from device_info import device_name
from transformers import LlamaForCausalLM

from lorarlhf import HydraModel
from lorarlhf.model.memory import module_bytes
from lorarlhf.model.tiny import build_tiny_tokenizer, tiny_llama_config

SHAPES = {
    "tiny": {},
    "llama-112m": dict(
        vocab_size=32000,
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=10,
        num_attention_heads=12,
        num_key_value_heads=4,
    ),
}


def measure(name: str, overrides: dict, quantize: str | None, lora_r: int, device: str) -> dict:
    config = tiny_llama_config(**overrides)
    with tempfile.TemporaryDirectory() as scratch:
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(scratch)
        build_tiny_tokenizer().save_pretrained(scratch)
        start = time.perf_counter()
        hydra = HydraModel.from_pretrained(scratch, quantize=quantize, lora_r=lora_r, device=device)
        seconds = time.perf_counter() - start
    report = hydra.memory_report()
    return {
        "shape": name,
        "parameters": sum(p.numel() for p in LlamaForCausalLM(config).parameters()),
        "quantize": quantize,
        "lora_r": lora_r,
        "base_bytes": report["base"],
        "role_bytes": {role: size for role, size in report.items() if role != "base"},
        "total_bytes": module_bytes(hydra),
        "build_seconds": round(seconds, 3),
    }


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for name, overrides in SHAPES.items():
        for quantize in (None, "nf4"):
            row = measure(name, overrides, quantize, lora_r=16, device=device)
            rows.append(row)
            roles = ", ".join(f"{r} {b / 2**20:.2f}" for r, b in row["role_bytes"].items())
            print(
                f"{name:<11} {str(quantize):<5} params {row['parameters'] / 1e6:7.1f}M  "
                f"base {row['base_bytes'] / 2**20:8.2f} MiB  roles (MiB): {roles}  "
                f"total {row['total_bytes'] / 2**20:8.2f}"
            )
    out = Path(__file__).parent / "results" / f"hydra_bytes-{device}.json"
    out.write_text(
        json.dumps(
            {
                "device": device,
                "device_name": device_name(device),
                "torch": torch.__version__,
                "python": sys.version.split()[0],
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
