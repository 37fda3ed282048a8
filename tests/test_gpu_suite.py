"""benchmarks/gpu_suite.py without a GPU: `--dry-run` runs every step on tiny shapes on the CPU and writes the results
JSON with its device and each step's figures (or the recorded reason it has none); the generated tables of
BENCHMARKS.md regenerate from a sample results file, leaving everything outside their markers as it was."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_suite.py"
STEPS = ["doctor", "kernels", "fit_24gb", "planner", "rollout"]


@pytest.fixture(scope="module")
def suite():
    """The script as a module: its top level imports the standard library only."""
    spec = importlib.util.spec_from_file_location("gpu_suite", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_suite"] = module  # its dataclasses look their module up while they are built
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules["gpu_suite"]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One dry run of the whole suite, in a fresh process, as a user runs it; returns (JSON record, output dir)."""
    out = tmp_path_factory.mktemp("gpu-suite")
    results = sorted((ROOT / "benchmarks" / "results").iterdir())
    markdown = (ROOT / "BENCHMARKS.md").read_bytes()
    # The suite checks its own plumbing here; the kernels' Triton-interpreted path has its own tests, and through
    # the interpreter the training steps alone would take minutes.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    command = [sys.executable, str(SCRIPT), "--dry-run", "--out-dir", str(out), "--work-dir", str(out / "work")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2 + len(STEPS), done.stdout  # a header, one line per step, where the results went
    assert sorted((ROOT / "benchmarks" / "results").iterdir()) == results  # nothing written to the real results
    assert (ROOT / "BENCHMARKS.md").read_bytes() == markdown  # nor to the real BENCHMARKS.md
    (path,) = out.glob("gpu_suite-*.json")
    return json.loads(path.read_text()), out


def test_dry_run_records_the_device_and_every_step(dry_run):
    record, _ = dry_run
    assert record["dry_run"] is True and record["device"] == "cpu"
    assert isinstance(record["device_name"], str) and record["device_name"]
    assert record["versions"]["torch"] and record["date"]
    assert list(record["steps"]) == STEPS
    for name, entry in record["steps"].items():
        assert entry["status"] == "ok", (name, entry)
        assert entry["seconds"] <= entry["budget_s"] + 15 and entry["date"]


def test_dry_run_figures_have_the_expected_structure(dry_run):
    steps = dry_run[0]["steps"]
    doctor = steps["doctor"]
    assert isinstance(doctor["ok"], bool) and doctor["report"]["device"] and "ok" in doctor["report"]

    kernels = {(row["n"], row["provider"]): row for row in steps["kernels"]["rows"]}
    assert {n for n, _ in kernels} == {32, 64}
    for n in (32, 64):
        assert kernels[n, "liger"]["skipped"] == "needs CUDA"  # the one thing the CPU cannot run
        for provider in ("matmul", "eager", "trl", "lorarlhf"):
            row = kernels[n, provider]
            assert row["median_ms"] > 0 and row["p20_ms"] <= row["p80_ms"] and row["rounds"] >= 3
            assert row["gemm_floor_ms"] == pytest.approx(2 * kernels[n, "matmul"]["median_ms"])
        assert kernels[n, "lorarlhf"]["peak_extra_bytes"] >= 0 and kernels[n, "matmul"]["tflops"] > 0
    assert steps["kernels"]["timer"] == "perf_counter"

    fit = steps["fit_24gb"]["rows"]
    assert [row["method"] for row in fit] == ["ppo", "grpo", "ppo (classic: 4 models)"]
    for row in fit[:2]:
        assert row["peak_gb"] > 0 and row["tokens_per_s"] > 0 and row["planned_peak_gb"] > 0
        assert {"generate", "score", "reference", "train"} <= set(row["peak_gb_per_phase"])
        assert set(row["seconds_per_phase"]) == set(row["peak_gb_per_phase"])
    assert fit[2]["hydra_latency_ratio"] > 0 and fit[2]["hydra_memory_ratio"] > 0

    planner = steps["planner"]["rows"]
    assert len(planner) == 8  # 2 shapes x 2 batch sizes x 2 lengths
    for row in planner:
        assert set(row["phases"]) == {"generation", "scoring (no-grad passes)", "update"}
        for phase in row["phases"].values():
            assert phase["planned_gb"] > 0 and phase["measured_gb"] > 0 and phase["error"] is not None

    rollout = {row["sampler"]: row for row in steps["rollout"]["rows"]}
    assert set(rollout) == {"generate_rollout", "model.generate"}
    assert all(row["tokens_per_s"] > 0 and len(row["runs"]) == 2 for row in rollout.values())
    assert steps["rollout"]["ratio"] > 0


def test_dry_run_regenerates_the_tables_of_a_copy_of_benchmarks_md(dry_run):
    text = (dry_run[1] / "BENCHMARKS.md").read_text()
    for name in ("kernels", "fit_24gb", "planner", "rollout", "summary"):
        block = text.split(f"<!-- gpu_suite:{name} -->\n")[1].split(f"<!-- /gpu_suite:{name} -->")[0]
        assert "Not run yet" not in block and "Dry run on the CPU" in block and "|---" in block, name


