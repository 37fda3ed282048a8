"""Shared fixtures: tiny models written to local directories, so nothing is downloaded."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch

from lorarlhf.model.tiny import save_tiny_model

# Tiny matmuls on a 2-core machine spend more time waking OpenMP threads than computing:
# one thread is ~100x faster here, and results do not depend on thread scheduling.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def stat_seed() -> int:
    """The seed of every test with a statistical threshold: 0, as in CI, unless LORARLHF_TEST_SEED says otherwise.

    benchmarks/seed_spread.py runs those tests over several seeds to measure how far their numbers spread.
    """
    return int(os.environ.get("LORARLHF_TEST_SEED", "0"))


@pytest.fixture
def measured(request, stat_seed):
    """measured(name, value, above=bar and/or below=bar) returns value; with LORARLHF_MEASURE=FILE it also
    appends {"test", "seed", "triton", "name", "value", "bar", "direction"} to FILE as one JSON line.

    Call it on each statistical quantity before the assert that compares it with its bar.
    """
    path = os.environ.get("LORARLHF_MEASURE")

    def measure(name: str, value, *, above: float | None = None, below: float | None = None):
        if above is None and below is None:
            raise TypeError("measured() needs the bar: above=, below= or both")
        if path:
            bar = [above, below] if above is not None and below is not None else below if above is None else above
            direction = "in" if isinstance(bar, list) else "<" if above is None else ">"
            record = {
                "test": request.node.nodeid,
                "seed": stat_seed,
                "triton": bool(os.environ.get("TRITON_INTERPRET")),
                "name": name,
                "value": float(value),
                "bar": bar,
                "direction": direction,
            }
            with open(path, "a") as file:
                file.write(json.dumps(record) + "\n")
        return value

    return measure


@pytest.fixture(autouse=True)
def _seed(stat_seed):
    torch.manual_seed(stat_seed)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, stat_seed):
    """A 2-layer Llama with a byte-level tokenizer, on disk like a hub checkpoint."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"), seed=stat_seed)


@pytest.fixture(scope="session")
def other_tiny_model_dir(tmp_path_factory, stat_seed):
    """Same architecture as tiny_model_dir, different weights."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama-other"), seed=stat_seed + 1)


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
    if (backend, device) == ("torch", "cpu") and interpreting():
        pytest.skip("the PyTorch row ops on CPU ran in the first pass, without TRITON_INTERPRET")
    if backend == "triton" and not triton_available():
        pytest.skip("triton is not installed")
    if backend == "triton" and (device == "cpu") != interpreting():
        pytest.skip("Triton runs on CPU tensors only under TRITON_INTERPRET=1, and on CUDA only without it")
    with force_backend(backend):
        yield backend, torch.device(device)


# --------------------------------------------------------------------------- the Triton pass's selection
#
# CI runs the suite twice: as it is, then with TRITON_INTERPRET=1 and `-m kernels`, so that every test that
# reaches the log-prob and KL kernels runs again through the Triton row kernels (in the interpreter, on CPU
# tensors). A test carries the `kernels` marker when it reaches them: every test of a kernel backend (the
# backend_device fixture) by itself, every other one by its decorator or its module's pytestmark; a test that
# reaches the kernels without the marker fails, so none drops out of the Triton pass unnoticed.


def pytest_collection_modifyitems(items):
    for item in items:
        if "backend_device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.kernels)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    from lorarlhf.kernels._common import backend_calls

    before = backend_calls.total()
    result = yield
    if backend_calls.total() > before and item.get_closest_marker("kernels") is None:
        pytest.fail(
            f"{item.nodeid} reaches lorarlhf.kernels but has no kernels marker: add @pytest.mark.kernels (or a "
            "module pytestmark), so that the Triton pass (TRITON_INTERPRET=1 pytest -m kernels) runs it too",
            pytrace=False,
        )
    return result
