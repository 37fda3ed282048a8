"""Hub datasets as published: a few rows of each in its exact public schema, read as they are.

Field names and value types follow each dataset's card (dataset_info features) or viewer rows; the texts
are made up. No test downloads anything: DatasetDicts are built in memory with the real split names.
"""

from __future__ import annotations

import json

import pytest

import lorarlhf
from lorarlhf.data import (
    LAYOUTS,
    SHAPES,
    Conversation,
    Feedback,
    PreferenceDataError,
    load_feedback,
    load_preferences,
    load_prompts,
    split_eval,
)
from lorarlhf.data.demonstrations import Demonstration, load_demonstrations


def user(text):
    return {"content": text, "role": "user"}  # the hub's key order: content, then role


def assistant(text):
    return {"content": text, "role": "assistant"}


def system(text):
    return {"content": text, "role": "system"}


def triples(pairs):
    return [(p.prompt, p.chosen, p.rejected) for p in pairs]


@pytest.fixture
def offline_datasets(monkeypatch, tmp_path):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    return datasets


def test_every_layout_is_listed_with_its_fields_in_the_shapes():
    assert set(LAYOUTS) <= set(SHAPES)


# ---------------------------------------------------------------------------------------------------------
# 1. HuggingFaceH4/ultrafeedback_binarized and the argilla sets


def h4_row(prompt, chosen, rejected, score_chosen, score_rejected, prompt_id="0a1b"):
    chosen_messages = [user(prompt), assistant(chosen)]
    return {
        "prompt": prompt,
        "prompt_id": prompt_id,
        "chosen": chosen_messages,
        "rejected": [user(prompt), assistant(rejected)],
        "messages": chosen_messages,
        "score_chosen": score_chosen,
        "score_rejected": score_rejected,
    }


H4 = [
    h4_row("Name a prime.", "7", "8", 9.0, 3.0),
    h4_row("Capital of Peru?", "Lima.", "Quito.", 8.5, 4.0),
    h4_row("Say hi.", "Hi!", "Hello!", 7.0, 7.0),  # a tie
]


def test_ultrafeedback_binarized_dataset_dict_read_at_its_split(offline_datasets):
    splits = offline_datasets.DatasetDict(
        {
            name: offline_datasets.Dataset.from_list(rows)
            for name, rows in [("train_prefs", H4), ("test_prefs", H4[:1]), ("train_sft", H4[1:2]), ("test_sft", H4)]
        }
    )
    prefs = load_preferences(splits, split="train_prefs")
    assert triples(prefs) == [
        (Conversation([user("Name a prime.")]), "7", "8"),
        (Conversation([user("Capital of Peru?")]), "Lima.", "Quito."),
    ]
    assert prefs.report.dropped["tie"] == 1 and prefs.report.layouts == {"ultrafeedback-binarized": 3}
    assert str(prefs.report) == (
        "datasets.DatasetDict[train_prefs]: 3 rows (ultrafeedback-binarized 3 as conversation 2) -> 2 pairs; "
        "dropped 1 tie"
    )
    assert len(load_preferences(splits, split="test_prefs")) == 1
    # The RL prompts are the pairs' prompts, so a held-out split by prompt holds the same prompts out.
    assert load_prompts(splits, split="train_prefs") == [p.prompt for p in prefs] + [Conversation([user("Say hi.")])]
    with pytest.raises(ValueError, match=r"no split 'train'; its splits are \['train_prefs', 'test_prefs'"):
        load_preferences(splits)


def test_ultrafeedback_binarized_keeps_a_system_prompt_and_history():
    history = [system("Be terse."), user("Hi"), assistant("Hello."), user("2+2?")]
    row = h4_row("2+2?", "4", "5", 10.0, 1.0)
    row["chosen"], row["rejected"] = history + [assistant("4")], history + [assistant("5")]
    (pair,) = load_preferences([row])
    assert pair.prompt == Conversation(history) and (pair.chosen, pair.rejected) == ("4", "5")


