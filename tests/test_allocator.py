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


# A 6 MiB block (above the rule's 4 MiB threshold) freed after the heap's dynamic mmap threshold has risen past
# it: with glibc's defaults it stays resident; with the rule it is unmapped at once.
_FREED_BLOCK = """
    import os, lorarlhf, torch
    from lorarlhf.model.allocator import apply_cpu_allocator
    print(apply_cpu_allocator(torch.device({device!r})))
    def rss_kib():
        return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS:")).split()[1])
    keep = []
    for _ in range(4):  # raise glibc's threshold: free a large mapped block, keep small tensors in between
        block = torch.ones(16 * 2**20 // 4)
        keep.append(torch.ones(1000))
        del block
    block = torch.ones(6 * 2**20 // 4)
    held = rss_kib()
    del block
    print(held - rss_kib())
"""


@linux_glibc
def test_on_a_cpu_run_a_freed_block_goes_back_to_the_os():
    applied, released = _run(_FREED_BLOCK.format(device="cpu"), THP_MEM_ALLOC_ENABLE="1").splitlines()
    assert applied == "True"
    assert int(released) >= 4 * 1024  # KiB: the 6 MiB block's pages


@linux_glibc
def test_without_the_rule_the_freed_block_stays_resident():
    applied, released = _run(_FREED_BLOCK.format(device="cpu"), LORARLHF_CPU_ALLOCATOR="default").splitlines()
    assert applied == "False"
    assert int(released) < 1024


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
