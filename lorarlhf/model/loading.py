"""Loading the frozen base model: device and precision choice, 4-bit NF4 quantization.

QLoRA (Dettmers et al. 2023) recipe: NF4 weights with double quantization, the
matmuls run in a 16-bit compute dtype. bf16 where the GPU has it, fp16 on older
cards (a Colab T4 has no bf16), fp32 on CPU where half-precision matmuls are slow
and inexact. Embeddings and the LM head stay unquantized (bitsandbytes skips the
output embedding), which is what the fused log-prob kernels read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from lorarlhf.model.quiet import quiet

if TYPE_CHECKING:  # torch and transformers take seconds to import; the checks below and the CLI need neither
    import torch
    from transformers import PreTrainedModel

QUANTIZE_CHOICES = ("nf4", None)
# The bundled demo model (package data of lorarlhf.demo), which model="demo" names.
DEMO_MODEL_DIR = Path(__file__).resolve().parents[1] / "demo" / "model"
# Compute dtypes by name: the names of torch's dtypes (torch.float32 ...).
DTYPE_NAMES = ("float32", "bfloat16", "float16")


def model_source(name_or_path: str | os.PathLike) -> str | os.PathLike:
    """`name_or_path`, with "demo" as the bundled demo model's directory."""
    return DEMO_MODEL_DIR if name_or_path == "demo" else name_or_path


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None means the first CUDA GPU when there is one, else the CPU."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device={device!r} is not a torch device; use e.g. 'cpu', 'cuda' or 'cuda:1'") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available on this machine; use 'cpu'")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The compute dtype: given, or the best the device supports."""
    import torch

    if dtype is None:
        if device.type != "cuda":
            return torch.float32
        # Native bf16 arrived with Ampere (compute capability 8). is_bf16_supported() also counts
        # emulation, which says yes on a T4, where bf16 matmuls are slow.
        return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16
    if isinstance(dtype, str):
        if dtype not in DTYPE_NAMES:
            raise ValueError(f"dtype={dtype!r} is not supported; choose one of {sorted(DTYPE_NAMES)} or None (auto)")
        return getattr(torch, dtype)
    if dtype not in {getattr(torch, name) for name in DTYPE_NAMES}:
        raise ValueError(f"dtype={dtype} is not supported; choose one of {sorted(DTYPE_NAMES)} or None (auto)")
    return dtype


def check_quantize(quantize: str | None) -> str | None:
    if isinstance(quantize, str) and quantize.lower() == "none":
        return None
    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize={quantize!r} is not supported; choose one of {QUANTIZE_CHOICES}")
    return quantize


def _looks_like_path(name_or_path: str) -> bool:
    """A hub id is 'name' or 'org/name'; anything else that is not on disk was meant as a path."""
    return (
        os.path.isabs(name_or_path)
        or name_or_path.startswith((".", "~"))
        or name_or_path.count("/") > 1
        or "\\" in name_or_path
    )


def check_source(name_or_path: str | os.PathLike) -> str:
    """Fail early, naming the path, when a local model directory is missing or incomplete."""
    if not isinstance(name_or_path, str | os.PathLike):
        raise TypeError(f"name_or_path must be a hub id or a local directory, not {type(name_or_path).__name__}")
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise NotADirectoryError(f"model path {text!r} is a file; pass the directory that holds config.json")
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model directory {text!r} has no config.json; is it a transformers model?")
        return str(path.resolve())  # absolute: a saved run must find its base from any working directory
    if isinstance(name_or_path, os.PathLike) or _looks_like_path(text):
        raise FileNotFoundError(f"model path {text!r} does not exist")
    return text


def bnb_config(compute_dtype: torch.dtype):
    from transformers import BitsAndBytesConfig  # imports bitsandbytes: only for a 4-bit model

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def load_base_model(
    name_or_path: str,
    *,
    quantize: str | None,
    device: torch.device,
    dtype: torch.dtype,
    trust_remote_code: bool = False,
    verbose: bool | None = None,
) -> PreTrainedModel:
    """The causal LM, frozen, on `device`, NF4-quantized when asked; errors name the model.

    Weights are read from safetensors files only (a pickled .bin checkpoint can run code when loaded), and
    a model's own Python code runs only with trust_remote_code=True. On a CPU, a small model runs on one
    thread (lorarlhf.model.threads). transformers' progress bars and logs are off during the load unless
    `verbose` (or LORARLHF_VERBOSE=1; lorarlhf.model.quiet).
    """
    with quiet(verbose):
        return _load_base_model(name_or_path, quantize, device, dtype, trust_remote_code)