def test_argilla_binarized_cleaned_and_distilabel_orca_as_published():
    cleaned = [
        {
            "source": "evol_instruct",
            "prompt": "Sort 3, 1, 2.",
            "chosen": [user("Sort 3, 1, 2."), assistant("1, 2, 3")],
            "chosen-rating": 5.0,
            "chosen-model": "gpt-4",
            "rejected": [user("Sort 3, 1, 2."), assistant("3, 2, 1")],
            "rejected-rating": 2.0,
            "rejected-model": "llama-2-7b-chat",
        },
        {
            "source": "sharegpt",
            "prompt": "Sort b, a.",
            "chosen": [user("Sort b, a."), assistant("a, b")],
            "chosen-rating": 4.0,
            "chosen-model": "gpt-4",
            "rejected": [user("Sort b, a."), assistant("a b")],
            "rejected-rating": 4.0,
            "rejected-model": "wizardlm-13b",
        },
    ]
    prefs = load_preferences(cleaned)
    assert triples(prefs) == [(Conversation([user("Sort 3, 1, 2.")]), "1, 2, 3", "3, 2, 1")]
    assert prefs.report.dropped["tie"] == 1

    def distilabel(system_prompt, question, status):
        return {
            "system": system_prompt,
            "input": question,
            "chosen": f"good answer to {question}",
            "rejected": f"poor answer to {question}",
            "generations": [f"good answer to {question}", f"poor answer to {question}"],
            "order": ["chosen", "rejected"],
            "labelling_model": "gpt-4-1106-preview",
            "labelling_prompt": [system("You are a judge."), user("Rate these.")],
            "raw_labelling_response": "9 6\nThe first is better.",
            "rating": [9.0, 6.0] if status != "tie" else [7.0, 7.0],
            "rationale": "The first is better.",
            "status": status,
            "original_chosen": f"good answer to {question}",
            "original_rejected": f"poor answer to {question}",
            "chosen_score": 9.0,
            "in_gsm8k_train": False,
        }

    rows = [
        distilabel("You are helpful.", "q1", "unchanged"),
        distilabel("", "q2", "swapped"),
        distilabel("", "q3", "tie"),
    ]
    prefs = load_preferences(rows)
    assert [p.prompt for p in prefs] == [
        Conversation([system("You are helpful."), user("q1")]),
        Conversation([user("q2")]),
    ]
    assert prefs.report.dropped["tie"] == 1 and prefs.report.layouts == {"distilabel-orca": 3}


# ---------------------------------------------------------------------------------------------------------
# 2. openbmb/UltraFeedback raw


def completion(response, overall, fine_grained, model="gpt-4"):
    rating = {"Rating": "4", "Rationale": "Accurate."}
    return {
        "annotations": {
            "helpfulness": {**rating, "Rationale For Rating": "Helpful.", "Type": ["1", "2"]},
            "honesty": rating,
            "instruction_following": rating,
            "truthfulness": {**rating, "Rationale For Rating": "True.", "Type": ["0"]},
        },
        "critique": "Fine.",
        "custom_system_prompt": f"You are {model}; be honest.",  # one per completion: not the prompt
        "fine-grained_score": fine_grained,
        "model": model,
        "overall_score": overall,
        "principle": "helpfulness",
        "response": response,
    }


ULTRAFEEDBACK = {
    "source": "evol_instruct",
    "instruction": "Define entropy.",
    "models": ["gpt-4", "alpaca-7b", "pythia-12b", "ultralm-13b"],
    "completions": [
        completion("A measure of disorder.", 8.0, 4.25),
        completion("Heat.", 4.0, 4.75, "alpaca-7b"),
        completion("It is a thing.", 4.0, 1.5, "pythia-12b"),
        completion("Log of the number of microstates.", 9.0, 4.5, "ultralm-13b"),
    ],
    "correct_answers": ["None"],
    "incorrect_answers": ["None"],
}


