"""The record level: `PreferenceDataError`, `PreferencePair`, and `Row`, one input record of any source.

A `Row` finds its record's shape from its fields (`SHAPES`) and gives typed access to them, every error
naming the source, the 1-based row and the field. `plural` words the counts in reports and logs.

Any text field may instead hold a list of {"role", "content"} messages. A prompt is rendered with the
tokenizer's chat template when it has one, else as "role: content" lines ending in "assistant:"; a
response is the text of its assistant message(s).
"""

from __future__ import annotations

from dataclasses import dataclass

SHAPES = {  # shape -> the fields that make it; quoted in errors for rows that match none
    "pair": "prompt, chosen, rejected",
    "hh-rlhf": "chosen, rejected (transcripts sharing a prefix that ends in '\\n\\nAssistant:')",
    "conversation": "chosen, rejected (message lists sharing their leading messages)",
    "ranking": "prompt, responses, ranks (1 = best); or prompt, ranking (responses best first)",
    "ratings": "prompt, responses, scores (higher is better)",
    "votes": "prompt, a, b, votes ('a'/'b'/'tie', one per annotator), optional annotators",
    "prompt": "prompt (only for load_prompts)",
}
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

    prompt: str
    """The prompt text, rendered (chat template or plain fallback) when the data gave messages."""
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
        self.source, self.number, self.index, self.tokenizer = source, number, index, tokenizer
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
            if shape != "pair" or self.present("prompt"):
                return shape
            return "conversation" if isinstance(self.record.get("chosen"), list | tuple) else "hh-rlhf"
        if self.present("responses"):
            raise self.error("responses need 'ranks' (1 = best) or 'scores' (higher is better)", field="responses")
        if self.present("prompt"):
            return "prompt"
        shapes = "; ".join(f"{s}: {fields}" for s, fields in SHAPES.items())
        raise self.error(f"fields {sorted(map(str, self.record))} match no record shape; the shapes are {shapes}")

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

    def prompt(self, name: str) -> str:
        value = self.get(name)
        if isinstance(value, list | tuple):
            return render_prompt(self.messages(name, value), self.tokenizer)
        return self.text(name, value)

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
        """A response given as messages: its assistant message(s), joined by newlines."""
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                raise self.error(
                    f"a response given as messages holds only assistant messages; message {i} is {message['role']!r}",
                    field=name,
                )
        return self.text(name, "\n".join(m["content"] for m in messages))

    def utility(self) -> str | None:
        if not self.present("utility"):
            return None
        value = self.record["utility"]
        if not isinstance(value, str):
            raise self.error(f"must be a string, got {type(value).__name__}", field="utility")
        return value

    def pair(self, prompt: str, chosen: str, rejected: str, **extra) -> PreferencePair:
        return PreferencePair(prompt, chosen, rejected, group=self.index, utility=self.utility(), **extra)


def render_prompt(messages: list[dict], tokenizer) -> str:
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # No template: a plain rendering that still shows who said what and that the assistant speaks next.
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
