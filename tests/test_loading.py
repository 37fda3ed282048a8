"""Bad input to the Hydra constructor gets an error that names the value and the allowed choices."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from transformers import T5Config

from lorarlhf import HydraModel
from lorarlhf.model.loading import check_source, resolve_dtype


def test_unsupported_quantize_lists_the_choices(tiny_model_dir):
    with pytest.raises(ValueError, match=r"quantize='int4' is not supported; choose one of \('nf4', None\)"):
        HydraModel.from_pretrained(tiny_model_dir, quantize="int4")


def test_missing_path_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"model path '{tmp_path}/nope' does not exist"):
        HydraModel.from_pretrained(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        HydraModel.from_pretrained(tmp_path / "nope")  # a Path is always a path, never a hub id


def test_directory_without_config_and_file_instead_of_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        HydraModel.from_pretrained(tmp_path)
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="is a file; pass the directory that holds config.json"):
        HydraModel.from_pretrained(tmp_path / "weights.safetensors")


def test_hub_ids_pass_through_to_the_hub():
    assert check_source("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert check_source("gpt2") == "gpt2"


def test_model_without_an_lm_head_is_refused(tmp_path):
    T5Config(d_model=16, d_ff=32, num_layers=1, num_heads=2, vocab_size=32).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"model_type='t5'\) is not a causal language model.*LM head"):
        HydraModel.from_pretrained(tmp_path, quantize=None)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lora_r": 0}, r"lora_r=0 must be a positive integer"),
        ({"lora_r": 2.5}, r"lora_r=2.5 must be a positive integer"),
        ({"lora_alpha": -1}, r"lora_alpha=-1 must be a positive number"),
        ({"lora_dropout": 1.0}, r"lora_dropout=1.0 must be in \[0, 1\)"),
        ({"target_modules": []}, r"target_modules=\(\) must be 'all-linear' or a non-empty list"),
        ({"target_modules": "attention"}, r"target_modules='attention' must be 'all-linear'"),
        ({"roles": ("actor", "judge")}, r"roles=\('actor', 'judge'\) must be distinct names from"),
        ({"roles": ("actor", "actor")}, r"must be distinct names"),
        ({"dtype": "float8"}, r"dtype='float8' is not supported; choose one of \['bfloat16', 'float16', 'float32'\]"),
        ({"device": "tpu:0:1"}, r"device='tpu:0:1' is not a torch device"),
    ],
)
def test_bad_options_name_the_value_and_the_choices(tiny_model_dir, kwargs, message):
    with pytest.raises(ValueError, match=message):
        HydraModel.from_pretrained(tiny_model_dir, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_requested_without_cuda(tiny_model_dir):
    with pytest.raises(ValueError, match="CUDA is not available on this machine; use 'cpu'"):
        HydraModel.from_pretrained(tiny_model_dir, device="cuda")


def test_compute_dtype_defaults_follow_the_device():
    assert resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    assert resolve_dtype(torch.float16, torch.device("cpu")) == torch.float16


def test_selected_target_modules_and_roles(tiny_model_dir):
    hydra = HydraModel.from_pretrained(
        tiny_model_dir, quantize=None, lora_r=2, target_modules=["q_proj", "v_proj"], roles=("actor",)
    )
    assert hydra.roles == ("reference", "actor")
    names = {n for n, _ in hydra.peft.named_parameters() if "lora_A" in n}
    assert names and all(".q_proj." in n or ".v_proj." in n for n in names)
    with pytest.raises(ValueError, match="role 'critic' has no adapter on this model"):
        hydra.sequence_logprobs(["a"], ["b"], role="critic")


def test_tokenizer_without_pad_token_pads_with_eos(tmp_path):
    from lorarlhf.model.tiny import save_tiny_model

    path = save_tiny_model(tmp_path / "m")
    config = (path / "tokenizer_config.json").read_text()
    (path / "tokenizer_config.json").write_text(config.replace('"pad_token": "<pad>"', '"pad_token": null'))
    hydra = HydraModel.from_pretrained(path, quantize=None)
    assert hydra.tokenizer.pad_token == hydra.tokenizer.eos_token
    assert hydra.score(["a", "longer prompt"], ["b", "c"]).shape == (2,)


# --------------------------------------------------------------------------- nothing runs that the user did not allow


class _Trap:
    """Unpickling this creates a marker file: proof that a pickle was loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickled_weights_are_never_loaded(tmp_path, tiny_model_dir):
    model_dir = tmp_path / "bin-model"
    shutil.copytree(tiny_model_dir, model_dir)
    (model_dir / "model.safetensors").unlink()
    marker = tmp_path / "unpickled"
    (model_dir / "pytorch_model.bin").write_bytes(pickle.dumps(_Trap(marker)))
    with pytest.raises(OSError, match="has no safetensors weights; lorarlhf loads weights only from safetensors"):
        HydraModel.from_pretrained(model_dir, quantize=None)
    assert not marker.exists()


def test_a_saved_run_is_never_unpickled(tmp_path, tiny_model_dir):
    HydraModel.from_pretrained(tiny_model_dir, quantize=None, roles=("actor",)).save(tmp_path / "run")
    marker = tmp_path / "unpickled"
    (tmp_path / "run" / "adapters" / "actor" / "adapter_model.safetensors").write_bytes(pickle.dumps(_Trap(marker)))
    with pytest.raises(ValueError, match="adapter_model.safetensors cannot be read"):
        HydraModel.load(tmp_path / "run")
    assert not marker.exists()


def test_a_models_own_code_runs_only_with_trust_remote_code(tmp_path, tiny_model_dir):
    model_dir = tmp_path / "remote-code"
    shutil.copytree(tiny_model_dir, model_dir)
    marker = tmp_path / "executed"
    (model_dir / "configuration_custom.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\n"
        "from transformers import LlamaConfig\n\nclass CustomConfig(LlamaConfig):\n    model_type = 'custom'\n"
    )
    config = json.loads((model_dir / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_custom.CustomConfig"}
    config["model_type"] = "custom"  # not a transformers model: only its own code can load it
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="needs its own Python code to load; lorarlhf runs it only with trust_remote"):
        HydraModel.from_pretrained(model_dir, quantize=None)
    assert not marker.exists()


def _mappings_of(path: Path) -> list[tuple[int, int]]:
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.endswith(str(path)):
            start, end = line.split()[0].split("-")
            ranges.append((int(start, 16), int(end, 16)))
    return ranges


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the process's memory maps (Linux)")
@pytest.mark.parametrize("quantize", ["nf4", None])
def test_a_4bit_model_keeps_nothing_of_its_checkpoint_mapped(tmp_path, quantize):
    """The weights left in full precision by quantization are copied out of the memory-mapped checkpoint, so that
    the file's pages, all read once to quantize, are not held resident for them; an unquantized model's weights
    are the mapping itself and stay views of it."""
    import gc

    from lorarlhf.model.tiny import save_tiny_model

    checkpoint = save_tiny_model(tmp_path / "model", seed=0) / "model.safetensors"
    hydra = HydraModel.from_pretrained(checkpoint.parent, quantize=quantize, device="cpu", roles=("actor",))
    gc.collect()
    mapped = _mappings_of(checkpoint.resolve())
    inside = [
        name
        for name, tensor in (*hydra.named_parameters(), *hydra.named_buffers())
        if any(start <= tensor.data_ptr() < end for start, end in mapped)
    ]
    if quantize == "nf4":
        assert mapped == [] and inside == []
    else:
        assert mapped and "peft.base_model.model.model.embed_tokens.weight" in inside