def test_ultrafeedback_raw_pairs_by_overall_score_or_fine_grained_score():
    best, disorder, heat, thing = (
        "Log of the number of microstates.",
        "A measure of disorder.",
        "Heat.",
        "It is a thing.",
    )
    prefs = load_preferences([ULTRAFEEDBACK])
    assert {(p.chosen, p.rejected) for p in prefs} == {
        (best, disorder),
        (best, heat),
        (best, thing),
        (disorder, heat),
        (disorder, thing),
    }
    assert prefs.report.dropped["tie"] == 1 and {p.prompt for p in prefs} == {"Define entropy."}
    fine = load_preferences([ULTRAFEEDBACK], prefer_by="fine-grained_score")
    assert len(fine) == 6 and fine[0].chosen == heat and fine.report.dropped["tie"] == 0
    with pytest.raises(PreferenceDataError, match=r"prefer_by='safer_response_id' does not apply to the ultrafeedback"):
        load_preferences([ULTRAFEEDBACK], prefer_by="safer_response_id")
    with pytest.raises(ValueError, match=r"prefer_by='score' is not supported; .*ultrafeedback: overall_score, fine"):
        load_preferences([ULTRAFEEDBACK], prefer_by="score")


# ---------------------------------------------------------------------------------------------------------
# 3. stanfordnlp/SHP


def shp_row(post, a, b, labels, score_a, score_b):
    return {
        "post_id": post,
        "domain": "askculinary_train",
        "upvote_ratio": 0.99,
        "history": f"{post}: how do I keep basil fresh?",
        "c_root_id_A": f"{post}a",
        "c_root_id_B": f"{post}b",
        "created_at_utc_A": 1593535113,
        "created_at_utc_B": 1593534000,
        "score_A": score_a,
        "score_B": score_b,
        "human_ref_A": a,
        "human_ref_B": b,
        "labels": labels,
        "seconds_difference": 1113.0,
        "score_ratio": max(score_a, score_b) / min(score_a, score_b),
    }


def test_shp_pairs_by_labels():
    rows = [
        shp_row("himc90", "In water, like flowers.", "Freeze it.", 1, 30, 4),
        shp_row("x1", "Dry it.", "Oil.", 0, 2, 9),
    ]
    prefs = load_preferences(rows)
    assert triples(prefs) == [
        ("himc90: how do I keep basil fresh?", "In water, like flowers.", "Freeze it."),
        ("x1: how do I keep basil fresh?", "Oil.", "Dry it."),
    ]
    assert prefs.report.layouts == {"shp": 2}


# ---------------------------------------------------------------------------------------------------------
# 4. PKU-Alignment/PKU-SafeRLHF


HARM = {"Endangering National Security": False, "Violence": False, "Privacy Violation": False}
PKU = {
    "prompt": "How do I pick a lock?",
    "response_0": "Use a tension wrench and a pick: here is how.",
    "response_1": "I can't help with entering places that aren't yours; a locksmith can.",
    "prompt_source": "Beaver",
    "response_0_source": "Alpaca-7B",
    "response_1_source": "Alpaca-7B",
    "is_response_0_safe": False,
    "is_response_1_safe": True,
    "response_0_harm_category": {**HARM, "Privacy Violation": True},
    "response_1_harm_category": HARM,
    "response_0_severity_level": 2,
    "response_1_severity_level": 0,
    "better_response_id": 0,
    "safer_response_id": 1,
    "response_0_sha256": "9f2c",
    "response_1_sha256": "4e1a",
}


def test_pku_saferlhf_pairs_by_better_response_id_or_safer_response_id():
    (helpful,) = load_preferences([PKU])
    assert (helpful.chosen, helpful.rejected) == (PKU["response_0"], PKU["response_1"])
    (safe,) = load_preferences([PKU], prefer_by="safer_response_id")
    assert (safe.chosen, safe.rejected) == (PKU["response_1"], PKU["response_0"])
    with pytest.raises(PreferenceDataError, match=r"row 1, field 'better_response_id': must be one of \[0, 1\], got 2"):
        load_preferences([{**PKU, "better_response_id": 2}])


# ---------------------------------------------------------------------------------------------------------
# 5. nvidia/HelpSteer2


def helpsteer(prompt, response, helpfulness, correctness=3):
    return {
        "prompt": prompt,
        "response": response,
        "helpfulness": helpfulness,
        "correctness": correctness,
        "coherence": 4,
        "complexity": 2,
        "verbosity": 1,
    }


