"""Human-preference data in every common shape, read into one list of (prompt, chosen, rejected) pairs.

Reward models and DPO train on pairs, but preference data ships in many shapes, and one file may mix them:

    pair          prompt, chosen, rejected                       TRL's explicit-prompt format
    hh-rlhf       chosen, rejected                               Anthropic HH-RLHF (Bai et al. 2022): whole
                                                                 "\\n\\nHuman: ...\\n\\nAssistant: ..." transcripts
    conversation  chosen, rejected as message lists              TRL's implicit-prompt conversational format
    ranking       prompt, responses, ranks (1 = best)            InstructGPT (Ouyang et al. 2022) K-way rankings,
                  or prompt, ranking (responses best first)      each giving all C(K, 2) pairs
    ratings       prompt, responses, scores (higher is better)   UltraFeedback (Cui et al. 2023)
    votes         prompt, a, b, votes ("a"/"b"/"tie" each)       raw annotator judgements
    prompt        prompt                                         prompt-only data for RL (`load_prompts`)

`load_preferences` detects each row's shape from its fields and turns it into pairs; what it read and
dropped (ties, duplicates, pairs too long for the model) is in the returned list's `.report`. Bad input
is a `PreferenceDataError` naming the source, the 1-based row and the field: a silently skipped row is a
silently different training set.

Votes are aggregated by majority or by a Bradley-Terry fit per prompt (Bradley & Terry 1952; fitted by
Newton's method on the log-likelihood with a Gaussian prior, the regularised cousin of Hunter's 2004 MM
algorithm), and their agreement is summarised by Fleiss' kappa (Fleiss 1971). Vote records of one prompt and
the same two responses are one item with their votes pooled, so a log of one record per vote (what
`lorarlhf label` writes) reads the same as one record per item; an annotator's last vote on an item counts.

Any text field may instead hold a list of {"role", "content"} messages. A prompt is rendered with the
tokenizer's chat template when it has one, else as "role: content" lines ending in "assistant:"; a
response is the text of its assistant message(s).

CSV convention: an empty cell is an absent field. List fields (responses, ranking, ranks, scores, votes,
annotators) hold JSON arrays, e.g. `["good", "bad"]` and `[1, 2]`. A text field (prompt, chosen, rejected,
a, b) is read as messages only when the whole cell is a JSON array of objects with a "role"; any other
cell is kept verbatim as text.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import numbers
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np

logger = logging.getLogger("lorarlhf.data")

SUPPORTED_EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")
AGGREGATIONS = ("majority", "bradley_terry")
VOTE_LABELS = ("a", "b", "tie")
DROP_REASONS = ("tie", "duplicate", "too_long")
HH_ASSISTANT = "\n\nAssistant:"
SHAPES = {  # shape -> the fields that make it; quoted in errors for rows that match none
    "pair": "prompt, chosen, rejected",
    "hh-rlhf": "chosen, rejected (transcripts sharing a prefix that ends in '\\n\\nAssistant:')",
    "conversation": "chosen, rejected (message lists sharing their leading messages)",
    "ranking": "prompt, responses, ranks (1 = best); or prompt, ranking (responses best first)",
    "ratings": "prompt, responses, scores (higher is better)",
    "votes": "prompt, a, b, votes ('a'/'b'/'tie', one per annotator), optional annotators",
    "prompt": "prompt (only for load_prompts)",
}
# Fields whose presence decides the shape. A row with signature fields of two shapes is ambiguous.
_SIGNATURES = {
    "votes": ("votes", "a", "b"),
    "ranking": ("ranks", "ranking"),
    "ratings": ("scores",),
    "pair": ("chosen", "rejected"),
}
_CSV_LIST_FIELDS = ("responses", "ranking", "ranks", "scores", "votes", "annotators")
_CSV_TEXT_FIELDS = ("prompt", "chosen", "rejected", "a", "b")
_MOST_DISPUTED = 5


class PreferenceDataError(ValueError):
    """Bad preference data, named by where it is: "<source>, row <n>, field '<name>': <problem>"."""

    def __init__(self, source: str, problem: str, *, row: int | None = None, field: str | None = None):
        where = source + (f", row {row}" if row is not None else "") + (f", field '{field}'" if field else "")
        super().__init__(f"{where}: {problem}")
        self.source, self.row, self.field, self.problem = source, row, field, problem


@dataclass(frozen=True)
class PreferencePair:
    """One human preference: `chosen` is the better response to `prompt` than `rejected`."""

    prompt: str
    """The prompt text, rendered (chat template or plain fallback) when the data gave messages."""
    chosen: str
    """The preferred response's text."""
    rejected: str
    """The other response's text."""
    weight: float = 1.0
    """Loss weight: 1/C(K,2) for a K-way ranking with weight_rankings=True, vote confidence for votes."""
    margin: float | None = None
    """Known preference strength, when the data has one: score gap (score_margin=True) or BT log-odds."""
    group: int | None = None
    """0-based index of the source record; pairs from one ranking or ratings record share it."""
    utility: str | None = None
    """The record's "utility" field (e.g. "open"/"closed") for the prompt-aware ranking objective, else None."""


