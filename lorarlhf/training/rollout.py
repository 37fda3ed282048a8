"""Rollouts: the actor samples responses to a batch of prompts, kept as token ids.

RL trains on exactly the tokens that were sampled, so a rollout keeps ids, never re-tokenized text (decoded
text does not always encode back to the same ids). Sampling is a plain KV-cache loop rather than
transformers' generate so that each prompt has its own random generator: a prompt's response depends on
its seed, not on which other prompts share the batch, and a seeded run is reproducible on CPU.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch

from lorarlhf.model.tokenization import TokenizedBatch, encode_prompts_left_padded
from lorarlhf.validation import check_int, check_number

CHECK_EVERY = 8
"""Sampling asks whether every response has ended once per this many tokens (each ask waits for the device)."""


@dataclass
class SamplingConfig:
    """How responses are sampled."""

    max_new_tokens: int = 64
    """Longest response in tokens; a response that reaches it without EOS is unfinished."""
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p (1 keeps all)."""
    top_k: int = 0
    """Keep only the k most likely tokens (0 keeps all)."""

    def __post_init__(self):
        check_int("max_new_tokens", self.max_new_tokens)
        check_number("temperature", self.temperature, low=0, hint=" (0 is greedy)")
        check_number("top_p", self.top_p, low=0, high=1, open_low=True)
        check_int("top_k", self.top_k, minimum=0, hint=" (0 disables it)")


