"""Verifiable rewards for GRPO and PPO: answer checks, a format check, a length penalty, and a weighted sum.

Each is a reward function as `align(..., reward_fn=...)` takes it, in TRL's convention:
fn(prompts, completions, **columns) -> list[float], where columns are the other fields of the prompts' rows
(GSM8K's `answer`, say), one list each aligned with the prompts.

    lorarlhf.align(model, "gsm8k.jsonl", method="grpo",
                   reward_fn=lorarlhf.rewards.weighted((numeric_answer, 1.0), (format_match(r"####"), 0.1)))
"""

from __future__ import annotations

import re
from collections.abc import Callable

from lorarlhf.training.rewards import columns_for
from lorarlhf.validation import check_int

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def final_answer(text: str) -> str | None:
    """The answer a text ends with: after its last "####" (GSM8K), else in its last \\boxed{...}, else its
    last number; None when it has none."""
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip()
        return tail.splitlines()[0].strip() if tail else None
    boxed = _BOXED.findall(text)
    if boxed:
        return boxed[-1].strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def _as_number(answer: str | None) -> float | None:
    if answer is None:
        return None
    found = _NUMBER.search(answer.replace("$", ""))
    try:
        return float(found.group().replace(",", "")) if found else None
    except ValueError:
        return None


def numeric_answer(prompts: list[str], completions: list[str], answer: list, **_) -> list[float]:
    """1 where the completion's final number equals the reference answer's (GSM8K "... #### 42", a boxed
    answer, or a plain number), else 0."""
    rewards = []
    for completion, reference in zip(completions, answer, strict=True):
        got, wanted = _as_number(final_answer(completion)), _as_number(final_answer(str(reference)))
        rewards.append(float(got is not None and wanted is not None and abs(got - wanted) < 1e-6))
    return rewards


def exact_answer(prompts: list[str], completions: list[str], answer: list, **_) -> list[float]:
    """1 where the completion's final answer equals the reference's as text (spacing and case aside), else 0."""

    def norm(text: str | None) -> str | None:
        return None if text is None else " ".join(text.split()).casefold().rstrip(".")

    return [
        float(norm(final_answer(c)) is not None and norm(final_answer(c)) == norm(final_answer(str(r)) or str(r)))
        for c, r in zip(completions, answer, strict=True)
    ]


def format_match(pattern: str) -> Callable:
    """A reward of 1 for completions in which the regular expression `pattern` is found, else 0."""
    compiled = re.compile(pattern, re.DOTALL)

    def format_reward(prompts: list[str], completions: list[str], **_) -> list[float]:
        return [float(compiled.search(completion) is not None) for completion in completions]

    format_reward.__name__ = f"format_match({pattern!r})"
    return format_reward


def length_penalty(max_words: int) -> Callable:
    """0 for completions of at most `max_words` words, else minus the excess as a share of max_words."""
    check_int("max_words", max_words)

    def length_reward(prompts: list[str], completions: list[str], **_) -> list[float]:
        return [-max(0, len(completion.split()) - max_words) / max_words for completion in completions]

    length_reward.__name__ = f"length_penalty({max_words})"
    return length_reward


def weighted(*terms: tuple[Callable, float]) -> Callable:
    """One reward function: the weighted sum of `terms` ((fn, weight) pairs), each given the columns it takes."""
    if not terms or not all(isinstance(t, tuple) and len(t) == 2 and callable(t[0]) for t in terms):
        raise TypeError("weighted() takes (reward function, weight) pairs, at least one")

    def weighted_reward(prompts: list[str], completions: list[str], **columns) -> list[float]:
        total = [0.0] * len(completions)
        for fn, weight in terms:
            values = fn(prompts, completions, **columns_for(fn, columns))
            total = [t + float(weight) * float(v) for t, v in zip(total, values, strict=True)]
        return total

    weighted_reward.terms = terms  # so align() checks each term's columns before the model loads
    weighted_reward.__name__ = "weighted(" + ", ".join(f"{getattr(f, '__name__', f)}*{w}" for f, w in terms) + ")"
    return weighted_reward
