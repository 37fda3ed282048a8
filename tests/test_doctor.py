"""`lorarlhf doctor`: the CPU report and its JSON schema, exit codes, and the GPU branch on CPU tensors with only
the torch.cuda queries faked (the numeric checks compare real numbers, and catch a wrong one)."""

from __future__ import annotations

import functools
import json

import bitsandbytes  # noqa: F401 - imported before torch.cuda is faked, so it loads its CPU library
import lorarlhf.kernels
import pytest
import torch

from lorarlhf import doctor
from lorarlhf.cli import main
from lorarlhf.doctor import PACKAGES, STATUSES, Check, Sizes, Target, format_report, run_checks

NAMES = [
    "versions",
    "device",
    "compute dtype",
    "kernel path",
    "nf4 quantization",
    "mm out_dtype",
    "gpu",
    "bf16",
    "bnb 4-bit matmul",
    "fused_linear_logprobs",
    "fused_linear_kl",
    "token_kl",
    "align + planner",
]
NUMERIC = NAMES[8:]
SMALL = Sizes(
    tokens=37,
    hidden=64,
    vocab=1031,
    bnb_out=96,
    align_steps=2,
    model_hidden=64,
    batch_size=2,
    group_size=2,
    max_new_tokens=4,
    max_length=32,
)
CPU = torch.device("cpu")
GiB = 2**30


def assert_schema(report: dict) -> None:
    assert set(report) == {"ok", "device", "device_type", "dtype", "full", "sizes", "versions", "checks", "seconds"}
    assert isinstance(report["ok"], bool) and isinstance(report["full"], bool)
    assert isinstance(report["device"], str) and report["device"]
    assert report["device_type"] in ("cpu", "cuda") and report["dtype"] in ("float32", "bfloat16", "float16")
    assert isinstance(report["seconds"], float)
    assert set(report["versions"]) == {"python", "torch_cuda_build", *PACKAGES}
    assert all(v is None or isinstance(v, str) for v in report["versions"].values())
    assert report["versions"]["torch"] == torch.__version__.split("+")[0] or report["versions"]["torch"] == (
        torch.__version__
    )
    for check in report["checks"]:
        assert set(check) == {"name", "status", "summary", "values", "seconds"}
        assert isinstance(check["name"], str) and check["status"] in STATUSES
        assert isinstance(check["summary"], str) and check["summary"]
        assert isinstance(check["values"], dict) and isinstance(check["seconds"], float)
    assert report["ok"] == all(check["status"] != "failed" for check in report["checks"])
    assert json.loads(json.dumps(report, allow_nan=False)) == report  # strict JSON, nothing lost


def by_name(report: dict) -> dict[str, dict]:
    return {check["name"]: check for check in report["checks"]}


@pytest.mark.kernels
def test_cpu_report_says_what_a_run_would_use_and_skips_the_device_checks():
    from lorarlhf.kernels._common import backend_for

    report = run_checks()
    assert_schema(report)
    checks = by_name(report)
    assert [c["name"] for c in report["checks"]] == NAMES
    assert report["ok"] and not report["full"] and report["device_type"] == "cpu" and report["dtype"] == "float32"
    assert checks["versions"]["status"] == "ok" and checks["versions"]["values"]["torch"] == report["versions"]["torch"]
    assert checks["device"]["values"]["device"] == "cpu"
    assert checks["compute dtype"]["summary"].startswith("float32: CPU")
    assert checks["kernel path"]["values"]["backend"] == backend_for(CPU)
    assert checks["nf4 quantization"]["status"] == "ok"
    assert 0.05 < checks["nf4 quantization"]["values"]["round_trip_rel_err"] < doctor.NF4_MAX_REL_ERR
    assert isinstance(checks["mm out_dtype"]["values"]["exists"], bool)
    for name in ("gpu", "bf16", *NUMERIC):
        assert checks[name]["status"] == "skipped", name
    text = format_report(report)
    assert len(text.splitlines()) <= 24  # one screen
    for name in NAMES:
        assert name in text


