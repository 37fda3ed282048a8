"""Shapes -> pairs: one parser per shape of the table in lorarlhf.data, each returning (pairs, ties dropped).

Vote records are not parsed here: their votes are pooled across records first, in lorarlhf.data.votes.
"""

from __future__ import annotations

import math
import numbers
import os
import re

from lorarlhf.data.records import PreferencePair, Row
from lorarlhf.model.chat import Conversation
from lorarlhf.validation import is_number

HH_ASSISTANT = "\n\nAssistant:"


def _parse_pair(row: Row, **_) -> tuple[list[PreferencePair], int]:
    prompt, chosen, rejected = row.prompt("prompt"), row.response("chosen"), row.response("rejected")
    if chosen == rejected:
        raise row.error("same text as 'chosen'; a pair needs two different responses", field="rejected")
    return [row.pair(prompt, chosen, rejected)], 0


def _parse_hh(row: Row, **_) -> tuple[list[PreferencePair], int]:
    """The prompt is the shared prefix through its last "\\n\\nAssistant:"; the rest are the responses.

    The space after "Assistant:" stays with the response: BPE tokenizers attach it to the first word
    (" Paris"), and prompt + response is then exactly the transcript.
    """
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if not isinstance(rejected, str):
        got = type(rejected).__name__
        raise row.error(f"without a 'prompt', chosen and rejected must both be transcripts, got {got}", "rejected")
    chosen, rejected = row.text("chosen", chosen), row.text("rejected", rejected)
    if chosen == rejected:
        raise row.error("same text as 'chosen'; a pair needs two different responses", field="rejected")
    shared = len(os.path.commonprefix([chosen, rejected]))
    cut = chosen.rfind(HH_ASSISTANT, 0, shared)
    if cut < 0:
        raise row.error(
            "without a 'prompt' field, chosen and rejected must be HH-RLHF transcripts sharing a prefix that ends "
            "in '\\n\\nAssistant:' (or message lists sharing their leading messages)",
            field="chosen",
        )
    cut += len(HH_ASSISTANT)
    prompt, chosen, rejected = chosen[:cut], row.text("chosen", chosen[cut:]), row.text("rejected", rejected[cut:])
    if row.templated:  # a chat model reads the transcript as the conversation it is
        return [row.pair(_hh_conversation(prompt), chosen.strip(), rejected.strip())], 0
    return [row.pair(prompt, chosen, rejected)], 0


_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def _hh_conversation(transcript: str) -> Conversation:
    """ "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: ...\n\nAssistant:" as user/assistant messages."""
    parts = _HH_TURN.split(transcript)  # [before, speaker, text, speaker, text, ...]; the last text is empty
    turns = [(speaker, text.strip()) for speaker, text in zip(parts[1::2], parts[2::2], strict=True)][:-1]
    return Conversation([(("user" if s == "Human" else "assistant"), text) for s, text in turns])


def _parse_conversation(row: Row, **_) -> tuple[list[PreferencePair], int]:
    """TRL's implicit prompt: the shared leading messages are the prompt, the final assistant turns the responses."""
    chosen = row.messages("chosen", row.get("chosen"))
    rejected = row.get("rejected")
    if not isinstance(rejected, list | tuple):
        got = type(rejected).__name__
        raise row.error(f"chosen is a message list, so rejected must be one too, got {got}", field="rejected")
    rejected = row.messages("rejected", rejected)
    if chosen == rejected:
        raise row.error("same messages as 'chosen'; a pair needs two different responses", field="rejected")
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    while shared > 0 and chosen[shared - 1]["role"] == "assistant":
        shared -= 1  # a shared start of the answer belongs to the answer: the prompt ends where the assistant begins
    if shared == 0:
        raise row.error(
            "chosen and rejected share no leading non-assistant messages to use as the prompt; add a 'prompt' field",
            field="chosen",
        )
    prompt = Conversation(chosen[:shared])
    return [
        row.pair(
            prompt, row.assistant_text("chosen", chosen[shared:]), row.assistant_text("rejected", rejected[shared:])
        )
    ], 0


def _parse_ranking(row: Row, *, weight_rankings: bool = False, **_) -> tuple[list[PreferencePair], int]:
    prompt = row.prompt("prompt")
    if row.present("ranking"):
        if row.present("responses") or row.present("ranks"):
            raise row.error("give either 'ranking' (best first) or 'responses' with 'ranks', not both", "ranking")
        name = "ranking"
        order = row.entries(name, min_len=2)  # best first
    else:
        name = "responses"
        responses = row.entries(name, min_len=2)
        ranks = row.entries("ranks")
        if len(ranks) != len(responses):
            raise row.error(f"{len(ranks)} ranks for {len(responses)} responses", field="ranks")
        k = len(responses)
        if not all(_is_integer(r) for r in ranks) or sorted(int(r) for r in ranks) != list(range(1, k + 1)):
            raise row.error(f"must be a permutation of 1..{k} (1 = best), got {ranks}", field="ranks")
        order = [responses[i] for i in sorted(range(k), key=lambda i: ranks[i])]
    texts = [row.response(f"{name}[{i}]", value) for i, value in enumerate(order)]
    k = len(texts)
    weight = 1 / math.comb(k, 2) if weight_rankings else 1.0  # InstructGPT: each prompt counts once in the loss
    pairs = []
    for i in range(k):
        for j in range(i + 1, k):
            if texts[i] == texts[j]:
                raise row.error("two entries are the same text, so a pair would prefer a response to itself", name)
            pairs.append(row.pair(prompt, texts[i], texts[j], weight=weight))
    return pairs, 0


def _parse_ratings(row: Row, *, score_margin: bool = False, **_) -> tuple[list[PreferencePair], int]:
    prompt = row.prompt("prompt")
    responses = row.entries("responses", min_len=2)
    scores = row.entries("scores")
    if len(scores) != len(responses):
        raise row.error(f"{len(scores)} scores for {len(responses)} responses", field="scores")
    for score in scores:
        if not is_number(score):
            raise row.error(f"scores must be finite numbers, got {score!r}", field="scores")
    texts = [row.response(f"responses[{i}]", value) for i, value in enumerate(responses)]
    order = sorted(range(len(texts)), key=lambda i: -scores[i])  # best first; stable, so ties keep data order
    pairs, ties = [], 0
    for x, i in enumerate(order):
        for j in order[x + 1 :]:
            if scores[i] == scores[j]:
                ties += 1
                continue
            if texts[i] == texts[j]:
                raise row.error(f"responses {i} and {j} are the same text with different scores", "responses")
            margin = float(scores[i] - scores[j]) if score_margin else None
            pairs.append(row.pair(prompt, texts[i], texts[j], margin=margin))
    return pairs, ties


PARSERS = {
    "pair": _parse_pair,
    "hh-rlhf": _parse_hh,
    "conversation": _parse_conversation,
    "ranking": _parse_ranking,
    "ratings": _parse_ratings,
}


def _is_integer(value) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer())