def _load_base_model(name_or_path, quantize, device, dtype, trust_remote_code) -> PreTrainedModel:
    from transformers import AutoConfig, AutoModelForCausalLM

    from lorarlhf.model.allocator import apply_cpu_allocator
    from lorarlhf.model.experts import quantize_experts
    from lorarlhf.model.quantization import quantize_linear_subclasses, report_coverage
    from lorarlhf.model.threads import apply_cpu_threads

    try:
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except OSError as error:
        raise OSError(
            f"could not load a model config from {name_or_path!r}: it is not a local directory and could not be "
            f"fetched from the Hugging Face Hub ({error.__class__.__name__}: {error})"
        ) from error
    except ValueError as error:
        raise ValueError(_remote_code_hint(name_or_path, error)) from error
    logit_scale(config)  # refuse an unsupported LM head before loading any weights
    apply_cpu_threads(config, device)
    apply_cpu_allocator(device, quantized=quantize == "nf4")
    kwargs = {"dtype": dtype, "device_map": {"": device}, "use_safetensors": True}
    if quantize == "nf4":
        kwargs["quantization_config"] = bnb_config(dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path, config=config, trust_remote_code=trust_remote_code, **kwargs
        )
    except ValueError as error:
        if "Unrecognized configuration class" in str(error):
            raise ValueError(
                f"model {name_or_path!r} (model_type={config.model_type!r}) is not a causal language model: "
                "lorarlhf needs a model with an LM head (AutoModelForCausalLM)"
            ) from error
        raise ValueError(_remote_code_hint(name_or_path, error)) from error
    except OSError as error:
        if "safetensors" in str(error):
            raise OSError(
                f"model {name_or_path!r} has no safetensors weights; lorarlhf loads weights only from safetensors "
                "(a pickled .bin file can run code when loaded). Convert it once, e.g. "
                "model.save_pretrained(dir, safe_serialization=True) in a trusted environment"
            ) from error
        raise
    if quantize is not None:
        quantize_linear_subclasses(model, kwargs["quantization_config"])  # e.g. Falcon's, which transformers skips
        quantize_experts(model, kwargs["quantization_config"])  # MoE experts: 3-D parameters, skipped too
        report_coverage(model, name_or_path)
        _keep_cpu_4bit_differentiable(model)
        _copy_out_of_checkpoint(model)
    model.requires_grad_(False)
    return model


def _remote_code_hint(name_or_path: str, error: Exception) -> str:
    if "trust_remote_code" in str(error):
        return (
            f"model {name_or_path!r} needs its own Python code to load; lorarlhf runs it only with "
            "trust_remote_code=True (read that code first: it runs with your permissions)"
        )
    return str(error)


def logit_scale(config) -> float:
    """The factor some architectures apply to the LM head's output before the softmax.

    The fused kernels start from hidden states and the LM-head weight, so a rescale
    (Cohere multiplies by `logit_scale`, Granite divides by `logits_scaling`) is folded
    into the temperature. A soft-cap is not linear and is passed on instead (`logit_softcap`).
    """
    scale = float(getattr(config, "logit_scale", None) or 1.0)
    scale /= float(getattr(config, "logits_scaling", None) or 1.0)
    if scale != 1.0 and logit_softcap(config) is not None:
        # Folding the rescale into the temperature would put it after the cap; no architecture in
        # transformers does both, so the order of the two is not guessed.
        raise ValueError(
            f"model_type={config.model_type!r} both rescales (by {scale}) and soft-caps its logits, "
            "which lorarlhf does not support"
        )
    return scale


def logit_softcap(config) -> float | None:
    """The cap c of a soft-capped LM head (Gemma 2: logits = c * tanh(logits / c)), or None.

    transformers applies it in the model's forward, so sampled rollouts see it already; the fused
    kernels, which start from hidden states, take it as their `softcap` argument.
    """
    cap = getattr(config, "final_logit_softcapping", None)
    return None if cap is None else float(cap)


def _keep_cpu_4bit_differentiable(model: PreTrainedModel) -> None:
    """Stop bitsandbytes from repacking CPU 4-bit weights into its inference-only layout.

    On CPUs with AVX512-BF16, a Linear4bit in eval mode repacks its weight on the first
    no-grad call, after which every call, with autograd on or not, goes through a kernel
    without a backward: LoRA gradients behind that layer would silently vanish. The flag
    is per module instance, so only this model is affected.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def _copy_out_of_checkpoint(model: PreTrainedModel) -> None:
    """Give a 4-bit model's full-precision CPU tensors memory of their own, out of the checkpoint's mapping.

    transformers loads CPU tensors as views of the memory-mapped safetensors file. After quantization those left
    in full precision (embeddings, norms, the LM head) still point into it, which keeps the whole mapping, and
    every page that quantization read, resident: 240 MiB of the 64.5M Llama's 258 MB file held for 48 MiB of
    such tensors. Once they are copied, the mapping closes with its last view.
    """
    for tensor in (*model.parameters(), *model.buffers()):  # each shared (tied) tensor once
        if tensor.device.type == "cpu" and getattr(tensor, "quant_state", None) is None:
            tensor.data = tensor.data.clone()


def load_tokenizer(name_or_path: str, *, trust_remote_code: bool = False, verbose: bool | None = None):
    """The model's tokenizer, with a pad token (EOS when the model has none) for batching."""
    from transformers import AutoTokenizer

    try:
        with quiet(verbose):
            tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except ValueError as error:
        raise ValueError(_remote_code_hint(name_or_path, error)) from error
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer of {name_or_path!r} has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
