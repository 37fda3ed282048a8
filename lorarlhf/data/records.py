"""The record level: `PreferenceDataError`, `PreferencePair`, and `Row`, one input record of any source.

A `Row` finds its record's shape from its fields (`SHAPES`) and gives typed access to them, every error
naming the source, the 1-based row and the field. `BadRows` raises a bad row's error, or with
skip_bad_rows=True keeps it with its reason and goes on. `plural` words the counts in reports and logs.

Any text field may instead hold a list of {"role", "content"} messages. A prompt given as messages stays
a `Conversation` (system prompt and history kept), rendered into tokens only by lorarlhf.model.chat; a
response is the text of its assistant message.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass

from lorarlhf.model.chat import ChatFormat, Conversation

SHAPES = {  # shape -> the fields that make it; quoted in errors for rows that match none
    "pair": "prompt, chosen, rejected",
    "hh-rlhf": "chosen, rejected (transcripts sharing a prefix that ends in '\\n\\nAssistant:')",
    "conversation": "chosen, rejected (message lists sharing their leading messages)",
    "ranking": "prompt, responses, ranks (1 = best); or prompt, ranking (responses best first)",
    "ratings": "prompt, responses, scores (higher is better)",
    "votes": "prompt, a, b, votes ('a'/'b'/'tie', one per annotator), optional annotators",
    "prompt": "prompt (only for load_prompts)",
    "unpaired-labels": "prompt, completion, label (true = thumbs up; KTO, e.g. trl-lib/kto-mix-14k): load_feedback(); "
    "pairs where one prompt has both labels",
    # Hub layouts, read as published (lorarlhf.data.layouts), each into one of the shapes above:
    "ultrafeedback-binarized": "prompt, chosen, rejected (whole conversations), score_chosen, score_rejected "
    "(HuggingFaceH4/ultrafeedback_binarized)",
    "argilla-binarized": "prompt, chosen, rejected, chosen-rating, rejected-rating "
    "(argilla/ultrafeedback-binarized-preferences-cleaned)",
    "ultrafeedback": "instruction, completions [{response, overall_score, fine-grained_score, ...}] "
    "(openbmb/UltraFeedback)",
    "shp": "history, human_ref_A, human_ref_B, labels (1 = A preferred) (stanfordnlp/SHP, SHP-2)",
    "pku-saferlhf": "prompt, response_0, response_1, better_response_id, safer_response_id "
    "(PKU-Alignment/PKU-SafeRLHF)",
    "helpsteer": "prompt, response, helpfulness, correctness, coherence, complexity, verbosity, one row per "
    "response (nvidia/HelpSteer2, HelpSteer)",
    "oasst": "message_id, parent_id, text, role, rank, message_tree_id, one row per message (OpenAssistant/oasst1, "
    "oasst2)",
    "chatbot-arena": "conversation_a, conversation_b, winner ('model_a'/'model_b'/'tie'/'tie (bothbad)'), judge "
    "(lmsys/chatbot_arena_conversations)",
    "orca-pairs": "system, question, chosen, rejected (Intel/orca_dpo_pairs)",
    "distilabel-orca": "system, input, chosen, rejected, status (argilla/distilabel-intel-orca-dpo-pairs)",
}
COLUMNS_HINT = (
    "for any other layout, map its fields to ours with columns=, e.g. "
    "columns={'prompt': 'question', 'chosen': 'good', 'rejected': 'bad'}"
)
# Fields whose presence decides the shape. A row with signature fields of two shapes is ambiguous.
_SIGNATURES = {
    "votes": ("votes", "a", "b"),
    "ranking": ("ranks", "ranking"),
    "ratings": ("scores",),
    "pair": ("chosen", "rejected"),
}


class PreferenceDataError(ValueError):
    """Bad preference data, named by where it is: "<source>, row <n>, field '<name>': <problem>"."""

    def __init__(self, source: str, problem: str, *, row: int | None = None, field: str | None = None):
        where = source + (f", row {row}" if row is not None else "") + (f", field '{field}'" if field else "")
        super().__init__(f"{where}: {problem}")
        self.source, self.row, self.field, self.problem = source, row, field, problem


@dataclass(frozen=True)
class PreferencePair:
    """One human preference: `chosen` is the better response to `prompt` than `rejected`."""

    prompt: str | Conversation
    """The prompt: its text, or the Conversation (system prompt, history, last user turn) the data gave."""
    chosen: str
    """The preferred response's text."""
    rejected: str
    """The other response's text."""
    weight: float = 1.0
    """Loss weight: 1/C(K,2) for a K-way ranking with weight_rankings=True, vote confidence for votes."""
    margin: float | None = None
    """Known preference strength, when the data has one: score gap (score_margin=True) or BT log-odds."""
    group: int | None = None
    """0-based index of the source record; pairs from one ranking or ratings record share it."""
    utility: str | None = None
    """The record's "utility" field (e.g. "open"/"closed") for the prompt-aware ranking objective, else None."""


