"""Saving and reloading a Hydra: safetensors and JSON only, the base referenced by name, never pickled.

Layout of a saved run (other files in the directory are left alone):

    hydra.json                      manifest: base and its fingerprint, quantization, dtype, LoRA, roles, versions
    heads.safetensors               critic and reward heads
    adapters/<role>/                one standard PEFT adapter directory per role
        adapter_model.safetensors   (loadable by peft.PeftModel.from_pretrained(base, dir))
        adapter_config.json
    tokenizer/                      the tokenizer, as transformers saves it

The manifest is written last, so a directory holds a complete run exactly when it has one.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import struct
import tempfile
from importlib import metadata
from pathlib import Path

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers.utils import cached_file

from lorarlhf.model.loading import (
    DTYPE_NAMES,
    check_quantize,
    check_source,
    load_base_model,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
)
from lorarlhf.model.lora import LoraSettings

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
SAMPLE_BYTES = 64


def weights_fingerprint(source: str) -> str | None:
    """A hash of the base checkpoint as stored: every tensor's name, dtype and shape, and 3 x 64 bytes of it.

    Read from the safetensors files, not from the loaded model, so it is the same whatever dtype or
    quantization the base is loaded with, and a changed weight anywhere (a merged LoRA, a fine-tune)
    changes it. A few seeks per tensor: milliseconds even for an 8B checkpoint. None when the base has no
    safetensors files (then only the architecture is checked).
    """
    try:
        model_dir = Path(cached_file(source, "config.json")).parent
    except OSError:
        return None
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            (header_size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_size))
            for name in sorted(key for key in header if key != "__metadata__"):
                info = header[name]
                digest.update(f"{name}:{info['dtype']}:{info['shape']}".encode())
                start, end = info["data_offsets"]
                for offset in sorted({start, (start + end) // 2, max(start, end - SAMPLE_BYTES)}):
                    f.seek(8 + header_size + offset)
                    digest.update(f.read(min(SAMPLE_BYTES, end - offset)))
    return digest.hexdigest()


def base_fingerprint(causal_lm, source: str) -> dict:
    """What identifies a base: its architecture numbers and its stored weights."""
    config = causal_lm.config
    fingerprint = {field: getattr(config, field, None) for field in ARCHITECTURE_FIELDS}
    fingerprint["weights_sha256"] = weights_fingerprint(source)
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
    """Write `hydra` into `output_dir`, replacing only a previous save's own files, all or nothing."""
    output_dir.mkdir(parents=True, exist_ok=True)
    if (output_dir / MANIFEST).exists():
        try:
            read_manifest(output_dir)
        except ValueError as error:
            raise FileExistsError(
                f"{output_dir / MANIFEST} exists but is not a lorarlhf run's manifest ({error}); "
                "refusing to overwrite it: choose another output directory"
            ) from error
    else:
        clashing = [name for name in OWNED if (output_dir / name).exists()]
        if clashing:
            raise FileExistsError(
                f"{output_dir} already holds {clashing} but is not a saved lorarlhf run (no {MANIFEST}); "
                "refusing to overwrite them: choose another output directory"
            )
    weights = hydra.causal_lm.get_output_embeddings().weight
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "base": {"name_or_path": hydra.source, **base_fingerprint(hydra.causal_lm, hydra.source)},
        "quantize": hydra.quantize,
        "dtype": str(weights.dtype).removeprefix("torch."),
        "device": weights.device.type,
        "lora": {
            "r": hydra.lora.r,
            "alpha": hydra.lora.alpha,
            "dropout": hydra.lora.dropout,
            "target_modules": hydra.lora.target_modules
            if isinstance(hydra.lora.target_modules, str)
            else list(hydra.lora.target_modules),
        },
        "roles": list(hydra.adapters),
        "critic": hydra.critic_mode,
        "chat_template": hydra.chat_template,
        "heads": sorted(hydra.heads.keys()),
        "versions": _versions(),
    }
    with tempfile.TemporaryDirectory(prefix=".hydra-save-", dir=output_dir) as staging:
        staging = Path(staging)
        new, old = staging / "new", staging / "old"
        for role in hydra.adapters:
            adapter_dir = new / ADAPTERS / role
            adapter_dir.mkdir(parents=True)
            state = get_peft_model_state_dict(hydra.peft, adapter_name=role)
            save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, adapter_dir / ADAPTER_WEIGHTS)
            adapter_config = copy.copy(hydra.peft.peft_config[role])
            adapter_config.base_model_name_or_path = hydra.source  # what PeftModel.from_pretrained users need
            adapter_config.save_pretrained(adapter_dir)
        save_file({k: v.detach().contiguous().cpu() for k, v in hydra.heads.state_dict().items()}, new / HEADS)
        hydra.tokenizer.save_pretrained(new / TOKENIZER)
        (new / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _swap_in(output_dir, new, old)
    return output_dir


def _swap_in(output_dir: Path, new: Path, old: Path) -> None:
    """Move the previous save aside (manifest first), the new one in (manifest last); undo on failure.

    Every step is a rename within one directory. Until the new manifest lands the directory holds no
    manifest, so a crash midway leaves something `load` refuses, never a mixed run.
    """
    old.mkdir()
    order = (MANIFEST, HEADS, ADAPTERS, TOKENIZER)  # the manifest goes first when leaving, last when arriving
    moved_out, moved_in = [], []
    try:
        for name in order:
            if (output_dir / name).exists():
                os.replace(output_dir / name, old / name)
                moved_out.append(name)
        for name in reversed(order):
            os.replace(new / name, output_dir / name)
            moved_in.append(name)
    except OSError:
        for name in moved_in:
            os.replace(output_dir / name, new / name)
        for name in reversed(moved_out):
            os.replace(old / name, output_dir / name)
        raise


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
    found = base_fingerprint(causal_lm, source)
    for field in (*ARCHITECTURE_FIELDS, "weights_sha256"):
        if saved.get(field) is None or found[field] is None or saved[field] == found[field]:
            continue
        if field == "weights_sha256":
            what = "its stored weights differ"
        else:
            what = f"{field} is {found[field]!r}, the run's base has {saved[field]!r}"
        raise ValueError(
            f"base model {source!r} does not match the base this run was trained on "
            f"({saved.get('name_or_path')!r}): {what}"
        )


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; the saved run is incomplete")
    try:
        return load_file(path)
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path} cannot be read ({error}); the file is damaged or truncated") from error