@pytest.mark.kernels
def test_cli_prints_the_report_and_the_same_as_json(capsys):
    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    assert "lorarlhf doctor:" in text and "kernel path" in text and "0 failed" in text
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert_schema(report)
    assert [c["name"] for c in report["checks"]] == NAMES


def failing(target: Target, sizes: Sizes) -> Check:
    return Check("injected", "failed", "made to fail")


def raising(target: Target, sizes: Sizes) -> Check:
    raise RuntimeError("the check itself broke\nsecond line")


def skipping(target: Target, sizes: Sizes) -> Check:
    return Check("skipper", "skipped", "nothing to do")


@pytest.mark.kernels
def test_a_failed_check_fails_the_report_and_the_exit_code(monkeypatch, capsys):
    assert run_checks(extra_checks=[skipping])["ok"]  # skipped is not failed
    report = run_checks(extra_checks=[failing, raising])
    assert_schema(report)
    assert not report["ok"]
    checks = by_name(report)
    assert checks["injected"]["status"] == "failed"
    assert checks["raising"]["status"] == "failed"  # an exception is a failed check, never a crash
    assert checks["raising"]["summary"] == "RuntimeError: the check itself broke"
    monkeypatch.setattr(doctor, "run_checks", functools.partial(run_checks, extra_checks=[failing]))
    assert main(["doctor"]) == 1
    assert "FAILED: " in capsys.readouterr().out
    assert main(["doctor", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["ok"] is False
    with pytest.raises(ValueError, match="status"):
        Check("x", "fine", "not a status")


@pytest.fixture
def faked_cuda(monkeypatch):
    """torch.cuda's queries answer as an A100-like card would; tensors stay on the CPU. Peak allocations are
    counted per reset, so the align check's phases each read their own number."""
    peaks = iter([5 * 2**20, 6 * 2**20, 7 * 2**20])
    state = {"capability": (8, 0), "peak": 0, "resets": 0}

    def reset(device=None):
        state["resets"] += 1
        state["peak"] = next(peaks, 8 * 2**20)

    for name, value in {
        "is_available": lambda: True,
        "device_count": lambda: 1,
        "get_device_name": lambda device=None: "Faked GPU 80GB",
        "get_device_capability": lambda device=None: state["capability"],
        "mem_get_info": lambda device=None: (70 * GiB, 80 * GiB),
        "is_bf16_supported": lambda *args, **kwargs: True,
        "synchronize": lambda device=None: None,
        "reset_peak_memory_stats": reset,
        "max_memory_allocated": lambda device=None: state["peak"],
        "memory_allocated": lambda device=None: 100 * 2**10,
    }.items():
        monkeypatch.setattr(torch.cuda, name, value)
    return state


@pytest.mark.kernels
def test_gpu_branch_runs_every_check_with_only_the_cuda_queries_faked(faked_cuda):
    report = run_checks(sizes=SMALL, tensor_device="cpu")  # full=None: on CUDA, everything runs
    assert_schema(report)
    checks = by_name(report)
    failed = {name: c["summary"] for name, c in checks.items() if c["status"] == "failed"}
    assert report["ok"], failed
    assert report["full"] and report["device_type"] == "cuda" and report["device"] == "Faked GPU 80GB"
    assert report["dtype"] == "bfloat16"  # the loader's rule: capability 8.0
    assert checks["device"]["values"]["device"] == "cuda:0"
    assert checks["gpu"]["values"] == {"name": "Faked GPU 80GB", "capability": "8.0", "free_gib": 70, "total_gib": 80}
    assert "sm_80" in checks["gpu"]["summary"] and "70.0 of 80.0 GiB" in checks["gpu"]["summary"]
    assert checks["bf16"]["values"]["native"] is True
    for name in NUMERIC:
        assert checks[name]["status"] == "ok", (name, checks[name]["summary"])
    logprobs = checks["fused_linear_logprobs"]["values"]
    assert logprobs["dtype"] == "bfloat16" and logprobs["vocab"] == SMALL.vocab
    for part in ("logp", "entropy", "d hidden", "d weight"):
        assert logprobs[part]["max_abs_err"] > 0 and logprobs[part]["worst"] <= 1  # a real comparison
    assert checks["bnb 4-bit matmul"]["values"]["forward"]["max_abs_err"] > 0
    align = checks["align + planner"]["values"]
    assert align["quantize"] == "nf4" and align["dtype"] == "bfloat16" and align["iterations"] == SMALL.align_steps
    measured = {phase: v["measured_bytes"] for phase, v in align["phases"].items()}
    assert measured == {"load": 100 * 2**10, "generation": 6 * 2**20, "align": 7 * 2**20}  # load: resident bytes
    assert align["phases"]["load"]["peak_bytes"] == 5 * 2**20
    assert all(v["ok"] for v in align["phases"].values())
    assert "MiB measured/planned" in checks["align + planner"]["summary"]


def test_bf16_that_is_only_emulated_is_reported_so_and_float16_is_used(faked_cuda):
    from lorarlhf.model.loading import resolve_dtype

    faked_cuda["capability"] = (7, 5)  # a T4: torch.cuda.is_bf16_supported() says True
    cuda = torch.device("cuda", 0)
    check = doctor.check_bf16(cuda)
    assert check.status == "ok" and check.values["native"] is False and check.values["torch_is_bf16_supported"]
    assert "emulated" in check.summary and "float16" in check.summary
    dtype = resolve_dtype(None, cuda)
    assert dtype == torch.float16
    assert doctor.check_dtype(Target(cuda, dtype, CPU)).summary.startswith("float16: sm_75")


@pytest.mark.kernels
def test_a_planner_estimate_below_the_measured_peak_fails_the_align_check(faked_cuda, monkeypatch):
    for name in ("max_memory_allocated", "memory_allocated"):
        monkeypatch.setattr(torch.cuda, name, lambda device=None: 64 * GiB)
    check = doctor.check_align(Target(torch.device("cuda", 0), torch.float32, CPU), SMALL)
    assert check.status == "failed"
    assert not any(phase["ok"] for phase in check.values["phases"].values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "check", [doctor.check_bnb_matmul, doctor.check_logprobs_kernel, doctor.check_kl_kernel, doctor.check_token_kl]
)
@pytest.mark.kernels
def test_numeric_checks_pass_on_cpu_tensors_in_every_dtype(check, dtype):
    result = check(Target(CPU, dtype, CPU), SMALL)
    assert result.status == "ok", result.summary
    assert "x tol" in result.summary


def nudged(fn, by):
    """fn with its first output moved by a relative `by`: a kernel that is slightly wrong."""

    @functools.wraps(fn)
    def wrong(*args, **kwargs):
        out = fn(*args, **kwargs)
        return (out[0] * (1 + by), *out[1:]) if isinstance(out, tuple) else out * (1 + by)

    return wrong


@pytest.mark.parametrize(
    "module, name, check, part",
    [
        (lorarlhf.kernels, "fused_linear_logprobs", doctor.check_logprobs_kernel, "logp"),
        (lorarlhf.kernels, "fused_linear_kl", doctor.check_kl_kernel, "kl"),
        (lorarlhf.kernels, "token_kl", doctor.check_token_kl, "k3"),
        (bitsandbytes, "matmul_4bit", doctor.check_bnb_matmul, "forward"),
    ],
)
@pytest.mark.kernels
def test_numeric_checks_catch_a_slightly_wrong_result(monkeypatch, module, name, check, part):
    monkeypatch.setattr(module, name, nudged(getattr(module, name), 3e-3))
    result = check(Target(CPU, torch.float32, CPU), SMALL)
    assert result.status == "failed" and part in result.summary
    assert not result.values[part]["ok"]
