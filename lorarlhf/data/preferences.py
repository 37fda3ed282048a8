"""Preference pairs from any source: `load_preferences`, its `LoadReport`, and `split_eval` for held-out prompts.

Every row is renamed by `columns=`, a hub layout's rows are turned into our shapes (lorarlhf.data.layouts),
and every record becomes pairs through its shape's parser, vote records through the aggregation asked for;
then exact duplicates and pairs too long for the model are dropped, and each drop is counted in the report.
"""

from __future__ import annotations

import hashlib
import json
import logging
import numbers
from collections.abc import Iterable
from dataclasses import dataclass, field

from lorarlhf.data.layouts import read_layouts
from lorarlhf.data.records import BadRow, BadRows, PreferenceDataError, PreferencePair, Row, plural
from lorarlhf.data.shapes import PARSERS
from lorarlhf.data.sources import open_source
from lorarlhf.data.votes import (
    AgreementReport,
    VoteItem,
    agreement,
    bradley_terry_pairs,
    majority,
    merge_vote_items,
    parse_votes,
)
from lorarlhf.model.chat import ChatFormat, jsonable

logger = logging.getLogger("lorarlhf.data")

AGGREGATIONS = ("majority", "bradley_terry")
DROP_REASONS = ("tie", "duplicate", "too_long", "unpaired", "multi_turn")
_DROP_WORDS = {  # reason -> (one, many) in the summary line
    "tie": ("tie", "ties"),
    "duplicate": ("duplicate", "duplicates"),
    "too_long": ("too long", "too long"),
    "unpaired": ("unpaired", "unpaired"),
    "multi_turn": ("multi-turn battle", "multi-turn battles"),
}


@dataclass
class LoadReport:
    """What `load_preferences` read, made and dropped; str() is one summary line."""

    source: str
    """The source as named in errors: a file name, "records", "datasets.Dataset", or a dataset id with its split."""
    rows: int
    """Rows read."""
    pairs: int
    """Pairs returned, after every drop."""
    shapes: dict[str, int] = field(default_factory=dict)
    """Records per shape, in order of first appearance (a hub layout's rows become records of a shape)."""
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    """Dropped by reason: "tie" (equal scores, split votes, a tie verdict), "duplicate", "too_long" (over
    max_length), "unpaired" (a prompt with one rated response, or only thumbs up or only down), "multi_turn"
    (an arena battle whose conversations differ before the last turn)."""
    agreement: AgreementReport | None = None
    """Annotator agreement, when vote records were read."""
    layouts: dict[str, int] = field(default_factory=dict)
    """Rows per hub layout (lorarlhf.data.layouts), when the source is one."""
    bad_rows: list[BadRow] = field(default_factory=list)
    """Rows skipped with skip_bad_rows=True, each with its reason (empty otherwise: a bad row raises)."""

    @property
    def skipped(self) -> int:
        """Bad rows skipped (skip_bad_rows=True)."""
        return len(self.bad_rows)

    def __str__(self) -> str:
        shapes = ", ".join(f"{shape} {count}" for shape, count in self.shapes.items())
        if self.layouts:
            shapes = ", ".join(f"{layout} {n}" for layout, n in self.layouts.items()) + f" as {shapes or 'nothing'}"
        line = f"{self.source}: {plural(self.rows, 'row')}" + (f" ({shapes})" if shapes else "")
        line += f" -> {plural(self.pairs, 'pair')}"
        drops = [f"{n} {_DROP_WORDS[reason][n != 1]}" for reason, n in self.dropped.items() if n]
        line += "; dropped " + ", ".join(drops) if drops else "; nothing dropped"
        if self.skipped:
            line += f"; skipped {plural(self.skipped, 'bad row')}"
        if self.agreement is not None:
            line += f"; {self.agreement}"
        return line


class Preferences(list):
    """A list of PreferencePair with the LoadReport of how it was read, as `.report`."""

    def __init__(self, pairs: Iterable[PreferencePair] = (), report: LoadReport | None = None):
        super().__init__(pairs)
        self.report = report


