"""Preference data: every record shape from every source format, exact pair counts, named errors, votes.

Independent references: pair sets written out by hand, Fleiss' kappa from its published worked example
(Wikipedia) and from a hand computation, Bradley-Terry strengths from exact expected win counts, and the
token counts of lorarlhf.model.tokenization for the max_length rule.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lorarlhf.data import (
    SUPPORTED_EXTENSIONS,
    AgreementReport,
    Conversation,
    PreferenceDataError,
    PreferencePair,
    Preferences,
    bradley_terry,
    fleiss_kappa,
    load_preferences,
    load_prompts,
    split_eval,
)
from lorarlhf.model.chat import ChatFormat

HH_PROMPT = "\n\nHuman: Hi!\n\nAssistant: Hello.\n\nHuman: Capital of France?\n\nAssistant:"

# One record of every shape whose fields are plain strings and lists, and the pairs each must become.
PLAIN = [
    {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
    {"chosen": HH_PROMPT + " Paris, of course.", "rejected": HH_PROMPT + " Paris is not it; Lyon."},
    {"prompt": "Name a colour", "responses": ["red", "blue", "green", "teal"], "ranks": [2, 1, 4, 3]},
    {"prompt": "Name a fruit", "ranking": ["apple", "pear", "fig"]},
    {"prompt": "Rate these", "responses": ["x", "y", "z"], "scores": [7, 7, 2], "utility": "open"},
    {"prompt": "Which is kinder?", "a": "Thanks!", "b": "Whatever.", "votes": ["a", "a", "b"]},
]
PLAIN_PAIRS = [
    ("2+2?", "4", "5"),
    (HH_PROMPT, " Paris, of course.", " Paris is not it; Lyon."),
    *[("Name a colour", c, r) for c, r in [("blue", "red"), ("blue", "teal"), ("blue", "green")]],
    *[("Name a colour", c, r) for c, r in [("red", "teal"), ("red", "green"), ("teal", "green")]],
    *[("Name a fruit", c, r) for c, r in [("apple", "pear"), ("apple", "fig"), ("pear", "fig")]],
    ("Rate these", "x", "z"),
    ("Rate these", "y", "z"),
    ("Which is kinder?", "Thanks!", "Whatever."),
]
PLAIN_SHAPES = {"pair": 1, "hh-rlhf": 1, "ranking": 2, "ratings": 1, "votes": 1}


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


# Messages in place of text: an explicit message prompt, and TRL's implicit-prompt pairs.
CONVERSATIONAL = [
    {
        "prompt": [{"role": "system", "content": "Be brief."}, user("Capital of France?")],
        "chosen": [assistant("Paris.")],
        "rejected": [assistant("Lyon.")],
    },
    {"chosen": [user("Hi"), assistant("Hello!")], "rejected": [user("Hi"), assistant("Go away.")]},
    {
        "chosen": [user("Hi"), assistant("Hello!"), user("Joke?"), assistant("Knock knock.")],
        "rejected": [user("Hi"), assistant("Hello!"), user("Joke?"), assistant("No.")],
    },
]
CONVERSATIONAL_PAIRS = [  # the prompts stay messages, system prompt and history included
    (Conversation([{"role": "system", "content": "Be brief."}, user("Capital of France?")]), "Paris.", "Lyon."),
    (Conversation([user("Hi")]), "Hello!", "Go away."),
    (Conversation([user("Hi"), assistant("Hello!"), user("Joke?")]), "Knock knock.", "No."),
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def triples(pairs):
    return [(p.prompt, p.chosen, p.rejected) for p in pairs]


@pytest.fixture(scope="module")
def tokenizer():
    from lorarlhf.model.tiny import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture
def offline_datasets(monkeypatch, tmp_path):
    """datasets with its cache in tmp_path and the Hub switched off: a test never downloads or litters."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    return datasets


# ---------------------------------------------------------------------------------------------------------
# Writing records in every format


def all_columns(records):
    """Every row with every column (None where absent): parquet and Dataset.from_list take columns from row 0."""
    columns = list(dict.fromkeys(key for record in records for key in record))
    return [{column: record.get(column) for column in columns} for record in records]


def write_jsonl(records, path):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def cell(value):
    return "" if value is None else json.dumps(value) if isinstance(value, list) else value


def write_csv(records, path):
    """Lists (and message lists in text fields) as JSON cells, absent fields as empty cells."""
    rows = all_columns(records)
    with path.open("w", encoding="utf-8", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: cell(v) for k, v in row.items()})


def write_source(records, fmt, tmp_path, datasets=None):
    if fmt == "records":
        return records
    if fmt == "dataset":
        return datasets.Dataset.from_list(all_columns(records))
    if fmt == "directory":
        (tmp_path / "prefs-dir").mkdir()
        write_jsonl(records, tmp_path / "prefs-dir" / "train.jsonl")
        return tmp_path / "prefs-dir"
    path = tmp_path / f"prefs.{fmt.removesuffix('-object')}"
    if fmt == "jsonl":
        write_jsonl(records, path)
    elif fmt == "json":
        path.write_text(json.dumps(records), encoding="utf-8")
    elif fmt == "json-object":
        path.write_text(json.dumps({"version": 1, "data": records}), encoding="utf-8")
    elif fmt == "csv":
        write_csv(records, path)
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(all_columns(records)), path)
    return str(path) if fmt == "json" else path  # both str and Path are sources


