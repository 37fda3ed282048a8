"""The one way prompt + response text becomes tokens, shared by every method.

Reward scores, DPO log-probs and PPO rollouts must see the same tokens for the
same text, or a reward model is trained on one tokenization and queried on
another. The rule: prompt tokens (with the tokenizer's own special prefix, e.g.
BOS, once: a prompt a chat template rendered already holds it) followed by the
response's tokens without special tokens, then EOS, because
a finished answer ends with EOS and that is what generation produces. Prompt
and response are tokenized separately so the boundary is exact: the response
mask never covers a prompt token merged across the seam.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TokenizedBatch:
    """Right-padded prompt + response token batch.

    input_ids:      (B, T) long   prompt tokens, response tokens, EOS, then padding
    attention_mask: (B, T) long   1 on real tokens, 0 on padding
    response_mask:  (B, T) bool   True on response tokens (including the EOS), the ones scored
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor

    def to(self, device: torch.device) -> TokenizedBatch:
        return TokenizedBatch(self.input_ids.to(device), self.attention_mask.to(device), self.response_mask.to(device))


def end_token_ids(tokenizer, generation_config=None) -> tuple[int, ...]:
    """Every token id that ends a response: the tokenizer's EOS and each eos_token_id of the model's
    generation_config (Llama 3 lists three: end of text, end of message, end of turn; Qwen2.5 two).

    Sampling stops on any of them, so a response is never continued past the end the model chose."""
    ids = [tokenizer.eos_token_id]
    configured = getattr(generation_config, "eos_token_id", None)
    ids += configured if isinstance(configured, list | tuple) else [configured]
    return tuple(dict.fromkeys(int(i) for i in ids if i is not None))


def prompt_token_ids(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Each prompt's ids with the tokenizer's special prefix (e.g. BOS) exactly once.

    A prompt a chat template rendered already begins with BOS (Llama 3, Gemma write it): tokenizing it with
    special tokens would put a second BOS in front, a sequence the model never sees at inference."""
    bos = tokenizer.bos_token
    return [
        tokenizer(prompt, add_special_tokens=not (bos and prompt.startswith(bos)))["input_ids"] for prompt in prompts
    ]


def _check_texts(name: str, texts) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, list | tuple):
        raise TypeError(f"{name} must be a list of strings, not {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{name}[{i}] must be a string, not {type(text).__name__}")
    return list(texts)


def encode_prompt_response(
    tokenizer, prompts: list[str], responses: list[str], *, max_length: int | None = None
) -> TokenizedBatch:
    """Tokenize pairs by the shared rule; a response too long for `max_length` is cut at the right.

    A prompt that leaves no room for even one response token is an error naming it,
    never a silent drop: dropping rows is the data loader's explicit, reported job.
    """
    prompts, responses = _check_texts("prompts", prompts), _check_texts("responses", responses)
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses; they pair up one to one")
    if not prompts:
        raise ValueError("prompts is empty; pass at least one prompt/response pair")
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token, which ends every response")
    prompt_ids = prompt_token_ids(tokenizer, prompts)
    response_ids = tokenizer(responses, add_special_tokens=False)["input_ids"]
    rows = []
    for i, (prompt, response) in enumerate(zip(prompt_ids, response_ids, strict=True)):
        if not prompt:
            raise ValueError(
                f"prompts[{i}] is empty and the tokenizer adds no BOS token, so the response's first token "
                "would have no context to be scored in"
            )
        response = response + [tokenizer.eos_token_id]
        if max_length is not None:
            room = max_length - len(prompt)
            if room < 1:
                raise ValueError(
                    f"prompts[{i}] is {len(prompt)} tokens, which leaves no room for a response within "
                    f"max_length={max_length}; shorten it or raise max_length"
                )
            response = response[:room]
        rows.append((prompt, response))
    width = max(len(p) + len(r) for p, r in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    response_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (prompt, response) in enumerate(rows):
        end = len(prompt) + len(response)
        input_ids[i, :end] = torch.tensor(prompt + response)
        attention_mask[i, :end] = 1
        response_mask[i, len(prompt) : end] = True
    return TokenizedBatch(input_ids, attention_mask, response_mask)


def encode_prompts_left_padded(tokenizer, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts for batched generation, left-padded so every row's next token is at the same column.

    Returns input_ids (B, P) and attention_mask (B, P), with the same prompt tokens as
    `encode_prompt_response`. (Decoded text does not always re-encode to the sampled response ids,
    e.g. a byte sequence cut mid-character, so RL rollouts score the sampled ids themselves.)
    """
    prompts = _check_texts("prompts", prompts)
    if not prompts:
        raise ValueError("prompts is empty; pass at least one prompt")
    prompt_ids = prompt_token_ids(tokenizer, prompts)
    width = max(len(ids) for ids in prompt_ids)
    input_ids = torch.full((len(prompt_ids), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)
    for i, ids in enumerate(prompt_ids):
        input_ids[i, width - len(ids) :] = torch.tensor(ids)
        attention_mask[i, width - len(ids) :] = 1
    return input_ids, attention_mask
