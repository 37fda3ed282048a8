"""The `lorarlhf` command: info, tiny-model, score; errors exit 2 with a message, never a traceback."""

from __future__ import annotations

import json

import pytest

from lorarlhf.cli import main


@pytest.mark.kernels
def test_tiny_model_then_score_a_pair(tmp_path, capsys):
    assert main(["tiny-model", str(tmp_path / "tiny")]) == 0
    assert (tmp_path / "tiny" / "config.json").is_file()
    capsys.readouterr()
    assert main(["score", str(tmp_path / "tiny"), "--prompt", "Hi", "--response", "there", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result) == {"reward", "actor_logprob"}
    assert result["actor_logprob"] < 0


@pytest.mark.kernels
def test_score_a_saved_run_uses_its_trained_heads(tmp_path, tiny_model_dir, capsys):
    import torch

    from lorarlhf import HydraModel

    hydra = HydraModel.from_pretrained(tiny_model_dir, device="cpu", lora_r=4)
    with torch.no_grad():
        hydra.heads["reward"].linear.bias.fill_(100.0)
        expected = hydra.score(["Hi"], ["there"]).item()
    hydra.save(tmp_path / "run")
    capsys.readouterr()
    assert main(["score", str(tmp_path / "run"), "--prompt", "Hi", "--response", "there", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert abs(result["reward"] - expected) < 1e-5 and result["reward"] > 50


def test_errors_exit_2_with_the_reason(tmp_path, capsys):
    assert main(["score", str(tmp_path / "missing"), "--prompt", "a", "--response", "b"]) == 2
    assert "model path" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    assert main(["tiny-model", str(tmp_path / "full")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "full" / "keep.txt").read_text() == "x"


def test_info_reports_versions(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "lorarlhf" in out and "nf4" in out


@pytest.mark.parametrize(("capability", "dtype"), [((7, 5), "float16"), ((8, 9), "bfloat16")])
def test_info_tells_the_dtype_by_the_loaders_rule_not_emulated_bf16(monkeypatch, capsys, capability, dtype):
    """A T4 (sm_75) says yes to is_bf16_supported() by emulation; the loader runs fp16 there, and so says info."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"dtype         {dtype}" in out and f"bf16          {dtype == 'bfloat16'}" in out


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def yes_no_records(n):
    return [{"prompt": f"Question {i}:", "chosen": "cat yes", "rejected": "cat no"} for i in range(n)]


@pytest.mark.kernels
def test_align_runs_a_method_with_typed_options(tmp_path, tiny_model_dir, capsys):
    data = write_jsonl(tmp_path / "prefs.jsonl", yes_no_records(8))
    argv = ["align", str(tiny_model_dir), str(data), "--method", "dpo", "--output-dir", str(tmp_path / "run")]
    argv += ["--set", "steps=2", "--set", "beta=0.5", "--set", "quantize=none", "--set", "samples=0"]
    assert main(argv) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["steps"], config["beta"], config["quantize"]) == (2, 0.5, None)
    assert "dpo/eval_accuracy" in capsys.readouterr().out


@pytest.mark.kernels
def test_align_with_a_reward_function_from_a_file(tmp_path, tiny_model_dir):
    (tmp_path / "my_reward.py").write_text("def short(prompts, responses):\n    return [-len(r) for r in responses]\n")
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Say {i}:"} for i in range(4)])
    argv = ["align", str(tiny_model_dir), str(data), "--method", "grpo", "--output-dir", str(tmp_path / "run")]
    argv += ["--reward-fn", f"{tmp_path / 'my_reward.py'}:short", "--set", "steps=1", "--set", "batch_size=2"]
    argv += ["--set", "group_size=2", "--set", "max_new_tokens=3", "--set", "samples=0"]
    assert main(argv) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["stage"] == "grpo" and records[0]["rl/reward_mean"] <= -1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "stesp=3"], "unknown option 'stesp' for method='dpo'; did you mean 'steps'"),
        (["--set", "steps=many"], "steps='many' is not valid: steps takes an integer"),
        (["--set", "steps"], "--set 'steps' must look like key=value"),
        (["--set", "beta=-1"], "beta=-1.0 must be a positive number"),
        (["--method", "rlhf"], "--method 'rlhf' is not a method; choose one of"),
        (["--reward-fn", "nowhere.py:f"], "--reward-fn: file nowhere.py not found"),
        (["--data", "missing.jsonl"], "preference data file not found: "),
        (["--data", "bad.jsonl"], "bad.jsonl, row 2, field 'rejected': must be a string"),
        (["--model", "no/such/model/dir"], "model path 'no/such/model/dir' does not exist"),
    ],
)
def test_align_user_errors_print_one_line_and_exit_2(tmp_path, tiny_model_dir, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "prefs.jsonl", yes_no_records(4))
    write_jsonl(tmp_path / "bad.jsonl", [yes_no_records(1)[0], {"prompt": "p", "chosen": "a", "rejected": 5}])
    model, data = str(tiny_model_dir), "prefs.jsonl"
    if args[0] == "--model":
        model, args = args[1], []
    if args[:1] == ["--data"]:
        data, args = args[1], []
    method = [] if "--method" in args else ["--method", "dpo"]
    code = main(["align", model, data, *method, "--output-dir", "run", "--set", "samples=0", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_options_lists_every_field_with_its_help(capsys):
    assert main(["options", "ppo"]) == 0
    out = capsys.readouterr().out
    for name in ("steps = 200", "kl_coef = 0.05", "sft = False", "rm_steps = 200", "merge = False"):
        assert name in out
    assert "Weight of the KL to the reference" in out


@pytest.mark.kernels
def test_align_resume_and_overwrite_flags(tmp_path, tiny_model_dir, capsys):
    data = write_jsonl(tmp_path / "prefs.jsonl", yes_no_records(8))
    argv = ["align", str(tiny_model_dir), str(data), "--method", "dpo", "--output-dir", str(tmp_path / "run")]
    argv += ["--set", "steps=2", "--set", "save_every=1", "--set", "quantize=none", "--set", "samples=0"]
    assert main(argv) == 0
    assert main(argv) == 2
    assert "holds an earlier run; pass resume=True to continue it" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0  # the newest checkpoint is the last step: nothing left to train
    assert main([*argv, "--overwrite"]) == 0
