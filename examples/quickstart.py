"""Build a Hydra (one frozen NF4 base, a LoRA adapter per role) and use every role once.

python examples/quickstart.py                 # a tiny model built locally: runs on a CPU, no download
python examples/quickstart.py Qwen/Qwen2.5-0.5B-Instruct   # any causal LM on the Hub or on disk
"""

import sys
import tempfile

import torch

from lorarlhf import HydraModel
from lorarlhf.model.tiny import save_tiny_model


def main(model: str | None) -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as scratch:
        if model is None:
            model = str(save_tiny_model(f"{scratch}/tiny-llama"))
            print(f"built a tiny random Llama at {model}")
        hydra = HydraModel.from_pretrained(model, quantize="nf4", lora_r=16)

        print("\nweights held, in MiB (the base exists once; each role adds only its adapter and head):")
        for part, size in hydra.memory_report().items():
            print(f"  {part:<10} {size / 2**20:10.3f}")

        prompts = ["What is the capital of France?"]
        chosen, rejected = ["Paris."], ["I would rather not say."]
        with torch.no_grad():
            print("\nreward score (chosen, rejected):", hydra.score(prompts * 2, chosen + rejected).tolist())
            print("log p(chosen) actor    :", hydra.sequence_logprobs(prompts, chosen, role="actor").item())
            print("log p(chosen) reference:", hydra.sequence_logprobs(prompts, chosen, role="reference").item())
        print("actor says:", repr(hydra.generate(prompts, max_new_tokens=16, do_sample=False)[0]))

        saved = hydra.save(f"{scratch}/run")
        reloaded = HydraModel.load(saved)
        with torch.no_grad():
            same = torch.equal(reloaded.score(prompts, chosen), hydra.score(prompts, chosen))
        print(f"\nsaved to {saved} and reloaded; reward unchanged: {same}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
