"""One annotator's pass over a candidates file: what to show next, and each judgement recorded in the log.

The session starts from the log, so a restarted server (or a reloaded page) continues at the first item this
annotator has not labelled. Responses are shown in an order shuffled per annotator and item (seeded, so a
reload shows the same order): the first-shown answer wins more often than it should (position bias), and a
fixed order would turn that bias into preference data.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
from dataclasses import dataclass

from lorarlhf.labelling.candidates import CandidateItem, texts_of
from lorarlhf.labelling.text import proper, unicode_problem, visible
from lorarlhf.labelling.votes import PAIR_LABELS, VoteLog, check_log_holds, pair_votes, ranking_votes
from lorarlhf.model.chat import jsonable

MAX_ANNOTATOR_LENGTH = 100


@dataclass(frozen=True)
class Shown:
    """An item as the page shows it."""

    item: CandidateItem
    order: tuple[int, ...]
    """order[p] = index into item.responses of the response at display position p."""

    @property
    def responses(self) -> list[str]:
        return [self.item.responses[i] for i in self.order]


def check_annotator(name) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError("annotator must be a non-empty name, e.g. --annotator alice")
    if len(name) > MAX_ANNOTATOR_LENGTH or any(ch in name for ch in "\n\r\t"):
        raise ValueError(f"annotator {name[:40]!r}… must be one line of at most {MAX_ANNOTATOR_LENGTH} characters")
    if unicode_problem(name) is not None:  # e.g. a name in bytes that are not UTF-8, on the command line
        raise ValueError(f"annotator {name!r} is {unicode_problem(name)}")
    if visible(name) != name:  # the name is shown on the page and recorded with every vote: what it looks like
        raise ValueError(f"annotator {name!r} holds invisible or direction-changing characters: {visible(name)}")
    return name.strip()


def check_items(items: list[CandidateItem]) -> list[CandidateItem]:
    """Items made in Python rather than read by read_candidates: their texts must be proper Unicode too."""
    for item in items:
        for _, what, text in texts_of(item.prompt, item.responses, item.id):
            problem = unicode_problem(text)
            if problem is not None:
                raise ValueError(f"item {proper(item.id)!r}: {what} is {problem}")
    return list(items)


def labelled(items: list[CandidateItem], votes: list[dict]) -> set[str]:
    """The ids of the items these votes judge: same id, prompt and responses (an edited item is a new one)."""
    seen = {(vote.get("item"), json.dumps(vote.get("prompt")), vote.get("a"), vote.get("b")) for vote in votes}
    return {
        item.id
        for item in items
        if any(
            (item.id, json.dumps(jsonable(item.prompt)), a, b) in seen
            for a in item.responses
            for b in item.responses
            if a != b
        )
    }


class LabellingSession:
    """Thread-safe: the page's requests may arrive on several server threads, from several tabs."""

    def __init__(self, items: list[CandidateItem], log: VoteLog, annotator: str, *, shuffle: bool = True):
        if not items:
            raise ValueError("no items to label")
        self.items = check_items(items)
        self.log = log
        self.annotator = check_annotator(annotator)
        check_log_holds(log, "votes")
        self.shuffle = shuffle
        self._by_id = {item.id: item for item in self.items}
        self._done = labelled(self.items, log.votes_of(self.annotator))
        self._skipped: set[str] = set()
        self._drafts: dict[str, list[int]] = {}  # rankings being entered, one position per key press
        self._lock = threading.Lock()

    @property
    def done(self) -> int:
        return len(self._done)

    @property
    def total(self) -> int:
        return len(self.items)

    def next(self) -> Shown | None:
        """The first item not yet labelled, skipped ones last; None when every item is labelled."""
        with self._lock:
            waiting = [item for item in self.items if item.id not in self._done]
            if not waiting:
                return None
            fresh = [item for item in waiting if item.id not in self._skipped]
            return self.show(fresh[0] if fresh else waiting[0])

    def shown(self, item_id: str) -> Shown:
        """The item of this id as the page shows it."""
        if item_id not in self._by_id:
            raise KeyError(f"no item {item_id!r} in this candidates file")
        return self.show(self._by_id[item_id])

    def show(self, item: CandidateItem) -> Shown:
        order = list(range(len(item.responses)))
        if self.shuffle:
            seed = hashlib.sha256(f"{self.annotator}\0{item.id}".encode()).digest()
            random.Random(seed).shuffle(order)
        return Shown(item, tuple(order))

    def vote(self, item_id: str, label: str, reason: str = "") -> bool:
        """Record "a", "b" or "tie" for the pair as shown (A first). False when the item was already labelled."""
        if label not in PAIR_LABELS:
            raise ValueError(f"label={label!r}; a pairwise vote is one of {PAIR_LABELS}")
        with self._lock:
            shown = self._open(item_id)
            if shown is None:
                return False
            if len(shown.order) != 2:
                raise ValueError(f"item {item_id} has {len(shown.order)} responses: rank them instead")
            # proper: a browser's text may hold a lone surrogate, which cannot be written; it becomes U+FFFD
            self._record(shown, pair_votes(shown.item, *shown.order, label, self.annotator, proper(reason)))
            return True

    def rank(self, item_id: str, positions: list[int], reason: str = "") -> bool:
        """Record a ranking given as display positions (0-based), best first. False when already labelled."""
        with self._lock:
            shown = self._open(item_id)
            if shown is None:
                return False
            if sorted(positions) != list(range(len(shown.order))):
                raise ValueError(f"rank every one of the {len(shown.order)} responses once, got positions {positions}")
            order = [shown.order[p] for p in positions]
            self._record(shown, ranking_votes(shown.item, order, self.annotator, proper(reason)))
            return True

    def place(self, item_id: str, position: int) -> list[int]:
        """Put the response at display position `position` next in the item's ranking draft; return the draft.

        The draft lives here, not in the page, so quick key presses are never lost to a stale page state.
        When one response is left it takes the last place."""
        with self._lock:
            count = len(self.shown(item_id).order)
            draft = self._drafts.setdefault(item_id, [])
            if 0 <= position < count and position not in draft:
                draft.append(position)
                if len(draft) == count - 1:
                    draft += [p for p in range(count) if p not in draft]
            return list(draft)

    def unplace(self, item_id: str) -> list[int]:
        """Take the last placed response out of the draft (the auto-filled last place goes with it)."""
        with self._lock:
            count = len(self.shown(item_id).order)
            draft = self._drafts.get(item_id, [])
            if len(draft) == count and count > 2:
                del draft[-2:]  # the auto-filled last place goes with the place before it
            elif draft:
                draft.pop()
            return list(draft)

    def draft(self, item_id: str) -> list[int]:
        with self._lock:
            return list(self._drafts.get(item_id, []))

    def skip(self, item_id: str) -> None:
        """Leave the item for later: it comes back after the others, and after a restart."""
        with self._lock:
            if item_id in self._by_id:
                self._skipped.add(item_id)

    def _open(self, item_id: str) -> Shown | None:
        shown = self.shown(item_id)
        return None if item_id in self._done else shown  # a double click or a second tab: the first one stands

    def _record(self, shown: Shown, records: list[dict]) -> None:
        self.log.append(records)  # on disk before the item counts as done
        self._done.add(shown.item.id)
        self._skipped.discard(shown.item.id)
        self._drafts.pop(shown.item.id, None)
