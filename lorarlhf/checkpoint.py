"""Saving and reloading a Hydra: safetensors and JSON only, the base referenced by name, never pickled.

Layout of a saved run (other files in the directory are left alone):

    hydra.json                      manifest: base model and its fingerprint, quantization, LoRA, roles, versions
    heads.safetensors               critic and reward heads
    adapters/<role>/                one standard PEFT adapter directory per role
        adapter_model.safetensors   (loadable by peft.PeftModel.from_pretrained(base, dir))
        adapter_config.json
    tokenizer/                      the tokenizer, as transformers saves it

The manifest is written last, so a directory holds a complete run exactly when it has one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lorarlhf.loading import (
    check_quantize,
    check_source,
    load_base_model,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
)
from lorarlhf.lora import LoraSettings

MANIFEST = "hydra.json"
HEADS = "heads.safetensors"
ADAPTERS = "adapters"
TOKENIZER = "tokenizer"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
FORMAT = "lorarlhf-hydra"
FORMAT_VERSION = 1
OWNED = (MANIFEST, HEADS, ADAPTERS, TOKENIZER)  # the entries a save may replace
ARCHITECTURE_FIELDS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
)
FINGERPRINT_ROWS = 256


def base_fingerprint(causal_lm) -> dict:
    """What identifies a base: its architecture numbers, and a hash of sampled embedding rows.

    Embeddings are never quantized, so the hash is the same for an NF4 and a 16-bit load
    of the same weights; rows are cast to bf16 first so fp32 and bf16 loads agree too.
    Sampling FINGERPRINT_ROWS rows keeps it under a millisecond for a 128k vocabulary.
    """
    config = causal_lm.config
    fingerprint = {field: getattr(config, field, None) for field in ARCHITECTURE_FIELDS}
    embedding = causal_lm.get_input_embeddings().weight.detach()
    rows = torch.linspace(0, embedding.shape[0] - 1, min(FINGERPRINT_ROWS, embedding.shape[0])).long()
    sample = embedding[rows.to(embedding.device)].to(device="cpu", dtype=torch.bfloat16).contiguous()
    fingerprint["embedding_sha256"] = hashlib.sha256(sample.view(torch.int16).numpy().tobytes()).hexdigest()
    return fingerprint


def _versions() -> dict[str, str | None]:
    versions = {}
    for package in ("lorarlhf", "torch", "transformers", "peft", "bitsandbytes", "safetensors"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def save_hydra(hydra, output_dir: Path) -> Path:
    """Write `hydra` into `output_dir`, replacing only a previous save's own files."""
    output_dir.mkdir(parents=True, exist_ok=True)
    if not (output_dir / MANIFEST).exists():
        clashing = [name for name in OWNED if (output_dir / name).exists()]
        if clashing:
            raise FileExistsError(
                f"{output_dir} already holds {clashing} but is not a saved lorarlhf run (no {MANIFEST}); "
                "refusing to overwrite them: choose another output directory"
            )
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "base": {"name_or_path": hydra.source, **base_fingerprint(hydra.causal_lm)},
        "quantize": hydra.quantize,
        "dtype": str(hydra.causal_lm.get_output_embeddings().weight.dtype).removeprefix("torch."),
        "lora": {
            "r": hydra.lora.r,
            "alpha": hydra.lora.alpha,
            "dropout": hydra.lora.dropout,
            "target_modules": hydra.lora.target_modules
            if isinstance(hydra.lora.target_modules, str)
            else list(hydra.lora.target_modules),
        },
        "roles": list(hydra.adapters),
        "heads": sorted(hydra.heads.keys()),
        "versions": _versions(),
    }
    with tempfile.TemporaryDirectory(prefix=".hydra-save-", dir=output_dir) as staging:
        staging = Path(staging)
        for role in hydra.adapters:
            adapter_dir = staging / ADAPTERS / role
            adapter_dir.mkdir(parents=True)
            state = get_peft_model_state_dict(hydra.peft, adapter_name=role)
            save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, adapter_dir / ADAPTER_WEIGHTS)
            hydra.peft.peft_config[role].save_pretrained(adapter_dir)
        heads = {k: v.detach().contiguous().cpu() for k, v in hydra.heads.state_dict().items()}
        save_file(heads, staging / HEADS)
        hydra.tokenizer.save_pretrained(staging / TOKENIZER)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        for name in OWNED:  # manifest last: it is what marks the directory as a complete run
            target = output_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(staging / name, target)
    return output_dir


