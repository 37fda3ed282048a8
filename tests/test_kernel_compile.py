"""Every Triton kernel, compiled to a cubin for real CUDA architectures, on a machine without a GPU.

The TRITON_INTERPRET=1 pass runs the kernels' Python on CPU tensors: it tests what they compute, not what
the compiler accepts (types, block shapes, operations an architecture lacks). Here each variant the
launchers ask for (lorarlhf.kernels.targets, which records them from the launchers themselves) goes through
Triton's compiler and its bundled ptxas for sm_75 ... sm_90. Results land in Triton's cache, so only the first
run compiles; the test that a broken kernel is caught shows the check is not vacuous.
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from lorarlhf.kernels import targets  # noqa: E402

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") == "1",
    reason="compiled once, in the run without TRITON_INTERPRET: the cubins do not depend on it "
    "(it is not in Triton's cache key), so a second pass would only re-read the cache",
)


@pytest.fixture(scope="module")
def launches():
    return targets.launches()


@pytest.fixture(scope="module")
def variants(launches):
    return {variant for _, variant in launches}


@pytest.fixture(scope="module")
def failures(variants):
    """Every planned (variant, arch) compiled once; the ones that failed, with the compiler's message."""
    return targets.compile_all(targets.plan(variants))


@pytest.mark.parametrize("arch", targets.ARCHS)
@pytest.mark.kernels
def test_every_kernel_variant_compiles(failures, arch):
    """Every variant group, in the form(s) targets.plan picks, compiles to a cubin for sm_<arch>."""
    failed = {variant.name: error for (variant, a), error in failures.items() if a == arch}
    assert not failed, f"{len(failed)} kernel variants do not compile for sm_{arch}:\n" + "\n".join(
        f"  {name}\n    {error}" for name, error in failed.items()
    )


def test_plan_covers_every_variant_group_on_every_arch(variants):
    """No arch is excused from any variant: every group is compiled for each of ARCHS."""
    planned = {(variant.group, arch) for variant, arch in targets.plan(variants)}
    assert planned >= {(variant.group, arch) for variant in variants for arch in targets.ARCHS}


def test_every_kernel_is_launched(variants):
    """The option grid reaches every @triton.jit kernel, so a kernel nobody launches here cannot hide."""
    launched = {(variant.module, variant.kernel) for variant in variants}
    assert launched == set(targets.kernels())


@pytest.mark.parametrize("name", list(targets.OPTIONS))
def test_option_grid_covers_every_public_option(name):
    """A new keyword argument of a public kernel function must join the grid the variants are recorded over."""
    assert set(targets.OPTIONS[name]) == targets.keyword_options(name)


def test_every_constexpr_branch_is_recorded(variants):
    """Each constexpr takes every value its launcher can give it (the launchers' own constants), so no branch
    of a kernel goes uncompiled because no option in the grid reaches it."""

    def values(kernel, arg):
        found = set()
        for variant in variants:
            if variant.kernel == kernel:
                names = [name for name, _ in variant.signature]
                found |= {value for path, value in variant.constexprs if names[path[0]] == arg}
        return found

    from lorarlhf.kernels._common import block_v
    from lorarlhf.kernels.logprobs import LOAD, ONE, ZERO

    block_sizes = {block_v(vocab) for vocab in targets.VOCABS}
    for kernel in ("_stats_kernel", "_dlogits_kernel", "_kl_stats_kernel", "_kl_dlogits_kernel"):
        assert values(kernel, "BLOCK_V") == block_sizes
    assert values("_stats_kernel", "WITH_ENTROPY") == {False, True}
    assert values("_dlogits_kernel", "SOFTCAP") == values("_kl_dlogits_kernel", "SOFTCAP") == {False, True}
    assert values("_dlogits_kernel", "G_MODE") == values("_dlogits_kernel", "E_MODE") == {ZERO, ONE, LOAD}
    for flag in ("LOAD_G", "WRITE_Z", "WRITE_Y"):
        assert values("_kl_dlogits_kernel", flag) == {False, True}


def test_kernels_see_float32_tiles_whatever_the_input_dtype(launches):
    """The rule for 16-bit models, a T4's float16 (sm_75 has no native bfloat16) included: the launchers hand
    the kernels float32 logit tiles and per-row float32 buffers, so every input dtype leads to the same
    variants, and those compile for every arch above. No variant is excluded for any architecture."""
    by_dtype = {dtype: {variant for d, variant in launches if d == dtype} for dtype in targets.DTYPES}
    assert by_dtype[torch.bfloat16] == by_dtype[torch.float16] == by_dtype[torch.float32]
    pointers = {kind for variant in by_dtype[torch.float32] for _, kind in variant.signature if kind.startswith("*")}
    assert pointers == {"*fp32", "*i64"}  # float32 tiles and buffers, int64 targets


def _to_fp8(x_ptr, y_ptr, BLOCK: tl.constexpr):
    """Rounds through float8 e4m3: the interpreter runs it anywhere, the compiler only for sm_89 and newer."""
    offsets = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offsets)
    tl.store(y_ptr + offsets, x.to(tl.float8e4nv).to(tl.float32))


def test_compile_catches_what_the_interpreter_runs():
    """A kernel the interpreter runs correctly on CPU tensors, and the compiler refuses for a T4: the check
    above fails on what the TRITON_INTERPRET=1 pass cannot see."""
    from triton.runtime.interpreter import InterpretedFunction

    x = torch.linspace(-3, 3, 16)
    y = torch.empty(16)
    InterpretedFunction(_to_fp8)[(1,)](x, y, BLOCK=16)
    torch.testing.assert_close(y, x.to(torch.float8_e4m3fn).float(), rtol=0, atol=0)

    def source():
        signature = {"x_ptr": "*fp32", "y_ptr": "*fp32", "BLOCK": "constexpr"}
        return triton.compiler.ASTSource(triton.runtime.JITFunction(_to_fp8), signature, {"BLOCK": 16})

    assert targets.compile_for(source(), 89)  # Ada has float8 e4m3
    with pytest.raises(triton.compiler.errors.CompilationError, match="fp8e4nv not supported"):
        targets.compile_for(source(), 75)