@dataclass(frozen=True)
class DisputedItem:
    """A vote record whose annotators disagreed."""

    row: int
    """1-based row of the record in its source."""
    prompt: str
    a: str
    b: str
    votes: dict[str, int]
    """Votes per label: {"a": n, "b": n, "tie": n}."""
    agreement: float
    """Fraction of this item's annotator pairs that agree (Fleiss' P_i); lower is more disputed."""


@dataclass(frozen=True)
class AnnotatorAgreement:
    """One named annotator: how many votes, and how often another annotator voted the same on the same item."""

    name: str
    votes: int
    compared: int
    """Pairs of (this vote, another annotator's vote on the same item)."""
    agreement: float | None
    """Fraction of those pairs with the same label; None when nobody else voted on this annotator's items."""


@dataclass(frozen=True)
class AnnotatorPair:
    """Two named annotators over the items both voted on."""

    first: str
    second: str
    shared: int
    """Items both voted on."""
    agreement: float
    """Fraction of those items where their votes match."""


@dataclass(frozen=True)
class AgreementReport:
    """How much the annotators of vote records agreed (categories a / b / tie)."""

    fleiss_kappa: float | None
    """Fleiss' kappa over items with at least 2 votes; None when there are none, or all votes share one label."""
    mean_pairwise_agreement: float | None
    """Mean over those items of the fraction of annotator pairs that agree (Fleiss' P-bar)."""
    items: int
    """Items voted on: records of one prompt and the same two responses are one item, their votes pooled."""
    rated_items: int
    """Vote records with at least 2 votes: the ones kappa and agreement are computed over."""
    votes: int
    """Votes read, over all records."""
    annotators: int | None
    """Distinct annotator names over the records that list them; None when no record does."""
    most_disputed: tuple[DisputedItem, ...] = ()
    """Up to 5 items with the most even split, most disputed first; unanimous items never appear."""
    per_annotator: tuple[AnnotatorAgreement, ...] = ()
    """Named annotators in alphabetical order."""
    annotator_pairs: tuple[AnnotatorPair, ...] = ()
    """Every two named annotators who voted on a common item, in alphabetical order."""

    def __str__(self) -> str:
        if self.fleiss_kappa is None and self.mean_pairwise_agreement is None:
            return f"votes on {_plural(self.items, 'item')}, none with 2 or more votes to measure agreement"
        kappa = "undefined" if self.fleiss_kappa is None else f"{self.fleiss_kappa:.2f}"
        return (
            f"annotator agreement: Fleiss' kappa {kappa}, pairwise {self.mean_pairwise_agreement:.2f} "
            f"over {_plural(self.rated_items, 'item')}"
        )


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
        line = f"{self.source}: {_plural(self.rows, 'row')}" + (f" ({shapes})" if shapes else "")
        line += f" -> {_plural(self.pairs, 'pair')}"
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


# ---------------------------------------------------------------------------------------------------------
# Public entry points


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
    name, records = _open_source(source, split)
    report = LoadReport(source=name, rows=0, pairs=0)
    slots: list[list[PreferencePair] | _VoteItem] = []  # per record, in order; vote items are resolved later
    for index, (row_number, record) in enumerate(records):
        row = _Row(name, row_number, index, record, tokenizer)
        shape = row.shape()
        if shape == "prompt":
            raise row.error(
                "has only a 'prompt' and no responses to prefer between; "
                "load prompt-only data for RL with load_prompts()"
            )
        report.rows += 1
        report.shapes[shape] = report.shapes.get(shape, 0) + 1
        if shape == "votes":
            slots.append(_parse_votes(row))
            continue
        pairs, ties = _PARSERS[shape](row, weight_rankings=weight_rankings, score_margin=score_margin)
        report.dropped["tie"] += ties
        slots.append(pairs)

    items = _merge_vote_items([slot for slot in slots if isinstance(slot, _VoteItem)])
    if items:
        resolved = _majority(items) if aggregate == "majority" else _bradley_terry_pairs(items)
        report.dropped["tie"] += sum(pair is None for pair in resolved.values())
        slots = [[resolved.get(id(s))] if isinstance(s, _VoteItem) else s for s in slots]
        report.agreement = _agreement(items)

    pairs = _drop_duplicates_and_long(
        [p for slot in slots for p in slot if p is not None], report, tokenizer=tokenizer, max_length=max_length
    )
    report.pairs = len(pairs)
    if not pairs:
        raise PreferenceDataError(name, f"no usable preference pairs ({report})")
    logger.info("%s", report)
    return Preferences(pairs, report)


def load_prompts(source, *, tokenizer=None, split: str = "train") -> list[str]:
    """The distinct prompts of `source`, in order of first appearance: prompt-only rows or any preference shape.

    Message prompts are rendered as in load_preferences; HH-RLHF and conversational rows give their shared
    prefix. The responses of preference rows are not read.
    """
    name, records = _open_source(source, split)
    prompts: dict[str, None] = {}  # an ordered set
    rows = 0
    for index, (row_number, record) in enumerate(records):
        row = _Row(name, row_number, index, record, tokenizer)
        rows += 1
        if row.present("prompt"):
            prompts.setdefault(row.prompt("prompt"))
            continue
        shape = row.shape()  # raises for rows that match no shape
        if shape not in ("hh-rlhf", "conversation"):
            raise row.error("missing", field="prompt")
        pairs, _ = _PARSERS[shape](row)
        prompts.setdefault(pairs[0].prompt)
    if not prompts:
        raise PreferenceDataError(name, "no prompts: the source has no records")
    logger.info("%s: %s -> %s", name, _plural(rows, "row"), _plural(len(prompts), "distinct prompt"))
    return list(prompts)