FORMATS = ["records", "jsonl", "json", "json-object", "csv", "parquet", "dataset", "directory"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_shape_from_every_format(fmt, tmp_path, request):
    datasets = request.getfixturevalue("offline_datasets") if fmt in ("dataset", "directory") else None
    prefs = load_preferences(write_source(PLAIN, fmt, tmp_path, datasets))
    assert isinstance(prefs, Preferences)
    assert triples(prefs) == PLAIN_PAIRS
    assert prefs.report.shapes == PLAIN_SHAPES
    assert prefs.report.rows == 6 and prefs.report.pairs == len(PLAIN_PAIRS) == 14
    assert prefs.report.dropped == {"tie": 1, "duplicate": 0, "too_long": 0, "unpaired": 0, "multi_turn": 0}
    assert [p.group for p in prefs] == [0, 1, 2, 2, 2, 2, 2, 2, 3, 3, 3, 4, 4, 5]
    assert [p.utility for p in prefs if p.prompt == "Rate these"] == ["open", "open"]
    assert {p.utility for p in prefs if p.prompt != "Rate these"} == {None}


@pytest.mark.parametrize("fmt", FORMATS)
def test_conversational_records_from_every_format(fmt, tmp_path, request):
    datasets = request.getfixturevalue("offline_datasets") if fmt in ("dataset", "directory") else None
    prefs = load_preferences(write_source(CONVERSATIONAL, fmt, tmp_path, datasets))
    assert triples(prefs) == CONVERSATIONAL_PAIRS
    assert prefs.report.shapes == {"pair": 1, "conversation": 2}


def test_message_prompts_use_the_chat_template_when_the_tokenizer_has_one(tokenizer):
    assert not tokenizer.chat_template  # the fallback rendering is what the other tests see
    from lorarlhf.model.tiny import build_tiny_tokenizer

    with_template = build_tiny_tokenizer()  # a fresh one: the shared fixture keeps no template
    with_template.chat_template = CHAT_TEMPLATE
    prefs = load_preferences(CONVERSATIONAL, tokenizer=with_template)
    assert [ChatFormat(tokenizer).prompt_text(p.prompt) for p in prefs] == [
        "system: Be brief.\nuser: Capital of France?\nassistant:",
        "user: Hi\nassistant:",
        "user: Hi\nassistant: Hello!\nuser: Joke?\nassistant:",
    ]
    assert [ChatFormat(with_template).prompt_text(p.prompt) for p in prefs] == [
        "<|system|>Be brief.\n<|user|>Capital of France?\n<|assistant|>",
        "<|user|>Hi\n<|assistant|>",
        "<|user|>Hi\n<|assistant|>Hello!\n<|user|>Joke?\n<|assistant|>",
    ]
    assert load_prompts(CONVERSATIONAL[:1], tokenizer=with_template) == [prefs[0].prompt]


def test_a_response_is_one_assistant_turn_and_a_shared_answer_start_stays_in_it():
    record = {
        "chosen": [user("Q"), assistant("Well,"), assistant("yes.")],
        "rejected": [user("Q"), assistant("Well,"), assistant("no.")],
    }
    with pytest.raises(PreferenceDataError, match=r"row 1, field 'chosen': the response is 2 assistant messages"):
        load_preferences([record])  # not silently one turn: the template would write two


def test_hh_rlhf_prompt_is_the_shared_prefix_through_the_last_assistant_turn():
    chosen, rejected = PLAIN[1]["chosen"], PLAIN[1]["rejected"]
    (pair,) = load_preferences([PLAIN[1]])
    # The responses share " Paris", yet the cut is at the marker, and nothing is lost or added.
    assert pair.prompt == HH_PROMPT
    assert pair.prompt + pair.chosen == chosen and pair.prompt + pair.rejected == rejected
    assert load_prompts([PLAIN[1]]) == [HH_PROMPT]


def test_csv_text_cells_stay_text_unless_they_are_message_lists(tmp_path):
    path = tmp_path / "prefs.csv"
    path.write_text(
        'prompt,chosen,rejected\n"[1, 2] is a list?",yes,"[not json"\n'
        '"[{""role"": ""user"", ""content"": ""Hi""}]",hello,go away\n',
        encoding="utf-8",
    )
    assert triples(load_preferences(path)) == [
        ("[1, 2] is a list?", "yes", "[not json"),
        (Conversation([user("Hi")]), "hello", "go away"),
    ]


def test_a_hub_id_goes_to_datasets_load_dataset_with_the_split(monkeypatch, offline_datasets):
    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return offline_datasets.Dataset.from_list([{"prompt": "p", "chosen": "c", "rejected": "r"}])

    monkeypatch.setattr(offline_datasets, "load_dataset", fake_load_dataset)
    prefs = load_preferences("someone/preferences", split="test")
    assert calls == [("someone/preferences", "test")]
    assert triples(prefs) == [("p", "c", "r")]
    assert prefs.report.source == "someone/preferences[test]"


def test_a_dataset_dict_is_read_at_the_split(offline_datasets):
    splits = offline_datasets.DatasetDict(
        train=offline_datasets.Dataset.from_list([{"prompt": "p", "chosen": "c", "rejected": "r"}]),
        test=offline_datasets.Dataset.from_list([{"prompt": "q", "chosen": "c", "rejected": "r"}]),
    )
    assert triples(load_preferences(splits, split="test")) == [("q", "c", "r")]
    with pytest.raises(ValueError, match=r"no split 'dev'; its splits are \['train', 'test'\]"):
        load_preferences(splits, split="dev")


# ---------------------------------------------------------------------------------------------------------
# Exact counts, weights and margins


def test_a_four_way_ranking_gives_six_pairs_weighted_one_sixth_with_weight_rankings():
    record = PLAIN[2]
    assert [p.weight for p in load_preferences([record])] == [1.0] * 6
    weighted = load_preferences([record], weight_rankings=True)
    assert len(weighted) == 6 and all(p.weight == pytest.approx(1 / 6) for p in weighted)
    assert sum(p.weight for p in weighted) == pytest.approx(1.0)  # InstructGPT: each ranked prompt counts once
    assert {p.margin for p in weighted} == {None}


def test_ratings_pair_every_strictly_better_response_and_drop_equal_scores_as_ties():
    record = {"prompt": "Rate", "responses": ["x", "y", "z", "w"], "scores": [7, 7, 2, 9.5]}
    prefs = load_preferences([record], score_margin=True)
    assert [(p.chosen, p.rejected, p.margin) for p in prefs] == [
        ("w", "x", 2.5),
        ("w", "y", 2.5),
        ("w", "z", 7.5),
        ("x", "z", 5.0),
        ("y", "z", 5.0),
    ]
    assert prefs.report.dropped["tie"] == 1
    assert {p.margin for p in load_preferences([record])} == {None}
    assert {p.weight for p in load_preferences([record], weight_rankings=True)} == {1.0}  # rankings only


def test_majority_votes_weight_by_agreement_and_drop_even_splits():
    records = [
        {"prompt": "p", "a": "A", "b": "B", "votes": ["b", "b", "a", "tie", "b"]},
        {"prompt": "p", "a": "A", "b": "C", "votes": ["a", "b", "tie"]},
        {"prompt": "p", "a": "B", "b": "C", "votes": ["tie", "tie"]},
        {"prompt": "p", "a": "A", "b": "D", "votes": ["a"]},
    ]
    prefs = load_preferences(records)
    assert [(p.chosen, p.rejected, p.weight) for p in prefs] == [("B", "A", 0.75), ("A", "D", 1.0)]
    assert prefs.report.dropped["tie"] == 2


def test_duplicates_are_dropped_and_the_report_says_what_happened(caplog):
    records = [
        {"prompt": "p", "chosen": "c", "rejected": "r"},
        {"prompt": "q", "ranking": ["c", "r", "x"]},
        {"prompt": "p", "chosen": "c", "rejected": "r", "utility": "closed"},
        {"prompt": "s", "responses": ["x", "y", "z"], "scores": [1, 1, 0]},
        {"prompt": "q", "responses": ["c", "r"], "ranks": [1, 2]},
    ]
    with caplog.at_level(logging.INFO, logger="lorarlhf.data"):
        prefs = load_preferences(records)
    assert triples(prefs) == [("p", "c", "r"), ("q", "c", "r"), ("q", "c", "x"), ("q", "r", "x")] + [
        ("s", "x", "z"),
        ("s", "y", "z"),
    ]
    assert prefs[0].utility is None  # the first copy is the one kept
    assert str(prefs.report) == "records: 5 rows (pair 2, ranking 2, ratings 1) -> 6 pairs; dropped 1 tie, 2 duplicates"
    assert str(prefs.report) in caplog.text
    assert str(load_preferences(records[:1]).report) == "records: 1 row (pair 1) -> 1 pair; nothing dropped"


def test_too_long_pairs_are_dropped_by_the_shared_tokenization_rule(tokenizer):
    from lorarlhf.model.tokenization import encode_prompt_response

    records = [
        {"prompt": "abc", "chosen": "xyz", "rejected": "q"},  # longest: 1 BOS + 3 + 3 + 1 EOS = 8 tokens
        {"prompt": "abc", "chosen": "ok", "rejected": "a much longer answer"},
        {"prompt": "abcd", "chosen": "xyz", "rejected": "q"},  # 9 tokens
    ]
    prefs = load_preferences(records, tokenizer=tokenizer, max_length=8)
    assert triples(prefs) == [("abc", "xyz", "q")]
    assert prefs.report.dropped["too_long"] == 2
    assert "dropped 2 too long" in str(prefs.report)
    # The rule is the one the trainers tokenize with: a kept pair fits in max_length, a dropped one does not.
    for pair in load_preferences(records):
        batch = encode_prompt_response(tokenizer, [pair.prompt] * 2, [pair.chosen, pair.rejected])
        assert (batch.attention_mask.sum(1).max().item() <= 8) == (pair in prefs)
    with pytest.raises(ValueError, match="max_length needs a tokenizer"):
        load_preferences(records, max_length=8)


# ---------------------------------------------------------------------------------------------------------
# Bad input: named by file, row and field


GOOD = {"prompt": "p", "chosen": "c", "rejected": "r"}


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"prompt": "p", "rejected": "r"}, r"row 3, field 'chosen': missing"),
        ({"prompt": "p", "chosen": "", "rejected": "r"}, r"row 3, field 'chosen': empty"),
        ({"prompt": " \n", "chosen": "c", "rejected": "r"}, r"row 3, field 'prompt': empty"),
        ({"prompt": "p", "chosen": 3, "rejected": "r"}, r"row 3, field 'chosen': must be a string or a list .*got int"),
        ({"prompt": "p", "chosen": "same", "rejected": "same"}, r"row 3, field 'rejected': same text as 'chosen'"),
        (
            {"prompt": "p", "responses": ["x", "y", "z"], "ranks": [1, 2, 2]},
            r"row 3, field 'ranks': must be a permutation of 1\.\.3 \(1 = best\), got \[1, 2, 2\]",
        ),
        ({"prompt": "p", "responses": ["x", "y"], "ranks": [0, 1]}, r"row 3, field 'ranks': must be a permutation"),
        ({"prompt": "p", "responses": ["x", "y", "z"], "ranks": [1, 2]}, r"row 3, field 'ranks': 2 ranks for 3"),
        ({"prompt": "p", "responses": ["x", "y", "z"], "scores": [1, 2]}, r"row 3, field 'scores': 2 scores for 3"),
        ({"prompt": "p", "responses": ["x"], "ranks": [1]}, r"row 3, field 'responses': needs at least 2 entries"),
        ({"prompt": "p", "ranking": ["x"]}, r"row 3, field 'ranking': needs at least 2 entries, got 1"),
        ({"prompt": "p", "responses": "xy", "scores": [1, 2]}, r"row 3, field 'responses': must be a list, got str"),
        ({"prompt": "p", "responses": ["x", 3], "scores": [1, 2]}, r"row 3, field 'responses\[1\]': must be a str"),
        ({"prompt": "p", "responses": ["x", "y"], "scores": [1, "hi"]}, r"row 3, field 'scores': .*finite numbers"),
        ({"prompt": "p", "responses": ["x", "x"], "ranks": [1, 2]}, r"row 3, field 'responses': two entries are"),
        (
            {"prompt": "p", "a": "x", "b": "y", "votes": ["a", "A"]},
            r"row 3, field 'votes': unknown label 'A' at position 1; the allowed labels are 'a', 'b', 'tie'",
        ),
        ({"prompt": "p", "a": "x", "b": "y", "votes": []}, r"row 3, field 'votes': empty"),
        ({"prompt": "p", "a": "x", "b": "x", "votes": ["a"]}, r"row 3, field 'b': same text as 'a'"),
        (
            {"prompt": "p", "a": "x", "b": "y", "votes": ["a"], "annotators": ["ann1", "ann2"]},
            r"row 3, field 'annotators': 2 annotators for 1 votes",
        ),
        ({"prompt": "p", "a": "x", "votes": ["a"]}, r"row 3, field 'b': missing"),
        (
            {"question": "q", "answer": "a"},
            r"row 3: fields \['answer', 'question'\] match no record shape; the shapes are pair: prompt, chosen, "
            r"rejected; hh-rlhf: .*ranking: .*ratings: prompt, responses, scores",
        ),
        ({"prompt": "p"}, r"row 3: has only a 'prompt' and no responses .* with load_prompts\(\)"),
        ({"prompt": "p", "responses": ["x", "y"]}, r"row 3, field 'responses': responses need 'ranks' .* 'scores'"),
        (
            {"prompt": "p", "chosen": "c", "rejected": "r", "scores": [1, 2]},
            r"row 3: has fields of more than one record shape: ratings \(scores\); pair \(chosen, rejected\)",
        ),
        ({"prompt": "p", "ranking": ["x", "y"], "ranks": [1, 2]}, r"row 3, field 'ranking': give either"),
        ({"chosen": "Human: hi. Bot: yo", "rejected": "Human: hi. Bot: no"}, r"row 3, field 'chosen': without a"),
        ({"chosen": [user("Hi"), assistant("A")], "rejected": "B"}, r"row 3, field 'rejected': chosen is a message"),
        ({"chosen": [assistant("A")], "rejected": [assistant("B")]}, r"row 3, field 'chosen': .*share no leading"),
        (
            {"prompt": "p", "chosen": [{"role": "assistant"}], "rejected": "r"},
            r"row 3, field 'chosen': message 0 needs",
        ),
        ({"prompt": "p", "chosen": [user("c")], "rejected": "r"}, r"row 3, field 'chosen': .*only assistant messages"),
        ({"prompt": "p", "chosen": [], "rejected": "r"}, r"row 3, field 'chosen': empty"),
        (
            {"prompt": [{"content": "x"}], "chosen": "c", "rejected": "r"},
            r"row 3, field 'prompt': message 0 must",
        ),
        ({"prompt": "p", "chosen": "c", "rejected": "r", "utility": 1}, r"row 3, field 'utility': must be a string"),
        (["p", "c", "r"], r"row 3: a record must be an object with named fields, got list"),
    ],
)
def test_bad_records_are_named_by_file_row_and_field(tmp_path, record, message):
    write_jsonl([GOOD, {"prompt": "q", "ranking": ["x", "y"]}, record], tmp_path / "prefs.jsonl")
    with pytest.raises(PreferenceDataError, match=r"^prefs\.jsonl, " + message):
        load_preferences(tmp_path / "prefs.jsonl")


