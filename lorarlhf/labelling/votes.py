"""votes.jsonl: an append-only log of annotator votes, in the shape load_preferences aggregates.

Each line is one pairwise vote, a `votes` record with one vote and its annotator:

    {"prompt": "…", "a": "…", "b": "…", "votes": ["a"], "annotators": ["ann"],
     "item": "…", "kind": "pair", "reason": "…", "time": "2026-…Z"}

A ranking of K responses is the C(K, 2) pairwise votes it implies, written together. load_preferences
pools the lines of one prompt and pair of responses into one item, so `align(model, "votes.jsonl")`
trains on the votes and reports agreement. A vote is one write() of whole lines, under an exclusive
lock, flushed and fsynced before the page hears it was recorded: annotators may share one file, and a
killed server loses nothing that was acknowledged.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import combinations
from pathlib import Path

try:  # POSIX; elsewhere a vote is still one O_APPEND write, without the lock
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

from lorarlhf.labelling.candidates import CandidateItem
from lorarlhf.labelling.text import unicode_problem
from lorarlhf.model.chat import jsonable

logger = logging.getLogger("lorarlhf.labelling")

PAIR_LABELS = ("a", "b", "tie")
THUMBS = "thumbs"
"""The `kind` of a thumbs-up/down record (labelling/thumbs.py); pairwise records have "votes"."""


@dataclass(frozen=True)
class VoteLogProblem:
    """A line of the log that could not be read (e.g. cut short by a power failure)."""

    line: int
    text: str


def pair_votes(item: CandidateItem, a: int, b: int, label: str, annotator: str, reason: str = "") -> list[dict]:
    """The record of one pairwise judgement: responses[a] shown as A and responses[b] as B."""
    if label not in PAIR_LABELS:
        raise ValueError(f"label={label!r}; a pairwise vote is one of {PAIR_LABELS}")
    return [_record(item, item.responses[a], item.responses[b], label, annotator, reason, "pair")]


def ranking_votes(item: CandidateItem, order: list[int], annotator: str, reason: str = "") -> list[dict]:
    """The C(K, 2) pairwise votes of a ranking: order holds response indices, best first."""
    if sorted(order) != list(range(len(item.responses))):
        raise ValueError(f"a ranking must order every response of the item once, got {order}")
    return [
        _record(item, item.responses[better], item.responses[worse], "a", annotator, reason, "ranking")
        for better, worse in combinations(order, 2)
    ]


def _record(item: CandidateItem, a: str, b: str, label: str, annotator: str, reason: str, kind: str) -> dict:
    record = {
        "prompt": jsonable(item.prompt),
        "a": a,
        "b": b,
        "votes": [label],
        "annotators": [annotator],
        "item": item.id,
    }
    record["kind"] = kind
    if reason.strip():
        record["reason"] = reason.strip()
    record["time"] = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    return record


class VoteLog:
    """The votes file: append whole votes durably; read back who labelled what."""

    def __init__(self, path):
        self.path = Path(path)

    def append(self, records: list[dict]) -> None:
        """Write the records as lines in one write(), under an exclusive lock; return once they are on disk."""
        if not records:
            return
        payload = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records).encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            if _ends_without_newline(fd):  # a line cut short earlier stays one bad line, not two
                payload = b"\n" + payload
            while payload:
                payload = payload[os.write(fd, payload) :]
            os.fsync(fd)
        finally:
            os.close(fd)  # closing releases the lock

    def read(self) -> tuple[list[dict], list[VoteLogProblem]]:
        """Every record, and the lines that are not a JSON object of proper Unicode text (reported, never
        dropped silently): a line that is not UTF-8, or holds a lone surrogate, is not a vote this page wrote."""
        if not self.path.exists():
            return [], []
        records, problems = [], []
        with self.path.open("rb") as lines:  # bytes: a bad byte spoils its own line only
            for number, raw in enumerate(lines, start=1):
                line = raw.decode("utf-8", errors="replace")
                if not line.strip():
                    continue
                try:
                    record = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    record = None
                if isinstance(record, dict) and unicode_problem(json.dumps(record, ensure_ascii=False)) is None:
                    records.append(record)
                else:
                    problems.append(VoteLogProblem(number, line.rstrip("\n")))
        return records, problems

    def votes_of(self, annotator: str) -> list[dict]:
        """This annotator's vote records; a line that cannot be read is reported and left as it is."""
        records, problems = self.read()
        for problem in problems:
            logger.warning(
                "%s, line %d is not a vote record; it is left as it is: %.80s", self.path, problem.line, problem.text
            )
        return [record for record in records if record.get("annotators") == [annotator]]


def check_log_holds(log: VoteLog, kind: str) -> None:
    """Refuse a log that already holds the other shape of judgement: a file of both is read by neither loader."""
    records, _ = log.read()
    thumbs = any(record.get("kind") == THUMBS for record in records)
    votes = any("votes" in record for record in records)
    if kind == THUMBS and votes:
        raise ValueError(
            f"{log.path} holds pairwise votes; thumbs labels go to a file of their own, e.g. --out feedback.jsonl"
        )
    if kind != THUMBS and thumbs:
        raise ValueError(
            f"{log.path} holds thumbs labels; pairwise votes go to a file of their own, e.g. --out votes.jsonl"
        )


def _ends_without_newline(fd: int) -> bool:
    size = os.fstat(fd).st_size
    return size > 0 and os.pread(fd, 1, size - 1) != b"\n"
