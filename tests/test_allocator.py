"""The CPU allocator rule (lorarlhf.model.allocator), each case in a fresh process: the rule acts at `import
lorarlhf` and once per process, and what it changes is the process's memory."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from lorarlhf.model.allocator import kernel_offers_huge_pages

linux_glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None, reason="glibc's malloc only"
)


def _run(code: str, **env) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("THP_MEM_ALLOC_ENABLE", "LORARLHF_CPU_ALLOCATOR")}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env={**clean, **env},
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_import_before_torch_asks_for_huge_pages_and_only_then():
    expected = "1" if kernel_offers_huge_pages() else "None"
    first = "import os, lorarlhf, torch; print(os.environ.get('THP_MEM_ALLOC_ENABLE'))"
    assert _run(first) == expected
    torch_first = "import os, torch, lorarlhf; print(os.environ.get('THP_MEM_ALLOC_ENABLE'))"
    assert _run(torch_first) == "None"  # too late to take effect: left alone
    assert _run(first, LORARLHF_CPU_ALLOCATOR="default") == "None"
    assert _run(first, THP_MEM_ALLOC_ENABLE="0") == "0"  # the user's setting wins


def test_a_bad_setting_is_named():
    code = """
        try:
            import lorarlhf
        except ValueError as error:
            print(error)
    """
    out = _run(code, LORARLHF_CPU_ALLOCATOR="fast")
    assert "LORARLHF_CPU_ALLOCATOR='fast'" in out and "'auto'" in out and "'default'" in out


# A block above the rule's threshold (4 MiB; 2 MiB for a 4-bit base) freed after the heap's dynamic mmap threshold
# has risen past it: with glibc's defaults it stays resident; with the rule it is unmapped at once.
_FREED_BLOCK = """
    import os, lorarlhf, torch
    from lorarlhf.model.allocator import apply_cpu_allocator
    print(apply_cpu_allocator(torch.device({device!r}), quantized={quantized}))
    def rss_kib():
        return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS:")).split()[1])
    keep = []
    for _ in range(4):  # raise glibc's threshold: free a large mapped block, keep small tensors in between
        block = torch.ones(16 * 2**20 // 4)
        keep.append(torch.ones(1000))
        del block
    block = torch.ones({mib} * 2**20 // 4)
    held = rss_kib()
    del block
    print(held - rss_kib())
"""


@linux_glibc
@pytest.mark.parametrize(("quantized", "mib"), [(False, 6), (True, 3)])
def test_on_a_cpu_run_a_freed_block_goes_back_to_the_os(quantized, mib):
    code = _FREED_BLOCK.format(device="cpu", quantized=quantized, mib=mib)
    applied, released = _run(code, THP_MEM_ALLOC_ENABLE="1").splitlines()
    assert applied == "True"
    assert int(released) >= (mib - 1) * 1024  # KiB: the block's pages


@linux_glibc
def test_without_the_rule_the_freed_block_stays_resident():
    code = _FREED_BLOCK.format(device="cpu", quantized=False, mib=6)
    applied, released = _run(code, LORARLHF_CPU_ALLOCATOR="default").splitlines()
    assert applied == "False"
    assert int(released) < 1024


@linux_glibc
def test_a_4bit_base_lowers_the_threshold_and_nothing_raises_it():
    code = """
        import lorarlhf, torch
        from lorarlhf.model.allocator import apply_cpu_allocator, fixed_mmap_threshold
        cpu = torch.device("cpu")
        steps = [fixed_mmap_threshold()]
        for quantized in (False, True, False):
            apply_cpu_allocator(cpu, quantized=quantized)
            steps.append(fixed_mmap_threshold() >> 20)
        print(steps)
    """
    assert _run(code, THP_MEM_ALLOC_ENABLE="1") == "[None, 4, 2, 2]"


def test_the_threshold_waits_for_huge_pages_and_skips_a_gpu():
    code = """
        import torch
        from lorarlhf.model.allocator import apply_cpu_allocator
        print(apply_cpu_allocator(torch.device("cpu")), apply_cpu_allocator(torch.device("meta")))
    """
    assert _run(code) == "False False"  # torch imported first: no huge pages, so 4 KiB faults would cost ~40%
    gpu = """
        import lorarlhf, torch
        from lorarlhf.model.allocator import apply_cpu_allocator
        print(apply_cpu_allocator(torch.device("cuda")))
    """
    assert _run(gpu, THP_MEM_ALLOC_ENABLE="1") == "False"


@linux_glibc
@pytest.mark.parametrize(("quantize", "mib"), [(None, 4), ("nf4", 2)])
def test_loading_a_model_on_the_cpu_fixes_its_threshold(tiny_model_dir, quantize, mib):
    code = f"""
        import lorarlhf
        from lorarlhf import HydraModel
        from lorarlhf.model.allocator import fixed_mmap_threshold
        HydraModel.from_pretrained({str(tiny_model_dir)!r}, quantize={quantize!r}, device="cpu", roles=("actor",))
        print(fixed_mmap_threshold() >> 20)
    """
    assert _run(code, THP_MEM_ALLOC_ENABLE="1") == str(mib)