SAMPLE = {
    "suite": "gpu_suite",
    "device": "cuda",
    "device_name": "NVIDIA H200",
    "dry_run": False,
    "date": "2026-12-01T12:00:00+00:00",
    "versions": {"torch": "2.11.0", "liger-kernel": None},
    "steps": {
        "doctor": {"status": "ok", "budget_s": 30, "seconds": 12.5, "ok": True, "report": {"ok": True}},
        "kernels": {
            "status": "ok", "budget_s": 75, "seconds": 60.2, "timer": "CUDA events",
            "sizes": {"hidden": 4096, "vocab": 128256, "dtype": "bfloat16"},
            "rows": [
                {"n": 4096, "provider": "matmul", "label": "h @ W^T alone", "median_ms": 5.5, "p20_ms": 5.4,
                 "p80_ms": 5.6, "rounds": 30, "gemm_floor_ms": 11.0, "x_floor": 0.5, "tflops": 781.5},
                {"n": 4096, "provider": "liger", "label": "not installed", "skipped": "not installed"},
                {"n": 4096, "provider": "lorarlhf", "label": "lorarlhf", "median_ms": 12.25, "p20_ms": 12.0,
                 "p80_ms": 12.5, "rounds": 30, "peak_extra_bytes": 96 * 2**20, "gemm_floor_ms": 11.0,
                 "x_floor": 1.1136},
            ],
        },
        "fit_24gb": {"status": "skipped", "budget_s": 210, "seconds": 0.1, "reason": "bitsandbytes is not importable"},
        "planner": {
            "status": "stopped", "budget_s": 105, "seconds": 101.0, "stopped": "stopped before Llama-3-8B",
            "sizes": {"quantize": "nf4", "new_tokens": 16}, "cuda_context_gb": 0.52,
            "rows": [{"shape": "Qwen2.5-0.5B", "batch": 2, "length": 512, "phases": {
                "update": {"planned_gb": 2.0, "measured_gb": 1.6, "error": 0.25},
                "generation": {"planned_gb": 1.9, "measured_gb": 2.0, "error": -0.05},
                "scoring (no-grad passes)": {"planned_gb": 1.8, "measured_gb": 1.7, "error": 0.0588},
            }}],
        },
        "rollout": {"status": "error", "budget_s": 60, "seconds": 3.0, "error": "RuntimeError: boom"},
    },
}  # fmt: skip


def test_tables_regenerate_from_a_sample_json_into_a_copy(suite, tmp_path):
    markdown = tmp_path / "BENCHMARKS.md"
    shutil.copyfile(ROOT / "BENCHMARKS.md", markdown)
    before = markdown.read_text()
    source = tmp_path / "gpu_suite-nvidia-h200.json"
    source.write_text(json.dumps(SAMPLE))
    done = subprocess.run([sys.executable, str(SCRIPT), "--tables-from", str(source), "--benchmarks-md",
                           str(markdown)], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = markdown.read_text()

    def outside(markdown_text):  # the text with every generated section emptied
        return re.sub(r"(<!-- gpu_suite:(\w+) -->\n).*?(<!-- /gpu_suite:\2 -->)", r"\1\3", markdown_text, flags=re.S)

    assert outside(text) == outside(before)  # nothing outside the markers changed
    assert "| 4096 | h @ W^T alone | 5.5 | 5.4-5.6 | 30 | - | 782 TFLOP/s |" in text
    assert "| 4096 | **lorarlhf** | 12.2 | 12-12.5 | 30 | 96 | 1.11 |" in text
    assert "| 4096 | Liger-Kernel | not installed | | | | |" in text
    assert "NVIDIA H200, 2026-12-01" in text and "Dry run" not in text
    assert "No figures: skipped. bitsandbytes is not importable" in text
    assert "| Qwen2.5-0.5B | 2 x 512 | 1.9 / 2 | 1.8 / 1.7 | 2 / 1.6 | +25% |" in text
    assert "Step stopped: stopped before Llama-3-8B" in text and "0.52 GiB" in text
    assert "No figures: error. RuntimeError: boom" in text
    assert "| ok | 60.2 | 75 |" in text and "all checks passed" in text
    suite.update_benchmarks_md(markdown, SAMPLE, "benchmarks/results/gpu_suite-nvidia-h200.json")
    assert markdown.read_text() == text.replace(str(source), "benchmarks/results/gpu_suite-nvidia-h200.json")


def test_a_file_without_the_markers_is_refused(suite, tmp_path):
    markdown = tmp_path / "BENCHMARKS.md"
    markdown.write_text("# Benchmarks\n")
    with pytest.raises(ValueError, match="gpu_suite:kernels"):
        suite.update_benchmarks_md(markdown, SAMPLE, "x.json")


def test_a_step_over_its_budget_stops_and_keeps_what_finished(suite, tmp_path, monkeypatch):
    def slow(run):
        run.add({"piece": 1})
        run.need(3600, "the second piece")
        run.add({"piece": 2})

    def stuck(run):
        run.add({"piece": 1})
        while True:
            pass

    def broken(run):
        raise RuntimeError("boom")

    for name, fn in (("slow", slow), ("stuck", stuck), ("broken", broken)):
        monkeypatch.setitem(suite.STEPS, name, suite.Step(name, 1, 1, fn, name))
        monkeypatch.setitem(suite.SIZES["dry"], name, {})
    monkeypatch.setattr(suite, "GRACE_S", 0.5)
    now = suite.time.time()
    slow_entry = suite.run_step("slow", True, tmp_path, now + 60)
    assert slow_entry["status"] == "stopped" and slow_entry["rows"] == [{"piece": 1}]
    assert "the second piece" in slow_entry["stopped"]
    stuck_entry = suite.run_step("stuck", True, tmp_path, suite.time.time() + 0.5)
    assert stuck_entry["status"] == "killed" and stuck_entry["rows"] == [{"piece": 1}]
    broken_entry = suite.run_step("broken", True, tmp_path, suite.time.time() + 60)
    assert broken_entry["status"] == "error" and broken_entry["error"] == "RuntimeError: boom"