def vote_agreement(source, *, split: str = "train") -> AgreementReport:
    """How much the annotators of `source` agree: its vote records (other rows are not read), pooled per item.

    Unlike load_preferences it reports even when every item is a tie or a single vote; a source with no
    vote records is an error.
    """
    name, records = _open_source(source, split)
    items = []
    for index, (row_number, record) in enumerate(records):
        row = _Row(name, row_number, index, record, None)
        if row.shape() == "votes":
            items.append(_parse_votes(row))
    if not items:
        raise PreferenceDataError(name, "no vote records (prompt, a, b, votes) to measure agreement on")
    return _agreement(_merge_vote_items(items))


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


def bradley_terry(comparisons, n_players: int, *, prior: float = 1.0, max_iter: int = 100, tol: float = 1e-10):
    """Bradley-Terry log-strengths s (shape (n_players,)), with P(i beats j) = sigmoid(s_i - s_j).

    comparisons: (winner, loser) or (winner, loser, weight) index tuples; a tie is two half wins, (i, j, 0.5)
    and (j, i, 0.5). Maximises  sum_w weight * log sigmoid(s_winner - s_loser) - prior/2 * |s|^2,  i.e. a
    Normal(0, 1/prior) prior on each log-strength, which keeps unanimous comparisons finite and fixes the
    free offset (the strengths sum to 0). The objective is strictly concave, so Newton's method with
    backtracking converges to its one maximum; the result is deterministic. Players that never play get 0.
    """
    if isinstance(n_players, bool) or not isinstance(n_players, numbers.Integral) or n_players < 1:
        raise ValueError(f"n_players must be a positive int, got {n_players!r}")
    if not prior > 0:
        raise ValueError(f"prior must be > 0 so every strength stays finite, got {prior!r}")
    wins = np.zeros((n_players, n_players))  # wins[i, j]: weighted wins of i over j
    for k, comparison in enumerate(comparisons):
        if len(comparison) not in (2, 3):
            raise ValueError(f"comparisons[{k}] must be (winner, loser) or (winner, loser, weight), got {comparison}")
        winner, loser, weight = (*comparison, 1.0) if len(comparison) == 2 else comparison
        for role, player in (("winner", winner), ("loser", loser)):
            if isinstance(player, bool) or not isinstance(player, numbers.Integral) or not 0 <= player < n_players:
                raise ValueError(f"comparisons[{k}]: {role} {player!r} is not a player index in [0, {n_players})")
        if winner == loser:
            raise ValueError(f"comparisons[{k}]: player {winner} cannot play itself")
        if not (isinstance(weight, numbers.Real) and math.isfinite(weight) and weight >= 0):
            raise ValueError(f"comparisons[{k}]: weight must be a finite number >= 0, got {weight!r}")
        wins[winner, loser] += weight
    games = wins + wins.T

    def objective(s: np.ndarray) -> float:
        diff = s[:, None] - s[None, :]
        return float(-(wins * np.logaddexp(0.0, -diff)).sum() - prior / 2 * s @ s)

    s = np.zeros(n_players)
    for _ in range(max_iter):
        p = 0.5 * (1.0 + np.tanh((s[:, None] - s[None, :]) / 2))  # sigmoid(s_i - s_j), overflow-free
        grad = (wins - games * p).sum(axis=1) - prior * s
        curvature = games * p * (1 - p)
        hessian = curvature - np.diag(curvature.sum(axis=1)) - prior * np.eye(n_players)  # negative definite
        step = np.linalg.solve(hessian, -grad)
        # Backtracking (Armijo): a full Newton step can overshoot where sigmoid is flat.
        t, start, slope = 1.0, objective(s), float(grad @ step)
        while objective(s + t * step) < start + 1e-4 * t * slope and t > 1e-10:
            t /= 2
        s = s + t * step
        # The likelihood ignores a common shift and the prior is least at mean 0, so the maximum has mean 0;
        # re-centring removes the drift a weak prior leaves along that nearly flat direction.
        s -= s.mean()
        if np.max(np.abs(t * step)) < tol:
            break
    return s


