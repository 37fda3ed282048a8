"""The `lorarlhf` command."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _info(args) -> int:
    """Versions and the device a run would use: the first thing to paste into a bug report."""
    import platform
    from importlib import metadata

    import torch

    report = {"python": platform.python_version()}
    for package in ("lorarlhf", "torch", "transformers", "peft", "bitsandbytes", "triton", "safetensors"):
        try:
            report[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            report[package] = None
    report["cuda"] = torch.cuda.is_available()
    if report["cuda"]:
        report["gpu"] = torch.cuda.get_device_name(0)
        report["bf16"] = torch.cuda.is_bf16_supported()
    report["nf4"] = report["bitsandbytes"] is not None
    for key, value in report.items():
        print(f"{key:<13} {value}")
    return 0


def _tiny_model(args) -> int:
    from lorarlhf.tiny import save_tiny_model

    out = Path(args.out_dir)
    if out.exists() and any(out.iterdir()):
        print(f"error: {out} exists and is not empty; choose a new directory", file=sys.stderr)
        return 2
    save_tiny_model(out, seed=args.seed)
    print(f"wrote a tiny Llama and its tokenizer to {out}")
    return 0


def _score(args) -> int:
    import torch

    from lorarlhf.checkpoint import MANIFEST
    from lorarlhf.hydra import HydraModel

    source = Path(args.model)
    if (source / MANIFEST).is_file():
        hydra = HydraModel.load(source, device=args.device)
    else:
        hydra = HydraModel.from_pretrained(args.model, quantize=args.quantize, device=args.device)
    with torch.no_grad():
        reward = hydra.score([args.prompt], [args.response]).item()
        logprob = hydra.sequence_logprobs([args.prompt], [args.response], role="actor").item()
    print(json.dumps({"reward": reward, "actor_logprob": logprob}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from lorarlhf import __version__

    parser = argparse.ArgumentParser(prog="lorarlhf", description="RLHF on one GPU with one 4-bit base model.")
    parser.add_argument("--version", action="version", version=f"lorarlhf {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser("info", help="print versions and the device a run would use")
    info.set_defaults(run=_info)

    tiny = commands.add_parser("tiny-model", help="write a tiny random Llama and tokenizer (offline experiments)")
    tiny.add_argument("out_dir", help="a new or empty directory")
    tiny.add_argument("--seed", type=int, default=0, help="weight initialisation seed (default 0)")
    tiny.set_defaults(run=_tiny_model)

    score = commands.add_parser("score", help="reward score and actor log-prob of one prompt/response pair")
    score.add_argument("model", help="hub id, model directory, or a saved run directory")
    score.add_argument("--prompt", required=True)
    score.add_argument("--response", required=True)
    score.add_argument("--quantize", default="nf4", choices=["nf4", "none"], help="base quantization (default nf4)")
    score.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    score.set_defaults(run=_score)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, NotADirectoryError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