def load_preferences(
    source,
    *,
    aggregate: str = "majority",
    weight_rankings: bool = False,
    score_margin: bool = False,
    tokenizer=None,
    max_length: int | None = None,
    split: str = "train",
    columns: dict[str, str] | None = None,
    prefer_by: str | None = None,
    skip_bad_rows: bool = False,
) -> Preferences:
    """Read preference data of any supported shape or hub layout from `source` into pairs, with a `.report`.

    source: a .jsonl/.json/.csv/.parquet path, a datasets.Dataset (or DatasetDict, read at `split`), a list
    of dicts, a local dataset directory or a Hugging Face dataset id (both through datasets.load_dataset).
    split: the split of a DatasetDict or hub id, e.g. "train_prefs" for HuggingFaceH4/ultrafeedback_binarized.
    columns: our field names -> the data's, for a layout we do not know, e.g. {"prompt": "question"}.
    prefer_by: what orders a hub layout's responses when it has several (lorarlhf.data.layouts.PREFER_BY):
    "fine-grained_score" for UltraFeedback, "safer_response_id" for PKU-SafeRLHF, a HelpSteer attribute.
    skip_bad_rows: skip a bad row (counted, and kept with its reason in report.bad_rows) instead of stopping.
    aggregate: how vote records become pairs, "majority" or "bradley_terry".
    weight_rankings: weight each of a K-way ranking's pairs 1/C(K,2) so every ranked prompt counts once.
    score_margin: give ratings pairs margin = score gap.
    tokenizer: a tokenizer or a lorarlhf.model.chat.ChatFormat: on a chat model an HH transcript is read as
    messages; with max_length, counts tokens as lorarlhf.model.chat renders them.
    max_length: drop (and count as "too_long") a pair whose prompt + either response is longer in tokens.
    """
    if aggregate not in AGGREGATIONS:
        raise ValueError(f"aggregate={aggregate!r} is not an aggregation; choose one of {AGGREGATIONS}")
    if max_length is not None:
        if tokenizer is None:
            raise ValueError("max_length needs a tokenizer to count tokens; pass tokenizer=")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length must be an int of at least 2 (a prompt token and EOS), got {max_length!r}")
    name, records = open_source(source, split)
    tokenizer = None if tokenizer is None else ChatFormat.of(tokenizer)  # one rule, its renderings cached
    bad = BadRows(skip_bad_rows)
    read = read_layouts(
        name, records, tokenizer=tokenizer, purpose="preferences", bad=bad, prefer_by=prefer_by, columns=columns
    )
    report = LoadReport(source=name, rows=0, pairs=0, layouts=read.layouts, bad_rows=bad.rows)
    slots: list[list[PreferencePair] | VoteItem] = []  # per record, in order; vote items are resolved later
    for index, item in enumerate(read.items):
        with bad.guard(item.number, item.raw):
            row = Row(name, item.number, index, item.record, tokenizer)
            shape = row.shape()
            if shape == "prompt":
                raise row.error(
                    "has only a 'prompt' and no responses to prefer between; "
                    "load prompt-only data for RL with load_prompts()"
                )
            if shape == "votes":
                slots.append(parse_votes(row))
            else:
                pairs, ties = PARSERS[shape](row, weight_rankings=weight_rankings, score_margin=score_margin)
                report.dropped["tie"] += ties
                slots.append(pairs)
            report.shapes[shape] = report.shapes.get(shape, 0) + 1
    report.rows = read.rows  # counted as the rows were read
    for reason, n in read.dropped.items():
        report.dropped[reason] += n

    items = merge_vote_items([slot for slot in slots if isinstance(slot, VoteItem)])
    if items:
        resolved = majority(items) if aggregate == "majority" else bradley_terry_pairs(items)
        report.dropped["tie"] += sum(pair is None for pair in resolved.values())
        slots = [[resolved.get(id(s))] if isinstance(s, VoteItem) else s for s in slots]
        report.agreement = agreement(items)

    pairs = _drop_duplicates_and_long(
        [p for slot in slots for p in slot if p is not None], report, tokenizer=tokenizer, max_length=max_length
    )
    report.pairs = len(pairs)
    if not pairs and "unpaired-labels" in report.layouts:
        raise PreferenceDataError(
            name,
            f"no usable preference pairs ({report}): this is unpaired-label (KTO) data, prompt + completion + "
            "label, and no prompt has both a thumbs-up and a thumbs-down completion to pair; read it with "
            "lorarlhf.data.load_feedback() (load_demonstrations() gives its thumbs-up completions for SFT)",
        )
    if not pairs:
        raise PreferenceDataError(name, f"no usable preference pairs ({report})")
    logger.info("%s", report)
    return Preferences(pairs, report)


def split_eval(
    pairs: list[PreferencePair], eval_fraction: float, *, seed: int = 0
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(train, eval): a held-out split by prompt, so no prompt is on both sides.

    eval_fraction is the fraction of distinct prompts held out (rounded, and at least 1 and at most all but
    one when it is above 0). Which prompts are held out depends only on the prompts as the data gives them
    (text, or messages: never a rendering, which a template writing today's date would change) and `seed`,
    through a hash, so the split is the same across runs, days, machines and row orders. Both sides keep the
    input order.
    """
    if isinstance(eval_fraction, bool) or not isinstance(eval_fraction, numbers.Real) or not 0 <= eval_fraction < 1:
        raise ValueError(f"eval_fraction must be a number in [0, 1), got {eval_fraction!r}")
    if eval_fraction == 0:
        return list(pairs), []
    prompts = list(dict.fromkeys(pair.prompt for pair in pairs))
    if len(prompts) < 2:
        raise ValueError(
            f"eval_fraction={eval_fraction} needs at least 2 distinct prompts to hold some out without leaking "
            f"a prompt into both sides; the pairs have {len(prompts)}"
        )
    n_eval = min(max(1, round(eval_fraction * len(prompts))), len(prompts) - 1)

    def key(prompt) -> str:
        data = prompt if isinstance(prompt, str) else json.dumps(jsonable(prompt), ensure_ascii=False)
        return hashlib.sha256(f"{seed}\0{data}".encode("utf-8", "surrogatepass")).hexdigest()

    held_out = set(sorted(prompts, key=key)[:n_eval])
    return [p for p in pairs if p.prompt not in held_out], [p for p in pairs if p.prompt in held_out]


# ---------------------------------------------------------------------------------------------------------
# Dropping: exact duplicates, then pairs too long for the model


def _drop_duplicates_and_long(
    pairs: list[PreferencePair], report: LoadReport, *, tokenizer, max_length: int | None
) -> list[PreferencePair]:
    seen: set[tuple[str, str, str]] = set()
    kept = []
    for pair in pairs:
        key = (pair.prompt, pair.chosen, pair.rejected)
        if key in seen:
            report.dropped["duplicate"] += 1  # the first copy is kept, with its weight and margin
            continue
        seen.add(key)
        kept.append(pair)
    if max_length is None:
        return kept
    chat = ChatFormat.of(tokenizer)

    def length(prompt, response: str) -> int:  # the ids lorarlhf.model.chat gives the model
        return len(chat.prompt_ids(prompt)) + len(chat.response_ids(prompt, response))

    fitting = []
    for pair in kept:
        if max(length(pair.prompt, pair.chosen), length(pair.prompt, pair.rejected)) > max_length:
            report.dropped["too_long"] += 1
        else:
            fitting.append(pair)
    return fitting