def fleiss_kappa(counts) -> float:
    """Fleiss' kappa for items rated into categories: counts[i][j] = raters who put item i in category j.

    Items may have different numbers of raters (at least 2 each). kappa = (P_bar - P_e) / (1 - P_e), with
    P_i = (sum_j n_ij^2 - n_i) / (n_i (n_i - 1)) the agreeing rater pairs of item i, P_bar their mean, and
    P_e = sum_j p_j^2 for the overall category proportions p_j. NaN when P_e = 1 (one category used).
    """
    n = np.asarray(counts, dtype=float)
    if n.ndim != 2 or n.shape[0] == 0:
        raise ValueError(f"counts must be a non-empty (items, categories) table, got shape {n.shape}")
    if (n < 0).any():
        raise ValueError("counts must not be negative")
    raters = n.sum(axis=1)
    if (raters < 2).any():
        raise ValueError(f"every item needs at least 2 ratings; item {int(np.argmax(raters < 2))} has fewer")
    p_bar = float(np.mean(_pairwise_agreement(n)))
    p_e = float(((n.sum(axis=0) / raters.sum()) ** 2).sum())
    if math.isclose(p_e, 1.0):
        return float("nan")
    return (p_bar - p_e) / (1 - p_e)


def _pairwise_agreement(n: np.ndarray) -> np.ndarray:
    raters = n.sum(axis=1)
    return ((n**2).sum(axis=1) - raters) / (raters * (raters - 1))


# ---------------------------------------------------------------------------------------------------------
# Reading sources: each yields (1-based row number, record)


def _open_source(source, split: str) -> tuple[str, Iterator[tuple[int, object]]]:
    datasets = sys.modules.get("datasets")  # a Dataset argument means datasets is already imported
    if datasets is not None:
        if isinstance(source, datasets.DatasetDict | datasets.IterableDatasetDict):
            if split not in source:
                raise ValueError(f"the DatasetDict has no split {split!r}; its splits are {list(source)}")
            return f"datasets.DatasetDict[{split}]", enumerate(source[split], 1)
        if isinstance(source, datasets.Dataset | datasets.IterableDataset):
            return "datasets.Dataset", enumerate(source, 1)
    if isinstance(source, list | tuple):
        return "records", enumerate(source, 1)
    if isinstance(source, str | os.PathLike):
        path = Path(source).expanduser()
        if path.is_file():
            return path.name, _read_file(path)
        if path.is_dir():
            return f"{path.name}[{split}]", _load_dataset(str(path), split)
        if isinstance(source, os.PathLike) or _looks_like_path(source):
            raise FileNotFoundError(f"preference data file not found: {source}")
        return f"{source}[{split}]", _load_dataset(source, split)
    raise TypeError(
        f"source must be a path, a list of dicts, a datasets.Dataset or a dataset id, not {type(source).__name__}"
    )


def _looks_like_path(name: str) -> bool:
    """A missing local file, not a Hub id: Hub ids are "name" or "owner/name", never a data-file name."""
    return (
        name.lower().endswith(SUPPORTED_EXTENSIONS)
        or name.startswith((".", "/", "~"))
        or name.count("/") > 1
        or "\\" in name
    )


def _load_dataset(name: str, split: str) -> Iterator[tuple[int, object]]:
    import datasets  # lazy: importing it costs seconds, and only these sources need it

    return enumerate(datasets.load_dataset(name, split=split), 1)


