"""Collecting feedback: candidates, the vote log, one annotator's session, the request guard, agreement, CLI.

The page itself, in a real browser, is in test_label_page.py.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from itertools import combinations

import pytest

from lorarlhf.cli import main
from lorarlhf.data import load_preferences, vote_agreement
from lorarlhf.labelling import (
    CandidateItem,
    CandidatesError,
    LabellingSession,
    VoteLog,
    read_candidates,
    sample_candidates,
)
from lorarlhf.labelling.candidates import item_id
from lorarlhf.labelling.guard import COLAB_FRAME_ANCESTORS, FRAME_ANCESTORS, allowed_hosts, refusal
from lorarlhf.labelling.text import visible
from lorarlhf.labelling.votes import pair_votes, ranking_votes
from lorarlhf.training.rollout import SamplingConfig


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


ITEMS = [
    CandidateItem("p1", "Say hi.", ("Hello!", "Go away.")),
    CandidateItem("p2", "Name a colour.", ("Blue.", "Seven.", "Green, or blue.")),
    CandidateItem("p3", "2 + 2?", ("4", "5")),
]


# ---------------------------------------------------------------------------------------------------------
# Candidates


def test_candidates_read_back_with_ids_from_the_text_when_none_is_given(tmp_path):
    path = write_jsonl(
        tmp_path / "c.jsonl",
        [{"id": "mine", "prompt": "p", "responses": ["x", "y"]}, {"prompt": "q", "responses": ["u", "v", "w"]}],
    )
    first, second = read_candidates(path)
    assert first == CandidateItem("mine", "p", ("x", "y"))
    assert second.id == item_id("q", ["u", "v", "w"]) == item_id("q", ["w", "u", "v"])  # order does not matter
    assert item_id("q", ["u", "v", "w"]) != item_id("q2", ["u", "v", "w"])


@pytest.mark.parametrize(
    "line, message",
    [
        ("not json", r"c.jsonl, row 2: not valid JSON"),
        ('["p"]', r"c.jsonl, row 2: a record must be a JSON object, not list"),
        ('{"responses": ["a", "b"]}', r"c.jsonl, row 2, field 'prompt': missing"),
        ('{"prompt": 3, "responses": ["a", "b"]}', r"field 'prompt': must be text or a list of messages, not int"),
        ('{"prompt": "p"}', r"row 2, field 'responses': missing"),
        ('{"prompt": "p", "responses": ["a", 2]}', r"row 2, field 'responses': must be a list of texts"),
        ('{"prompt": "p", "responses": ["a"]}', r"row 2, field 'responses': needs at least 2 responses"),
        ('{"prompt": "p", "responses": ["a", "a", "b"]}', r"all different \(got 3, 2 different apart from spacing\)"),
        ('{"prompt": "p", "responses": ["Yes", "Yes ", "No"]}', r"got 3, 2 different apart from spacing"),
        ('{"prompt": "p", "responses": ["a", " \\n"]}', r"row 2, field 'responses': response 1 is empty"),
        ('{"prompt": "p", "responses": ["a", "\\u200b\\u202e"]}', r"field 'responses': response 1 is empty"),
        # A lone surrogate is valid JSON but not text: an emoji cut in half. It would stop the page.
        ('{"prompt": "p", "responses": ["ok", "bad \\ud83d"]}', r"row 2, field 'responses': response 1 is not valid"),
        (
            '{"prompt": "p\\udc00", "responses": ["a", "b"]}',
            r"row 2, field 'prompt': the prompt is not valid Unicode: a lone surrogate U\+DC00 at character 1",
        ),
        (
            '{"prompt": [{"role": "user", "content": "\\ude00"}], "responses": ["a", "b"]}',
            r"row 2, field 'prompt': message 0's content is not valid Unicode",
        ),
        ('{"id": "x\\ud83d", "prompt": "p", "responses": ["a", "b"]}', r"row 2, field 'id': the id is not valid"),
        ('{"prompt": "  ", "responses": ["a", "b"]}', r"row 2, field 'prompt': empty"),
        ('{"id": "", "prompt": "p", "responses": ["a", "b"]}', r"row 2, field 'id': must be a non-empty text"),
        (
            '{"id": "one", "prompt": "p", "responses": ["a", "b"]}',
            r"row 2, field 'id': id 'one' is already used by row 1",
        ),
    ],
)
def test_a_bad_candidates_file_names_the_row_and_field(tmp_path, line, message):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"id": "one", "prompt": "q", "responses": ["c", "d"]}) + "\n" + line + "\n")
    with pytest.raises(CandidatesError, match=message):
        read_candidates(path)


def test_an_empty_or_missing_candidates_file_is_an_error(tmp_path):
    with pytest.raises(CandidatesError, match="no such file"):
        read_candidates(tmp_path / "nothing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(CandidatesError, match="empty"):
        read_candidates(tmp_path / "empty.jsonl")


@pytest.mark.parametrize(
    "text, shown",
    [
        ("\u202etxt.exe", "⟨U+202E⟩txt.exe"),  # a right-to-left override: displays as "exe.txt"
        ("a\u2066b\u2069 \u200fc", "a⟨U+2066⟩b⟨U+2069⟩ ⟨U+200F⟩c"),  # an isolate, a right-to-left mark
        ("pass\u200bword\ufeff", "pass⟨U+200B⟩word⟨U+FEFF⟩"),  # zero-width space, byte-order mark
        ("co\u00adop\u2060\u3164", "co⟨U+00AD⟩op⟨U+2060⟩⟨U+3164⟩"),  # soft hyphen, word joiner, Hangul filler
        ("ok\U000e0069\U000e0067", "ok⟨U+E0069⟩⟨U+E0067⟩"),  # tag characters: hidden ASCII
        ("bell\x07 esc\x1b[2J\u2028", "bell⟨U+0007⟩ esc⟨U+001B⟩[2J⟨U+2028⟩"),  # controls, line separator
        ("half \ud83d", "half ⟨U+D83D⟩"),  # a lone surrogate (refused on reading; never a stuck page)
        ("a\u200db, x\u200cy", "a⟨U+200D⟩b, x⟨U+200C⟩y"),  # joiners between Latin letters do nothing
        # How text is written, kept: tab and new lines, a Persian word, an emoji sequence, a flag.
        ("one\ttwo\r\nthree", "one\ttwo\r\nthree"),
        ("می\u200cخواهم", "می\u200cخواهم"),
        ("👩\u200d💻 ❤\ufe0f", "👩\u200d💻 ❤\ufe0f"),
        ("\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f", None),
        ("café, naïve, 東京, Ελλάδα, <b>x</b>", None),
    ],
)
def test_hidden_characters_are_shown_as_their_code_points(text, shown):
    assert visible(text) == (text if shown is None else shown)


def test_responses_that_read_the_same_are_reported_with_how_they_differ(tmp_path, caplog):
    records = [
        {"id": "nbsp", "prompt": "p", "responses": ["Yes,\u00a0sure.", "Yes, sure.", "No."]},
        {"id": "zwsp", "prompt": "p", "responses": ["4", "4\u200b"]},
        {"id": "nfd", "prompt": "p", "responses": ["caf\u00e9", "cafe\u0301"]},
        {"id": "fine", "prompt": "p", "responses": ["Yes, sure.", "Yes, sure!"]},
    ]
    with caplog.at_level("WARNING", logger="lorarlhf.labelling"):
        items = read_candidates(write_jsonl(tmp_path / "c.jsonl", records))
    assert [item.responses for item in items] == [tuple(record["responses"]) for record in records]  # unchanged
    warnings = [record.getMessage() for record in caplog.records]
    assert warnings == [
        "c.jsonl, row 1 (item 'nbsp'): responses 0 and 1 read the same but are different texts: "
        "response 0 has U+00A0 NO-BREAK SPACE where response 1 has U+0020 SPACE",
        "c.jsonl, row 2 (item 'zwsp'): responses 0 and 1 read the same but are different texts: "
        "response 1 has U+200B ZERO WIDTH SPACE that response 0 has not",
        "c.jsonl, row 3 (item 'nfd'): responses 0 and 1 read the same but are different texts: composed "
        "differently (NFC vs NFD): response 0 has U+00E9 LATIN SMALL LETTER E WITH ACUTE where response 1 has "
        "U+0065 LATIN SMALL LETTER E + U+0301 COMBINING ACUTE ACCENT",
    ]
    from lorarlhf.labelling.app import _notes

    # The page says the same above the responses, by the names it shows them under.
    (note,) = _notes(["4", "4\u200b"], ["A", "B"], hidden=False).splitlines()
    assert note.startswith("**A and B read the same but are different texts:** B has U\\+200B ZERO WIDTH SPACE")
    assert _notes(["Yes", "No"], ["A", "B"], hidden=False) == ""


def test_sampled_candidates_are_k_different_reproducible_responses(tiny_model_dir, tmp_path):
    prompts = ["Hello there", "Tell me a story", "What is 2 + 2?"]
    sampling = SamplingConfig(max_new_tokens=12, temperature=1.0)
    report = sample_candidates(tiny_model_dir, prompts, tmp_path / "a.jsonl", n=3, sampling=sampling, quantize=None)
    assert (report.prompts, report.written, report.short, report.dropped) == (3, 3, 0, 0)
    records = read_jsonl(tmp_path / "a.jsonl")
    assert [r["prompt"] for r in records] == prompts
    assert all(len(r["responses"]) == len(set(r["responses"])) == 3 for r in records)
    assert records[0]["sampling"] == {"max_new_tokens": 12, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "seed": 0}
    assert [item.responses for item in read_candidates(tmp_path / "a.jsonl")] == [
        tuple(r["responses"]) for r in records
    ]
    # The same seed gives the same file; another batch size too, since each response has its own seed.
    sample_candidates(
        tiny_model_dir, prompts, tmp_path / "b.jsonl", n=3, sampling=sampling, quantize=None, batch_size=2
    )
    assert read_jsonl(tmp_path / "b.jsonl") == records
    sample_candidates(tiny_model_dir, prompts, tmp_path / "c.jsonl", n=3, sampling=sampling, quantize=None, seed=1)
    assert read_jsonl(tmp_path / "c.jsonl") != records


def test_sampling_takes_responses_that_read_the_same_as_one_and_samples_again(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from lorarlhf.labelling import candidates

    said = iter(["Yes, sure.", "Yes,\u00a0sure.", "Yes, sure.\u200b", "No."])  # what the model says, in turn

    def generate(hydra, prompts, sampling, seeds, count):
        return SimpleNamespace(responses=[next(said) for _ in prompts])

    monkeypatch.setattr(candidates, "_actor_of", lambda model, **options: (None, "stub"))
    monkeypatch.setattr(candidates, "generate_in_pieces", generate)
    report = sample_candidates("stub", ["Say yes."], tmp_path / "c.jsonl", n=2, batch_size=1)
    assert (report.written, report.dropped) == (1, 0)
    assert read_jsonl(tmp_path / "c.jsonl")[0]["responses"] == ["Yes, sure.", "No."]


def test_greedy_sampling_cannot_make_two_different_responses_and_says_so(tiny_model_dir, tmp_path):
    greedy = SamplingConfig(max_new_tokens=6, temperature=0)
    report = sample_candidates(tiny_model_dir, ["Hi", "Yo"], tmp_path / "g.jsonl", sampling=greedy, quantize=None)
    assert (report.written, report.dropped) == (0, 2)
    assert "2 left out" in str(report)
    assert (tmp_path / "g.jsonl").read_text() == ""


def test_sampling_never_replaces_a_file_unless_asked(tiny_model_dir, tmp_path):
    out = tmp_path / "c.jsonl"
    out.write_text("my earlier candidates\n")
    with pytest.raises(FileExistsError, match="exists; choose another --out"):
        sample_candidates(tiny_model_dir, ["Hi"], out, quantize=None)
    assert out.read_text() == "my earlier candidates\n"
    with pytest.raises(ValueError, match="n=1: candidates per prompt must be an integer >= 2"):
        sample_candidates(tiny_model_dir, ["Hi"], tmp_path / "new.jsonl", n=1)
    sampling = SamplingConfig(max_new_tokens=4)
    sample_candidates(tiny_model_dir, ["Hi"], out, quantize=None, sampling=sampling, overwrite=True)
    assert read_jsonl(out)[0]["prompt"] == "Hi"


# ---------------------------------------------------------------------------------------------------------
# The vote log


def test_a_pairwise_vote_and_a_ranking_are_vote_records_load_preferences_reads():
    pair = pair_votes(ITEMS[0], 1, 0, "b", "ann", reason="  friendlier ")
    assert len(pair) == 1
    assert {k: pair[0][k] for k in ("prompt", "a", "b", "votes", "annotators", "item", "kind", "reason")} == {
        "prompt": "Say hi.",
        "a": "Go away.",
        "b": "Hello!",
        "votes": ["b"],
        "annotators": ["ann"],
        "item": "p1",
        "kind": "pair",
        "reason": "friendlier",
    }
    ranking = ranking_votes(ITEMS[1], [2, 0, 1], "ann")
    assert [(r["a"], r["b"], r["votes"]) for r in ranking] == [
        ("Green, or blue.", "Blue.", ["a"]),
        ("Green, or blue.", "Seven.", ["a"]),
        ("Blue.", "Seven.", ["a"]),
    ]
    prefs = load_preferences(pair + ranking)
    assert [(p.prompt, p.chosen, p.rejected) for p in prefs] == [
        ("Say hi.", "Hello!", "Go away."),
        *[("Name a colour.", r["a"], r["b"]) for r in ranking],
    ]
    with pytest.raises(ValueError, match="order every response of the item once"):
        ranking_votes(ITEMS[1], [0, 0, 1], "ann")
    with pytest.raises(ValueError, match="one of"):
        pair_votes(ITEMS[0], 0, 1, "A", "ann")


APPENDS = 40
APPEND_VOTES = """
import sys
from lorarlhf.labelling import CandidateItem, VoteLog
from lorarlhf.labelling.votes import pair_votes

