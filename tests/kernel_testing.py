"""Shared tolerances and probes for the kernel tests (tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

# The logits are float32 whatever the input dtype, so the float32 outputs match the float64 reference (run on
# the same, already-rounded inputs) to float32 accuracy for every input dtype. Gradients come back in the input
# dtype, and with a 16-bit head the gradient matmuls read the float32 row gradients rounded to 16 bits (as
# tensor cores do), so near-zero entries carry that rounding times the gradient's scale: rtol is the dtype's
# epsilon (2^-7 bfloat16, 2^-10 float16), atol that epsilon times the largest reference entry.
OUT_TOL = dict(atol=1e-5, rtol=1e-5)
GRAD_TOL = {torch.float32: dict(atol=1e-5, rtol=1e-4), torch.bfloat16: 2**-7, torch.float16: 2**-10}

# Norm-wise relative error bounds from the kernels' contract: 1e-5 in float32, 2e-2 in bfloat16 / float16.
REL_ERR = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-2}


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.detach().double() - ref.detach()).norm() / ref.detach().norm().clamp_min(1e-30))


def assert_grad_close(got: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    tol = GRAD_TOL[dtype]
    if dtype != torch.float32:
        tol = dict(rtol=tol, atol=tol * float(ref.abs().max()))
    torch.testing.assert_close(got.double(), ref, **tol)
    assert rel_err(got, ref) <= REL_ERR[dtype]


class ShapeRecorder(TorchDispatchMode):
    """Records the shape of every tensor any aten op produces while active."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


def shape_checks_apply(backend: str) -> bool:
    """The Triton interpreter copies each kernel argument through aten as raw bytes: its bookkeeping, not
    the kernel's memory, so shape checks cover the torch backend and compiled Triton."""
    from lorarlhf.kernels._common import interpreting

    return not (backend == "triton" and interpreting())


learning_run_once = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") == "1",
    reason="a learning run: the same kernel calls as the learning runs of test_rl (PPO, GRPO) and test_dpo (the "
    "sigmoid loss), which run interpreted; this one runs once, on the PyTorch kernels",
)
"""For the statistical learning tests of one more method, loss or entry point (align(), the demo): a minute or
more each through the Triton interpreter, for kernel calls another learning test already makes there."""
