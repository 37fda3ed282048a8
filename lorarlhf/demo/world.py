"""A closed, deterministic world of short product reviews: the demo's text, gold rule and annotators.

Alignment is only visible against a preference the model does not already have, judged by something
that knows it exactly. The demo model is pretrained on reviews that are half positive and half negative;
the hidden preference is for positive ones; and since sentiment here is a fixed lexicon, `gold_sentiment`
measures how far alignment moved the model with no learned judge in the loop. Simulated annotators hold
the same preference with individual error rates, so their votes disagree the way people's votes do.

Every text is whole lowercase words and the punctuation tokens "." "," ":" separated by single spaces,
so a word-level tokenizer (`word_tokenizer`) covers the world with no unknown token and a vocabulary of
about 100, which keeps the model small enough to pretrain and align on a laptop CPU.
"""

from __future__ import annotations

import random
import re

from lorarlhf.validation import check_int

PRODUCTS = (
    "kettle",
    "blender",
    "toaster",
    "lamp",
    "backpack",
    "umbrella",
    "keyboard",
    "chair",
    "blanket",
    "speaker",
    "charger",
    "jacket",
    "bottle",
    "camera",
    "pillow",
    "mug",
)
PROMPT_TEMPLATES = ("review of the {product} :", "my review of the {product} :")
PROMPTS: tuple[str, ...] = tuple(t.format(product=p) for p in PRODUCTS for t in PROMPT_TEMPLATES)

POSITIVE_ADJECTIVES = ("great", "excellent", "perfect", "lovely", "sturdy", "reliable", "fantastic", "superb")
NEGATIVE_ADJECTIVES = ("awful", "terrible", "flimsy", "useless", "faulty", "horrible", "disappointing", "poor")
# What each {slot} of a template is filled from.
SLOTS = {
    "pos": POSITIVE_ADJECTIVES,
    "neg": NEGATIVE_ADJECTIVES,
    "posadv": ("perfectly", "beautifully", "flawlessly", "brilliantly"),
    "very": ("very", "really", "quite", "so"),
    "period": ("day", "week", "month"),
    "person": ("wife", "husband", "son", "daughter", "friend"),
    "color": ("black", "white", "red", "blue", "grey"),
}
# One clause is one short sentence ending in "."; a review is 1-3 of them, all of one sentiment, plus at
# most one neutral clause. Every positive clause holds a positive lexicon word and no negative one, and the
# other way round, so a review's sentiment is never in doubt (tests check every template).
POSITIVE_CLAUSES = (
    "the {product} is {pos} .",
    "it is {very} {pos} .",
    "i love it .",
    "i love this {product} .",
    "{pos} quality .",
    "it works {posadv} .",
    "highly recommend .",
    "my {person} loves it .",
    "worth every penny .",
    "happy with it .",
    "{pos} , {pos} and {pos} .",
)
NEGATIVE_CLAUSES = (
    "the {product} is {neg} .",
    "it is {very} {neg} .",
    "i hate it .",
    "i regret buying this {product} .",
    "{neg} quality .",
    "it broke after a {period} .",
    "stopped working after a {period} .",
    "avoid .",
    "my {person} hates it .",
    "waste of money .",
    "i returned it .",
    "{neg} , {neg} and {neg} .",
)
NEUTRAL_CLAUSES = (
    "it is {color} .",
    "bought it for my {person} .",
    "i use it every {period} .",
    "it came in a {color} box .",
)
POSITIVE_WORDS = frozenset((*POSITIVE_ADJECTIVES, *SLOTS["posadv"], "love", "loves", "recommend", "worth", "happy"))
NEGATIVE_WORDS = frozenset(
    (*NEGATIVE_ADJECTIVES, "hate", "hates", "regret", "broke", "stopped", "avoid", "waste", "returned")
)
MAX_REVIEW_WORDS = 16
NEUTRAL_RATE = 0.25
"""Chance that a review of 1 or 2 sentiment clauses also gets a neutral clause."""

