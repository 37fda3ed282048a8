"""Prompt-only data for RL: `load_prompts` reads the distinct prompts of any source, preference data included."""

from __future__ import annotations

import logging

from lorarlhf.data.records import PreferenceDataError, Row, plural
from lorarlhf.data.shapes import PARSERS
from lorarlhf.data.sources import open_source

logger = logging.getLogger("lorarlhf.data")


def load_prompts(source, *, tokenizer=None, split: str = "train") -> list[str]:
    """The distinct prompts of `source`, in order of first appearance: prompt-only rows or any preference shape.

    Message prompts are rendered as in load_preferences; HH-RLHF and conversational rows give their shared
    prefix. The responses of preference rows are not read.
    """
    name, records = open_source(source, split)
    prompts: dict[str, None] = {}  # an ordered set
    rows = 0
    for index, (row_number, record) in enumerate(records):
        row = Row(name, row_number, index, record, tokenizer)
        rows += 1
        if row.present("prompt"):
            prompts.setdefault(row.prompt("prompt"))
            continue
        shape = row.shape()  # raises for rows that match no shape
        if shape not in ("hh-rlhf", "conversation"):
            raise row.error("missing", field="prompt")
        pairs, _ = PARSERS[shape](row)
        prompts.setdefault(pairs[0].prompt)
    if not prompts:
        raise PreferenceDataError(name, "no prompts: the source has no records")
    logger.info("%s: %s -> %s", name, plural(rows, "row"), plural(len(prompts), "distinct prompt"))
    return list(prompts)