def _read_file(path: Path) -> Iterator[tuple[int, object]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return read_jsonl(path)
    if suffix == ".json":
        return _read_json(path)
    if suffix == ".csv":
        return _read_csv(path)
    if suffix == ".parquet":
        import pyarrow.parquet  # lazy, like datasets

        return enumerate(pyarrow.parquet.read_table(path).to_pylist(), 1)
    raise PreferenceDataError(
        path.name,
        f"unsupported file type {suffix or '(no extension)'!r}; supported files are "
        f"{', '.join(SUPPORTED_EXTENSIONS)}, or pass a datasets.Dataset, a list of dicts, "
        "a local dataset directory or a Hugging Face dataset id",
    )


def read_jsonl(path: Path, *, error=PreferenceDataError) -> Iterator[tuple[int, object]]:
    """(line number, record) per non-blank line; a line that is not UTF-8 JSON raises `error` naming it."""
    with path.open("rb") as lines:  # bytes: only b"\n" ends a line, and a bad byte is named by its line
        for number, raw in enumerate(lines, 1):
            try:
                line = raw.decode("utf-8-sig")  # -sig: a byte-order mark some editors write is not data
            except UnicodeDecodeError as problem:
                raise error(path.name, f"not UTF-8 text ({problem})", row=number) from problem
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as problem:
                raise error(path.name, f"not valid JSON ({problem})", row=number) from problem


def _read_json(path: Path) -> Iterator[tuple[int, object]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as error:
        raise PreferenceDataError(path.name, f"not UTF-8 text ({error})") from error
    except json.JSONDecodeError as error:
        raise PreferenceDataError(path.name, f"not valid JSON ({error})") from error
    if isinstance(data, dict):
        key = next((k for k in ("data", "train") if isinstance(data.get(k), list)), None)
        if key is None:
            raise PreferenceDataError(
                path.name,
                f"a JSON object must hold its records as a list under 'data' or 'train'; its keys are {list(data)}",
            )
        data = data[key]
    if not isinstance(data, list):
        raise PreferenceDataError(path.name, f"expected a JSON array of records, got {type(data).__name__}")
    return enumerate(data, 1)


def _read_csv(path: Path) -> Iterator[tuple[int, object]]:
    """Rows are data rows, 1 = the first after the header. Cells become fields by the CSV convention above."""
    # utf-8-sig: spreadsheet programs start their CSV with a byte-order mark, which would rename column 1.
    with path.open(encoding="utf-8-sig", newline="") as file:
        try:
            for number, cells in enumerate(csv.DictReader(file), 1):
                yield number, _csv_record(path.name, number, cells)
        except UnicodeDecodeError as error:  # decoded in blocks, so the row is not known
            raise PreferenceDataError(path.name, f"not UTF-8 text ({error})") from error


def _csv_record(source: str, number: int, cells: dict) -> dict:
    record = {}
    for name, cell in cells.items():
        if name is None:
            raise PreferenceDataError(source, "has more cells than the header has columns", row=number)
        if cell is None or cell == "":
            continue  # an empty cell is an absent field: mixed-shape files leave other shapes' cells empty
        if name in _CSV_LIST_FIELDS:
            try:
                cell = json.loads(cell)
            except json.JSONDecodeError as error:
                raise PreferenceDataError(
                    source, f"a CSV list cell must hold a JSON array, got {cell!r}", row=number, field=name
                ) from error
        elif name in _CSV_TEXT_FIELDS and cell.lstrip().startswith("["):
            cell = _csv_messages(cell)
        record[name] = cell
    return record


def _csv_messages(cell: str):
    """The messages in a cell that is a JSON array of {"role", ...} objects, else the cell's text unchanged."""
    try:
        value = json.loads(cell)
    except json.JSONDecodeError:
        return cell
    if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m for m in value):
        return value
    return cell


# ---------------------------------------------------------------------------------------------------------
# One record: shape detection and typed field access, every error naming source, row and field


class _Row:
    def __init__(self, source: str, number: int, index: int, record, tokenizer):
        self.source, self.number, self.index, self.tokenizer = source, number, index, tokenizer
        if not isinstance(record, dict):
            raise self.error(f"a record must be an object with named fields, got {type(record).__name__}")
        self.record = record

    def error(self, problem: str, field: str | None = None) -> PreferenceDataError:
        return PreferenceDataError(self.source, problem, row=self.number, field=field)

    def present(self, name: str) -> bool:
        return self.record.get(name) is not None

    def shape(self) -> str:
        found = {s: [f for f in fields if self.present(f)] for s, fields in _SIGNATURES.items()}
        found = {s: fields for s, fields in found.items() if fields}
        if len(found) > 1:
            clash = "; ".join(f"{s} ({', '.join(fields)})" for s, fields in found.items())
            raise self.error(f"has fields of more than one record shape: {clash}; a row must be one shape")
        if found:
            shape = next(iter(found))
            if shape != "pair" or self.present("prompt"):
                return shape
            return "conversation" if isinstance(self.record.get("chosen"), list | tuple) else "hh-rlhf"
        if self.present("responses"):
            raise self.error("responses need 'ranks' (1 = best) or 'scores' (higher is better)", field="responses")
        if self.present("prompt"):
            return "prompt"
        shapes = "; ".join(f"{s}: {fields}" for s, fields in SHAPES.items())
        raise self.error(f"fields {sorted(map(str, self.record))} match no record shape; the shapes are {shapes}")

    def get(self, name: str):
        if not self.present(name):
            raise self.error("missing", field=name)
        return self.record[name]

    def entries(self, name: str, *, min_len: int = 1) -> list:
        value = self.get(name)
        if not isinstance(value, list | tuple):
            raise self.error(f"must be a list, got {type(value).__name__}", field=name)
        if not value:
            raise self.error("empty (a list of no entries)", field=name)
        if len(value) < min_len:
            raise self.error(f"needs at least {min_len} entries, got {len(value)}", field=name)
        return list(value)

    def prompt(self, name: str) -> str:
        value = self.get(name)
        if isinstance(value, list | tuple):
            return _render_prompt(self.messages(name, value), self.tokenizer)
        return self.text(name, value)

    def response(self, name: str, value=None) -> str:
        value = self.get(name) if value is None else value
        if isinstance(value, list | tuple):
            return self.assistant_text(name, self.messages(name, value))
        return self.text(name, value)

    def text(self, name: str, value) -> str:
        if not isinstance(value, str):
            raise self.error(f"must be a string or a list of messages, got {type(value).__name__}", field=name)
        if not value.strip():
            raise self.error("empty", field=name)
        return value

    def messages(self, name: str, value) -> list[dict]:
        if not value:
            raise self.error("empty (a list of no messages)", field=name)
        for i, message in enumerate(value):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise self.error(f"message {i} must be an object with a 'role' and a 'content'", field=name)
            if not isinstance(message.get("content"), str):
                got = type(message.get("content")).__name__
                raise self.error(f"message {i} needs a string 'content', got {got}", field=name)
        return list(value)

    def assistant_text(self, name: str, messages: list[dict]) -> str:
        """A response given as messages: its assistant message(s), joined by newlines."""
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                raise self.error(
                    f"a response given as messages holds only assistant messages; message {i} is {message['role']!r}",
                    field=name,
                )
        return self.text(name, "\n".join(m["content"] for m in messages))

    def utility(self) -> str | None:
        if not self.present("utility"):
            return None
        value = self.record["utility"]
        if not isinstance(value, str):
            raise self.error(f"must be a string, got {type(value).__name__}", field="utility")
        return value

    def pair(self, prompt: str, chosen: str, rejected: str, **extra) -> PreferencePair:
        return PreferencePair(prompt, chosen, rejected, group=self.index, utility=self.utility(), **extra)


def _render_prompt(messages: list[dict], tokenizer) -> str:
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # No template: a plain rendering that still shows who said what and that the assistant speaks next.
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"


# ---------------------------------------------------------------------------------------------------------
# Shapes -> pairs. Each parser returns (pairs, ties dropped).


def _parse_pair(row: _Row, **_) -> tuple[list[PreferencePair], int]:
    prompt, chosen, rejected = row.prompt("prompt"), row.response("chosen"), row.response("rejected")
    if chosen == rejected:
        raise row.error("same text as 'chosen'; a pair needs two different responses", field="rejected")
    return [row.pair(prompt, chosen, rejected)], 0


def _parse_hh(row: _Row, **_) -> tuple[list[PreferencePair], int]:
    """The prompt is the shared prefix through its last "\\n\\nAssistant:"; the rest are the responses.

    The space after "Assistant:" stays with the response: BPE tokenizers attach it to the first word
    (" Paris"), and prompt + response is then exactly the transcript.
    """
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if not isinstance(rejected, str):
        got = type(rejected).__name__
        raise row.error(f"without a 'prompt', chosen and rejected must both be transcripts, got {got}", "rejected")
    chosen, rejected = row.text("chosen", chosen), row.text("rejected", rejected)
    if chosen == rejected:
        raise row.error("same text as 'chosen'; a pair needs two different responses", field="rejected")
    shared = len(os.path.commonprefix([chosen, rejected]))
    cut = chosen.rfind(HH_ASSISTANT, 0, shared)
    if cut < 0:
        raise row.error(
            "without a 'prompt' field, chosen and rejected must be HH-RLHF transcripts sharing a prefix that ends "
            "in '\\n\\nAssistant:' (or message lists sharing their leading messages)",
            field="chosen",
        )
    cut += len(HH_ASSISTANT)
    prompt = chosen[:cut]
    return [row.pair(prompt, row.text("chosen", chosen[cut:]), row.text("rejected", rejected[cut:]))], 0


def _parse_conversation(row: _Row, **_) -> tuple[list[PreferencePair], int]:
    """TRL's implicit prompt: the shared leading messages are the prompt, the final assistant turns the responses."""
    chosen = row.messages("chosen", row.get("chosen"))
    rejected = row.get("rejected")
    if not isinstance(rejected, list | tuple):
        got = type(rejected).__name__
        raise row.error(f"chosen is a message list, so rejected must be one too, got {got}", field="rejected")
    rejected = row.messages("rejected", rejected)
    if chosen == rejected:
        raise row.error("same messages as 'chosen'; a pair needs two different responses", field="rejected")
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    while shared > 0 and chosen[shared - 1]["role"] == "assistant":
        shared -= 1  # a shared start of the answer belongs to the answer: the prompt ends where the assistant begins
    if shared == 0:
        raise row.error(
            "chosen and rejected share no leading non-assistant messages to use as the prompt; add a 'prompt' field",
            field="chosen",
        )
    prompt = _render_prompt(chosen[:shared], row.tokenizer)
    return [
        row.pair(
            prompt, row.assistant_text("chosen", chosen[shared:]), row.assistant_text("rejected", rejected[shared:])
        )
    ], 0


def _parse_ranking(row: _Row, *, weight_rankings: bool = False, **_) -> tuple[list[PreferencePair], int]:
    prompt = row.prompt("prompt")
    if row.present("ranking"):
        if row.present("responses") or row.present("ranks"):
            raise row.error("give either 'ranking' (best first) or 'responses' with 'ranks', not both", "ranking")
        name = "ranking"
        order = row.entries(name, min_len=2)  # best first
    else:
        name = "responses"
        responses = row.entries(name, min_len=2)
        ranks = row.entries("ranks")
        if len(ranks) != len(responses):
            raise row.error(f"{len(ranks)} ranks for {len(responses)} responses", field="ranks")
        k = len(responses)
        if not all(_is_integer(r) for r in ranks) or sorted(int(r) for r in ranks) != list(range(1, k + 1)):
            raise row.error(f"must be a permutation of 1..{k} (1 = best), got {ranks}", field="ranks")
        order = [responses[i] for i in sorted(range(k), key=lambda i: ranks[i])]
    texts = [row.response(f"{name}[{i}]", value) for i, value in enumerate(order)]
    k = len(texts)
    weight = 1 / math.comb(k, 2) if weight_rankings else 1.0  # InstructGPT: each prompt counts once in the loss
    pairs = []
    for i in range(k):
        for j in range(i + 1, k):
            if texts[i] == texts[j]:
                raise row.error("two entries are the same text, so a pair would prefer a response to itself", name)
            pairs.append(row.pair(prompt, texts[i], texts[j], weight=weight))
    return pairs, 0


def _parse_ratings(row: _Row, *, score_margin: bool = False, **_) -> tuple[list[PreferencePair], int]:
    prompt = row.prompt("prompt")
    responses = row.entries("responses", min_len=2)
    scores = row.entries("scores")
    if len(scores) != len(responses):
        raise row.error(f"{len(scores)} scores for {len(responses)} responses", field="scores")
    for score in scores:
        if isinstance(score, bool) or not isinstance(score, numbers.Real) or not math.isfinite(score):
            raise row.error(f"scores must be finite numbers, got {score!r}", field="scores")
    texts = [row.response(f"responses[{i}]", value) for i, value in enumerate(responses)]
    order = sorted(range(len(texts)), key=lambda i: -scores[i])  # best first; stable, so ties keep data order
    pairs, ties = [], 0
    for x, i in enumerate(order):
        for j in order[x + 1 :]:
            if scores[i] == scores[j]:
                ties += 1
                continue
            if texts[i] == texts[j]:
                raise row.error(f"responses {i} and {j} are the same text with different scores", "responses")
            margin = float(scores[i] - scores[j]) if score_margin else None
            pairs.append(row.pair(prompt, texts[i], texts[j], margin=margin))
    return pairs, ties


_PARSERS = {
    "pair": _parse_pair,
    "hh-rlhf": _parse_hh,
    "conversation": _parse_conversation,
    "ranking": _parse_ranking,
    "ratings": _parse_ratings,
}


def _is_integer(value) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer())


