"""Demonstrations for supervised fine-tuning: (prompt, completion) examples of the behaviour wanted.

SFT data ships as TRL's prompt-completion records, as chat transcripts, or not at all, when the user has
preference data: then the preferred answers are the demonstrations (InstructGPT fine-tunes on
demonstrations before learning a reward; DPO papers fine-tune on the chosen answers first).

    prompt-completion   prompt, completion (or response)    the prompt may be a message list
    messages            messages: [{"role", "content"}, ...] the last assistant turn(s) are the completion
    preferences         any shape load_preferences reads     each prompt's winning answers (chosen, never rejected)

Hub layouts are read as load_preferences reads them, except where a layout rates answers one at a time:
HelpSteer gives each prompt's best response only when it is rated at least layouts.SFT_MIN_RATING, and
unpaired-label (KTO) data only its thumbs-up completions. An answer rated low is never learnt.
Errors name the source, row and field, as in lorarlhf.data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from lorarlhf.data.layouts import read_layouts
from lorarlhf.data.preferences import load_preferences
from lorarlhf.data.records import BadRows, PreferenceDataError, PreferencePair, Row
from lorarlhf.data.sources import open_source
from lorarlhf.model.chat import ChatFormat, Conversation

logger = logging.getLogger("lorarlhf.data.demonstrations")

COMPLETION_FIELDS = ("completion", "response")


@dataclass(frozen=True)
class Demonstration:
    """A prompt and the completion the model should learn to write."""

    prompt: str | Conversation
    completion: str


class Demonstrations(list):
    """A list of Demonstration, with `.bad_rows`: the rows skipped with skip_bad_rows=True (records.BadRow)."""

    def __init__(self, demos=(), bad_rows: list | None = None):
        super().__init__(demos)
        self.bad_rows = bad_rows or []


def load_demonstrations(
    source,
    *,
    tokenizer=None,
    max_length: int | None = None,
    split: str = "train",
    columns: dict[str, str] | None = None,
    prefer_by: str | None = None,
    skip_bad_rows: bool = False,
) -> Demonstrations:
    """Read demonstrations from `source` (any source load_preferences reads), dropping exact duplicates.

    A source whose first record is not a demonstration is read as preference data and gives the answers
    that won: each pair's chosen response unless the same record also ranks it below another one.
    max_length (with tokenizer): drop, and log the count of, demonstrations longer than that in tokens.
    split, columns, prefer_by, skip_bad_rows: as in load_preferences.
    """
    name, records = open_source(source, split)
    tokenizer = None if tokenizer is None else ChatFormat.of(tokenizer)
    bad = BadRows(skip_bad_rows)
    options = dict(prefer_by=prefer_by, columns=columns)
    read = read_layouts(name, records, tokenizer=tokenizer, purpose="demonstrations", bad=bad, **options)
    demos = []
    for index, item in enumerate(read.items):
        if index == 0 and not _is_demonstration(item.record):  # preference data: the answers that won
            prefs = load_preferences(source, tokenizer=tokenizer, split=split, skip_bad_rows=skip_bad_rows, **options)
            return _fit(Demonstrations(winners(prefs), prefs.report.bad_rows), name, tokenizer, max_length)
        with bad.guard(item.number, item.raw):
            row = Row(name, item.number, index, item.record, tokenizer)
            if not _is_demonstration(item.record):
                raise row.error(
                    f"fields {sorted(map(str, item.record))} are not a demonstration; every row of a demonstration "
                    "source needs prompt + completion (or response), or messages"
                )
            demos.append(_parse(row))
    if read.rows == 0:
        raise PreferenceDataError(name, "no demonstrations: the source has no records")
    drops = ", ".join(f"{n} {reason}" for reason, n in read.dropped.items())
    if drops:
        logger.info("%s: not learnt: %s", name, drops)
    if not demos:
        raise PreferenceDataError(name, f"no usable demonstrations ({drops or 'every row skipped'})")
    return _fit(Demonstrations(dict.fromkeys(demos), bad.rows), name, tokenizer, max_length)


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
        return Demonstration(Conversation(messages[:cut]), row.assistant_text("messages", messages[cut:]))
    both = [name for name in COMPLETION_FIELDS if row.present(name)]
    if len(both) > 1:
        raise row.error("has both 'completion' and 'response'; give the answer once", field="response")
    return Demonstration(row.prompt("prompt"), row.response(both[0]))


def _fit(demos: Demonstrations, name: str, tokenizer, max_length: int | None) -> Demonstrations:
    if max_length is not None and tokenizer is not None:
        chat = ChatFormat.of(tokenizer)

        def length(demo: Demonstration) -> int:  # the ids lorarlhf.model.chat gives the model
            return len(chat.prompt_ids(demo.prompt)) + len(chat.response_ids(demo.prompt, demo.completion))

        kept = Demonstrations([demo for demo in demos if length(demo) <= max_length], demos.bad_rows)
        if len(kept) < len(demos):
            logger.warning(
                "%s: dropped %d demonstrations longer than max_length=%d", name, len(demos) - len(kept), max_length
            )
        demos = kept
    if not demos:
        raise PreferenceDataError(name, f"no usable demonstrations (all longer than max_length={max_length})")
    logger.info("%s: %d demonstrations", name, len(demos))
    return demos