def test_a_broken_json_line_is_named_by_its_line(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + json.dumps(GOOD) + "\n\n" + '{"prompt": "p", "chosen": \n')
    with pytest.raises(PreferenceDataError, match=r"^prefs\.jsonl, row 5: not valid JSON \(Expecting value"):
        load_preferences(path)


def test_errors_in_other_formats_are_named_too(tmp_path):
    csv_path = tmp_path / "prefs.csv"
    csv_path.write_text('prompt,responses,ranks\np,"[""x"", ""y""]","[1, 2]"\np,"[""x"", ""y""]","1,2"\n')
    with pytest.raises(PreferenceDataError, match=r"^prefs\.csv, row 2, field 'ranks': a CSV list cell must hold"):
        load_preferences(csv_path)
    json_path = tmp_path / "prefs.json"
    json_path.write_text(json.dumps({"rows": [GOOD]}))
    with pytest.raises(PreferenceDataError, match=r"^prefs\.json: .*list under 'data' or 'train'; its keys are"):
        load_preferences(json_path)
    json_path.write_text("[{]")
    with pytest.raises(PreferenceDataError, match=r"^prefs\.json: not valid JSON"):
        load_preferences(json_path)
    with pytest.raises(PreferenceDataError, match=r"^records, row 2, field 'chosen': missing"):
        load_preferences([GOOD, {"prompt": "p", "rejected": "r"}])


