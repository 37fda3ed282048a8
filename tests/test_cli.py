"""The `lorarlhf` command: info, tiny-model, score; errors exit 2 with a message, never a traceback."""

from __future__ import annotations

import json

from lorarlhf.cli import main


def test_tiny_model_then_score_a_pair(tmp_path, capsys):
    assert main(["tiny-model", str(tmp_path / "tiny")]) == 0
    assert (tmp_path / "tiny" / "config.json").is_file()
    capsys.readouterr()
    assert main(["score", str(tmp_path / "tiny"), "--prompt", "Hi", "--response", "there", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result) == {"reward", "actor_logprob"}
    assert result["actor_logprob"] < 0


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