def read_manifest(output_dir: Path) -> dict:
    if not output_dir.exists():
        raise FileNotFoundError(f"{output_dir} does not exist")
    path = output_dir / MANIFEST
    if not path.is_file():
        raise ValueError(f"{output_dir} is not a saved lorarlhf run: {MANIFEST} is missing")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); the run's manifest is damaged") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not a lorarlhf Hydra manifest (expected format {FORMAT!r})")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version {manifest['format_version']}, newer than this lorarlhf reads "
            f"({FORMAT_VERSION}); upgrade lorarlhf"
        )
    for key in ("base", "quantize", "lora", "roles"):
        if key not in manifest:
            raise ValueError(f"{path} lacks the field {key!r}")
    return manifest


def check_base_matches(saved: dict, causal_lm, source: str) -> None:
    """Refuse a base that is not the one the adapters were trained on, naming what differs."""
    found = base_fingerprint(causal_lm)
    for field in (*ARCHITECTURE_FIELDS, "embedding_sha256"):
        if field in saved and saved[field] != found[field]:
            what = (
                "its embedding weights differ"
                if field == "embedding_sha256"
                else (f"{field} is {found[field]!r}, the run's base has {saved[field]!r}")
            )
            raise ValueError(
                f"base model {source!r} does not match the base this run was trained on "
                f"({saved.get('name_or_path')!r}): {what}"
            )


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; the saved run is incomplete")
    try:
        return load_file(path)
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path} cannot be read ({error}); the file is damaged or truncated") from error


def load_hydra(cls, output_dir: Path, *, base: str | None, device, gradient_checkpointing: bool = False):
    """Rebuild a saved Hydra on its base model (or on `base`, which must be the same weights)."""
    manifest = read_manifest(output_dir)
    source = check_source(base if base is not None else manifest["base"]["name_or_path"])
    quantize = check_quantize(manifest["quantize"])
    device = resolve_device(device)
    causal_lm = load_base_model(source, quantize=quantize, device=device, dtype=resolve_dtype(None, device))
    check_base_matches(manifest["base"], causal_lm, source)
    tokenizer_dir = output_dir / TOKENIZER
    tokenizer = load_tokenizer(str(tokenizer_dir) if tokenizer_dir.is_dir() else source)
    lora = manifest["lora"]
    hydra = cls(
        causal_lm,
        tokenizer,
        source=source,
        quantize=quantize,
        lora=LoraSettings(
            r=lora["r"], alpha=lora["alpha"], dropout=lora["dropout"], target_modules=lora["target_modules"]
        ),
        roles=tuple(manifest["roles"]),
        gradient_checkpointing=gradient_checkpointing,
    )
    for role in hydra.adapters:
        path = output_dir / ADAPTERS / role / ADAPTER_WEIGHTS
        result = set_peft_model_state_dict(hydra.peft, _load_tensors(path), adapter_name=role)
        missing = [key for key in result.missing_keys if f".{role}." in key and "lora_" in key]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"{path} does not fit the model: {len(missing)} adapter weights missing "
                f"(e.g. {missing[:1]}), {len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:1]})"
            )
    heads_path = output_dir / HEADS
    try:
        hydra.heads.load_state_dict(_load_tensors(heads_path), strict=True)
    except RuntimeError as error:
        raise ValueError(f"{heads_path} does not fit the model's heads: {error}") from error
    return hydra