@dataclass
class Rollout:
    """A batch of prompts and the responses sampled for them.

    prompt_ids:    (B, P) long  prompt tokens, left-padded so every response starts at column P
    prompt_mask:   (B, P) bool  True on real prompt tokens
    response_ids:  (B, R) long  sampled tokens, padded after the end token (or after max_new_tokens)
    response_mask: (B, R) bool  True on sampled tokens, the end token included
    finished:      (B,)   bool  True when the response ended with an end token (hydra.end_ids)
    prompts, responses: the decoded texts (responses without special tokens), for reward functions and logs
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    finished: torch.Tensor
    prompts: list[str]
    responses: list[str]

    def batch(self) -> TokenizedBatch:
        """Prompt + response as one (B, P + R) batch: the exact sampled tokens, scored by every role."""
        input_ids = torch.cat([self.prompt_ids, self.response_ids], dim=1)
        attention_mask = torch.cat([self.prompt_mask, self.response_mask], dim=1).long()
        response_mask = torch.cat([torch.zeros_like(self.prompt_mask), self.response_mask], dim=1)
        return TokenizedBatch(input_ids, attention_mask, response_mask)

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.response_mask.sum(1)  # (B,)


@torch.no_grad()
def generate_rollout(
    hydra, prompts: list[str], sampling: SamplingConfig, seeds: list[int], *, role: str = "actor"
) -> Rollout:
    """Sample one response per prompt as `role`, prompt i drawing its randomness from seeds[i]."""
    if len(seeds) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds; one seed per prompt")
    tokenizer, device = hydra.tokenizer, hydra.device
    prompt_ids, prompt_mask = (t.to(device) for t in encode_prompts_left_padded(hydra.chat, prompts))
    prompt_mask = prompt_mask.bool()
    generators = [torch.Generator(device="cpu").manual_seed(int(seed)) for seed in seeds]
    batch_size = prompt_ids.shape[0]
    ends, pad = torch.tensor(hydra.end_ids, device=device), tokenizer.pad_token_id  # any of them ends a response

    modes = {module: module.training for module in hydra.modules()}
    hydra.eval()  # no dropout while sampling, and the KV cache works under gradient checkpointing
    prompt_length = prompt_ids.shape[1]
    # One attention mask for the whole loop, filled a column per token (no re-built mask per token); a
    # finished row's later columns stay 0.
    attention = torch.zeros(batch_size, prompt_length + sampling.max_new_tokens, dtype=torch.long, device=device)
    attention[:, :prompt_length] = prompt_mask
    seen = attention.sum(1)  # (B,) real tokens so far; the next token's position is seen - 1 after it is added
    try:
        with hydra.role(role), hydra.merged_for_sampling():
            positions = (prompt_mask.long().cumsum(1) - 1).clamp(min=0)  # count real tokens only
            logits, cache = _step(hydra, prompt_ids, attention[:, :prompt_length], positions, None)
            tokens, alive = [], torch.ones(batch_size, dtype=torch.bool, device=device)
            for step in range(sampling.max_new_tokens):
                next_ids = _sample(logits, sampling, generators)  # (B,)
                next_ids = torch.where(alive, next_ids, torch.full_like(next_ids, pad))
                tokens.append(next_ids)
                alive_before = alive
                alive = alive & ~torch.isin(next_ids, ends)
                # "All finished?" reads a device value into Python: asked every CHECK_EVERY tokens, not every
                # token, so a GPU is not made to wait each step. The extra steps only sample padding; the
                # response is cut back to its longest row below.
                if step == sampling.max_new_tokens - 1 or (step % CHECK_EVERY == CHECK_EVERY - 1 and not alive.any()):
                    break
                attention[:, prompt_length + step] = alive_before
                seen = seen + alive_before
                positions = (seen - 1).clamp(min=0)[:, None]
                logits, cache = _step(
                    hydra, next_ids[:, None], attention[:, : prompt_length + step + 1], positions, cache
                )
    finally:
        for module, training in modes.items():
            module.training = training

    response_ids = torch.stack(tokens, dim=1)  # (B, R) with R up to CHECK_EVERY - 1 steps past the last end
    # A token is part of the response up to and including the first end token.
    is_end = torch.isin(response_ids, ends)  # (B, R); padding comes only after a row has ended
    ended_before = torch.cumsum(is_end.long(), dim=1) - is_end.long()
    response_mask = ended_before == 0
    length = max(int(response_mask.sum(1).max()), 1)  # the longest response, its end token included
    response_ids, response_mask, is_end = response_ids[:, :length], response_mask[:, :length], is_end[:, :length]
    finished = is_end.any(dim=1)
    shown = response_ids.masked_fill(~response_mask | is_end, pad)  # the text stops before the end token
    texts = tokenizer.batch_decode(shown, skip_special_tokens=True)
    return Rollout(prompt_ids, prompt_mask, response_ids, response_mask, finished, list(prompts), texts)


def _step(hydra, input_ids, attention, positions, cache):
    """One forward pass with the KV cache; returns the next-token logits (B, V) and the cache."""
    name = _cache_argument(type(hydra.causal_lm))
    output = hydra.causal_lm(
        input_ids=input_ids,
        attention_mask=attention,
        position_ids=positions,
        use_cache=True,
        logits_to_keep=1,
        **{name: cache},
    )
    return output.logits[:, -1].float(), getattr(output, name)


@functools.cache
def _cache_argument(model_class) -> str:
    """What the model's forward calls its KV cache: `cache` from transformers 5.2x on, `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def _sample(logits: torch.Tensor, sampling: SamplingConfig, generators: list[torch.Generator]) -> torch.Tensor:
    """Next token per row: greedy at temperature 0, else top-k / top-p filtered sampling with that row's generator."""
    if sampling.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / sampling.temperature
    if sampling.top_k:
        kth = torch.topk(logits, min(sampling.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if sampling.top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= sampling.top_p  # mass before this token already enough
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    # Inverse-CDF sampling with one uniform per row from that row's generator: per-prompt seeds, but only B
    # numbers cross to the device, and the draw is one batched search instead of B multinomial calls.
    uniforms = torch.stack([torch.rand((), generator=g) for g in generators]).to(probs.device)  # (B,)
    cdf = probs.cumsum(dim=-1)  # (B, V)
    picks = torch.searchsorted(cdf, (uniforms * cdf[:, -1])[:, None], right=True).squeeze(-1)
    return picks.clamp(max=probs.shape[-1] - 1)  # guards the float edge where u * total rounds up to total


def generate_in_pieces(hydra, prompts: list[str], sampling: SamplingConfig, seeds: list[int], pieces: int) -> Rollout:
    """generate_rollout over `pieces` slices of the prompts, merged into one Rollout (less memory at once).

    Each prompt samples from its own seed, so its response does not depend on how the batch was cut."""
    if pieces <= 1 or len(prompts) <= 1:
        return generate_rollout(hydra, prompts, sampling, seeds)
    size = -(-len(prompts) // pieces)  # ceil
    parts = [
        generate_rollout(hydra, prompts[i : i + size], sampling, seeds[i : i + size])
        for i in range(0, len(prompts), size)
    ]
    return merge_rollouts(parts, pad_id=hydra.tokenizer.pad_token_id)


def merge_rollouts(parts: list[Rollout], *, pad_id: int) -> Rollout:
    """Rollouts of disjoint prompt slices as one: prompts re-padded on the left, responses on the right."""
    width = max(part.prompt_ids.shape[1] for part in parts)
    length = max(part.response_ids.shape[1] for part in parts)

    def left(t, value, n):
        return torch.nn.functional.pad(t, (n - t.shape[1], 0), value=value)

    def right(t, value, n):
        return torch.nn.functional.pad(t, (0, n - t.shape[1]), value=value)

    return Rollout(
        prompt_ids=torch.cat([left(p.prompt_ids, pad_id, width) for p in parts]),
        prompt_mask=torch.cat([left(p.prompt_mask, False, width) for p in parts]),
        response_ids=torch.cat([right(p.response_ids, pad_id, length) for p in parts]),
        response_mask=torch.cat([right(p.response_mask, False, length) for p in parts]),
        finished=torch.cat([p.finished for p in parts]),
        prompts=[text for p in parts for text in p.prompts],
        responses=[text for p in parts for text in p.responses],
    )
