"""The actor as an ordinary transformers checkpoint: LoRA merged into a full-precision copy of the base.

A 4-bit base cannot hold a merged update without rounding it away, so the merge loads the base again
unquantized, in the dtype its checkpoint was saved in, on the CPU by default (an 8B model in bf16 needs
~16 GB of RAM, not of GPU memory), adds the actor's LoRA update to its weights, and saves the result with
its tokenizer. Anything that loads a transformers model can load it; no peft, no lorarlhf.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lorarlhf.model.saving import ADAPTERS


def export_merged(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    role: str = "actor",
    device: str = "cpu",
    trust_remote_code: bool = False,
) -> Path:
    """Merge `role`'s adapter of the saved run in `run_dir` into its base; save to `out_dir` (new or empty)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lorarlhf.model.saving import TOKENIZER, read_manifest

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    manifest = read_manifest(run_dir)
    adapter_dir = run_dir / ADAPTERS / role
    if not adapter_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} has no {role!r} adapter to merge; its roles are {manifest['roles']}")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} exists and is not an empty directory; choose a new one for the merged model")
    base = AutoModelForCausalLM.from_pretrained(
        manifest["base"]["name_or_path"],
        dtype="auto",
        device_map={"": device},
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
    )
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(run_dir / TOKENIZER, trust_remote_code=trust_remote_code).save_pretrained(out_dir)
    del merged, base
    if device != "cpu":
        torch.cuda.empty_cache()
    return out_dir
