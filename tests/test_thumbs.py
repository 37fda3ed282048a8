"""The thumbs mode: each response judged alone, written as unpaired labels that load_feedback reads back.

The page itself, in a real browser, is in test_label_page.py.
"""

from __future__ import annotations

import json

import pytest

from lorarlhf.cli import build_parser
from lorarlhf.data import load_feedback
from lorarlhf.labelling import CandidateItem, LabellingSession, VoteLog
from lorarlhf.labelling.thumbs import ThumbsSession
from lorarlhf.model.chat import Conversation

ITEMS = [
    CandidateItem("p1", "Say hi.", ("Hello!", "Go away.")),
    CandidateItem("p2", "Name a colour.", ("Blue.", "Seven.", "Blue.")),  # a response repeated: judged once
    CandidateItem(
        "p3", Conversation([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]), ("4",)
    ),
]


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_every_response_is_judged_once_and_the_labels_load_as_feedback(tmp_path):
    log = VoteLog(tmp_path / "feedback.jsonl")
    session = ThumbsSession(ITEMS, log, "ann", shuffle=False)
    assert (session.done, session.total) == (0, 5)
    shown = []
    while (unit := session.next()) is not None:
        shown.append((unit.item.id, unit.response))
        good = unit.response in ("Hello!", "Blue.", "4")
        assert session.judge(unit.id, good, "kind" if unit.response == "Hello!" else "")
        assert not session.judge(unit.id, not good)  # a double click: the first judgement stands
    assert shown == [("p1", "Hello!"), ("p1", "Go away."), ("p2", "Blue."), ("p2", "Seven."), ("p3", "4")]

    records = read_jsonl(log.path)
    assert [(r["item"], r["completion"], r["label"], r["annotators"], r["kind"]) for r in records] == [
        ("p1", "Hello!", True, ["ann"], "thumbs"),
        ("p1", "Go away.", False, ["ann"], "thumbs"),
        ("p2", "Blue.", True, ["ann"], "thumbs"),
        ("p2", "Seven.", False, ["ann"], "thumbs"),
        ("p3", "4", True, ["ann"], "thumbs"),
    ]
    assert records[0]["reason"] == "kind" and "reason" not in records[1]

    feedback = load_feedback(log.path)
    assert [(f.completion, f.label) for f in feedback] == [(r["completion"], r["label"]) for r in records]
    assert feedback[0].prompt == "Say hi."
    assert feedback[4].prompt == ITEMS[2].prompt  # a conversation, system prompt and all, survives the round trip


def test_a_session_resumes_skipped_responses_come_last_and_the_order_is_shuffled_per_annotator(tmp_path):
    log = VoteLog(tmp_path / "feedback.jsonl")
    session = ThumbsSession(ITEMS, log, "ann", shuffle=False)
    first = session.next()
    session.skip(first.id)
    second = session.next()
    assert second.id != first.id
    assert session.judge(second.id, True)

    resumed = ThumbsSession(ITEMS, VoteLog(log.path), "ann", shuffle=False)
    assert resumed.done == 1 and resumed.next().id == first.id  # a skip is for this page only
    assert ThumbsSession(ITEMS, VoteLog(log.path), "bob").done == 0  # another annotator starts afresh

    orders = {name: [u.id for u in ThumbsSession(ITEMS, VoteLog(tmp_path / f"{name}.jsonl"), name).units]
              for name in ("ann", "bob", "cy", "dee")}  # fmt: skip
    assert len({tuple(order) for order in orders.values()}) > 1  # shuffled, per annotator
    again = [u.id for u in ThumbsSession(ITEMS, VoteLog(tmp_path / "x.jsonl"), "ann").units]
    assert again == orders["ann"]  # and the same on every reload
    with pytest.raises(KeyError, match="no response 'nope'"):
        resumed.judge("nope", True)
    with pytest.raises(ValueError, match="must be True .thumbs up. or False"):
        resumed.judge(first.id, "yes")


def test_thumbs_and_pairwise_votes_never_share_a_file_and_the_file_is_left_as_it_was(tmp_path):
    votes = tmp_path / "votes.jsonl"
    LabellingSession(ITEMS[:1], VoteLog(votes), "ann").vote("p1", "a")
    before = votes.read_bytes()
    with pytest.raises(ValueError, match="votes.jsonl holds pairwise votes; thumbs labels go to a file of their own"):
        ThumbsSession(ITEMS, VoteLog(votes), "ann")
    assert votes.read_bytes() == before

    feedback = tmp_path / "feedback.jsonl"
    session = ThumbsSession(ITEMS, VoteLog(feedback), "ann")
    session.judge(session.next().id, False)
    before = feedback.read_bytes()
    with pytest.raises(ValueError, match="feedback.jsonl holds thumbs labels; pairwise votes go to a file of their"):
        LabellingSession(ITEMS[:1], VoteLog(feedback), "ann")
    assert feedback.read_bytes() == before


def test_the_label_command_takes_thumbs_and_defaults_its_file_to_feedback_jsonl():
    args = build_parser().parse_args(["label", "candidates.jsonl", "--annotator", "ann", "--thumbs"])
    assert args.thumbs and args.out is None  # label() then writes feedback.jsonl
    args = build_parser().parse_args(["label", "candidates.jsonl", "--annotator", "ann"])
    assert not args.thumbs


@pytest.mark.kernels
def test_a_thumbs_file_trains_with_kto(tiny_model_dir, tmp_path):
    import lorarlhf

    log = VoteLog(tmp_path / "feedback.jsonl")
    session = ThumbsSession(ITEMS[:2], log, "ann")
    while (unit := session.next()) is not None:
        session.judge(unit.id, unit.response in ("Hello!", "Blue."))
    result = lorarlhf.align(
        tiny_model_dir, str(log.path), method="kto", output_dir=tmp_path / "run", steps=2, batch_size=4,
        eval_fraction=0.0, samples=0, quantize=None,
    )  # fmt: skip
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in history if record.get("stage") == "kto" and "kto/loss" in record] == [1, 2]
    assert result.actor_dir.is_dir()