# Simulated annotators: each prefers the more positive review but errs at its own rate (the third is
# careless); on two reviews of the same sentiment there is nothing to prefer, so they call it a tie or pick.
ANNOTATOR_ERROR_RATES = (0.1, 0.15, 0.3)
CONTRAST_RATE = 0.8
"""Fraction of voted items that pair a positive review with a negative one; the rest share a sentiment."""
SAME_SENTIMENT_TIE_RATE = 0.6

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
PAD, BOS, EOS, UNK = SPECIAL_TOKENS


def _template_words(template: str) -> list[str]:
    return [word for word in template.split() if not word.startswith("{")]


# Token ids follow this order, so the bundled model's embedding rows do too: a change to the world's words
# needs the model rebuilt (examples/train_demo_model.py); the tests compare the saved vocabulary to this one.
VOCABULARY: tuple[str, ...] = tuple(
    sorted(
        {
            *PRODUCTS,
            *(w for t in PROMPT_TEMPLATES for w in _template_words(t)),
            *(w for t in POSITIVE_CLAUSES + NEGATIVE_CLAUSES + NEUTRAL_CLAUSES for w in _template_words(t)),
            *(w for fillers in SLOTS.values() for w in fillers),
            *POSITIVE_WORDS,
            *NEGATIVE_WORDS,
        }
    )
)


def prompts() -> list[str]:
    """Every prompt of the world, one per product and prompt template."""
    return list(PROMPTS)


def prompt_product(prompt: str) -> str:
    """The product a world prompt asks about ("review of the kettle :" -> "kettle")."""
    words = prompt.split()
    if len(words) < 2 or words[-1] != ":" or words[-2] not in PRODUCTS:
        raise ValueError(f"{prompt!r} is not a prompt of the demo world, e.g. {PROMPTS[0]!r}")
    return words[-2]


def gold_sentiment(text: str) -> float:
    """The hidden gold rule: 1.0 if `text` has more positive than negative lexicon words, 0.0 if fewer, else 0.5.

    Words are split on whitespace, lowercased and stripped of surrounding punctuation; unknown words count
    for nothing, so any string has a score (the empty string is 0.5).
    """
    words = [word.strip(".,:;!?").lower() for word in text.split()]
    balance = sum(word in POSITIVE_WORDS for word in words) - sum(word in NEGATIVE_WORDS for word in words)
    return 1.0 if balance > 0 else 0.0 if balance < 0 else 0.5


def fill_clause(rng: random.Random, template: str, product: str) -> str:
    """Fill a template's slots; repeated slots in one clause ("{pos} , {pos} and {pos}") get distinct words."""
    used: set[str] = set()
    words = []
    for word in template.split():
        if word == "{product}":
            word = product
        elif word.startswith("{"):
            word = rng.choice([w for w in SLOTS[word[1:-1]] if w not in used])
            used.add(word)
        words.append(word)
    return " ".join(words)


def sample_review(rng: random.Random, product: str, positive: bool) -> str:
    """A review of `product`: 1-3 clauses of the given sentiment, sometimes one neutral clause, <= 16 words."""
    if product not in PRODUCTS:
        raise ValueError(f"{product!r} is not a product of the demo world; products are {PRODUCTS}")
    clauses = POSITIVE_CLAUSES if positive else NEGATIVE_CLAUSES
    while True:  # rejection sampling on length; three long clauses are the only way past the limit
        templates = rng.sample(clauses, rng.choices((1, 2, 3), weights=(3, 4, 3))[0])
        if len(templates) < 3 and rng.random() < NEUTRAL_RATE:
            templates.insert(rng.randrange(len(templates) + 1), rng.choice(NEUTRAL_CLAUSES))
        text = " ".join(fill_clause(rng, template, product) for template in templates)
        if len(text.split()) <= MAX_REVIEW_WORDS:
            return text


