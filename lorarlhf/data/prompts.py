"""Prompt-only data for RL: `load_prompts` reads the distinct prompts of any source, preference data included,
with the other fields of each prompt's row (an `answer` to check, say), which reward functions receive."""

from __future__ import annotations

import logging

from lorarlhf.data.layouts import read_layouts
from lorarlhf.data.records import BadRows, PreferenceDataError, Row, plural
from lorarlhf.data.shapes import PARSERS
from lorarlhf.data.sources import open_source
from lorarlhf.model.chat import ChatFormat

logger = logging.getLogger("lorarlhf.data")


class Prompts(list):
    """Distinct prompts (strings or Conversations), with `.columns`: every other field of each prompt's first
    row, one list per field aligned with the prompts (None where that row lacks the field)."""

    def __init__(self, prompts, columns: dict[str, list] | None = None, bad_rows: list | None = None):
        super().__init__(prompts)
        self.columns = columns or {}
        self.bad_rows = bad_rows or []
        """Rows skipped with skip_bad_rows=True (records.BadRow), each with its reason."""


def load_prompts(
    source,
    *,
    tokenizer=None,
    split: str = "train",
    columns: dict[str, str] | None = None,
    prefer_by: str | None = None,
    skip_bad_rows: bool = False,
) -> Prompts:
    """The distinct prompts of `source`, in order of first appearance: prompt-only rows or any preference shape.

    Message prompts stay Conversations, as in load_preferences; HH-RLHF and conversational rows give their shared
    prefix. The responses of preference rows are not read. A row with a prompt field keeps its other fields
    as the prompt's columns (`Prompts.columns`), for reward functions that check an answer. Hub layouts,
    `columns`, `split` and `skip_bad_rows` work as in load_preferences.
    """
    name, records = open_source(source, split)
    tokenizer = None if tokenizer is None else ChatFormat.of(tokenizer)
    bad = BadRows(skip_bad_rows)
    read = read_layouts(
        name, records, tokenizer=tokenizer, purpose="prompts", bad=bad, prefer_by=prefer_by, columns=columns
    )
    prompts: dict = {}  # prompt -> its first row's other fields, in order of first appearance
    for index, item in enumerate(read.items):
        with bad.guard(item.number, item.raw):
            row = Row(name, item.number, index, item.record, tokenizer)
            if row.present("prompt"):
                prompts.setdefault(row.prompt("prompt"), {k: v for k, v in item.record.items() if k != "prompt"})
                continue
            shape = row.shape()  # raises for rows that match no shape
            if shape not in ("hh-rlhf", "conversation"):
                raise row.error("missing", field="prompt")
            pairs, _ = PARSERS[shape](row)
            prompts.setdefault(pairs[0].prompt, {})
    if not prompts:
        raise PreferenceDataError(name, "no prompts: the source has no records")
    skipped = f", skipped {plural(len(bad.rows), 'bad row')}" if bad.rows else ""
    logger.info("%s: %s -> %s%s", name, plural(read.rows, "row"), plural(len(prompts), "distinct prompt"), skipped)
    names = list(dict.fromkeys(key for fields in prompts.values() for key in fields))
    return Prompts(prompts, {key: [fields.get(key) for fields in prompts.values()] for key in names}, bad.rows)