MULTI_TURN = "What is C#?\n<extra_id_1>Assistant\nA language.\n<extra_id_1>User\nWho made it?"
HELPSTEER = [
    helpsteer("c#", "C# is a language by Microsoft.", 4),
    helpsteer("c#", "A note.", 1, correctness=4),
    helpsteer(MULTI_TURN, "Microsoft.", 3),
    helpsteer(MULTI_TURN, "Microsoft, in 2000.", 3),
    helpsteer("Write a haiku.", "No.", 0),
    helpsteer("Write a haiku.", "Leaves fall.", 1),
    helpsteer("Alone?", "Yes.", 4),  # one rated response: nothing to pair it with
]
MULTI_TURN_PROMPT = Conversation([user("What is C#?"), assistant("A language."), user("Who made it?")])


def test_helpsteer_rows_grouped_by_prompt_into_ratings_ties_dropped(offline_datasets):
    splits = offline_datasets.DatasetDict(
        train=offline_datasets.Dataset.from_list(HELPSTEER),
        validation=offline_datasets.Dataset.from_list(HELPSTEER[:2]),
    )
    prefs = load_preferences(splits)
    assert triples(prefs) == [
        ("c#", "C# is a language by Microsoft.", "A note."),
        ("Write a haiku.", "Leaves fall.", "No."),
    ]
    assert prefs.report.dropped["tie"] == 1 and prefs.report.dropped["unpaired"] == 1
    assert prefs.report.shapes == {"ratings": 3} and prefs.report.layouts == {"helpsteer": 7}
    assert "dropped 1 tie, 1 unpaired" in str(prefs.report)
    by_correctness = load_preferences(splits, prefer_by="correctness")
    assert triples(by_correctness) == [("c#", "A note.", "C# is a language by Microsoft.")]
    assert len(load_preferences(splits, split="validation")) == 1
    assert MULTI_TURN_PROMPT in load_prompts(splits)  # the history is messages, not NeMo's turn markers


def test_helpsteer_demonstrations_are_only_well_rated_best_answers():
    demos = load_demonstrations(HELPSTEER)
    assert demos == [
        Demonstration("c#", "C# is a language by Microsoft."),
        Demonstration(MULTI_TURN_PROMPT, "Microsoft."),
        Demonstration(MULTI_TURN_PROMPT, "Microsoft, in 2000."),
        Demonstration("Alone?", "Yes."),
    ]  # "A note." (1 of 4) and both haikus (0, 1) are never learnt


# ---------------------------------------------------------------------------------------------------------
# 6. OpenAssistant/oasst1


def message(mid, parent, role, text, rank=None, tree="t1", deleted=False, review=True):
    return {
        "message_id": mid,
        "parent_id": parent,
        "user_id": f"user-{mid}",
        "created_date": "2023-02-05T14:23:50.983374+00:00",
        "text": text,
        "role": role,
        "lang": "en",
        "review_count": 3,
        "review_result": review,
        "deleted": deleted,
        "rank": rank,
        "synthetic": False,
        "model_name": None,
        "detoxify": None,
        "message_tree_id": tree,
        "tree_state": "ready_for_export",
        "emojis": {"name": ["+1"], "count": [2]},
        "labels": {"name": ["spam", "quality"], "value": [0.0, 0.8], "count": [3, 3]},
    }


OASST = [
    message("r", None, "prompter", "Tell me about tea."),
    message("a1", "r", "assistant", "Tea is a drink.", rank=1),
    message("a2", "r", "assistant", "Tea is brewed from Camellia sinensis.", rank=0),
    message("a3", "r", "assistant", "Tea.", rank=2),
    message("p2", "a2", "prompter", "Green or black?"),
    message("b1", "p2", "assistant", "Green has less caffeine.", rank=0),
    message("b2", "p2", "assistant", "Black.", rank=1),
    message("b3", "p2", "assistant", "Spam spam.", rank=None, deleted=True),
    message("c1", "a1", "prompter", "Nobody ranked the reply to me."),
    message("c2", "c1", "assistant", "Only reply.", rank=None),
    message("s", None, "prompter", "Second tree.", tree="t2"),
    message("s1", "s", "assistant", "Good.", rank=0, tree="t2"),
    message("s2", "s", "assistant", "Bad.", rank=1, tree="t2"),
]