# ---------------------------------------------------------------------------------------------------------
# Votes: aggregation and agreement


@dataclass
class _VoteItem:
    row: int
    group: int
    prompt: str
    a: str
    b: str
    labels: list[str]
    annotators: list[str] | None
    utility: str | None
    item: str | None = None
    """The labelling tool's item id, when the record has one: one ranking's pairs share it."""

    @property
    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(VOTE_LABELS, 0)
        for label in self.labels:
            counts[label] += 1
        return counts


def _parse_votes(row: _Row) -> _VoteItem:
    prompt, a, b = row.prompt("prompt"), row.response("a"), row.response("b")
    if a == b:
        raise row.error("same text as 'a'; annotators need two different responses to compare", field="b")
    votes = row.entries("votes")
    for i, vote in enumerate(votes):
        if vote not in VOTE_LABELS:
            allowed = ", ".join(map(repr, VOTE_LABELS))
            raise row.error(f"unknown label {vote!r} at position {i}; the allowed labels are {allowed}", "votes")
    annotators = None
    if row.present("annotators"):
        annotators = row.entries("annotators")
        if len(annotators) != len(votes):
            raise row.error(f"{len(annotators)} annotators for {len(votes)} votes", field="annotators")
        if not all(isinstance(name, str) for name in annotators):
            raise row.error("annotator names must be strings", field="annotators")
    item = row.record.get("item") if isinstance(row.record.get("item"), str) else None
    return _VoteItem(row.number, row.index, prompt, a, b, list(votes), annotators, row.utility(), item)


