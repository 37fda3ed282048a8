"""Checkpoints and resume: a killed or interrupted run continues exactly, damaged checkpoints are skipped,
and an earlier run is never replaced by accident."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import lorarlhf
from lorarlhf.training.checkpoints import CHECKPOINTS, RunCheckpoints, load_optimizer_state, optimizer_state

TIMING = ("rl/tokens_per_s", "peak_memory_gb")  # wall-clock measurements: the only fields that may differ


def yes_no_pairs(n: int) -> list[dict]:
    words = ["the", "cat", "sat", "on", "a", "mat"]
    return [
        {"prompt": f"Question {i}:", "chosen": f"{words[i % 6]} yes", "rejected": f"{words[i % 6]} no"}
        for i in range(n)
    ]


def records(run_dir) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [
        {k: v for k, v in json.loads(line).items() if k not in TIMING and not k.startswith("time/")} for line in lines
    ]


def weights(hydra) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in hydra.named_parameters() if p.requires_grad}


def assert_same_run(a, b):
    assert records(a.output_dir) == records(b.output_dir)
    wa, wb = weights(a.model), weights(b.model)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name
    assert {k: v for k, v in a.metrics.items() if k not in TIMING} == {
        k: v for k, v in b.metrics.items() if k not in TIMING
    }


def cut_back_to(run_dir, step: int) -> None:
    """Leave the run as a crash right after checkpoint `step` would: newer checkpoints and the final save gone."""
    for path in (run_dir / CHECKPOINTS).iterdir():
        if int(path.name.removeprefix("step-")) > step:
            shutil.rmtree(path)
    for name in ("hydra.json", "heads.safetensors", "metrics.json", "samples.jsonl", "training_curves.png"):
        (run_dir / name).unlink(missing_ok=True)
    for name in ("adapters", "tokenizer"):
        shutil.rmtree(run_dir / name, ignore_errors=True)


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("dpo", dict(sft=True, sft_steps=4, steps=6, lr=5e-3, lr_schedule="cosine", warmup_steps=2)),  # in stage 2
        ("ppo", dict(rm_steps=3, steps=6, batch_size=4, max_new_tokens=4, lr_schedule="linear")),  # RL state
    ],
)
@pytest.mark.kernels
def test_a_run_resumed_from_a_checkpoint_ends_exactly_like_an_uninterrupted_one(
    tiny_model_dir, tmp_path, method, options
):
    common = dict(method=method, quantize=None, save_every=2, keep_checkpoints=10, samples=1, **options)
    data = yes_no_pairs(12)
    whole = lorarlhf.align(str(tiny_model_dir), data, output_dir=tmp_path / "whole", **common)
    interrupted = tmp_path / "interrupted"
    shutil.copytree(whole.output_dir, interrupted)
    checkpoint_steps = sorted(int(p.name[5:]) for p in (interrupted / CHECKPOINTS).iterdir())
    middle = checkpoint_steps[len(checkpoint_steps) // 2]
    cut_back_to(interrupted, middle)
    resumed = lorarlhf.align(str(tiny_model_dir), data, output_dir=interrupted, resume=True, **common)
    assert_same_run(resumed, whole)
    assert resumed.samples[0]["before"] == whole.samples[0]["before"]


@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") == "1", reason="process-level: runs once, on the PyTorch kernels"
)
@pytest.mark.kernels
def test_a_killed_process_resumes_exactly(tiny_model_dir, tmp_path):
    data_path = tmp_path / "prefs.jsonl"
    data_path.write_text("".join(json.dumps(r) + "\n" for r in yes_no_pairs(16)))
    options = dict(method="dpo", quantize=None, steps=80, save_every=2, keep_checkpoints=3, samples=0, lr=5e-3)
    script = textwrap.dedent(f"""
        import torch, lorarlhf
        torch.set_num_threads(1)
        out = {str(tmp_path / "killed")!r}
        lorarlhf.align({str(tiny_model_dir)!r}, {str(data_path)!r}, output_dir=out, **{options!r})
    """)
    child = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / "killed" / CHECKPOINTS
    deadline = time.monotonic() + 300
    while not (checkpoints / "step-000004" / "state.json").exists():
        assert child.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "metrics.json").exists()  # it really stopped part-way

    resumed = lorarlhf.align(
        str(tiny_model_dir), str(data_path), output_dir=tmp_path / "killed", resume=True, **options
    )
    whole = lorarlhf.align(str(tiny_model_dir), str(data_path), output_dir=tmp_path / "whole", **options)
    assert_same_run(resumed, whole)


@pytest.mark.kernels
def test_a_damaged_newest_checkpoint_is_skipped_for_the_previous_one(tiny_model_dir, tmp_path, caplog):
    common = dict(method="dpo", quantize=None, steps=6, save_every=2, keep_checkpoints=3, samples=0, lr=5e-3)
    data = yes_no_pairs(8)
    whole = lorarlhf.align(str(tiny_model_dir), data, output_dir=tmp_path / "whole", **common)
    damaged = tmp_path / "damaged"
    shutil.copytree(whole.output_dir, damaged)
    cut_back_to(damaged, 4)
    newest = damaged / CHECKPOINTS / "step-000004"
    optimizer_file = newest / "optimizer.safetensors"
    optimizer_file.write_bytes(optimizer_file.read_bytes()[:100])  # truncated, as by a full disk
    resumed = lorarlhf.align(str(tiny_model_dir), data, output_dir=damaged, resume=True, **common)
    assert "skipping checkpoint" in caplog.text and "step-000004" in caplog.text
    assert_same_run(resumed, whole)  # it went on from step 2 and still ended in the same place

    runs = RunCheckpoints(damaged, 2, 3, {})
    for path in runs.checkpoint_dirs():
        (path / "state.json").unlink()
    (damaged / "hydra.json").unlink()
    with pytest.raises(FileNotFoundError, match="holds no usable checkpoint"):
        lorarlhf.align(str(tiny_model_dir), data, output_dir=damaged, resume=True, **common)


@pytest.mark.kernels
def test_resume_refuses_another_method_or_model(tiny_model_dir, other_tiny_model_dir, tmp_path):
    data = yes_no_pairs(8)
    lorarlhf.align(str(tiny_model_dir), data, method="dpo", output_dir=tmp_path / "run", quantize=None,
                   steps=2, save_every=2, samples=0)  # fmt: skip
    with pytest.raises(ValueError, match=r"made with method='dpo', this run has method='rm'"):
        lorarlhf.align(str(tiny_model_dir), data, method="rm", output_dir=tmp_path / "run", resume=True, steps=2)
    with pytest.raises(ValueError, match=r"made with model=.*tiny-llama0.*this run has model=.*tiny-llama-other"):
        lorarlhf.align(str(other_tiny_model_dir), data, method="dpo", output_dir=tmp_path / "run", resume=True)


@pytest.mark.kernels
def test_an_earlier_run_is_never_replaced_by_accident(tiny_model_dir, tmp_path):
    data = yes_no_pairs(8)
    options = dict(method="dpo", quantize=None, steps=2, samples=0)
    lorarlhf.align(str(tiny_model_dir), data, output_dir=tmp_path / "run", save_every=1, **options)
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    with pytest.raises(FileExistsError, match="holds an earlier run; pass resume=True to continue it, overwrite=True"):
        lorarlhf.align(str(tiny_model_dir), data, output_dir=tmp_path / "run", **options)
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before
    lorarlhf.align(str(tiny_model_dir), data, output_dir=tmp_path / "run", overwrite=True, **options)
    assert not (tmp_path / "run" / CHECKPOINTS).exists()  # the replaced run's checkpoints went with it
    with pytest.raises(FileNotFoundError, match="holds no run to continue"):
        lorarlhf.align(str(tiny_model_dir), data, output_dir=tmp_path / "new", resume=True, **options)
    with pytest.raises(ValueError, match="resume=True continues the run in output_dir and overwrite=True replaces"):
        lorarlhf.align(str(tiny_model_dir), data, output_dir=tmp_path / "run", resume=True, overwrite=True)


def test_optimizer_state_round_trips_through_tensors_and_json():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        sum((p**2).sum() for p in params).backward()
        optimizer.step()
    tensors, meta = optimizer_state(optimizer)
    json.dumps(meta)  # the non-tensor part is plain JSON
    fresh = torch.optim.AdamW(params, lr=5.0)
    load_optimizer_state(fresh, tensors, json.loads(json.dumps(meta)))
    a, b = optimizer.state_dict(), fresh.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for index in a["state"]:
        for name, value in a["state"][index].items():
            assert torch.equal(value, b["state"][index][name]), (index, name)
