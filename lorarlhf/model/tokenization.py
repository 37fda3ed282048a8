"""Batches of token ids, built by the one rendering rule (lorarlhf.model.chat) every method shares.

Reward scores, DPO log-probs and PPO rollouts must see the same tokens for the same text, or a reward model
is trained on one tokenization and queried on another. Prompt and response ids come from `ChatFormat`
separately, so the boundary is exact: the response mask never covers a prompt token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lorarlhf.model.chat import ChatFormat, as_prompt


@dataclass
class TokenizedBatch:
    """Right-padded prompt + response token batch.

    input_ids:      (B, T) long   prompt tokens, response tokens (through EOS / end of turn), padding
    attention_mask: (B, T) long   1 on real tokens, 0 on padding
    response_mask:  (B, T) bool   True on response tokens (including the EOS), the ones scored
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor

    def to(self, device: torch.device) -> TokenizedBatch:
        return TokenizedBatch(self.input_ids.to(device), self.attention_mask.to(device), self.response_mask.to(device))


def end_token_ids(tokenizer, generation_config=None) -> tuple[int, ...]:
    """Every token id that ends a response (see `ChatFormat.end_ids`); sampling stops on any of them."""
    return (
        ChatFormat.of(tokenizer).end_ids
        if generation_config is None
        else ChatFormat(tokenizer, generation_config=generation_config).end_ids
    )


def prompt_token_ids(chat, prompts: list) -> list[list[int]]:
    """Each prompt's ids by the rendering rule of `chat` (a ChatFormat, or a tokenizer: its "auto" rule)."""
    chat = ChatFormat.of(chat)
    return [chat.prompt_ids(prompt) for prompt in prompts]


def _check_texts(name: str, texts, *, conversations: bool = False) -> list:
    what = "strings or conversations (lists of messages)" if conversations else "strings"
    if isinstance(texts, str) or not isinstance(texts, list | tuple):
        raise TypeError(f"{name} must be a list of {what}, not {type(texts).__name__}")
    checked = []
    for i, text in enumerate(texts):
        if conversations and isinstance(text, list | tuple):
            try:
                text = as_prompt(text)
            except (TypeError, ValueError) as error:
                raise TypeError(f"{name}[{i}]: {error}") from error
        elif not isinstance(text, str):
            raise TypeError(
                f"{name}[{i}] must be a string{' or a list of messages' * conversations}, not {type(text).__name__}"
            )
        checked.append(text)
    return checked


def encode_prompt_response(
    chat, prompts: list, responses: list[str], *, max_length: int | None = None
) -> TokenizedBatch:
    """Tokenize pairs by the shared rule; a response too long for `max_length` is cut at the right.

    A prompt that leaves no room for even one response token is an error naming it,
    never a silent drop: dropping rows is the data loader's explicit, reported job.
    """
    chat = ChatFormat.of(chat)
    prompts = _check_texts("prompts", prompts, conversations=True)
    responses = _check_texts("responses", responses)
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses; they pair up one to one")
    if not prompts:
        raise ValueError("prompts is empty; pass at least one prompt/response pair")
    tokenizer = chat.tokenizer
    prompt_ids = prompt_token_ids(chat, prompts)
    response_ids = [chat.response_ids(prompt, response) for prompt, response in zip(prompts, responses, strict=True)]
    rows = []
    for i, (prompt, response) in enumerate(zip(prompt_ids, response_ids, strict=True)):
        if not prompt:
            raise ValueError(
                f"prompts[{i}] is empty and the tokenizer adds no BOS token, so the response's first token "
                "would have no context to be scored in"
            )
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


def encode_prompts_left_padded(chat, prompts: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts for batched generation, left-padded so every row's next token is at the same column.

    Returns input_ids (B, P) and attention_mask (B, P), with the same prompt tokens as
    `encode_prompt_response`. (Decoded text does not always re-encode to the sampled response ids,
    e.g. a byte sequence cut mid-character, so RL rollouts score the sampled ids themselves.)
    """
    chat = ChatFormat.of(chat)
    prompts = _check_texts("prompts", prompts, conversations=True)
    if not prompts:
        raise ValueError("prompts is empty; pass at least one prompt")
    prompt_ids = prompt_token_ids(chat, prompts)
    tokenizer = chat.tokenizer
    width = max(len(ids) for ids in prompt_ids)
    input_ids = torch.full((len(prompt_ids), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)
    for i, ids in enumerate(prompt_ids):
        input_ids[i, width - len(ids) :] = torch.tensor(ids)
        attention_mask[i, width - len(ids) :] = 1
    return input_ids, attention_mask