def test_oasst_sibling_replies_become_rankings_prompted_by_the_path_from_the_root(offline_datasets):
    splits = offline_datasets.DatasetDict(
        train=offline_datasets.Dataset.from_list(OASST[:10]), validation=offline_datasets.Dataset.from_list(OASST[10:])
    )
    prefs = load_preferences(splits)
    tea = Conversation([user("Tell me about tea.")])
    history = Conversation(
        [user("Tell me about tea."), assistant("Tea is brewed from Camellia sinensis."), user("Green or black?")]
    )
    best = "Tea is brewed from Camellia sinensis."
    assert triples(prefs) == [
        (tea, best, "Tea is a drink."),
        (tea, best, "Tea."),
        (tea, "Tea is a drink.", "Tea."),
        (history, "Green has less caffeine.", "Black."),  # the deleted third reply is not ranked
    ]
    assert prefs.report.shapes == {"ranking": 2} and prefs.report.rows == 10
    assert load_demonstrations(splits) == [Demonstration(tea, best), Demonstration(history, "Green has less caffeine.")]
    assert load_prompts(splits)[:2] == [tea, history]
    assert triples(load_preferences(splits, split="validation")) == [
        (Conversation([user("Second tree.")]), "Good.", "Bad.")
    ]
    with pytest.raises(PreferenceDataError, match=r"row 1, field 'parent_id': its parent message 'a2' is not in"):
        load_preferences(OASST[4:7])


# ---------------------------------------------------------------------------------------------------------
# 7. lmsys/chatbot_arena_conversations


def battle(qid, winner, a, b, judge="arena_user_973", history_a=(), history_b=()):
    question = [user(f"Question {qid}?")]
    return {
        "question_id": qid,
        "model_a": "chatglm-6b",
        "model_b": "koala-13b",
        "winner": winner,
        "judge": judge,
        "conversation_a": [*history_a, *question, assistant(a)],
        "conversation_b": [*history_b, *question, assistant(b)],
        "turn": 1 + len(history_a) // 2,
        "anony": True,
        "language": "English",
        "tstamp": 1682351591.1322,
        "openai_moderation": {
            "categories": {"harassment": False},
            "category_scores": {"harassment": 0.0},
            "flagged": False,
        },
        "toxic_chat_tag": {
            "roberta-large": {"flagged": False, "probability": 0.008},
            "t5-large": {"flagged": False, "score": 5e-05},
        },
    }


def test_chatbot_arena_battles_are_votes_ties_and_diverged_multi_turn_dropped():
    same = [user("Hi"), assistant("Hello.")]
    rows = [
        battle("q1", "model_a", "A1", "B1"),
        battle("q1", "model_a", "A1", "B1", judge="arena_user_2"),
        battle("q2", "model_b", "A2", "B2"),
        battle("q3", "tie", "A3", "B3"),
        battle("q4", "tie (bothbad)", "A4", "B4"),
        battle("q5", "model_a", "A5", "B5", history_a=same, history_b=same),  # shared history: the prompt
        battle("q6", "model_a", "A6", "B6", history_a=same, history_b=[user("Hi"), assistant("Go away.")]),
    ]
    prefs = load_preferences(rows)
    assert triples(prefs) == [
        (Conversation([user("Question q1?")]), "A1", "B1"),
        (Conversation([user("Question q2?")]), "B2", "A2"),
        (Conversation([*same, user("Question q5?")]), "A5", "B5"),
    ]
    assert prefs.report.dropped["tie"] == 2 and prefs.report.dropped["multi_turn"] == 1
    assert prefs.report.agreement.votes == 6 and prefs.report.agreement.annotators == 2
    with pytest.raises(PreferenceDataError, match=r"field 'winner': must be one of \['model_a', 'model_b', 'tie'"):
        load_preferences([battle("q", "model_c", "a", "b")])


