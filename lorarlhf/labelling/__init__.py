"""Collect the human feedback itself: sample candidates, label them in the browser, aggregate the votes.

    lorarlhf sample MODEL PROMPTS --n 2 --out candidates.jsonl
    lorarlhf label candidates.jsonl --annotator NAME --out votes.jsonl
    lorarlhf agreement votes.jsonl
    lorarlhf align MODEL votes.jsonl --method dpo

The page needs the optional extra: pip install "lorarlhf[label]".
"""

from lorarlhf.labelling.app import LabellingServer, label
from lorarlhf.labelling.candidates import (
    CandidateItem,
    CandidatesError,
    SampleReport,
    read_candidates,
    sample_candidates,
)
from lorarlhf.labelling.session import LabellingSession
from lorarlhf.labelling.votes import VoteLog

__all__ = [
    "CandidateItem",
    "CandidatesError",
    "LabellingServer",
    "LabellingSession",
    "SampleReport",
    "VoteLog",
    "label",
    "read_candidates",
    "sample_candidates",
]