def test_byte_order_marks_are_not_data_and_other_encodings_are_named(tmp_path):
    (tmp_path / "prefs.csv").write_text("prompt,chosen,rejected\np,c,r\n", encoding="utf-8-sig")  # as Excel saves
    (tmp_path / "prefs.jsonl").write_text(json.dumps(GOOD) + "\n", encoding="utf-8-sig")
    for name in ("prefs.csv", "prefs.jsonl"):
        assert triples(load_preferences(tmp_path / name)) == [("p", "c", "r")]
    (tmp_path / "latin.jsonl").write_bytes(
        json.dumps(GOOD).encode() + b"\n" + '{"prompt": "caf\xe9"}'.encode("latin-1")
    )
    with pytest.raises(PreferenceDataError, match=r"^latin\.jsonl, row 2: not UTF-8 text"):
        load_preferences(tmp_path / "latin.jsonl")


def test_bad_sources_are_refused_clearly(tmp_path):
    (tmp_path / "prefs.txt").write_text("prompt\tchosen\n")
    with pytest.raises(PreferenceDataError, match=r"prefs\.txt: unsupported file type '\.txt'; supported files are "):
        load_preferences(tmp_path / "prefs.txt")
    assert SUPPORTED_EXTENSIONS == (".jsonl", ".json", ".csv", ".parquet")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_preferences(str(tmp_path / "missing.jsonl"))
    with pytest.raises(FileNotFoundError, match="missing.parquet"):
        load_preferences("missing.parquet")  # a data-file name, never taken for a Hub id
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_preferences(tmp_path / "nowhere")
    with pytest.raises(TypeError, match="source must be a path, a list of dicts"):
        load_preferences(42)
    with pytest.raises(ValueError, match=r"aggregate='mean' is not an aggregation; choose one of \('majority'"):
        load_preferences([GOOD], aggregate="mean")


