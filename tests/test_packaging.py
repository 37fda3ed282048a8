"""The package installs as designed: lorarlhf.kernels, never a top-level `kernels`; a light import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lorarlhf.kernels

import lorarlhf

REPO = Path(__file__).resolve().parents[1]


def run_python(code: str, cwd: Path) -> str:
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_top_level_kernels_does_not_resolve_to_this_project(tmp_path):
    origin = run_python(
        "import importlib.util; spec = importlib.util.find_spec('kernels'); "
        "print(spec.origin if spec and spec.origin else (list(spec.submodule_search_locations) if spec else None))",
        cwd=tmp_path,
    )
    assert str(REPO) not in origin, f"`import kernels` resolves into this repository: {origin}"


def test_lorarlhf_kernels_is_the_kernels_folder():
    assert Path(lorarlhf.kernels.__file__).resolve().parent.name in {"kernels"}
    assert set(lorarlhf.kernels.__all__) == {"fused_linear_logprobs", "token_kl", "fused_linear_kl"}


def test_import_is_light_and_leaves_cuda_alone(tmp_path):
    loaded = run_python(
        "import sys, lorarlhf; "
        "print(','.join(m for m in ('transformers', 'peft', 'bitsandbytes') if m in sys.modules))",
        cwd=tmp_path,
    )
    assert loaded == ""
    initialised = run_python(
        "import torch, lorarlhf; lorarlhf.HydraModel; import lorarlhf.kernels; print(torch.cuda.is_initialized())",
        cwd=tmp_path,
    )
    assert initialised == "False"


def test_console_script_is_installed(tmp_path):
    assert run_python("import lorarlhf.cli; print(lorarlhf.cli.build_parser().prog)", cwd=tmp_path) == "lorarlhf"
    script = Path(sys.executable).parent / "lorarlhf"
    assert script.exists()
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == f"lorarlhf {lorarlhf.__version__}"


def test_run_from_the_repository_root_the_folder_is_not_the_hub_kernels_package():
    """From the repo root, kernels/ is importable by name; transformers must still see no `kernels` package."""
    out = run_python(
        "import lorarlhf.model.hydra; from transformers.utils import is_kernels_available; "
        "import lorarlhf.kernels as k; print(is_kernels_available(), callable(k.fused_linear_logprobs))",
        cwd=REPO,
    )
    assert out.splitlines()[-1] == "False True"


def test_the_wheel_ships_the_demo_model_and_the_kernels(tmp_path):
    import zipfile

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            str(REPO),
            "-w",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("lorarlhf-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"):
        assert f"lorarlhf/demo/model/{name}" in names
    assert "lorarlhf/kernels/logprobs.py" in names and not any(n.startswith("kernels/") for n in names)
