"""Preference pairs from any source: `load_preferences`, its `LoadReport`, and `split_eval` for held-out prompts.

Every row becomes pairs through its shape's parser, vote records through the aggregation asked for; then
exact duplicates and pairs too long for the model are dropped, and each drop is counted in the report.
"""

from __future__ import annotations

import hashlib
import logging
import numbers
from collections.abc import Iterable
from dataclasses import dataclass, field

from lorarlhf.data.records import PreferenceDataError, PreferencePair, Row, plural
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

logger = logging.getLogger("lorarlhf.data")

AGGREGATIONS = ("majority", "bradley_terry")
DROP_REASONS = ("tie", "duplicate", "too_long")


@dataclass
class LoadReport:
    """What `load_preferences` read, made and dropped; str() is one summary line."""

    source: str
    """The source as named in errors: a file name, "records", "datasets.Dataset", or a dataset id with its split."""
    rows: int
    """Records read."""
    pairs: int
    """Pairs returned, after every drop."""
    shapes: dict[str, int] = field(default_factory=dict)
    """Rows per shape, in order of first appearance."""
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    """Dropped pairs by reason: "tie" (equal scores, split votes), "duplicate", "too_long" (over max_length)."""
    agreement: AgreementReport | None = None
    """Annotator agreement, when vote records were read."""

    def __str__(self) -> str:
        shapes = ", ".join(f"{shape} {count}" for shape, count in self.shapes.items())
        line = f"{self.source}: {plural(self.rows, 'row')}" + (f" ({shapes})" if shapes else "")
        line += f" -> {plural(self.pairs, 'pair')}"
        labels = {"tie": ("tie", "ties"), "duplicate": ("duplicate", "duplicates"), "too_long": ("too long",) * 2}
        drops = [f"{n} {labels[reason][n != 1]}" for reason, n in self.dropped.items() if n]
        line += "; dropped " + ", ".join(drops) if drops else "; nothing dropped"
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
) -> Preferences:
    """Read preference data of any supported shape from `source` into pairs, with a `.report`.

    source: a .jsonl/.json/.csv/.parquet path, a datasets.Dataset (or DatasetDict, read at `split`), a list
    of dicts, a local dataset directory or a Hugging Face dataset id (both through datasets.load_dataset).
    aggregate: how vote records become pairs, "majority" or "bradley_terry".
    weight_rankings: weight each of a K-way ranking's pairs 1/C(K,2) so every ranked prompt counts once.
    score_margin: give ratings pairs margin = score gap.
    tokenizer: renders message prompts with its chat template; with max_length, counts tokens.
    max_length: drop (and count as "too_long") a pair whose prompt + either response is longer, counted by
    the rule of lorarlhf.model.tokenization: prompt tokens + response tokens + EOS.
    """
    if aggregate not in AGGREGATIONS:
        raise ValueError(f"aggregate={aggregate!r} is not an aggregation; choose one of {AGGREGATIONS}")
    if max_length is not None:
        if tokenizer is None:
            raise ValueError("max_length needs a tokenizer to count tokens; pass tokenizer=")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length must be an int of at least 2 (a prompt token and EOS), got {max_length!r}")
    name, records = open_source(source, split)
    report = LoadReport(source=name, rows=0, pairs=0)
    slots: list[list[PreferencePair] | VoteItem] = []  # per record, in order; vote items are resolved later
    for index, (row_number, record) in enumerate(records):
        row = Row(name, row_number, index, record, tokenizer)
        shape = row.shape()
        if shape == "prompt":
            raise row.error(
                "has only a 'prompt' and no responses to prefer between; "
                "load prompt-only data for RL with load_prompts()"
            )
        report.rows += 1
        report.shapes[shape] = report.shapes.get(shape, 0) + 1
        if shape == "votes":
            slots.append(parse_votes(row))
            continue
        pairs, ties = PARSERS[shape](row, weight_rankings=weight_rankings, score_margin=score_margin)
        report.dropped["tie"] += ties
        slots.append(pairs)

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
    if not pairs:
        raise PreferenceDataError(name, f"no usable preference pairs ({report})")
    logger.info("%s", report)
    return Preferences(pairs, report)


def split_eval(
    pairs: list[PreferencePair], eval_fraction: float, *, seed: int = 0
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(train, eval): a held-out split by prompt, so no prompt is on both sides.

    eval_fraction is the fraction of distinct prompts held out (rounded, and at least 1 and at most all but
    one when it is above 0). Which prompts are held out depends only on the prompt texts and `seed`, through
    a hash, so the split is the same across runs, machines and row orders. Both sides keep the input order.
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

    def key(prompt: str) -> str:
        return hashlib.sha256(f"{seed}\0{prompt}".encode("utf-8", "surrogatepass")).hexdigest()

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
    from lorarlhf.model.tokenization import prompt_token_ids  # lazy: it loads torch, which reading needs not

    prompt_tokens: dict[str, int] = {}
    response_tokens: dict[str, int] = {}

    def length(prompt: str, response: str) -> int:
        # The rule of lorarlhf.model.tokenization: prompt with special tokens, response without, then EOS.
        if prompt not in prompt_tokens:
            prompt_tokens[prompt] = len(prompt_token_ids(tokenizer, [prompt])[0])
        if response not in response_tokens:
            response_tokens[response] = len(tokenizer(response, add_special_tokens=False)["input_ids"])
        return prompt_tokens[prompt] + response_tokens[response] + 1

    fitting = []
    for pair in kept:
        if max(length(pair.prompt, pair.chosen), length(pair.prompt, pair.rejected)) > max_length:
            report.dropped["too_long"] += 1
        else:
            fitting.append(pair)
    return fitting
