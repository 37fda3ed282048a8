"""Saving and reloading a Hydra: every role round-trips, no pickle, refusals that say why."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from lorarlhf import HydraModel
from lorarlhf.model.tiny import save_tiny_model

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}


def build(path, quantize="nf4"):
    return HydraModel.from_pretrained(path, quantize=quantize, lora_r=4, lora_alpha=8, device="cpu")


def train_every_role(hydra, pairs):
    """One SGD step per role so no adapter or head is at its initial value."""
    batch = hydra.encode(*pairs)
    losses = {
        "sft": lambda: -hydra.sequence_logprobs(*pairs, role="sft").sum(),
        "actor": lambda: -hydra.sequence_logprobs(*pairs, role="actor").sum(),
        "critic": lambda: hydra.values(batch.input_ids, batch.attention_mask).pow(2).sum(),
        "reward": lambda: -hydra.score(*pairs).sum(),
    }
    for role in hydra.adapters:
        params = hydra.trainable_parameters(role)
        for _ in range(2):
            hydra.zero_grad()
            losses[role]().backward()
            with torch.no_grad():
                for p in params:
                    p -= 0.05 * p.grad


def outputs(hydra, pairs):
    batch = hydra.encode(*pairs)
    with torch.no_grad():
        result = {role: hydra.sequence_logprobs(*pairs, role=role) for role in hydra.roles}
        result["reward score"] = hydra.score(*pairs)
        result["critic values"] = hydra.values(batch.input_ids, batch.attention_mask)
    return result


@pytest.mark.parametrize("quantize", ["nf4", None])
@pytest.mark.kernels
def test_save_load_round_trip_reproduces_every_role(tiny_model_dir, pairs, tmp_path, quantize):
    hydra = build(tiny_model_dir, quantize)
    hydra.add_role("sft")
    train_every_role(hydra, pairs)
    before = outputs(hydra, pairs)

    hydra.save(tmp_path / "run")
    reloaded = HydraModel.load(tmp_path / "run")

    assert reloaded.roles == hydra.roles
    assert reloaded.quantize == quantize
    after = outputs(reloaded, pairs)
    assert before.keys() == after.keys()
    for name in before:
        assert torch.equal(after[name], before[name]), name
    assert not torch.equal(before["actor"], before["reference"])  # the round trip carried real training


def test_saved_run_holds_no_pickle_and_a_readable_manifest(tiny_model_dir, tmp_path):
    build(tiny_model_dir).save(tmp_path / "run")
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert files and not [p for p in files if p.suffix in PICKLE_SUFFIXES]
    assert {p.suffix for p in files} <= {".json", ".safetensors", ".jinja", ".txt"}
    manifest = json.loads((tmp_path / "run" / "hydra.json").read_text())
    assert manifest["base"]["name_or_path"] == str(tiny_model_dir)
    assert manifest["quantize"] == "nf4"
    assert manifest["lora"] == {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}
    assert manifest["roles"] == ["actor", "critic", "reward"]
    assert manifest["dtype"] == "float32" and manifest["device"] == "cpu"
    assert manifest["versions"]["torch"] == torch.__version__
    assert len(manifest["base"]["weights_sha256"]) == 64


def test_loading_a_run_never_unpickles(tiny_model_dir, tmp_path, monkeypatch):
    import pickle

    build(tiny_model_dir).save(tmp_path / "run")

    def refuse(*args, **kwargs):
        raise AssertionError("a saved run must load without unpickling anything")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    assert HydraModel.load(tmp_path / "run").roles == ("reference", "actor", "critic", "reward")


def test_relative_base_path_is_stored_absolute(tiny_model_dir, tmp_path, monkeypatch, pairs):
    monkeypatch.chdir(tiny_model_dir.parent)
    hydra = build(tiny_model_dir.name)
    hydra.save(tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    manifest = json.loads((tmp_path / "run" / "hydra.json").read_text())
    assert manifest["base"]["name_or_path"] == str(tiny_model_dir.resolve())
    with torch.no_grad():
        assert torch.equal(HydraModel.load("run").score(*pairs), hydra.score(*pairs))


@pytest.mark.kernels
def test_half_precision_run_reloads_in_its_dtype_or_another(tiny_model_dir, tmp_path, pairs):
    hydra = HydraModel.from_pretrained(tiny_model_dir, quantize=None, dtype="bfloat16", lora_r=4, device="cpu")
    train_every_role(hydra, pairs)
    before = outputs(hydra, pairs)
    hydra.save(tmp_path / "run")

    same = HydraModel.load(tmp_path / "run")
    assert same.causal_lm.get_output_embeddings().weight.dtype == torch.bfloat16
    after = outputs(same, pairs)
    for name in before:
        assert torch.equal(after[name], before[name]), name
    wider = HydraModel.load(tmp_path / "run", dtype="float32")  # the base fingerprint does not depend on dtype
    assert wider.causal_lm.get_output_embeddings().weight.dtype == torch.float32


@pytest.mark.kernels
def test_actor_adapter_is_a_standard_peft_directory(tiny_model_dir, pairs, tmp_path):
    hydra = build(tiny_model_dir, quantize=None)
    train_every_role(hydra, pairs)
    hydra.save(tmp_path / "run")

    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(plain, tmp_path / "run" / "adapters" / "actor")
    batch = hydra.encode(*pairs)
    with torch.no_grad():
        logits = peft_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        logp = torch.log_softmax(logits[:, :-1].double(), -1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
        expected = (logp * batch.response_mask[:, 1:]).sum(1).float()
        got = hydra.sequence_logprobs(*pairs, role="actor")
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-5)


@pytest.mark.kernels
def test_saving_again_replaces_the_previous_save_and_keeps_other_files(tiny_model_dir, pairs, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    first = build(tiny_model_dir)
    first.add_role("sft")
    first.save(run)
    second = build(tiny_model_dir)
    train_every_role(second, pairs)
    second.save(run)

    assert (run / "notes.txt").read_text() == "mine"
    assert not (run / "adapters" / "sft").exists()  # the old save's extra role is gone with it
    assert not [p for p in run.iterdir() if p.name.startswith(".hydra-save")]
    with torch.no_grad():
        torch.testing.assert_close(HydraModel.load(run).score(*pairs), second.score(*pairs), atol=0, rtol=0)


def test_a_failed_save_leaves_the_previous_run_whole(tiny_model_dir, pairs, tmp_path, monkeypatch):
    import lorarlhf.model.saving as checkpoint

    run = tmp_path / "run"
    first = build(tiny_model_dir)
    first.save(run)
    with torch.no_grad():
        expected = first.score(*pairs)
    second = build(tiny_model_dir)
    real_replace, calls = checkpoint.os.replace, []

    def failing_replace(src, dst):
        calls.append(dst)
        if len(calls) == 6:  # after the old run moved out and two new entries moved in
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        second.save(run)
    monkeypatch.setattr(checkpoint.os, "replace", real_replace)
    assert len(calls) == 6 + 5  # 4 out, 2 in (the 2nd fails), then 1 back out and 4 back in
    with torch.no_grad():
        assert torch.equal(HydraModel.load(run).score(*pairs), expected)
    assert sorted(p.name for p in run.iterdir()) == ["adapters", "heads.safetensors", "hydra.json", "tokenizer"]


def test_save_refuses_a_foreign_manifest(tiny_model_dir, tmp_path):
    (tmp_path / "hydra.json").write_text('{"project": "someone else\'s"}')
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="hydra.json exists but is not a lorarlhf run's manifest"):
        build(tiny_model_dir).save(tmp_path)
    assert (tmp_path / "tokenizer" / "mine.txt").read_text() == "keep"
    assert "someone else" in (tmp_path / "hydra.json").read_text()


def test_save_refuses_to_overwrite_files_that_are_not_a_run(tiny_model_dir, tmp_path):
    (tmp_path / "adapters").mkdir()
    (tmp_path / "adapters" / "precious.safetensors").write_bytes(b"user data")
    with pytest.raises(FileExistsError, match=r"already holds \['adapters'\] but is not a saved lorarlhf run"):
        build(tiny_model_dir).save(tmp_path)
    assert (tmp_path / "adapters" / "precious.safetensors").read_bytes() == b"user data"


# --------------------------------------------------------------------------- refusals


def test_load_refuses_a_directory_that_is_not_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        HydraModel.load(tmp_path / "missing")
    with pytest.raises(ValueError, match="not a saved lorarlhf run: hydra.json is missing"):
        HydraModel.load(tmp_path)
    (tmp_path / "hydra.json").write_text("{broken")
    with pytest.raises(ValueError, match="hydra.json is not valid JSON"):
        HydraModel.load(tmp_path)
    (tmp_path / "hydra.json").write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="not a lorarlhf Hydra manifest"):
        HydraModel.load(tmp_path)


def test_load_refuses_a_base_with_other_weights(tiny_model_dir, other_tiny_model_dir, tmp_path):
    build(tiny_model_dir).save(tmp_path / "run")
    with pytest.raises(ValueError, match="does not match the base this run was trained on.*stored weights differ"):
        HydraModel.load(tmp_path / "run", base=str(other_tiny_model_dir))


def test_load_refuses_a_base_changed_beyond_its_embeddings(tiny_model_dir, tmp_path):
    """A merged LoRA or a fine-tune changes layer weights, not the embeddings: still caught."""
    build(tiny_model_dir).save(tmp_path / "run")
    changed = tmp_path / "changed"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.mul_(3)
    model.save_pretrained(changed)
    with pytest.raises(ValueError, match="stored weights differ"):
        HydraModel.load(tmp_path / "run", base=str(changed))


def test_load_refuses_a_base_with_another_shape_naming_the_field(tiny_model_dir, tmp_path):
    build(tiny_model_dir).save(tmp_path / "run")
    wider = save_tiny_model(tmp_path / "wider", intermediate_size=192)
    with pytest.raises(ValueError, match="intermediate_size is 192, the run's base has 128"):
        HydraModel.load(tmp_path / "run", base=str(wider))


def test_load_names_a_truncated_weights_file(tiny_model_dir, tmp_path):
    run = build(tiny_model_dir).save(tmp_path / "run")
    heads = run / "heads.safetensors"
    heads.write_bytes(heads.read_bytes()[:40])
    with pytest.raises(ValueError, match=r"heads\.safetensors cannot be read"):
        HydraModel.load(run)
    adapter = run / "adapters" / "critic" / "adapter_model.safetensors"
    adapter.unlink()
    with pytest.raises(FileNotFoundError, match=r"critic/adapter_model\.safetensors is missing"):
        HydraModel.load(run)


def test_load_refuses_a_newer_format(tiny_model_dir, tmp_path):
    run = build(tiny_model_dir).save(tmp_path / "run")
    manifest = json.loads((run / "hydra.json").read_text())
    manifest["format_version"] = 99
    (run / "hydra.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="format_version 99, newer than this lorarlhf reads"):
        HydraModel.load(run)
