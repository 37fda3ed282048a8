"""Data parallelism on the CPU: two processes (gloo) make the same updates as one process with the whole batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("distributed_worker.py")
pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") == "1", reason="process-level: runs once, on the PyTorch kernels"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(args: list[str], world: int, cwd: Path) -> None:
    """Run the worker in `world` processes, as torchrun would set them up."""
    port, procs = free_port(), []
    for rank in range(world):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world)}
        env.update(RANK=str(rank), LOCAL_RANK=str(rank))
        if world == 1:
            env = {k: v for k, v in env.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
        procs.append(subprocess.Popen([sys.executable, str(WORKER), *args], cwd=cwd, env=env, stderr=subprocess.PIPE))
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()[-2000:]


def results(out: Path, rank: int):
    return json.loads((out / f"rank{rank}.json").read_text()), load_file(out / f"rank{rank}.safetensors")


@pytest.mark.parametrize("method", ["sft", "dpo", "rm", "grpo", "ppo"])
def test_two_processes_stay_identical_and_match_one_process_with_the_whole_batch(tiny_model_dir, tmp_path, method):
    launch([method, str(tiny_model_dir), str(tmp_path / "two"), "4"], world=2, cwd=tmp_path)
    launch([method, str(tiny_model_dir), str(tmp_path / "one"), "4"], world=1, cwd=tmp_path)
    (first, first_weights), (second, second_weights) = results(tmp_path / "two", 0), results(tmp_path / "two", 1)
    assert first["hashes"] == second["hashes"] and len(first["hashes"]) >= 2  # the same adapter after every step
    assert first["history"] == second["history"]  # metrics reduced over both processes
    assert all(torch.equal(first_weights[k], second_weights[k]) for k in first_weights)
    alone, alone_weights = results(tmp_path / "one", 0)
    if method in ("grpo", "ppo"):  # responses are per-prompt seeded; micro-batch token shares differ slightly
        for a, b in zip(first["history"], alone["history"], strict=True):
            assert a["rl/reward_mean"] == pytest.approx(b["rl/reward_mean"], abs=1e-6)
        tolerance = dict(atol=1e-3, rtol=1e-2)
    else:  # deterministic losses: the same update up to summation order
        for a, b in zip(first["history"], alone["history"], strict=True):
            loss = next(k for k in a if k.endswith("/loss"))
            assert a[loss] == pytest.approx(b[loss], rel=1e-5)
        tolerance = dict(atol=1e-4, rtol=1e-3)  # Adam turns summation-order rounding into ~1e-5 differences
    for name in alone_weights:
        if method == "rm" and alone_weights[name].numel() == 1:
            continue  # the reward bias: exact gradient 0 (rewards enter as differences), Adam scales its noise
        torch.testing.assert_close(first_weights[name], alone_weights[name], **tolerance)


def cut_back_to(run_dir: Path, step: int) -> None:
    """The run as a crash right after checkpoint `step` would leave it."""
    import shutil

    for path in (run_dir / "checkpoints").iterdir():
        if int(path.name.removeprefix("step-")) > step:
            shutil.rmtree(path)
    for name in ("hydra.json", "heads.safetensors", "metrics.json", "training_curves.png"):
        (run_dir / name).unlink(missing_ok=True)
    for name in ("adapters", "tokenizer"):
        shutil.rmtree(run_dir / name, ignore_errors=True)


@pytest.mark.parametrize(("first_world", "resume_world"), [(2, 1), (1, 2)])
def test_a_checkpoint_resumes_on_another_number_of_processes(tiny_model_dir, tmp_path, first_world, resume_world):
    import shutil

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    launch(["align", str(tiny_model_dir), str(whole), "4", "fresh"], world=first_world, cwd=tmp_path)
    assert sorted(p.name for p in (whole / "checkpoints").iterdir()) == ["step-000002", "step-000004", "step-000006"]
    shutil.copytree(whole, cut)
    cut_back_to(cut, 2)
    launch(["align", str(tiny_model_dir), str(cut), "4", "resume"], world=resume_world, cwd=tmp_path)
    lines = [json.loads(line) for line in (cut / "metrics.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(lines, expected, strict=True):
        assert a["dpo/loss"] == pytest.approx(b["dpo/loss"], rel=1e-5)
    adapter = Path("adapters") / "actor" / "adapter_model.safetensors"
    resumed, reference = load_file(cut / adapter), load_file(whole / adapter)
    for name in reference:
        torch.testing.assert_close(resumed[name], reference[name], atol=1e-4, rtol=1e-3)


def test_accelerate_launch_runs_the_command_line_on_two_processes(tiny_model_dir, tmp_path):
    data = tmp_path / "prefs.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": f"Q{i}:", "chosen": "cat yes", "rejected": "no"}) + "\n" for i in range(8))
    )
    options = ["--set", "steps=2", "--set", "batch_size=4", "--set", "quantize=none", "--set", "samples=0"]
    command = ["align", str(tiny_model_dir), str(data), "--method", "dpo", *options, "--set", "eval_fraction=0"]
    accelerate = Path(sys.executable).with_name("accelerate")
    launched = subprocess.run(
        [str(accelerate), "launch", "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "-m", "lorarlhf", *command, "--output-dir", str(tmp_path / "two")],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert launched.returncode == 0, launched.stderr[-2000:]
    assert launched.stdout.count("wrote ") == 1  # the first process reports, the other stays quiet
    alone = subprocess.run(
        [sys.executable, "-m", "lorarlhf", *command, "--output-dir", str(tmp_path / "one")],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert alone.returncode == 0, alone.stderr[-2000:]
    two = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    one = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [r["dpo/loss"] for r in two] == pytest.approx([r["dpo/loss"] for r in one], rel=1e-5)
