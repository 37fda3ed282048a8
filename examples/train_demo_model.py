"""Pretrain the demo's tiny Llama on the review world, from scratch, and save it as the bundled model.

python examples/train_demo_model.py            # writes lorarlhf/demo/model/ (a few minutes on 2 CPU cores)
python examples/train_demo_model.py --force    # rebuild over the bundled model

The model learns the world's reviews with their 50/50 sentiment, so sampled at temperature 1 it writes
about as many negative reviews as positive ones: the starting point that `lorarlhf demo` aligns.
Pretraining is plain next-token prediction (causal LM loss on every token of
`<s> prompt review </s>`), tokenized by the same rule lorarlhf uses everywhere.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from lorarlhf.demo.world import (
    PROMPTS,
    corpus,
    gold_sentiment,
    is_well_formed,
    prompt_product,
    word_tokenizer,
)
from lorarlhf.model.loading import DEMO_MODEL_DIR
from lorarlhf.model.tokenization import encode_prompt_response


def demo_config(vocab_size: int) -> LlamaConfig:
    """~0.2M parameters: enough for the world's grammar; hidden 64 so every weight row is one NF4 block."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,  # a prompt is <= 7 tokens and a review <= 16 words + </s>
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warmup, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def sample_reviews(model, tokenizer, n: int, seed: int, max_new_tokens: int = 24) -> list[tuple[str, str, bool]]:
    """(prompt, review, ended with </s>) for `n` prompts cycled over the world, sampled at temperature 1."""
    torch.manual_seed(seed)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n)]
    inputs = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=True, temperature=1.0, top_k=0)
    new = output[:, inputs["input_ids"].shape[1] :]
    ended = (new == tokenizer.eos_token_id).any(dim=1).tolist()
    texts = tokenizer.batch_decode(new, skip_special_tokens=True)
    return list(zip(prompts, texts, ended, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEMO_MODEL_DIR, help="where to save the model and tokenizer")
    parser.add_argument("--seed", type=int, default=0, help="seeds the corpus, the initial weights and the batches")
    parser.add_argument("--steps", type=int, default=2000, help="optimizer steps of --batch-size reviews each")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument("--force", action="store_true", help="write into a non-empty --out")
    args = parser.parse_args()
    if args.out.exists() and any(args.out.iterdir()) and not args.force:
        sys.exit(f"{args.out} is not empty; pass --force to overwrite the model there")

    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    tokenizer = word_tokenizer()
    model = LlamaForCausalLM(demo_config(len(tokenizer)))
    print(f"{sum(p.numel() for p in model.parameters()):,} parameters, vocabulary {len(tokenizer)}")

    # Every step sees fresh reviews: the world is far larger than what training reads, so nothing repeats much.
    pairs = corpus(args.steps * args.batch_size, seed=args.seed)
    batch = encode_prompt_response(tokenizer, [p for p, _ in pairs], [r for _, r in pairs])
    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)  # no loss on padding
    order = list(range(len(pairs)))
    random.Random(args.seed).shuffle(order)

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    model.train()
    start, running = time.perf_counter(), 0.0
    for step in range(args.steps):
        rows = torch.tensor(order[step * args.batch_size : (step + 1) * args.batch_size])
        width = int(batch.attention_mask[rows].sum(dim=1).max())  # trim the batch's all-padding columns
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, warmup=100)
        loss = model(
            input_ids=batch.input_ids[rows, :width],
            attention_mask=batch.attention_mask[rows, :width],
            labels=labels[rows, :width],
        ).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        running += loss.item()
        if (step + 1) % 100 == 0:
            print(f"step {step + 1:5d}  loss {running / 100:.3f}  {time.perf_counter() - start:6.1f}s", flush=True)
            running = 0.0
    model.eval()
    print(f"trained {args.steps} steps in {time.perf_counter() - start:.1f}s")

    samples = sample_reviews(model, tokenizer, n=256, seed=args.seed)
    positive = sum(gold_sentiment(text) == 1.0 for _, text, _ in samples) / len(samples)
    negative = sum(gold_sentiment(text) == 0.0 for _, text, _ in samples) / len(samples)
    formed = sum(end and is_well_formed(text, prompt_product(p)) for p, text, end in samples) / len(samples)
    for prompt, text, _ in samples[:8]:
        print(f"  {prompt} {text}")
    print(f"sampled at temperature 1: {positive:.0%} positive, {negative:.0%} negative, {formed:.0%} well formed")

    # Sampling at temperature 1 over the whole vocabulary is what the model was fitted to and what RL rollouts do.
    model.generation_config = GenerationConfig(
        bos_token_id=1, eos_token_id=2, pad_token_id=0, do_sample=True, temperature=1.0, top_k=0, max_new_tokens=24
    )
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    tokenizer.save_pretrained(args.out)
    # transformers 5 records its own class name, which transformers 4 cannot resolve; both load the generic one.
    config_path = args.out / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text())
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    print(f"saved to {args.out}")


if __name__ == "__main__":
    main()
