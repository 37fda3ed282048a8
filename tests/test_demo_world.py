"""The demo world: its gold rule, corpus, tokenizer and simulated annotators, and the bundled model on it."""

from __future__ import annotations

import random

import pytest
import torch

from lorarlhf.data import load_preferences
from lorarlhf.demo.world import (
    NEGATIVE_CLAUSES,
    NEUTRAL_CLAUSES,
    POSITIVE_CLAUSES,
    PRODUCTS,
    PROMPTS,
    VOCABULARY,
    corpus,
    fill_clause,
    gold_sentiment,
    is_well_formed,
    prompt_product,
    prompts,
    sample_review,
    simulated_votes,
    word_tokenizer,
)
from lorarlhf.model.loading import DEMO_MODEL_DIR


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer()


@pytest.mark.parametrize(
    ("text", "gold"),
    [
        ("the kettle is great . i love it .", 1.0),
        ("it broke after a week . avoid .", 0.0),
        ("great quality . i hate it . waste of money .", 0.0),  # one positive word, two negative
        ("great quality . i hate it .", 0.5),  # as many of each
        ("it is red .", 0.5),
        ("", 0.5),
        ("zyzzyva qwerty !!", 0.5),
        ("Great! LOVE it,", 1.0),  # case and attached punctuation do not hide a lexicon word
    ],
)
def test_gold_sentiment(text, gold):
    assert gold_sentiment(text) == gold


@pytest.mark.parametrize(
    ("templates", "gold"), [(POSITIVE_CLAUSES, 1.0), (NEGATIVE_CLAUSES, 0.0), (NEUTRAL_CLAUSES, 0.5)]
)
def test_every_clause_has_one_unambiguous_sentiment(templates, gold):
    rng = random.Random(0)
    for template in templates:
        for _ in range(20):
            assert gold_sentiment(fill_clause(rng, template, "kettle")) == gold, template


def test_prompts_name_every_product():
    assert prompts() == list(PROMPTS)
    assert {prompt_product(p) for p in PROMPTS} == set(PRODUCTS)
    with pytest.raises(ValueError, match="not a prompt"):
        prompt_product("tell me about the kettle")


def test_sample_review_is_of_its_sentiment_and_product():
    rng = random.Random(0)
    for positive in (True, False):
        for product in PRODUCTS:
            review = sample_review(rng, product, positive)
            assert gold_sentiment(review) == (1.0 if positive else 0.0)
            assert is_well_formed(review, product)
            assert review.endswith(" .") and len(review.split()) <= 16
    with pytest.raises(ValueError, match="not a product"):
        sample_review(rng, "spaceship", True)


def test_corpus_is_deterministic_balanced_and_on_topic():
    pairs = corpus(400, seed=3)
    assert pairs == corpus(400, seed=3)
    assert pairs != corpus(400, seed=4)
    assert sum(gold_sentiment(review) for _, review in pairs) / len(pairs) == 0.5
    assert all(is_well_formed(review, prompt_product(prompt)) for prompt, review in pairs)
    assert len({prompt for prompt, _ in pairs}) == len(PROMPTS)


def test_is_well_formed_rejects_what_the_world_does_not_say():
    assert is_well_formed("the lamp is great . i love it .", "lamp")
    assert not is_well_formed("the lamp is great . i love it .", "kettle")  # another product
    assert not is_well_formed("the lamp is great")  # unfinished clause
    assert not is_well_formed("great great great great")
    assert not is_well_formed("")
    assert not is_well_formed("the lamp is great .  i love it .")  # words are joined by single spaces


def test_tokenizer_covers_and_round_trips_the_corpus(tokenizer):
    specials = (tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token)
    assert tokenizer.convert_tokens_to_ids(list(specials)) == [0, 1, 2, 3]
    assert len(tokenizer) == 4 + len(VOCABULARY)
    for prompt, review in corpus(300, seed=0):
        prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        review_ids = tokenizer(review, add_special_tokens=False)["input_ids"]
        # lorarlhf.model.tokenization's rule: the prompt carries <s>, the response is its words alone.
        assert prompt_ids[0] == tokenizer.bos_token_id and len(prompt_ids) == 1 + len(prompt.split())
        assert len(review_ids) == len(review.split())
        assert tokenizer.unk_token_id not in prompt_ids + review_ids
        assert tokenizer.decode(review_ids) == review
        assert tokenizer.decode(prompt_ids, skip_special_tokens=True) == prompt
    assert tokenizer("great gizmo", add_special_tokens=False)["input_ids"][1] == tokenizer.unk_token_id


def test_simulated_votes_are_deterministic_and_well_shaped():
    records = simulated_votes(50, annotators=4, seed=1)
    assert records == simulated_votes(50, annotators=4, seed=1)
    assert records != simulated_votes(50, annotators=4, seed=2)
    for record in records:
        assert set(record) == {"prompt", "a", "b", "votes", "annotators"}
        assert record["a"] != record["b"]
        product = prompt_product(record["prompt"])
        assert is_well_formed(record["a"], product) and is_well_formed(record["b"], product)
        assert len(record["votes"]) == len(record["annotators"]) == 4
        assert set(record["votes"]) <= {"a", "b", "tie"}
    with pytest.raises(ValueError, match="annotators"):
        simulated_votes(5, annotators=0)


