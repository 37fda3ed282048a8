"""Demonstrations for supervised fine-tuning: (prompt, completion) examples of the behaviour wanted.

SFT data ships as TRL's prompt-completion records, as chat transcripts, or not at all, when the user has
preference data: then the preferred answers are the demonstrations (InstructGPT fine-tunes on
demonstrations before learning a reward; DPO papers fine-tune on the chosen answers first).

    prompt-completion   prompt, completion (or response)    the prompt may be a message list
    messages            messages: [{"role", "content"}, ...] the last assistant turn(s) are the completion
    preferences         any shape load_preferences reads     each prompt's winning answers (chosen, never rejected)

Errors name the source, row and field, as in lorarlhf.data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from lorarlhf.data import PreferenceDataError, PreferencePair, Row, load_preferences, open_source, render_prompt

logger = logging.getLogger("lorarlhf.data.demonstrations")

COMPLETION_FIELDS = ("completion", "response")


@dataclass(frozen=True)
class Demonstration:
    """A prompt and the completion the model should learn to write."""

    prompt: str
    completion: str


def load_demonstrations(source, *, tokenizer=None, max_length: int | None = None, split: str = "train"):
    """Read demonstrations from `source` (any source load_preferences reads), dropping exact duplicates.

    A source whose first record is not a demonstration is read as preference data and gives the answers
    that won: each pair's chosen response unless the same record also ranks it below another one.
    max_length (with tokenizer): drop, and log the count of, demonstrations longer than that in tokens.
    """
    name, records = open_source(source, split)
    records = iter(records)
    first = next(records, None)
    if first is None:
        raise PreferenceDataError(name, "no demonstrations: the source has no records")
    if not (isinstance(first[1], dict) and _is_demonstration(first[1])):
        return _fit(winners(load_preferences(source, tokenizer=tokenizer, split=split)), name, tokenizer, max_length)
    demos = []
    for index, (number, record) in enumerate([first, *records]):
        row = Row(name, number, index, record, tokenizer)
        if not _is_demonstration(record):
            raise row.error(
                f"fields {sorted(map(str, record))} are not a demonstration; every row of a demonstration source "
                "needs prompt + completion (or response), or messages"
            )
        demos.append(_parse(row))
    return _fit(list(dict.fromkeys(demos)), name, tokenizer, max_length)


def winners(pairs: list[PreferencePair]) -> list[Demonstration]:
    """The preferred answers as demonstrations: chosen in some pair of a record and rejected in none of it."""
    beaten = {(pair.group, pair.prompt, pair.rejected) for pair in pairs}
    demos = [Demonstration(p.prompt, p.chosen) for p in pairs if (p.group, p.prompt, p.chosen) not in beaten]
    return list(dict.fromkeys(demos))


def _is_demonstration(record: dict) -> bool:
    return any(record.get(name) is not None for name in (*COMPLETION_FIELDS, "messages"))


def _parse(row: Row) -> Demonstration:
    if row.present("messages"):
        for name in ("prompt", *COMPLETION_FIELDS):
            if row.present(name):
                raise row.error(f"has both 'messages' and {name!r}; a demonstration is one or the other", name)
        messages = row.messages("messages", row.entries("messages"))
        cut = len(messages)
        while cut > 0 and messages[cut - 1]["role"] == "assistant":
            cut -= 1
        if cut == len(messages):
            raise row.error("the last message must be the assistant's answer to learn", field="messages")
        if cut == 0:
            raise row.error("holds only assistant messages; the answer needs a prompt before it", field="messages")
        return Demonstration(
            render_prompt(messages[:cut], row.tokenizer), row.assistant_text("messages", messages[cut:])
        )
    both = [name for name in COMPLETION_FIELDS if row.present(name)]
    if len(both) > 1:
        raise row.error("has both 'completion' and 'response'; give the answer once", field="response")
    return Demonstration(row.prompt("prompt"), row.response(both[0]))


def _fit(demos: list[Demonstration], name: str, tokenizer, max_length: int | None) -> list[Demonstration]:
    if max_length is not None and tokenizer is not None:
        from lorarlhf.model.tokenization import prompt_token_ids  # lazy: it loads torch, which reading needs not

        # The rule of lorarlhf.model.tokenization: prompt with special tokens, completion without, then EOS.
        def length(demo: Demonstration) -> int:
            prompt = prompt_token_ids(tokenizer, [demo.prompt])[0]
            return len(prompt) + len(tokenizer(demo.completion, add_special_tokens=False)["input_ids"]) + 1

        kept = [demo for demo in demos if length(demo) <= max_length]
        if len(kept) < len(demos):
            logger.warning(
                "%s: dropped %d demonstrations longer than max_length=%d", name, len(demos) - len(kept), max_length
            )
        demos = kept
    if not demos:
        raise PreferenceDataError(name, f"no usable demonstrations (all longer than max_length={max_length})")
    logger.info("%s: %d demonstrations", name, len(demos))
    return demos