def load_hydra(
    cls,
    output_dir: Path,
    *,
    base: str | None,
    device,
    dtype=None,
    gradient_checkpointing: bool = False,
    trust_remote_code: bool = False,
):
    """Rebuild a saved Hydra on its base model (or on `base`, which must be the same weights).

    dtype None: the run's own compute dtype when loaded on the same kind of device, else the device's default.
    """
    manifest = read_manifest(output_dir)
    source = check_source(base if base is not None else manifest["base"]["name_or_path"])
    quantize = check_quantize(manifest["quantize"])
    device = resolve_device(device)
    if dtype is None and manifest.get("device") == device.type and manifest.get("dtype") in DTYPE_NAMES:
        dtype = manifest["dtype"]
    causal_lm = load_base_model(
        source,
        quantize=quantize,
        device=device,
        dtype=resolve_dtype(dtype, device),
        trust_remote_code=trust_remote_code,
    )
    check_base_matches(manifest["base"], causal_lm, source)
    tokenizer_dir = output_dir / TOKENIZER
    tokenizer = load_tokenizer(
        str(tokenizer_dir) if tokenizer_dir.is_dir() else source, trust_remote_code=trust_remote_code
    )
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
        critic=manifest.get("critic", "separate"),
        chat_template=manifest.get("chat_template", "auto"),
    )
    return load_weights(hydra, output_dir)


def load_weights(hydra, output_dir: Path):
    """Set every adapter and head of `hydra` to the ones saved in `output_dir` (safetensors only)."""
    for role in hydra.adapters:
        path = output_dir / ADAPTERS / role / ADAPTER_WEIGHTS
        result = set_peft_model_state_dict(hydra.peft, load_tensors(path), adapter_name=role)
        missing = [key for key in result.missing_keys if f".{role}." in key and "lora_" in key]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"{path} does not fit the model: {len(missing)} adapter weights missing "
                f"(e.g. {missing[:1]}), {len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:1]})"
            )
    heads_path = output_dir / HEADS
    try:
        hydra.heads.load_state_dict(load_tensors(heads_path), strict=True)
    except RuntimeError as error:
        raise ValueError(f"{heads_path} does not fit the model's heads: {error}") from error
    return hydra
