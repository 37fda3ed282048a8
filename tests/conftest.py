"""Shared fixtures: tiny models written to local directories, so nothing is downloaded."""

from __future__ import annotations

import hashlib

import pytest
import torch

from lorarlhf.model.tiny import save_tiny_model

# Tiny matmuls on a 2-core machine spend more time waking OpenMP threads than computing:
# one thread is ~100x faster here, and results do not depend on thread scheduling.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A 2-layer Llama with a byte-level tokenizer, on disk like a hub checkpoint."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"), seed=0)


@pytest.fixture(scope="session")
def other_tiny_model_dir(tmp_path_factory):
    """Same architecture as tiny_model_dir, different weights."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama-other"), seed=1)


@pytest.fixture
def pairs():
    """Two prompt/response pairs of different lengths, so batches carry padding."""
    return ["Hello, how are you?", "Write a haiku about the sea."], ["I am fine, thanks.", "Waves fold into foam"]


@pytest.fixture
def base_checksum():
    return _base_checksum


def _base_checksum(hydra) -> str:
    """Hash of every frozen base tensor, 4-bit quantization state included."""
    digest = hashlib.sha256()
    for name, param in sorted(hydra.peft.named_parameters()):
        if "lora_" in name:
            continue
        digest.update(name.encode())
        digest.update(param.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        state = getattr(param, "quant_state", None)
        if state is not None:
            digest.update(state.absmax.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


BACKEND_DEVICES = [("torch", "cpu"), ("triton", "cpu"), ("torch", "cuda"), ("triton", "cuda")]


@pytest.fixture(params=BACKEND_DEVICES, ids=[f"{b}-{d}" for b, d in BACKEND_DEVICES])
def backend_device(request):
    """Each kernel test runs on the chunked PyTorch row ops and on the Triton row kernels, per device.

    Triton runs on CUDA, and on CPU tensors when TRITON_INTERPRET=1 was set before the kernels were
    imported (CI's second test run).
    """
    from lorarlhf.kernels._common import force_backend, interpreting, triton_available

    backend, device = request.param
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if backend == "triton" and not triton_available():
        pytest.skip("triton is not installed")
    if backend == "triton" and (device == "cpu") != interpreting():
        pytest.skip("Triton runs on CPU tensors only under TRITON_INTERPRET=1, and on CUDA only without it")
    with force_backend(backend):
        yield backend, torch.device(device)