def test_a_source_with_no_usable_pairs_is_an_error_carrying_the_report():
    only_ties = [{"prompt": "p", "responses": ["x", "y"], "scores": [3, 3]}]
    with pytest.raises(PreferenceDataError, match=r"^records: no usable preference pairs \(records: 1 row .*1 tie"):
        load_preferences(only_ties)
    with pytest.raises(PreferenceDataError, match=r"no usable preference pairs \(records: 0 rows"):
        load_preferences([])


# ---------------------------------------------------------------------------------------------------------
# Votes: Bradley-Terry and agreement


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def spearman(x, y):
    rank_x, rank_y = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rank_x, rank_y)[0, 1])


def simulate_votes(seed=0, n_responses=8, n_annotators=30, pairs_per_annotator=10, tie_rate=0.1):
    """Annotators who vote by the BT model on random pairs of one prompt's responses; one record per pair."""
    rng = np.random.default_rng(seed)
    true = rng.permutation(np.linspace(-1.5, 1.5, n_responses))
    all_pairs = [(i, j) for i in range(n_responses) for j in range(i + 1, n_responses)]
    votes: dict[tuple[int, int], list[tuple[str, str]]] = {pair: [] for pair in all_pairs}
    for annotator in range(n_annotators):
        for k in rng.choice(len(all_pairs), size=pairs_per_annotator, replace=False):
            i, j = all_pairs[k]
            u = rng.random()
            label = "tie" if u < tie_rate else "a" if rng.random() < sigmoid(true[i] - true[j]) else "b"
            votes[(i, j)].append((f"annotator {annotator}", label))
    records = [
        {
            "prompt": "Which answer is best?",
            "a": f"response {i}",
            "b": f"response {j}",
            "votes": [label for _, label in cast],
            "annotators": [name for name, _ in cast],
        }
        for (i, j), cast in votes.items()
        if cast
    ]
    return true, records


