"""Prompt-only data for RL: `load_prompts` reads the distinct prompts of any source, preference data included,
with the other fields of each prompt's row (an `answer` to check, say), which reward functions receive."""

from __future__ import annotations

import logging

from lorarlhf.data.records import PreferenceDataError, Row, plural
from lorarlhf.data.shapes import PARSERS
from lorarlhf.data.sources import open_source

logger = logging.getLogger("lorarlhf.data")


class Prompts(list):
    """Distinct prompts (a list of str), with `.columns`: every other field of each prompt's first row, one list
    per field aligned with the prompts (None where that row lacks the field)."""

    def __init__(self, prompts, columns: dict[str, list] | None = None):
        super().__init__(prompts)
        self.columns = columns or {}


def load_prompts(source, *, tokenizer=None, split: str = "train") -> Prompts:
    """The distinct prompts of `source`, in order of first appearance: prompt-only rows or any preference shape.

    Message prompts are rendered as in load_preferences; HH-RLHF and conversational rows give their shared
    prefix. The responses of preference rows are not read. A row with a prompt field keeps its other fields
    as the prompt's columns (`Prompts.columns`), for reward functions that check an answer.
    """
    name, records = open_source(source, split)
    prompts: dict[str, dict] = {}  # prompt -> its first row's other fields, in order of first appearance
    rows = 0
    for index, (row_number, record) in enumerate(records):
        row = Row(name, row_number, index, record, tokenizer)
        rows += 1
        if row.present("prompt"):
            prompts.setdefault(row.prompt("prompt"), {k: v for k, v in dict(record).items() if k != "prompt"})
            continue
        shape = row.shape()  # raises for rows that match no shape
        if shape not in ("hh-rlhf", "conversation"):
            raise row.error("missing", field="prompt")
        pairs, _ = PARSERS[shape](row)
        prompts.setdefault(pairs[0].prompt, {})
    if not prompts:
        raise PreferenceDataError(name, "no prompts: the source has no records")
    logger.info("%s: %s -> %s", name, plural(rows, "row"), plural(len(prompts), "distinct prompt"))
    names = list(dict.fromkeys(key for fields in prompts.values() for key in fields))
    return Prompts(prompts, {key: [fields.get(key) for fields in prompts.values()] for key in names})