_SWAPPED = {"a": "b", "b": "a", "tie": "tie"}


def _merge_vote_items(items: list[_VoteItem]) -> list[_VoteItem]:
    """One item per prompt and pair of responses: votes logged one record per vote are pooled.

    A record that lists the two responses the other way round has its labels swapped. When an annotator's
    votes on an item come from several records, the last record's count (a relabelling replaces, it does
    not add). Unnamed votes are all kept. Records that name the same labelled "item" (the pairs of one
    ranking) share a group, so they stay one record for the listwise loss and for SFT's winners.
    """
    merged: dict[tuple, list[_VoteItem]] = {}
    for item in items:
        merged.setdefault((item.prompt, frozenset((item.a, item.b))), []).append(item)
    pooled = []
    for records in merged.values():
        first = records[0]
        last_record = {name: i for i, record in enumerate(records) for name in record.annotators or () if name}
        labels, annotators = [], []
        for i, record in enumerate(records):
            names = record.annotators or [None] * len(record.labels)
            for name, label in zip(names, record.labels, strict=True):
                if name is None or last_record[name] == i:
                    labels.append(label if record.a == first.a else _SWAPPED[label])
                    annotators.append(name)
        named = any(record.annotators is not None for record in records)
        first.labels, first.annotators = labels, annotators if named else None
        pooled.append(first)
    groups: dict[tuple[str, str], int] = {}
    for item in pooled:
        if item.item is not None:
            item.group = groups.setdefault((item.item, item.prompt), item.group)
    return pooled


def _majority(items: list[_VoteItem]) -> dict[int, PreferencePair | None]:
    """The label with more votes wins; weight = the fraction of decisive votes that agree. Even splits are ties."""
    resolved = {}
    for item in items:
        n_a, n_b = item.counts["a"], item.counts["b"]
        if n_a == n_b:
            resolved[id(item)] = None
            continue
        chosen, rejected = (item.a, item.b) if n_a > n_b else (item.b, item.a)
        resolved[id(item)] = PreferencePair(
            item.prompt, chosen, rejected, weight=max(n_a, n_b) / (n_a + n_b), group=item.group, utility=item.utility
        )
    return resolved