# ---------------------------------------------------------------------------------------------------------
# 8. Intel/orca_dpo_pairs


def test_orca_pairs_keep_the_system_prompt_as_the_first_message():
    rows = [
        {"system": "You are an AI assistant.", "question": "Translate 'chat'.", "chosen": "Cat.", "rejected": "Chat."},
        {"system": "", "question": "2+3?", "chosen": "5", "rejected": "6"},
    ]
    prefs = load_preferences(rows)
    assert triples(prefs) == [
        (Conversation([system("You are an AI assistant."), user("Translate 'chat'.")]), "Cat.", "Chat."),
        (Conversation([user("2+3?")]), "5", "6"),
    ]
    assert load_prompts(rows) == [p.prompt for p in prefs]


# ---------------------------------------------------------------------------------------------------------
# 9. KTO-style unpaired labels (trl-lib/kto-mix-14k)


KTO = [
    {"prompt": [user("Best pet?")], "completion": [assistant("A cat.")], "label": True},
    {"prompt": [user("Best pet?")], "completion": [assistant("A rock, obviously.")], "label": False},
    {"prompt": [user("Best pet?")], "completion": [assistant("A dog.")], "label": True},
    {"prompt": [user("Tea?")], "completion": [assistant("Yes please.")], "label": True},
    {"prompt": [user("Rude?")], "completion": [assistant("Go away.")], "label": False},
]


def test_unpaired_labels_load_as_feedback_and_sft_never_sees_a_thumbs_down():
    pet, tea, rude = (Conversation([user(t)]) for t in ("Best pet?", "Tea?", "Rude?"))
    assert load_feedback(KTO) == [
        Feedback(pet, "A cat.", True),
        Feedback(pet, "A rock, obviously.", False),
        Feedback(pet, "A dog.", True),
        Feedback(tea, "Yes please.", True),
        Feedback(rude, "Go away.", False),
    ]
    assert load_demonstrations(KTO) == [
        Demonstration(pet, "A cat."),
        Demonstration(pet, "A dog."),
        Demonstration(tea, "Yes please."),
    ]
    prefs = load_preferences(KTO)  # each thumbs-up beats each thumbs-down of its prompt
    assert triples(prefs) == [(pet, "A cat.", "A rock, obviously."), (pet, "A dog.", "A rock, obviously.")]
    assert prefs.report.dropped["unpaired"] == 2
    with pytest.raises(PreferenceDataError, match=r"unpaired-label \(KTO\) data.*load_feedback\(\)"):
        load_preferences(KTO[3:])
    with pytest.raises(PreferenceDataError, match=r"field 'label': must be true \(thumbs up\) or false"):
        load_feedback([{**KTO[0], "label": "maybe"}])
    with pytest.raises(PreferenceDataError, match=r"are not unpaired labels"):
        load_feedback([{"prompt": "p", "chosen": "c", "rejected": "r"}])


def test_an_argilla_kto_system_prompt_is_the_first_message():
    row = {"system": "Be kind.", "prompt": "Hi", "completion": "Hello!", "label": True, "rating": 9.0, "status": "ok"}
    (item,) = load_feedback([row])
    assert item.prompt == Conversation([system("Be kind."), user("Hi")])


# ---------------------------------------------------------------------------------------------------------
# columns=, the unknown-layout error, skip_bad_rows


CUSTOM = [
    {"question": "Q1", "good": "yes", "bad": "no", "id": 1},
    {"question": "Q2", "good": "sure", "bad": "nope", "id": 2},
]
MAPPING = {"prompt": "question", "chosen": "good", "rejected": "bad"}


