"""The command answers quickly: help and user errors load no model code and contact no hub.

Timings are a benchmark concern; these tests pin the behaviour that makes them fast.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from lorarlhf.cli import DATA_FILE_NAMES, _source_fields, config_options, config_types, main
from lorarlhf.methods.table import DATA_KINDS, METHODS


@pytest.mark.parametrize("argv", [["--help"], ["align", "--help"], ["options", "ppo"], ["plan", "--help"]])
def test_help_and_options_import_neither_torch_nor_transformers(argv):
    code = (
        "import sys\nfrom lorarlhf import cli\n"
        f"try:\n    cli.main({argv!r})\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules, file=sys.stderr)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.stderr.strip().splitlines()[-1] == "False False", result.stderr


@pytest.mark.parametrize("method", list(METHODS))
def test_options_read_from_source_equal_the_dataclass(method):
    from dataclasses import MISSING, fields

    from lorarlhf.training.config import option_docs

    config_cls = METHODS[method].config
    docs = option_docs(config_cls)
    imported = {f.name: (None if f.default is MISSING else f.default, docs.get(f.name, "")) for f in fields(config_cls)}
    static = _source_fields(METHODS[method].config_path)
    assert static is not None, "a config default is not a literal: `lorarlhf options` would import torch"
    assert {name: (default, doc) for name, (_, default, doc) in static.items()} == imported
    assert config_options(METHODS[method].config_path) == imported
    assert config_types(METHODS[method].config_path) == {f.name: str(f.type) for f in fields(config_cls)}


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("stepz=3", "align() got an unknown option 'stepz' for method='grpo'; did you mean 'steps'"),
        ("steps=many", "steps='many' is not valid: steps takes an integer"),
    ],
)
def test_a_bad_set_option_is_an_error_before_torch_is_imported(tmp_path, setting, message):
    """A typo in --set is answered from the config's source: the method's module (and torch) is not loaded."""
    model, prompts = tmp_path / "model", tmp_path / "prompts.jsonl"
    model.mkdir()
    (model / "config.json").write_text("{}")
    prompts.write_text('{"prompt": "hi"}\n')
    code = (
        "import sys\nfrom lorarlhf import cli\n"
        f"code = cli.main(['align', {str(model)!r}, {str(prompts)!r}, '--method', 'grpo', '--set', {setting!r}])\n"
        "print(code, 'torch' in sys.modules, file=sys.stderr)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    *errors, last = result.stderr.strip().splitlines()
    assert last == "2 False", result.stderr
    assert message in "\n".join(errors)


@pytest.fixture
def no_hub(monkeypatch):
    import huggingface_hub
    import huggingface_hub.file_download

    def refuse(*args, **kwargs):
        raise AssertionError("the hub was contacted")

    for module in (huggingface_hub, huggingface_hub.file_download):
        for name in ("hf_hub_download", "snapshot_download", "get_hf_file_metadata", "model_info", "dataset_info"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, refuse)


def test_a_missing_data_file_is_an_error_before_any_hub_call(tmp_path, capsys, monkeypatch, no_hub):
    monkeypatch.chdir(tmp_path)
    assert main(["align", "Qwen/Qwen2.5-0.5B", "missing.jsonl", "--method", "dpo"]) == 2
    assert capsys.readouterr().err == "error: preference data file not found: missing.jsonl\n"
    assert main(["align", "Qwen/Qwen2.5-0.5B", "./prompts/missing", "--method", "grpo"]) == 2
    assert capsys.readouterr().err == "error: prompt data file not found: ./prompts/missing\n"
    assert main(["align", "Qwen/Qwen2.5-0.5B", "thumbs.jsonl", "--method", "kto"]) == 2
    assert capsys.readouterr().err == "error: thumbs-up/down (or preference) data file not found: thumbs.jsonl\n"
    assert set(DATA_FILE_NAMES) == set(DATA_KINDS)  # every kind of data a method reads has its error


def test_plan_demo_reads_the_bundled_model(capsys):
    assert main(["plan", "demo", "--method", "dpo", "--gpu-memory-gb", "24"]) == 0
    out = capsys.readouterr().out
    assert "peak" in out and "24 GB card" in out


def test_plan_a_local_directory(tiny_model_dir, capsys):
    assert main(["plan", str(tiny_model_dir)]) == 0
    assert "peak" in capsys.readouterr().out