path, annotator, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
long = annotator * 50_000  # lines of 100+ KB: more than one unlocked write keeps whole
for i in range(count):
    VoteLog(path).append(pair_votes(CandidateItem(f"i{i}", f"prompt {i}", (long, "y")), 0, 1, "a", annotator))
"""


def test_two_annotators_appending_to_one_file_at_once_never_tear_a_line(tmp_path):
    path = tmp_path / "votes.jsonl"
    workers = [
        subprocess.Popen([sys.executable, "-c", APPEND_VOTES, str(path), name, str(APPENDS)]) for name in ("ann", "bob")
    ]
    assert [worker.wait(120) for worker in workers] == [0, 0]
    records, problems = VoteLog(path).read()
    assert problems == [] and len(records) == 2 * APPENDS
    for name in ("ann", "bob"):  # each annotator's votes whole, in the order they were made
        assert [vote["item"] for vote in VoteLog(path).votes_of(name)] == [f"i{i}" for i in range(APPENDS)]
    report = vote_agreement(path)
    assert (report.items, report.votes, report.annotators) == (2 * APPENDS, 2 * APPENDS, 2)


def test_a_line_cut_short_is_reported_and_the_next_vote_starts_a_new_line(tmp_path, caplog):
    path = tmp_path / "votes.jsonl"
    log = VoteLog(path)
    log.append(pair_votes(ITEMS[0], 0, 1, "a", "ann"))
    with path.open("a") as file:
        file.write('{"prompt": "cut sh')  # a power failure in the middle of a write
    log.append(pair_votes(ITEMS[2], 0, 1, "b", "ann"))
    records, problems = log.read()
    assert [r["item"] for r in records] == ["p1", "p3"]
    assert [(p.line, p.text) for p in problems] == [(2, '{"prompt": "cut sh')]
    assert [vote["item"] for vote in log.votes_of("ann")] == ["p1", "p3"]
    assert "line 2 is not a vote record" in caplog.text
    with pytest.raises(ValueError, match=r"votes.jsonl, row 2: "):  # training on it names the line to fix
        load_preferences(path)


# ---------------------------------------------------------------------------------------------------------
# One annotator's session


def test_a_session_resumes_at_the_first_unlabelled_item_of_its_annotator(tmp_path):
    log = VoteLog(tmp_path / "votes.jsonl")
    session = LabellingSession(ITEMS, log, "ann", shuffle=False)
    first = session.next()
    assert first.item.id == "p1" and first.responses == ["Hello!", "Go away."]
    assert session.vote("p1", "a", "polite")
    assert not session.vote("p1", "b")  # a double click: the first judgement stands
    assert session.next().item.id == "p2"
    session.skip("p2")
    assert session.next().item.id == "p3"  # skipped items come last

    resumed = LabellingSession(ITEMS, VoteLog(log.path), "ann", shuffle=False)
    assert (resumed.done, resumed.next().item.id) == (1, "p2")
    assert LabellingSession(ITEMS, VoteLog(log.path), "bob").done == 0  # another annotator starts afresh
    assert resumed.rank("p2", [1, 2, 0])
    assert resumed.vote("p3", "tie")
    assert resumed.next() is None and resumed.done == 3
    records = read_jsonl(log.path)
    assert [(r["item"], r["a"], r["b"], r["votes"]) for r in records] == [
        ("p1", "Hello!", "Go away.", ["a"]),
        ("p2", "Seven.", "Green, or blue.", ["a"]),
        ("p2", "Seven.", "Blue.", ["a"]),
        ("p2", "Green, or blue.", "Blue.", ["a"]),
        ("p3", "4", "5", ["tie"]),
    ]
    assert records[0]["reason"] == "polite" and "reason" not in records[1]
    with pytest.raises(ValueError, match="rank them instead"):
        LabellingSession(ITEMS, VoteLog(tmp_path / "other.jsonl"), "ann").vote("p2", "a")
    with pytest.raises(KeyError, match="no item 'nope'"):
        resumed.vote("nope", "a")


def test_a_ranking_is_entered_one_place_at_a_time_and_the_last_place_fills_itself(tmp_path):
    items = [CandidateItem("r", "p", ("w", "x", "y", "z"))]
    session = LabellingSession(items, VoteLog(tmp_path / "votes.jsonl"), "ann", shuffle=False)
    assert session.place("r", 2) == [2]
    assert session.place("r", 2) == [2] and session.place("r", 9) == [2]  # twice, or out of range: no change
    assert session.place("r", 0) == [2, 0]
    assert session.place("r", 3) == [2, 0, 3, 1]  # one left: it is last
    assert session.unplace("r") == [2, 0]  # the filled-in last place goes with the one before it
    assert session.unplace("r") == [2] and session.unplace("r") == [] and session.unplace("r") == []
    for position in (3, 1, 0):
        session.place("r", position)
    assert session.rank("r", session.draft("r"))
    assert session.draft("r") == [] and session.next() is None


def test_an_item_edited_under_the_same_id_is_labelled_again(tmp_path):
    log = VoteLog(tmp_path / "votes.jsonl")
    LabellingSession(ITEMS, log, "ann").vote("p1", "a")
    edited = [CandidateItem("p1", "Say hi.", ("Hello!", "Hi there.")), *ITEMS[1:]]
    assert LabellingSession(ITEMS, log, "ann").done == 1
    assert LabellingSession(edited, log, "ann").done == 0  # same id, other responses: a new item


def test_the_pairs_of_one_ranking_stay_one_record_for_winners_and_the_listwise_loss(tmp_path):
    from lorarlhf.data.demonstrations import winners
    from lorarlhf.methods.reward import rankings_of

    log = VoteLog(tmp_path / "votes.jsonl")
    for annotator in ("ann", "bob"):
        LabellingSession(ITEMS[1:2], log, annotator, shuffle=False).rank("p2", [2, 0, 1])
    prefs = load_preferences(log.path)
    assert len(prefs) == 3 and len({pair.group for pair in prefs}) == 1
    assert [(d.prompt, d.completion) for d in winners(prefs)] == [("Name a colour.", "Green, or blue.")]
    (ranking,) = rankings_of(prefs)
    assert ranking.responses == ["Green, or blue.", "Blue.", "Seven."]
    assert vote_agreement(log.path).per_annotator[0].agreement == 1.0


def test_a_name_repeated_within_one_record_is_two_votes_but_a_later_record_replaces():
    crowd = [{"prompt": "p", "a": "x", "b": "y", "votes": ["a", "b"], "annotators": ["crowd", "crowd"]}]
    assert vote_agreement(crowd).votes == 2
    later = {"prompt": "p", "a": "x", "b": "y", "votes": ["b"], "annotators": ["crowd"]}
    assert vote_agreement([*crowd, later]).votes == 1


def test_display_order_is_shuffled_per_annotator_and_item_and_the_vote_follows_what_was_shown(tmp_path):
    items = [CandidateItem(f"i{n}", "p", (f"first {n}", f"second {n}")) for n in range(40)]
    ann = LabellingSession(items, VoteLog(tmp_path / "v.jsonl"), "ann")
    orders = [ann.shown(item.id).order for item in items]
    assert 10 < sum(order == (1, 0) for order in orders) < 30  # about half are swapped
    assert orders == [LabellingSession(items, VoteLog(tmp_path / "v.jsonl"), "ann").shown(i.id).order for i in items]
    assert orders != [LabellingSession(items, VoteLog(tmp_path / "v.jsonl"), "bob").shown(i.id).order for i in items]
    swapped = next(item for item, order in zip(items, orders, strict=True) if order == (1, 0))
    ann.vote(swapped.id, "a")  # "A" is what the page showed first: the item's second response
    (record,) = read_jsonl(tmp_path / "v.jsonl")
    assert (record["a"], record["b"], record["votes"]) == (swapped.responses[1], swapped.responses[0], ["a"])


def test_votes_record_the_exact_texts_not_what_the_page_shows(tmp_path):
    item = CandidateItem("spoof", "Open \u202efdp.exe?", ("\u202etxt.exe", "Yes,\u00a0sure."))
    session = LabellingSession([item], VoteLog(tmp_path / "v.jsonl"), "ann", shuffle=False)
    session.vote("spoof", "a", "half an emoji \ud83d")  # a browser's text can hold a lone surrogate
    raw = (tmp_path / "v.jsonl").read_bytes()
    assert "\u202etxt.exe".encode() in raw and "Yes,\u00a0sure.".encode() in raw  # as bytes, not escaped
    (record,) = read_jsonl(tmp_path / "v.jsonl")
    assert (record["prompt"], record["a"], record["b"]) == (item.prompt, *item.responses)
    assert record["reason"] == "half an emoji \ufffd"
    assert LabellingSession([item], VoteLog(tmp_path / "v.jsonl"), "ann").next() is None  # resumes: labelled


def test_items_made_in_python_must_be_proper_unicode_too(tmp_path):
    broken = CandidateItem("cut", "p", ("fine", "cut \ud83d"))
    with pytest.raises(ValueError, match=r"item 'cut': response 1 is not valid Unicode: a lone surrogate U\+D83D"):
        LabellingSession([broken], VoteLog(tmp_path / "v.jsonl"), "ann")


def test_a_votes_file_line_that_is_not_proper_text_is_reported_not_read(tmp_path, caplog):
    path = tmp_path / "votes.jsonl"
    log = VoteLog(path)
    log.append(pair_votes(ITEMS[0], 0, 1, "a", "ann"))
    with path.open("ab") as file:
        file.write(b'{"prompt": "p", "a": "x\\ud83d", "b": "y", "votes": ["a"], "annotators": ["ann"]}\n')
        file.write(b'{"prompt": "p", "a": "\xff\xfe", "b": "y", "votes": ["a"], "annotators": ["ann"]}\n')
    log.append(pair_votes(ITEMS[2], 0, 1, "b", "ann"))
    records, problems = log.read()
    assert [r["item"] for r in records] == ["p1", "p3"] and [p.line for p in problems] == [2, 3]
    assert "\ufffd\ufffd" in problems[1].text  # shown as the replacement character, never a crash
    session = LabellingSession(ITEMS, log, "ann", shuffle=False)
    assert session.done == 2 and session.next().item.id == "p2"
    assert "line 2 is not a vote record" in caplog.text and "line 3 is not a vote record" in caplog.text


@pytest.mark.parametrize("name", ["", "  ", "two\nlines", "x" * 101, None, "ann\ud83d", "\u202enna", "a\u200bnn"])
def test_an_annotator_needs_a_one_line_name(tmp_path, name):
    with pytest.raises(ValueError, match="annotator"):
        LabellingSession(ITEMS, VoteLog(tmp_path / "v.jsonl"), name)


# ---------------------------------------------------------------------------------------------------------
# Pooling votes and agreement


def test_one_record_per_vote_pools_into_items_and_an_annotators_last_vote_counts():
    log = [
        {"prompt": "p", "a": "x", "b": "y", "votes": ["a"], "annotators": ["ann"]},
        {"prompt": "p", "a": "y", "b": "x", "votes": ["b"], "annotators": ["bob"]},  # shown the other way round
        {"prompt": "p", "a": "x", "b": "y", "votes": ["b"], "annotators": ["cy"]},
        {"prompt": "p", "a": "x", "b": "y", "votes": ["a"], "annotators": ["cy"]},  # cy changed their mind
        {"prompt": "q", "a": "x", "b": "y", "votes": ["a", "tie"]},
        {"prompt": "q", "a": "x", "b": "y", "votes": ["a"], "annotators": ["ann"]},
    ]
    prefs = load_preferences(log)
    assert [(p.prompt, p.chosen, p.rejected, p.weight) for p in prefs] == [("p", "x", "y", 1.0), ("q", "x", "y", 1.0)]
    report = vote_agreement(log)
    assert (report.items, report.votes, report.rated_items, report.annotators) == (2, 6, 2, 3)
    # p: a, a, a (P_i = 1); q: a, tie, a (P_i = 1/3).
    assert report.mean_pairwise_agreement == pytest.approx((1 + 1 / 3) / 2)
    assert [(a.name, a.votes, a.compared, a.agreement) for a in report.per_annotator] == [
        ("ann", 2, 2, 1.0),
        ("bob", 1, 2, 1.0),
        ("cy", 1, 2, 1.0),
    ]
    assert prefs.report.agreement == report


def test_per_annotator_agreement_by_hand():
    log = [
        {"prompt": "p", "a": "x", "b": "y", "votes": ["a", "a", "b"], "annotators": ["ann", "bob", "cy"]},
        {"prompt": "q", "a": "x", "b": "y", "votes": ["b", "a"], "annotators": ["ann", "cy"]},
        {"prompt": "r", "a": "x", "b": "y", "votes": ["tie"], "annotators": ["dee"]},
    ]
    report = vote_agreement(log)
    # ann: p agrees with bob, not cy; q disagrees with cy -> 1 of 3. bob: 1 of 2. cy: 0 of 3. dee: nobody else.
    assert [(a.name, a.votes, a.compared, a.agreement) for a in report.per_annotator] == [
        ("ann", 2, 3, pytest.approx(1 / 3)),
        ("bob", 1, 2, 0.5),
        ("cy", 2, 3, 0.0),
        ("dee", 1, 0, None),
    ]
    # Two by two, over the items both voted on: ann-bob agree on p; ann-cy on neither p nor q; bob-cy differ.
    assert [(p.first, p.second, p.shared, p.agreement) for p in report.annotator_pairs] == [
        ("ann", "bob", 1, 1.0),
        ("ann", "cy", 2, 0.0),
        ("bob", "cy", 1, 0.0),
    ]
    with pytest.raises(ValueError, match="no vote records"):
        vote_agreement([{"prompt": "p", "chosen": "x", "rejected": "y"}])


# ---------------------------------------------------------------------------------------------------------
# The request guard


PAGE = {"host": "127.0.0.1:7860"}


@pytest.mark.parametrize(
    "method, headers, refused",
    [
        ("GET", PAGE | {"sec-fetch-site": "none", "sec-fetch-mode": "navigate"}, None),  # typed in the address bar
        ("GET", PAGE | {"sec-fetch-site": "cross-site", "sec-fetch-mode": "navigate"}, None),  # a link, an iframe
        ("POST", PAGE | {"origin": "http://127.0.0.1:7860", "sec-fetch-site": "same-origin"}, None),
        ("GET", {"host": "localhost:7860", "sec-fetch-site": "same-origin", "sec-fetch-mode": "cors"}, None),
        ("GET", PAGE, None),  # the server's own start-up check
        ("POST", PAGE | {"origin": "http://evil.example", "sec-fetch-site": "cross-site"}, "Origin"),
        ("POST", PAGE | {"origin": "null"}, "Origin 'null'"),
        ("GET", PAGE | {"sec-fetch-site": "cross-site", "sec-fetch-mode": "no-cors"}, "cross-site request"),
        ("POST", PAGE | {"sec-fetch-site": "same-site", "sec-fetch-mode": "cors"}, "same-site request"),
        ("POST", PAGE, "POST without an Origin"),
        ("GET", {"host": "evil.example:7860", "sec-fetch-site": "same-origin"}, "Host 'evil.example:7860'"),
        ("GET", {}, "Host ''"),
    ],
)
def test_the_guard_lets_the_page_through_and_refuses_everything_else(method, headers, refused):
    reason = refusal(method, headers, hosts=allowed_hosts("127.0.0.1"))
    assert (reason is None) if refused is None else (refused in reason)


# CSP Level 3, "source-expression": scheme-source, host-source or a quoted keyword. host-part is "*" or
# ["*."] labels of ALPHA / DIGIT / "-" joined by "." (no IPv6 literal); port-part is digits or "*".
CSP_SCHEME = r"[A-Za-z][A-Za-z0-9+.-]*"
CSP_HOST_SOURCE = rf"({CSP_SCHEME}://)?(\*|(\*\.)?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.?)(:([0-9]+|\*))?(/[^;,\s]*)?"
CSP_SOURCE = re.compile(rf"{CSP_SCHEME}:|{CSP_HOST_SOURCE}|'self'|'none'")


def test_the_framing_policy_is_valid_csp_for_local_notebooks():
    sources = FRAME_ANCESTORS.split()
    assert [s for s in sources + COLAB_FRAME_ANCESTORS.split() if not CSP_SOURCE.fullmatch(s)] == []
    assert not CSP_SOURCE.fullmatch("http://[::1]:*")  # what browsers rejected, on every page load
    assert {"'self'", "http://localhost:*", "http://127.0.0.1:*", "vscode-webview:"} <= set(sources)


def test_a_server_opened_to_the_network_answers_to_its_own_names_only():
    hosts = allowed_hosts("0.0.0.0", ["Labeller.lan"])
    assert {"localhost", "127.0.0.1", "labeller.lan", socket.gethostname().lower()} <= hosts
    typed = {"sec-fetch-site": "none", "sec-fetch-mode": "navigate"}
    assert refusal("GET", {"host": "labeller.lan:7860"} | typed, hosts=hosts) is None
    # DNS rebinding: another site's name pointed at this machine, with that site as the Origin.
    rebound = {"host": "attacker.example:7860", "origin": "http://attacker.example:7860"}
    assert "--allow-host attacker.example" in refusal("POST", rebound | {"sec-fetch-site": "same-origin"}, hosts=hosts)
    assert "Origin" in refusal("POST", {"host": "labeller.lan:7860", "origin": "http://evil.example"}, hosts=hosts)
    assert allowed_hosts("192.168.1.5") == {"localhost", "127.0.0.1", "[::1]", "192.168.1.5", "[192.168.1.5]"}
    assert refusal("GET", {"host": "anything:7860"}, hosts=None) is None  # behind Colab's proxy


# ---------------------------------------------------------------------------------------------------------
# Command line


def test_sample_and_agreement_from_the_command_line(tiny_model_dir, tmp_path, capsys):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Hello"}, {"prompt": "Bye"}])
    out = tmp_path / "c.jsonl"
    argv = ["sample", str(tiny_model_dir), str(prompts), "--n", "3", "--out", str(out), "--quantize", "none"]
    assert main(argv + ["--max-new-tokens", "8", "--seed", "3"]) == 0
    assert "2 of 2 prompts written" in capsys.readouterr().out
    assert [len(item.responses) for item in read_candidates(out)] == [3, 3]
    assert main(argv) == 2
    assert "exists; choose another --out" in capsys.readouterr().err

    votes = write_jsonl(
        tmp_path / "votes.jsonl",
        [
            {"prompt": "p", "a": "x", "b": "y", "votes": ["a"], "annotators": ["ann"]},
            {"prompt": "p", "a": "x", "b": "y", "votes": ["b"], "annotators": ["bob"]},
            {"prompt": "q", "a": "\x1b[2Jx", "b": "y", "votes": ["a"], "annotators": ["ann"]},
            {"prompt": "q", "a": "\x1b[2Jx", "b": "y", "votes": ["a"], "annotators": ["bob"]},
        ],
    )
    assert main(["agreement", str(votes)]) == 0
    printed = capsys.readouterr().out
    assert "2 items, 4 votes from 2 annotators" in printed
    assert "pairwise agreement 0.50 over 2 items" in printed
    assert "ann                           2  0.50 of 2" in printed
    assert "row 1: a 1 / b 1 / tie 0 (agreement 0.00)" in printed
    assert "\x1b" not in printed  # model text is quoted: no terminal escape gets through

    assert main(["agreement", str(votes), "--plot", str(tmp_path / "agreement.png")]) == 0
    assert (tmp_path / "agreement.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["agreement", str(votes), "--plot", str(tmp_path / "agreement.png")]) == 2
    assert "agreement.png exists" in capsys.readouterr().err
    alone = write_jsonl(tmp_path / "alone.jsonl", [{"prompt": "p", "a": "x", "b": "y", "votes": ["a"]}])
    assert main(["agreement", str(alone), "--plot", str(tmp_path / "alone.png")]) == 0
    assert "no plot: no two named annotators" in capsys.readouterr().out and not (tmp_path / "alone.png").exists()


def test_label_command_errors_are_one_line(tmp_path, capsys, monkeypatch):
    candidates = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "p", "responses": ["x", "y"]}])
    assert main(["label", str(tmp_path / "missing.jsonl"), "--annotator", "ann"]) == 2
    assert "missing.jsonl: no such file" in capsys.readouterr().err
    assert main(["label", str(candidates), "--annotator", " "]) == 2
    assert "annotator must be a non-empty name" in capsys.readouterr().err
    assert main(["label", str(candidates), "--annotator", "ann", "--guidelines", "nope.md"]) == 2
    assert "guidelines file nope.md does not exist" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if the [label] extra were not installed
    assert main(["label", str(candidates), "--annotator", "ann"]) == 2
    assert "pip install 'lorarlhf[label]'" in capsys.readouterr().err
    assert not (tmp_path / "votes.jsonl").exists()


def test_guidelines_are_a_file_the_text_itself_or_sensible_defaults(tmp_path):
    from lorarlhf.labelling.app import DEFAULT_GUIDELINES, _guidelines_text

    rules = tmp_path / "rules.md"
    rules.write_text("# Our rules\nShorter is better.")
    assert _guidelines_text(str(rules)) == "# Our rules\nShorter is better."
    assert _guidelines_text("Prefer answers that cite rules.md") == "Prefer answers that cite rules.md"
    assert _guidelines_text(None) == DEFAULT_GUIDELINES and "--guidelines FILE" in DEFAULT_GUIDELINES
    with pytest.raises(FileNotFoundError, match="guidelines file missing.md does not exist"):
        _guidelines_text("missing.md")
    (tmp_path / "latin1.md").write_bytes("Prefer caf\u00e9 answers.".encode("latin-1"))
    with pytest.raises(ValueError, match="guidelines file .*latin1.md is not UTF-8 text"):
        _guidelines_text(str(tmp_path / "latin1.md"))
    with pytest.raises(ValueError, match="the guidelines text is not valid Unicode: a lone surrogate U\\+DCFF"):
        _guidelines_text("Prefer \udcff answers.")  # e.g. a command-line argument in bytes that are not UTF-8


@pytest.mark.kernels
def test_a_votes_file_trains_with_align(tiny_model_dir, tmp_path, stat_seed, measured):
    from lorarlhf import align

    log = VoteLog(tmp_path / "votes.jsonl")
    items = [CandidateItem(f"i{n}", f"Question {n}?", (f"Yes, {n}.", f"No {n}!")) for n in range(4)]
    for annotator in ("ann", "bob"):
        session = LabellingSession(items, log, annotator, shuffle=False)
        for item in items:
            session.vote(item.id, "a")
    result = align(
        tiny_model_dir, log.path, method="dpo", output_dir=tmp_path / "run", steps=4, batch_size=2, lr=1e-2,
        seed=stat_seed,
    )  # fmt: skip
    loss = measured("dpo/train_loss_last", result.metrics["dpo/train_loss_last"], below=0.6932)
    # bar log 2: seed 0 gives 0.35 (triton 0.35); spread over 5 seeds 0.27 (benchmarks/seed_spread.py)
    assert loss < 0.6932  # below log 2: the votes moved the actor
    report = load_preferences(log.path).report
    assert (report.pairs, report.agreement.items, report.agreement.mean_pairwise_agreement) == (4, 4, 1.0)

    # The next round samples from the run's trained actor: same prompts and seed, other responses.
    prompts, sampling = [f"Question {n}?" for n in range(4)], SamplingConfig(max_new_tokens=16)
    sample_candidates(tiny_model_dir, prompts, tmp_path / "base.jsonl", sampling=sampling)  # NF4, like the run
    sample_candidates(result.output_dir, prompts, tmp_path / "actor.jsonl", sampling=sampling)
    base, actor = read_jsonl(tmp_path / "base.jsonl"), read_jsonl(tmp_path / "actor.jsonl")
    assert actor[0]["model"] == str(result.output_dir)
    assert [r["responses"] for r in actor] != [r["responses"] for r in base]


def test_every_pair_of_a_ranking_is_one_vote():
    item = CandidateItem("r", "p", tuple("abcde"))
    votes = ranking_votes(item, [4, 3, 2, 1, 0], "ann")
    assert [(v["a"], v["b"]) for v in votes] == list(combinations("edcba", 2))