def test_simulated_votes_aggregate_to_the_hidden_preference_with_human_disagreement(stat_seed, measured):
    records = simulated_votes(400, seed=stat_seed)
    preferences = load_preferences(records)
    contrasts = {(r["prompt"], r["a"], r["b"]) for r in records if gold_sentiment(r["a"]) != gold_sentiment(r["b"])}
    measured("decisive items / items", len(contrasts) / len(records), above=0.65, below=0.9)
    # bars 0.65 (was 0.7) and 0.9: seed 0 gives 0.74; spread over 5 seeds 0.058 (benchmarks/seed_spread.py)
    assert 0.65 * len(records) <= len(contrasts) <= 0.9 * len(records)  # mostly, not only, decisive items
    decisive = [
        p for p in preferences if {(p.prompt, p.chosen, p.rejected), (p.prompt, p.rejected, p.chosen)} & contrasts
    ]
    right = sum(gold_sentiment(p.chosen) > gold_sentiment(p.rejected) for p in decisive)
    measured("right / decisive pairs", right / len(decisive), above=0.8)
    measured("decisive pairs / decisive items", len(decisive) / len(contrasts), above=0.9)
    measured("wrong decisive pairs", len(decisive) - right, above=0)
    kappa = measured("fleiss_kappa", preferences.report.agreement.fleiss_kappa, above=0.2, below=0.9)
    # bars 0.8 and 0.9: seed 0 gives 0.90 and 1.0; spreads 0.029 and 0 (benchmarks/seed_spread.py)
    assert right >= 0.8 * len(decisive) and len(decisive) >= 0.9 * len(contrasts)
    # bar 0: seed 0 gives 31 wrong pairs; spread 11. The careless annotator's errors sometimes carry the majority.
    assert right < len(decisive)
    # bars 0.2/0.9: seed 0 gives 0.37; spread 0.046
    assert 0.2 < kappa < 0.9
    assert preferences.report.agreement.annotators == 3


@pytest.fixture(scope="module")
def bundled():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(DEMO_MODEL_DIR)
    return model.eval(), AutoTokenizer.from_pretrained(DEMO_MODEL_DIR)


def test_bundled_model_is_safetensors_with_the_world_tokenizer(bundled, tokenizer):
    files = {path.name for path in DEMO_MODEL_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= files
    assert not any(name.endswith(".bin") for name in files)
    assert (DEMO_MODEL_DIR / "model.safetensors").stat().st_size < 5 * 2**20
    model, loaded = bundled
    assert model.config.hidden_size % 64 == 0  # every weight row is whole NF4 blocks
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    text = "review of the kettle :"
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]


def _generate(model, tokenizer, prompt_list, **sampling) -> tuple[list[str], list[bool]]:
    inputs = tokenizer(prompt_list, return_tensors="pt", padding=True, padding_side="left")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=24, **sampling)
    new = output[:, inputs["input_ids"].shape[1] :]
    return tokenizer.batch_decode(new, skip_special_tokens=True), (new == tokenizer.eos_token_id).any(dim=1).tolist()


@pytest.mark.parametrize("sampling", [{"do_sample": False}, {"do_sample": True, "top_k": 0}], ids=["greedy", "sampled"])
def test_bundled_model_writes_world_reviews_of_the_prompted_product(bundled, sampling, stat_seed, measured):
    model, tokenizer = bundled
    torch.manual_seed(stat_seed)
    texts, ended = _generate(model, tokenizer, list(PROMPTS), **sampling)
    vocabulary = set(VOCABULARY)
    good = [
        end and set(text.split()) <= vocabulary and is_well_formed(text, prompt_product(prompt))
        for prompt, text, end in zip(PROMPTS, texts, ended, strict=True)
    ]
    measured("well-formed share", sum(good) / len(PROMPTS), above=0.7)
    # bar 0.7: seed 0 gives 1.0 (greedy and sampled); spread over 5 seeds 0.031 (benchmarks/seed_spread.py)
    assert sum(good) >= 0.7 * len(PROMPTS), list(zip(PROMPTS, texts, strict=True))


def test_bundled_model_starts_unaligned(bundled, stat_seed, measured):
    """Sampled at temperature 1 it writes negative reviews about as often as positive ones: room to align."""
    model, tokenizer = bundled
    torch.manual_seed(stat_seed)
    texts, _ = _generate(model, tokenizer, list(PROMPTS) * 4, do_sample=True, top_k=0)
    positive = sum(gold_sentiment(text) == 1.0 for text in texts) / len(texts)
    negative = sum(gold_sentiment(text) == 0.0 for text in texts) / len(texts)
    measured("positive share", positive, above=0.3, below=0.7)
    measured("negative share", negative, above=0.3, below=0.7)
    # bars 0.3/0.7: seed 0 gives 0.52 and 0.47; spreads 0.047 and 0.055 (benchmarks/seed_spread.py)
    assert 0.3 <= positive <= 0.7 and 0.3 <= negative <= 0.7
