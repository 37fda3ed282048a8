"""lorarlhf: RLHF on one GPU with one frozen 4-bit base model and a LoRA adapter per role.

Public names are imported on first use, so `import lorarlhf` stays light and
touches neither CUDA nor transformers until a model is built.
"""

from importlib import import_module

from lorarlhf.model.allocator import request_huge_pages_before_torch

request_huge_pages_before_torch()  # must precede torch's import to take effect (lorarlhf.model.allocator)

__version__ = "0.1.0"

_EXPORTS = {
    "AlignResult": "lorarlhf.pipeline",
    "HydraModel": "lorarlhf.model.hydra",
    "LoraSettings": "lorarlhf.model.lora",
    "PreferencePair": "lorarlhf.data",
    "align": "lorarlhf.pipeline",
    "label": "lorarlhf.labelling",
    "load_preferences": "lorarlhf.data",
    "plan": "lorarlhf.planner",
    "sample_candidates": "lorarlhf.labelling",
    "vote_agreement": "lorarlhf.data",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    if name in ("kernels", "data", "rewards"):
        return import_module(f"lorarlhf.{name}")
    raise AttributeError(f"module 'lorarlhf' has no attribute {name!r}")