def test_bradley_terry_recovers_the_order_of_noisy_simulated_annotators(stat_seed, measured):
    true, records = simulate_votes(seed=stat_seed)
    assert len(records) == 28  # every pair of the 8 responses was judged
    index = {f"response {i}": i for i in range(8)}
    comparisons = []
    for r in records:
        a, b = index[r["a"]], index[r["b"]]
        for label in r["votes"]:
            comparisons += {"a": [(a, b)], "b": [(b, a)], "tie": [(a, b, 0.5), (b, a, 0.5)]}[label]
    strengths = bradley_terry(comparisons, 8)
    # bar 0.9: seed 0 gives 0.976; spread over 5 seeds 0.024 (benchmarks/seed_spread.py)
    assert measured("spearman(strengths, true)", spearman(strengths, true), above=0.9) >= 0.9

    prefs = load_preferences(records, aggregate="bradley_terry")
    assert len(prefs) == 28 and prefs.report.dropped["tie"] == 0
    # One prompt, one fit: the pairs follow one total order, so a response's wins are its rank in the fit.
    wins = np.zeros(8)
    for pair in prefs:
        wins[index[pair.chosen]] += 1
        gap = strengths[index[pair.chosen]] - strengths[index[pair.rejected]]
        assert pair.margin == pytest.approx(gap, abs=1e-8) and pair.margin > 0
        assert pair.weight == pytest.approx(1 / (1 + math.exp(-pair.margin)))
        assert 0.5 < pair.weight <= 1
    assert sorted(wins) == list(range(8))
    # bar 0.9: seed 0 gives 0.976; spread 0.024
    assert measured("spearman(wins, true)", spearman(wins, true), above=0.9) >= 0.9

    # Where the annotators were clear (80% or more one way), majority and BT agree. One draw of votes has 4 to 17
    # clear records over 5 seeds, so this checks those of 3 draws.
    clear_records = 0
    for draw in (records, simulate_votes(seed=stat_seed + 100)[1], simulate_votes(seed=stat_seed + 200)[1]):
        majority = {(p.chosen, p.rejected) for p in load_preferences(draw)}
        bt = {(p.chosen, p.rejected) for p in load_preferences(draw, aggregate="bradley_terry")}
        clear = [r for r in draw if max(r["votes"].count("a"), r["votes"].count("b")) >= 0.8 * len(r["votes"])]
        clear_records += len(clear)
        for r in clear:
            winner, loser = (r["a"], r["b"]) if r["votes"].count("a") > r["votes"].count("b") else (r["b"], r["a"])
            assert (winner, loser) in majority and (winner, loser) in bt
    measured("clear records in 3 draws", clear_records, above=3)
    # bar 3 (was 5 in one draw, where 4 to 17 came): seed 0 gives 22; spread over 5 seeds 18 (benchmarks/seed_spread.py)
    assert clear_records >= 3


def test_bradley_terry_matches_exact_expected_win_counts():
    # With wins[i, j] = n * P(i beats j) the likelihood's maximum is the true strengths (centred), exactly.
    true = np.array([0.7, -1.2, 0.1, 0.4])
    true = true - true.mean()
    comparisons = [(i, j, 1000 * sigmoid(true[i] - true[j])) for i in range(4) for j in range(4) if i != j]
    assert bradley_terry(comparisons, 4, prior=1e-9) == pytest.approx(true, abs=1e-5)
    shrunk = bradley_terry(comparisons, 4)  # the default prior pulls toward 0, never across it
    assert np.argsort(shrunk).tolist() == np.argsort(true).tolist()
    assert np.all(np.abs(shrunk) < np.abs(true))