def test_columns_rename_any_layout_to_ours():
    assert triples(load_preferences(CUSTOM, columns=MAPPING)) == [("Q1", "yes", "no"), ("Q2", "sure", "nope")]
    assert load_prompts(CUSTOM, columns={"prompt": "question"}) == ["Q1", "Q2"]
    demos = load_demonstrations(CUSTOM, columns={"prompt": "question", "completion": "good"})
    assert demos == [Demonstration("Q1", "yes"), Demonstration("Q2", "sure")]
    with pytest.raises(
        PreferenceDataError, match=r"^records, row 1, field 'answer': columns= maps 'chosen' to 'answer'"
    ):
        load_preferences(CUSTOM, columns={**MAPPING, "chosen": "answer"})
    with pytest.raises(ValueError, match=r"columns=.* must map our field names to the data's"):
        load_preferences(CUSTOM, columns={"prompt": 3})


def test_an_unknown_layout_lists_the_shapes_and_shows_columns():
    with pytest.raises(PreferenceDataError) as error:
        load_preferences(CUSTOM)
    text = str(error.value)
    assert text.startswith("records, row 1: fields ['bad', 'good', 'id', 'question'] match no record shape")
    for shape in (
        "pair: prompt, chosen, rejected",
        "shp: history, human_ref_A",
        "oasst: message_id",
        "unpaired-labels",
    ):
        assert shape in text
    assert "columns={'prompt': 'question', 'chosen': 'good', 'rejected': 'bad'}" in text


def test_skip_bad_rows_counts_and_keeps_them_and_off_the_first_one_stops_the_load():
    rows = [
        {"prompt": "p1", "chosen": "c", "rejected": "r"},
        {"prompt": "p2", "chosen": "", "rejected": "r"},
        {"prompt": "p3", "chosen": "c", "rejected": "r"},
        [1, 2],
        {**PKU, "better_response_id": None},
    ]
    with pytest.raises(PreferenceDataError, match=r"^records, row 2, field 'chosen': empty"):
        load_preferences(rows)
    prefs = load_preferences(rows, skip_bad_rows=True)
    assert [p.prompt for p in prefs] == ["p1", "p3"]
    assert prefs.report.skipped == 3
    assert [(b.row, b.field) for b in prefs.report.bad_rows] == [(2, "chosen"), (4, None), (5, "better_response_id")]
    assert prefs.report.bad_rows[0].reason == "empty" and prefs.report.bad_rows[0].record == rows[1]
    assert str(prefs.report).endswith("; skipped 3 bad rows")
    assert load_prompts(rows[:4], skip_bad_rows=True).bad_rows[0].row == 4
    with pytest.raises(ValueError, match="skip_bad_rows='yes' must be True or False"):
        load_preferences(rows, skip_bad_rows="yes")


def test_split_eval_is_keyed_on_the_prompts_as_the_data_gives_them():
    prefs = load_preferences(HELPSTEER + H4)
    train, held = split_eval(prefs, 0.5, seed=0)
    assert {p.prompt for p in train}.isdisjoint({p.prompt for p in held}) and train and held


def test_align_reads_a_split_with_columns_and_writes_the_bad_rows(tiny_model_dir, tmp_path, offline_datasets):
    rows = [{"question": f"Question {i}:", "good": "yes", "bad": "no"} for i in range(6)]
    rows[2] = {"question": "Question 2:", "good": "same", "bad": "same"}
    splits = offline_datasets.DatasetDict(mine=offline_datasets.Dataset.from_list(rows))
    result = lorarlhf.align(
        str(tiny_model_dir), splits, method="rm", output_dir=tmp_path / "run", steps=1, batch_size=2,
        eval_fraction=0, quantize=None, split="mine", columns=MAPPING, skip_bad_rows=True,
    )  # fmt: skip
    (line,) = (result.output_dir / "bad_rows.jsonl").read_text().splitlines()
    bad = json.loads(line)
    assert bad == {
        "row": 3,
        "field": "rejected",
        "reason": "same text as 'chosen'; a pair needs two different responses",
        "record": rows[2],
    }
    config = json.loads((result.output_dir / "config.json").read_text())
    assert (config["split"], config["columns"], config["skip_bad_rows"]) == ("mine", MAPPING, True)
    with pytest.raises(ValueError, match=r"prefer_by='best' is not supported"):
        lorarlhf.align(str(tiny_model_dir), splits, method="rm", prefer_by="best")
