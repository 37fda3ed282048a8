"""Unpaired labels: one completion judged good or bad on its own (thumbs up / down), the data KTO trains on.

KTO (Ethayarajh et al. 2024) learns from such labels without pairing them; TRL's layout is prompt,
completion, label (trl-lib/kto-mix-14k), and argilla's KTO sets add a system prompt, which becomes the
Conversation's first message. `load_feedback` gives them typed (methods/kto.py trains on them), and the
other loaders read the same rows without learning a thumbs-down completion: load_demonstrations keeps the
thumbs-up ones, load_preferences pairs each thumbs-up with each thumbs-down completion of the same prompt.
The other way round, `thumbs` splits preference pairs (and so aggregated votes, which are pairs) into a
thumbs up for each chosen answer and a thumbs down for each rejected one, and `is_feedback` tells the two
kinds of source apart by their first row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from lorarlhf.data.columns import rename
from lorarlhf.data.layouts import read_layouts
from lorarlhf.data.records import BadRows, PreferenceDataError, PreferencePair, Row, plural
from lorarlhf.data.sources import open_source
from lorarlhf.model.chat import ChatFormat, Conversation

logger = logging.getLogger("lorarlhf.data")


@dataclass(frozen=True)
class Feedback:
    """A completion to `prompt`, labelled desirable (True, thumbs up) or undesirable (False)."""

    prompt: str | Conversation
    completion: str
    label: bool


class FeedbackList(list):
    """A list of Feedback, with `.bad_rows`: the rows skipped with skip_bad_rows=True (records.BadRow)."""

    def __init__(self, items=(), bad_rows: list | None = None):
        super().__init__(items)
        self.bad_rows = bad_rows or []


def load_feedback(
    source,
    *,
    tokenizer=None,
    split: str = "train",
    columns: dict[str, str] | None = None,
    skip_bad_rows: bool = False,
) -> FeedbackList:
    """The unpaired-label rows of `source` (prompt, completion, label) as Feedback, in order, duplicates kept
    (a completion labelled twice is two judgements). Sources and options as in load_preferences."""
    name, records = open_source(source, split)
    tokenizer = None if tokenizer is None else ChatFormat.of(tokenizer)
    bad = BadRows(skip_bad_rows)
    read = read_layouts(name, records, tokenizer=tokenizer, purpose="feedback", bad=bad, columns=columns)
    items = []
    for index, item in enumerate(read.items):
        with bad.guard(item.number, item.raw):
            row = Row(name, item.number, index, item.record, tokenizer)
            if item.layout != "unpaired-labels":
                raise row.error(
                    f"fields {sorted(map(str, item.record))} are not unpaired labels: load_feedback reads prompt, "
                    "completion, label (true/false) rows; read pairs with load_preferences()"
                )
            items.append(Feedback(row.prompt("prompt"), row.response("completion"), row.record["label"]))
    if not items:
        raise PreferenceDataError(name, "no feedback: the source has no usable rows")
    up = sum(item.label for item in items)
    logger.info("%s: %s (%d thumbs up, %d down)", name, plural(len(items), "labelled completion"), up, len(items) - up)
    return FeedbackList(items, bad.rows)


FEEDBACK_FIELDS = ("prompt", "completion", "label")


def is_feedback(source, *, split: str = "train", columns: dict[str, str] | None = None) -> bool:
    """Whether `source` holds unpaired labels (its first row, renamed by `columns`, has prompt, completion and
    label) rather than preferences; a list of Feedback is, a list of PreferencePairs is not."""
    if isinstance(source, list | tuple) and source and not isinstance(source[0], dict):
        return isinstance(source[0], Feedback)
    name, records = open_source(source, split)
    first = next(iter(records), None)
    if first is None or not isinstance(first[1], dict):
        return False
    record = rename(name, first[0], first[1], columns)
    return all(record.get(field) is not None for field in FEEDBACK_FIELDS)


def thumbs(pairs: list[PreferencePair]) -> list[Feedback]:
    """Each pair as two unpaired labels: its chosen answer a thumbs up, its rejected one a thumbs down."""
    return [item for p in pairs for item in (Feedback(p.prompt, p.chosen, True), Feedback(p.prompt, p.rejected, False))]