def test_bradley_terry_stays_finite_symmetric_and_deterministic():
    unanimous = bradley_terry([(0, 1)] * 20, 2)
    assert np.isfinite(unanimous).all() and unanimous[0] > 0 > unanimous[1]
    assert unanimous.sum() == pytest.approx(0, abs=1e-12)
    assert bradley_terry([(0, 1), (1, 0)], 3).tolist() == [0.0, 0.0, 0.0]
    assert bradley_terry([(0, 1, 0.5), (1, 0, 0.5)], 2).tolist() == [0.0, 0.0]
    comparisons = [(0, 1), (1, 2), (2, 0), (0, 2), (3, 1, 2.5)]
    assert bradley_terry(comparisons, 4).tolist() == bradley_terry(comparisons, 4).tolist()
    with pytest.raises(ValueError, match=r"comparisons\[0\]: loser 5 is not a player index in \[0, 3\)"):
        bradley_terry([(0, 5)], 3)
    with pytest.raises(ValueError, match="cannot play itself"):
        bradley_terry([(1, 1)], 3)
    with pytest.raises(ValueError, match="prior must be > 0"):
        bradley_terry([(0, 1)], 2, prior=0)
    with pytest.raises(ValueError, match="weight must be a finite number >= 0"):
        bradley_terry([(0, 1, -1)], 2)


def test_bradley_terry_aggregation_drops_items_whose_strengths_are_equal():
    records = [
        {"prompt": "p", "a": "A", "b": "B", "votes": ["a", "b"]},
        {"prompt": "q", "a": "A", "b": "B", "votes": ["tie", "tie", "tie"]},
        {"prompt": "r", "a": "A", "b": "B", "votes": ["a"]},
    ]
    prefs = load_preferences(records, aggregate="bradley_terry")
    assert triples(prefs) == [("r", "A", "B")]  # strengths are fitted per prompt
    assert prefs.report.dropped["tie"] == 2
    assert 0.5 < prefs[0].weight < 1 and math.isfinite(prefs[0].margin)


def test_fleiss_kappa_on_the_wikipedia_worked_example():
    # en.wikipedia.org/wiki/Fleiss'_kappa: 10 items, 14 raters, 5 categories; P-bar 0.378, P_e 0.213, kappa 0.210.
    counts = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    assert fleiss_kappa(counts) == pytest.approx(0.210, abs=5e-4)
    assert math.isnan(fleiss_kappa([[3, 0], [2, 0]]))  # one category used: chance agreement is 1
    with pytest.raises(ValueError, match="at least 2 ratings; item 1"):
        fleiss_kappa([[1, 1], [1, 0]])


def test_the_agreement_report_by_hand():
    records = [
        {"prompt": "p1", "a": "x", "b": "y", "votes": ["a", "a", "a"], "annotators": ["ann", "bob", "cy"]},
        {"prompt": "p2", "a": "x", "b": "y", "votes": ["a", "a", "b"], "annotators": ["ann", "bob", "dee"]},
        {"prompt": "p3", "a": "x", "b": "y", "votes": ["a", "b", "tie"]},
        {"prompt": "p4", "a": "x", "b": "y", "votes": ["b"]},
    ]
    # Items with >= 2 votes: P_i = 1, 1/3, 0, so P-bar = 4/9; label shares a 6/9, b 2/9, tie 1/9, so
    # P_e = 41/81 and kappa = (36/81 - 41/81) / (40/81) = -1/8.
    agreement = load_preferences(records).report.agreement
    assert isinstance(agreement, AgreementReport)
    assert agreement.fleiss_kappa == pytest.approx(-0.125)
    assert agreement.mean_pairwise_agreement == pytest.approx(4 / 9)
    assert (agreement.items, agreement.rated_items, agreement.votes, agreement.annotators) == (4, 3, 10, 4)
    assert [(d.row, d.prompt, d.votes, d.agreement) for d in agreement.most_disputed] == [
        (3, "p3", {"a": 1, "b": 1, "tie": 1}, 0.0),
        (2, "p2", {"a": 2, "b": 1, "tie": 0}, pytest.approx(1 / 3)),
    ]
    report = load_preferences(records).report
    assert str(report) == (
        "records: 4 rows (votes 4) -> 3 pairs; dropped 1 tie; "
        f"annotator agreement: Fleiss' kappa {agreement.fleiss_kappa:.2f}, pairwise 0.44 over 3 items"
    )
    assert load_preferences([GOOD]).report.agreement is None  # only when votes were read


# ---------------------------------------------------------------------------------------------------------
# split_eval


def make_pairs(n_prompts=10):
    return [PreferencePair(f"prompt {i}", f"good {k}", f"bad {k}") for i in range(n_prompts) for k in range(i % 3 + 1)]