class Row:
    def __init__(self, source: str, number: int, index: int, record, tokenizer):
        self.source, self.number, self.index = source, number, index
        self.chat = None if tokenizer is None else ChatFormat.of(tokenizer)  # a tokenizer or a ChatFormat
        if not isinstance(record, dict):
            raise self.error(f"a record must be an object with named fields, got {type(record).__name__}")
        self.record = record

    def error(self, problem: str, field: str | None = None) -> PreferenceDataError:
        return PreferenceDataError(self.source, problem, row=self.number, field=field)

    def present(self, name: str) -> bool:
        return self.record.get(name) is not None

    def shape(self) -> str:
        found = {s: [f for f in fields if self.present(f)] for s, fields in _SIGNATURES.items()}
        found = {s: fields for s, fields in found.items() if fields}
        if len(found) > 1:
            clash = "; ".join(f"{s} ({', '.join(fields)})" for s, fields in found.items())
            raise self.error(f"has fields of more than one record shape: {clash}; a row must be one shape")
        if found:
            shape = next(iter(found))
            if shape != "pair":
                return shape
            if self.present("prompt"):
                return "conversation" if self.whole_conversations() else "pair"
            return "conversation" if isinstance(self.record.get("chosen"), list | tuple) else "hh-rlhf"
        if self.present("responses"):
            raise self.error("responses need 'ranks' (1 = best) or 'scores' (higher is better)", field="responses")
        if self.present("prompt"):
            return "prompt"
        shapes = "; ".join(f"{s}: {fields}" for s, fields in SHAPES.items())
        raise self.error(
            f"fields {sorted(map(str, self.record))} match no record shape; the shapes are {shapes}; {COLUMNS_HINT}"
        )

    def whole_conversations(self) -> bool:
        """chosen and rejected are whole conversations (the user's turns too), as UltraFeedback-binarized gives them
        beside its `prompt`: then their shared leading messages are the prompt."""
        chosen, rejected = self.record.get("chosen"), self.record.get("rejected")
        return (
            isinstance(chosen, list | tuple)
            and isinstance(rejected, list | tuple)
            and bool(chosen)
            and isinstance(chosen[0], dict)
            and chosen[0].get("role") != "assistant"
        )

    def get(self, name: str):
        if not self.present(name):
            raise self.error("missing", field=name)
        return self.record[name]

    def entries(self, name: str, *, min_len: int = 1) -> list:
        value = self.get(name)
        if not isinstance(value, list | tuple):
            raise self.error(f"must be a list, got {type(value).__name__}", field=name)
        if not value:
            raise self.error("empty (a list of no entries)", field=name)
        if len(value) < min_len:
            raise self.error(f"needs at least {min_len} entries, got {len(value)}", field=name)
        return list(value)

    def prompt(self, name: str) -> str | Conversation:
        value = self.get(name)
        if isinstance(value, list | tuple):
            return Conversation(self.messages(name, value))
        return self.text(name, value)

    @property
    def templated(self) -> bool:
        """Whether prompts become tokens by a chat template (so a transcript is better read as messages)."""
        return self.chat is not None and self.chat.uses_template

    def response(self, name: str, value=None) -> str:
        value = self.get(name) if value is None else value
        if isinstance(value, list | tuple):
            return self.assistant_text(name, self.messages(name, value))
        return self.text(name, value)

    def text(self, name: str, value) -> str:
        if not isinstance(value, str):
            raise self.error(f"must be a string or a list of messages, got {type(value).__name__}", field=name)
        if not value.strip():
            raise self.error("empty", field=name)
        return value

    def messages(self, name: str, value) -> list[dict]:
        if not value:
            raise self.error("empty (a list of no messages)", field=name)
        for i, message in enumerate(value):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise self.error(f"message {i} must be an object with a 'role' and a 'content'", field=name)
            if not isinstance(message.get("content"), str):
                got = type(message.get("content")).__name__
                raise self.error(f"message {i} needs a string 'content', got {got}", field=name)
        return list(value)

    def assistant_text(self, name: str, messages: list[dict]) -> str:
        """A response given as messages: its one assistant message (a response is one turn of the model's)."""
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                raise self.error(
                    f"a response given as messages holds only assistant messages; message {i} is {message['role']!r}",
                    field=name,
                )
        if len(messages) > 1:
            raise self.error(
                f"the response is {len(messages)} assistant messages; a response is one assistant turn, so give "
                "the earlier ones in the prompt",
                field=name,
            )
        return self.text(name, messages[0]["content"])

    def utility(self) -> str | None:
        if not self.present("utility"):
            return None
        value = self.record["utility"]
        if not isinstance(value, str):
            raise self.error(f"must be a string, got {type(value).__name__}", field="utility")
        return value

    def pair(self, prompt: str, chosen: str, rejected: str, **extra) -> PreferencePair:
        return PreferencePair(prompt, chosen, rejected, group=self.index, utility=self.utility(), **extra)


@dataclass(frozen=True)
class BadRow:
    """A row skipped with skip_bad_rows=True, and why."""

    row: int
    """1-based row in its source (a group's first row, for layouts read one group of rows at a time)."""
    field: str | None
    reason: str
    record: object
    """The record as the source gave it (a list of them for a group)."""


class BadRows:
    """Where a bad row goes: by default its error stops the load; with skip=True it is kept here and the load
    goes on (a skipped row is a different training set, so it is counted and written out, never silent)."""

    def __init__(self, skip: bool = False):
        if not isinstance(skip, bool):
            raise ValueError(f"skip_bad_rows={skip!r} must be True or False")
        self.skip, self.rows = skip, []

    @contextmanager
    def guard(self, number: int, record):
        """Run one row's reading; a PreferenceDataError naming a row is raised, or with skip=True kept."""
        try:
            yield
        except PreferenceDataError as error:
            if not self.skip or error.row is None:
                raise
            self.rows.append(BadRow(error.row, error.field, error.problem, record))
            logging.getLogger("lorarlhf.data").debug("skipped bad row: %s", error)


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
