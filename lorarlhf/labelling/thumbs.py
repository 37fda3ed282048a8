"""Thumbs up or down: each response judged on its own, the unpaired labels KTO trains on.

Comparing two answers needs two answers worth comparing; a thumbs up or down needs only one, which is what
most products already collect. Each response of each candidates item is shown alone, in an order shuffled
per annotator (seeded, so a reload shows the same order; a file's order would show one prompt's answers one
after another and invite comparing them), and each judgement is one line of the log:

    {"prompt": "…", "completion": "…", "label": true, "annotators": ["ann"], "item": "…", "kind": "thumbs",
     "reason": "…", "time": "2026-…Z"}

which is the unpaired-label layout (prompt, completion, label): `align(model, "feedback.jsonl",
method="kto")` trains on it, load_feedback reads it. Thumbs and pairwise votes never share a file: each
loader reads one shape.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
from dataclasses import dataclass
from datetime import datetime, timezone

from lorarlhf.labelling.candidates import CandidateItem
from lorarlhf.labelling.session import check_annotator, check_items
from lorarlhf.labelling.text import proper
from lorarlhf.labelling.votes import THUMBS, VoteLog, check_log_holds
from lorarlhf.model.chat import jsonable


@dataclass(frozen=True)
class ShownResponse:
    """One response of an item, as the thumbs page shows it."""

    item: CandidateItem
    index: int

    @property
    def id(self) -> str:
        return f"{self.item.id}#{self.index}"

    @property
    def response(self) -> str:
        return self.item.responses[self.index]


def thumbs_record(item: CandidateItem, completion: str, up: bool, annotator: str, reason: str = "") -> dict:
    """The log line of one judgement: `completion` to the item's prompt is good (up) or bad."""
    record = {"prompt": jsonable(item.prompt), "completion": completion, "label": bool(up)}
    record.update({"annotators": [annotator], "item": item.id, "kind": THUMBS})
    if reason.strip():
        record["reason"] = reason.strip()
    record["time"] = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    return record


class ThumbsSession:
    """One annotator's pass over every response of a candidates file, one at a time. Thread-safe."""

    def __init__(self, items: list[CandidateItem], log: VoteLog, annotator: str, *, shuffle: bool = True):
        if not items:
            raise ValueError("no items to label")
        self.items = check_items(items)
        self.log = log
        self.annotator = check_annotator(annotator)
        check_log_holds(log, THUMBS)
        # A response repeated within an item is judged once.
        self.units = [
            ShownResponse(item, index)
            for item in self.items
            for index in dict.fromkeys(item.responses.index(text) for text in item.responses)
        ]
        if shuffle:
            random.Random(hashlib.sha256(self.annotator.encode()).digest()).shuffle(self.units)
        self._by_id = {unit.id: unit for unit in self.units}
        judged = {
            (record.get("item"), json.dumps(record.get("prompt")), record.get("completion"))
            for record in log.votes_of(self.annotator)
            if record.get("kind") == THUMBS
        }
        self._done = {
            unit.id
            for unit in self.units
            if (unit.item.id, json.dumps(jsonable(unit.item.prompt)), unit.response) in judged
        }
        self._skipped: set[str] = set()
        self._lock = threading.Lock()

    @property
    def done(self) -> int:
        return len(self._done)

    @property
    def total(self) -> int:
        return len(self.units)

    def next(self) -> ShownResponse | None:
        """The first response not yet judged, skipped ones last; None when every response is judged."""
        with self._lock:
            waiting = [unit for unit in self.units if unit.id not in self._done]
            fresh = [unit for unit in waiting if unit.id not in self._skipped]
            return (fresh or waiting or [None])[0]

    def judge(self, unit_id: str, up: bool, reason: str = "") -> bool:
        """Record a thumbs up (True) or down for the response of this id. False when it was already judged."""
        if not isinstance(up, bool):
            raise ValueError(f"up={up!r} must be True (thumbs up) or False (thumbs down)")
        with self._lock:
            unit = self._unit(unit_id)
            if unit.id in self._done:  # a double click or a second tab: the first one stands
                return False
            # proper: a browser's text may hold a lone surrogate, which cannot be written; it becomes U+FFFD
            self.log.append([thumbs_record(unit.item, unit.response, up, self.annotator, proper(reason))])
            self._done.add(unit.id)
            self._skipped.discard(unit.id)
            return True

    def skip(self, unit_id: str) -> None:
        """Leave the response for later: it comes back after the others, and after a restart."""
        with self._lock:
            if unit_id in self._by_id:
                self._skipped.add(unit_id)

    def _unit(self, unit_id: str) -> ShownResponse:
        if unit_id not in self._by_id:
            raise KeyError(f"no response {unit_id!r} in this candidates file")
        return self._by_id[unit_id]