def test_split_eval_holds_out_whole_prompts_deterministically():
    pairs = make_pairs()
    train, held = split_eval(pairs, 0.3, seed=0)
    assert len({p.prompt for p in held}) == 3 and len({p.prompt for p in train}) == 7
    assert not {p.prompt for p in train} & {p.prompt for p in held}
    assert sorted(train + held, key=pairs.index) == pairs
    assert train == [p for p in pairs if p in train] and held == [p for p in pairs if p in held]  # order kept
    assert split_eval(pairs, 0.3, seed=0) == (train, held)
    reordered = split_eval(pairs[::-1], 0.3, seed=0)  # which prompts are held out does not depend on order
    assert {p.prompt for p in reordered[1]} == {p.prompt for p in held}
    assert any({p.prompt for p in split_eval(pairs, 0.3, seed=s)[1]} != {p.prompt for p in held} for s in (1, 2, 3))
    assert split_eval(pairs, 0.0) == (pairs, [])


@pytest.mark.parametrize(("fraction", "n_prompts", "n_held"), [(0.01, 2, 1), (0.5, 2, 1), (0.99, 3, 2), (0.25, 8, 2)])
def test_split_eval_keeps_both_sides_non_empty(fraction, n_prompts, n_held):
    train, held = split_eval(make_pairs(n_prompts), fraction)
    assert len({p.prompt for p in held}) == n_held and train


def test_split_eval_refuses_bad_fractions_and_single_prompts():
    for bad in (1.0, -0.1, 1.5, "0.2", True):
        with pytest.raises(ValueError, match=r"eval_fraction must be a number in \[0, 1\)"):
            split_eval(make_pairs(), bad)
    with pytest.raises(ValueError, match="needs at least 2 distinct prompts .* have 1"):
        split_eval(make_pairs(1), 0.2)


# ---------------------------------------------------------------------------------------------------------
# load_prompts


def test_load_prompts_from_prompt_only_rows_deduplicated_in_order(tmp_path):
    write_jsonl([{"prompt": "b"}, {"prompt": "a"}, {"prompt": "b"}, {"prompt": "c", "id": 7}], tmp_path / "p.jsonl")
    assert load_prompts(tmp_path / "p.jsonl") == ["b", "a", "c"]


def test_load_prompts_from_preference_rows():
    assert load_prompts(PLAIN + PLAIN[:1]) == [
        "2+2?",
        HH_PROMPT,
        "Name a colour",
        "Name a fruit",
        "Rate these",
        "Which is kinder?",
    ]
    assert load_prompts(CONVERSATIONAL) == [prompt for prompt, _, _ in CONVERSATIONAL_PAIRS]


def test_load_prompts_errors_are_named(tmp_path):
    write_jsonl([{"prompt": "a"}, {"prompt": ""}], tmp_path / "p.jsonl")
    with pytest.raises(PreferenceDataError, match=r"^p\.jsonl, row 2, field 'prompt': empty"):
        load_prompts(tmp_path / "p.jsonl")
    with pytest.raises(PreferenceDataError, match=r"^records, row 1, field 'prompt': missing"):
        load_prompts([{"responses": ["x", "y"], "scores": [1, 2]}])
    with pytest.raises(PreferenceDataError, match=r"^records, row 1: fields \['text'\] match no record shape"):
        load_prompts([{"text": "hello"}])
    with pytest.raises(PreferenceDataError, match="no prompts"):
        load_prompts([])


# ---------------------------------------------------------------------------------------------------------
# Properties


def is_text(s: str) -> bool:
    return bool(s.strip())


texts = st.text(min_size=1, max_size=30).filter(is_text)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(texts, texts, texts).filter(lambda t: t[1] != t[2]), min_size=1, max_size=5, unique=True))
def test_unicode_pairs_round_trip_unchanged_through_jsonl_and_csv(triples_in):
    records = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in triples_in]
    assert triples(load_preferences(records)) == triples_in
    with tempfile.TemporaryDirectory() as folder:
        write_jsonl(records, Path(folder) / "prefs.jsonl")
        assert triples(load_preferences(Path(folder) / "prefs.jsonl")) == triples_in
        # CSV keeps text verbatim, except a cell that is a JSON list of role objects; random text never is.
        write_csv(records, Path(folder) / "prefs.csv")
        assert triples(load_preferences(Path(folder) / "prefs.csv")) == triples_in


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 7).flatmap(lambda k: st.permutations(range(1, k + 1))))
def test_a_random_ranking_of_k_gives_every_one_of_its_k_choose_2_pairs(ranks):
    k = len(ranks)
    responses = [f"response {i}" for i in range(k)]
    prefs = load_preferences([{"prompt": "p", "responses": responses, "ranks": ranks}], weight_rankings=True)
    assert len(prefs) == k * (k - 1) // 2 == len(set(triples(prefs)))
    rank = dict(zip(responses, ranks, strict=True))
    assert all(rank[p.chosen] < rank[p.rejected] for p in prefs)
    assert sum(p.weight for p in prefs) == pytest.approx(1.0)


def test_import_is_light(tmp_path):
    code = "import sys, lorarlhf.data; print([m for m in ('datasets', 'transformers', 'pyarrow') if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stderr