def corpus(n: int, seed: int) -> list[tuple[str, str]]:
    """`n` (prompt, review) pairs, each review about its prompt's product, exactly half positive (n even)."""
    check_int("n", n, minimum=0)
    rng = random.Random(seed)
    sentiments = [i % 2 == 0 for i in range(n)]
    rng.shuffle(sentiments)
    pairs = []
    for positive in sentiments:
        prompt = rng.choice(PROMPTS)
        pairs.append((prompt, sample_review(rng, prompt_product(prompt), positive)))
    return pairs


def _clause_pattern(template: str) -> str:
    parts = []
    for word in template.split():
        if word == "{product}":
            parts.append(f"(?:{'|'.join(PRODUCTS)})")
        elif word.startswith("{"):
            parts.append(f"(?:{'|'.join(SLOTS[word[1:-1]])})")
        else:
            parts.append(re.escape(word))
    return " ".join(parts)


_CLAUSE = "(?:" + "|".join(_clause_pattern(t) for t in POSITIVE_CLAUSES + NEGATIVE_CLAUSES + NEUTRAL_CLAUSES) + ")"
_REVIEW = re.compile(f"{_CLAUSE}(?: {_CLAUSE}){{0,3}}")


def is_well_formed(text: str, product: str | None = None) -> bool:
    """Whether `text` is 1-4 clauses of the world's grammar (and, given `product`, names no other product).

    Sentiment is not checked: a mixed review is still well formed. The bound is one clause looser than
    sampled reviews, so fluent text that runs on by a clause still counts.
    """
    if _REVIEW.fullmatch(text) is None:
        return False
    return product is None or all(word == product for word in text.split() if word in PRODUCTS)


def simulated_votes(n_items: int, *, annotators: int = 3, seed: int = 0) -> list[dict]:
    """`n_items` vote records ({"prompt", "a", "b", "votes", "annotators"}), as `lorarlhf.data` reads them.

    Each item pairs two different reviews of its prompt's product: a positive and a negative one in random
    order (CONTRAST_RATE of items), else two of one sentiment. Annotator i errs at
    ANNOTATOR_ERROR_RATES[i % 3]: on a contrast item it votes for the more positive review, or with that
    probability the other one; on a same-sentiment item it says "tie" or picks a side at random.
    """
    check_int("n_items", n_items)
    check_int("annotators", annotators)
    rng = random.Random(seed)
    names = [f"annotator-{i + 1}" for i in range(annotators)]
    error_rates = [ANNOTATOR_ERROR_RATES[i % len(ANNOTATOR_ERROR_RATES)] for i in range(annotators)]
    records = []
    for _ in range(n_items):
        prompt = rng.choice(PROMPTS)
        product = prompt_product(prompt)
        if rng.random() < CONTRAST_RATE:
            a_positive = rng.random() < 0.5
            a, b = sample_review(rng, product, a_positive), sample_review(rng, product, not a_positive)
        else:
            positive = rng.random() < 0.5
            a = b = sample_review(rng, product, positive)
            while b == a:
                b = sample_review(rng, product, positive)
        votes = [_vote(rng, a, b, error_rate) for error_rate in error_rates]
        records.append({"prompt": prompt, "a": a, "b": b, "votes": votes, "annotators": list(names)})
    return records


def _vote(rng: random.Random, a: str, b: str, error_rate: float) -> str:
    gold_a, gold_b = gold_sentiment(a), gold_sentiment(b)
    if gold_a == gold_b:
        return "tie" if rng.random() < SAME_SENTIMENT_TIE_RATE else rng.choice(("a", "b"))
    better, worse = ("a", "b") if gold_a > gold_b else ("b", "a")
    return worse if rng.random() < error_rate else better


def word_tokenizer():
    """A word-level `PreTrainedTokenizerFast` over the world's vocabulary: <pad> 0, <s> 1, </s> 2, <unk> 3.

    Single sequences get a leading <s> (lorarlhf tokenizes a prompt with special tokens and its response
    without), and decoding joins words with single spaces, so world text round-trips exactly.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate((*SPECIAL_TOKENS, *VOCABULARY))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()  # "kettle." splits into "kettle" "."
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
        model_max_length=64,
    )
