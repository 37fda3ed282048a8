"""Annotator votes: pooled per item, aggregated into pairs, and their agreement measured.

Votes are aggregated by majority or by a Bradley-Terry fit per prompt (Bradley & Terry 1952; fitted by
Newton's method on the log-likelihood with a Gaussian prior, the regularised cousin of Hunter's 2004 MM
algorithm), and their agreement is summarised by Fleiss' kappa (Fleiss 1971). Vote records of one prompt and
the same two responses are one item with their votes pooled, so a log of one record per vote (what
`lorarlhf label` writes) reads the same as one record per item; an annotator's last vote on an item counts.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from lorarlhf.data.layouts import read_layouts
from lorarlhf.data.records import BadRows, PreferenceDataError, PreferencePair, Row, plural
from lorarlhf.data.sources import open_source
from lorarlhf.validation import check_int

VOTE_LABELS = ("a", "b", "tie")
_MOST_DISPUTED = 5


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
            return f"votes on {plural(self.items, 'item')}, none with 2 or more votes to measure agreement"
        kappa = "undefined" if self.fleiss_kappa is None else f"{self.fleiss_kappa:.2f}"
        return (
            f"annotator agreement: Fleiss' kappa {kappa}, pairwise {self.mean_pairwise_agreement:.2f} "
            f"over {plural(self.rated_items, 'item')}"
        )


def vote_agreement(source, *, split: str = "train", columns: dict[str, str] | None = None) -> AgreementReport:
    """How much the annotators of `source` agree: its vote records (other rows are not read), pooled per item.

    Unlike load_preferences it reports even when every item is a tie or a single vote; a source with no
    vote records is an error. Hub layouts of votes (chatbot arena) and `columns` are read as load_preferences does.
    """
    name, records = open_source(source, split)
    read = read_layouts(name, records, tokenizer=None, purpose="preferences", bad=BadRows(), columns=columns)
    items = []
    for index, item in enumerate(read.items):
        row = Row(name, item.number, index, item.record, None)
        if row.shape() == "votes":
            items.append(parse_votes(row))
    if not items:
        raise PreferenceDataError(name, "no vote records (prompt, a, b, votes) to measure agreement on")
    return agreement(merge_vote_items(items))


def bradley_terry(comparisons, n_players: int, *, prior: float = 1.0, max_iter: int = 100, tol: float = 1e-10):
    """Bradley-Terry log-strengths s (shape (n_players,)), with P(i beats j) = sigmoid(s_i - s_j).

    comparisons: (winner, loser) or (winner, loser, weight) index tuples; a tie is two half wins, (i, j, 0.5)
    and (j, i, 0.5). Maximises  sum_w weight * log sigmoid(s_winner - s_loser) - prior/2 * |s|^2,  i.e. a
    Normal(0, 1/prior) prior on each log-strength, which keeps unanimous comparisons finite and fixes the
    free offset (the strengths sum to 0). The objective is strictly concave, so Newton's method with
    backtracking converges to its one maximum; the result is deterministic. Players that never play get 0.
    """
    check_int("n_players", n_players)
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


@dataclass
class VoteItem:
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


def parse_votes(row: Row) -> VoteItem:
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
    return VoteItem(row.number, row.index, prompt, a, b, list(votes), annotators, row.utility(), item)


_SWAPPED = {"a": "b", "b": "a", "tie": "tie"}


def merge_vote_items(items: list[VoteItem]) -> list[VoteItem]:
    """One item per prompt and pair of responses: votes logged one record per vote are pooled.

    A record that lists the two responses the other way round has its labels swapped. When an annotator's
    votes on an item come from several records, the last record's count (a relabelling replaces, it does
    not add). Unnamed votes are all kept. Records that name the same labelled "item" (the pairs of one
    ranking) share a group, so they stay one record for the listwise loss and for SFT's winners.
    """
    merged: dict[tuple, list[VoteItem]] = {}
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


def majority(items: list[VoteItem]) -> dict[int, PreferencePair | None]:
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


def bradley_terry_pairs(items: list[VoteItem]) -> dict[int, PreferencePair | None]:
    """One BT fit per prompt over its distinct responses; each item is ordered by the fitted strengths.

    An item's pair can go against its own votes when the prompt's other comparisons outweigh them: that is
    the transitivity BT assumes. margin = the strength gap (log-odds), weight = sigmoid(margin) in [0.5, 1].
    """
    by_prompt: dict[str, list[VoteItem]] = {}
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


def agreement(items: list[VoteItem]) -> AgreementReport:
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


def _per_annotator(items: list[VoteItem], pairs: tuple[AnnotatorPair, ...]) -> tuple[AnnotatorAgreement, ...]:
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


def _annotator_pairs(items: list[VoteItem]) -> tuple[AnnotatorPair, ...]:
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
