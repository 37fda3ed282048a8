"""Quiet loading (lorarlhf.model.quiet) and the CPU thread rule (lorarlhf.model.threads)."""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import LlamaConfig

from lorarlhf.model import threads
from lorarlhf.model.loading import load_base_model
from lorarlhf.model.quiet import peft_deprecations
from lorarlhf.model.tiny import save_tiny_model, tiny_llama_config


def test_loading_the_tiny_model_writes_nothing_to_stderr(tmp_path, capfd, monkeypatch):
    from lorarlhf import HydraModel

    monkeypatch.delenv("LORARLHF_VERBOSE", raising=False)
    path = save_tiny_model(tmp_path / "tiny")
    capfd.readouterr()
    HydraModel.from_pretrained(path, quantize=None)
    assert capfd.readouterr().err == ""


def test_verbose_shows_the_loading_bar_again(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("LORARLHF_VERBOSE", "1")
    path = save_tiny_model(tmp_path / "tiny")
    capfd.readouterr()
    load_base_model(str(path), quantize=None, device=torch.device("cpu"), dtype=torch.float32)
    assert "Loading weights" in capfd.readouterr().err
    capfd.readouterr()
    monkeypatch.delenv("LORARLHF_VERBOSE")
    load_base_model(str(path), quantize=None, device=torch.device("cpu"), dtype=torch.float32, verbose=True)
    assert "Loading weights" in capfd.readouterr().err


def test_quiet_restores_transformers_settings(tmp_path, monkeypatch):
    from transformers.utils import logging as hf_logging

    monkeypatch.delenv("LORARLHF_VERBOSE", raising=False)
    path = save_tiny_model(tmp_path / "tiny")
    before = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    load_base_model(str(path), quantize=None, device=torch.device("cpu"), dtype=torch.float32)
    assert (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()) == before


def test_peft_deprecations_hides_only_peft_s_warning(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    base = load_base_model(str(tiny_model_dir), quantize=None, device=torch.device("cpu"), dtype=torch.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with peft_deprecations():
            get_peft_model(base, LoraConfig(r=2, target_modules="all-linear"))
            warnings.warn("another", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught if issubclass(w.category, FutureWarning)] == ["another"]


def test_a_tiny_model_runs_on_one_cpu_thread(monkeypatch):
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", threads.THREADS_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads, "user_chose_threads", lambda: False)
    parameters = threads.parameter_count(tiny_llama_config())
    assert parameters < threads.SMALL_MODEL_PARAMETERS
    assert threads.cpu_threads(parameters) == 1


def test_the_user_s_thread_count_is_left_alone(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.cpu_threads(threads.parameter_count(tiny_llama_config())) is None
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setenv(threads.THREADS_ENV, "default")
    assert threads.cpu_threads(1000) is None
    monkeypatch.setenv(threads.THREADS_ENV, "4")
    assert threads.cpu_threads(1000) == 4
    monkeypatch.setenv(threads.THREADS_ENV, "many")
    with pytest.raises(ValueError, match="LORARLHF_CPU_THREADS"):
        threads.cpu_threads(1000)


def test_a_large_model_keeps_the_default(monkeypatch):
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", threads.THREADS_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads, "user_chose_threads", lambda: False)
    llama_7b = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, vocab_size=32000)
    assert 6e9 < threads.parameter_count(llama_7b) < 7.5e9  # Llama-2-7B has 6.7B
    assert threads.cpu_threads(threads.parameter_count(llama_7b)) is None
    assert threads.cpu_threads(None) is None  # a config without sizes: no guess


def test_a_gpu_run_is_left_alone(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    threads.apply_cpu_threads(tiny_llama_config(), torch.device("cuda"))
    assert calls == []


def test_a_4bit_load_in_a_fresh_process_writes_nothing_to_stderr(tmp_path):
    """bitsandbytes is imported by the load itself, and on a CPU with AVX512-BF16 it logs a warning as it is."""
    import os
    import subprocess
    import sys

    path = save_tiny_model(tmp_path / "tiny")
    code = f"from lorarlhf import HydraModel; HydraModel.from_pretrained({str(path)!r}, quantize='nf4', device='cpu')"
    env = {k: v for k, v in os.environ.items() if k != "LORARLHF_VERBOSE"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_only_the_kernel_notice_is_filtered(monkeypatch):
    import logging

    from lorarlhf.model.quiet import BNB_CPU_LOGGER, BNB_KERNEL_NOTICE

    logger = logging.getLogger(BNB_CPU_LOGGER)

    def passes(msg: str, *args) -> bool:  # the logger's filters, whatever its level or handlers here
        return bool(logger.filter(logger.makeRecord(logger.name, logging.WARNING, __file__, 1, msg, args, None)))

    monkeypatch.delenv("LORARLHF_VERBOSE", raising=False)
    assert not passes(BNB_KERNEL_NOTICE + ": %s. Please make sure", "No module named 'kernels'")
    assert passes("another warning")
    monkeypatch.setenv("LORARLHF_VERBOSE", "1")
    assert passes(BNB_KERNEL_NOTICE + ": shown when verbose")