def _bradley_terry_pairs(items: list[_VoteItem]) -> dict[int, PreferencePair | None]:
    """One BT fit per prompt over its distinct responses; each item is ordered by the fitted strengths.

    An item's pair can go against its own votes when the prompt's other comparisons outweigh them: that is
    the transitivity BT assumes. margin = the strength gap (log-odds), weight = sigmoid(margin) in [0.5, 1].
    """
    by_prompt: dict[str, list[_VoteItem]] = {}
    for item in items:
        by_prompt.setdefault(item.prompt, []).append(item)
    resolved = {}
    for group in by_prompt.values():
        players: dict[str, int] = {}
        comparisons = []
        for item in group:
            a, b = players.setdefault(item.a, len(players)), players.setdefault(item.b, len(players))
            comparisons += [(a, b, item.counts["a"]), (b, a, item.counts["b"])]
            comparisons += [(a, b, item.counts["tie"] / 2), (b, a, item.counts["tie"] / 2)]
        strengths = bradley_terry(comparisons, len(players))
        for item in group:
            gap = float(strengths[players[item.a]] - strengths[players[item.b]])
            if abs(gap) < 1e-9:
                resolved[id(item)] = None
                continue
            chosen, rejected = (item.a, item.b) if gap > 0 else (item.b, item.a)
            margin = abs(gap)
            resolved[id(item)] = PreferencePair(
                item.prompt,
                chosen,
                rejected,
                weight=1 / (1 + math.exp(-margin)),
                margin=margin,
                group=item.group,
                utility=item.utility,
            )
    return resolved


def _agreement(items: list[_VoteItem]) -> AgreementReport:
    rated = [item for item in items if sum(item.counts.values()) >= 2]
    names = {name for item in items for name in (item.annotators or ()) if name is not None}
    named = any(item.annotators is not None for item in items)
    kappa = mean_agreement = None
    disputed: list[DisputedItem] = []
    if rated:
        counts = np.array([[item.counts[label] for label in VOTE_LABELS] for item in rated], dtype=float)
        kappa = fleiss_kappa(counts)
        kappa = None if math.isnan(kappa) else kappa
        per_item = _pairwise_agreement(counts)
        mean_agreement = float(per_item.mean())
        # Most disputed: fewest agreeing annotator pairs, then the most votes (a 5-5 split says more than 1-1).
        order = sorted(range(len(rated)), key=lambda i: (per_item[i], -counts[i].sum(), rated[i].row))
        disputed = [
            DisputedItem(
                rated[i].row, rated[i].prompt, rated[i].a, rated[i].b, dict(rated[i].counts), float(per_item[i])
            )
            for i in order[:_MOST_DISPUTED]
            if per_item[i] < 1
        ]
    pairs = _annotator_pairs(items)
    return AgreementReport(
        per_annotator=_per_annotator(items, pairs),
        annotator_pairs=pairs,
        fleiss_kappa=kappa,
        mean_pairwise_agreement=mean_agreement,
        items=len(items),
        rated_items=len(rated),
        votes=sum(sum(item.counts.values()) for item in items),
        annotators=len(names) if named else None,
        most_disputed=tuple(disputed),
    )


def _per_annotator(items: list[_VoteItem], pairs: tuple[AnnotatorPair, ...]) -> tuple[AnnotatorAgreement, ...]:
    """Each named annotator's votes, and how often another annotator voted the same on the same item."""
    votes: dict[str, int] = {}
    for item in items:
        for name in item.annotators or ():
            if name is not None:
                votes[name] = votes.get(name, 0) + 1
    compared, agreed = dict.fromkeys(votes, 0), dict.fromkeys(votes, 0)
    for pair in pairs:
        for name in (pair.first, pair.second):
            compared[name] += pair.shared
            agreed[name] += round(pair.agreement * pair.shared)  # the count of matching items
    return tuple(
        AnnotatorAgreement(name, votes[name], compared[name], agreed[name] / compared[name] if compared[name] else None)
        for name in sorted(votes)
    )


def _annotator_pairs(items: list[_VoteItem]) -> tuple[AnnotatorPair, ...]:
    """How often each two named annotators agree on the items both voted on (one vote each per item)."""
    shared: dict[tuple[str, str], list[bool]] = {}
    for item in items:
        named = dict(
            (name, label) for name, label in zip(item.annotators or (), item.labels, strict=False) if name is not None
        )
        for first, second in combinations(sorted(named), 2):
            shared.setdefault((first, second), []).append(named[first] == named[second])
    return tuple(
        AnnotatorPair(first, second, len(matches), sum(matches) / len(matches))
        for (first, second), matches in sorted(shared.items())
    )


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
    prompt_tokens: dict[str, int] = {}
    response_tokens: dict[str, int] = {}

    def length(prompt: str, response: str) -> int:
        # The rule of lorarlhf.model.tokenization: prompt with special tokens, response without, then EOS.
        if prompt not in prompt_tokens:
            prompt_tokens[prompt] = len(tokenizer(prompt)["input_ids"])
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


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
