"""Hub layouts: datasets as they are published, recognised by their fields and turned into our shapes.

Each layout below is detected from a row's fields (none needs naming) and becomes records of the shapes in
lorarlhf.data (records.SHAPES), which the parsers then read as any other record:

    ultrafeedback-binarized  HuggingFaceH4/ultrafeedback_binarized, argilla's binarized sets: chosen and rejected
                             are whole conversations -> a pair (prompt: the shared leading messages); equal scores
                             are a tie, dropped
    ultrafeedback            openbmb/UltraFeedback raw: instruction, completions -> ratings by overall_score
                             (prefer_by="fine-grained_score": the mean of the four aspect ratings)
    shp                      stanfordnlp/SHP, SHP-2: history, human_ref_A/B, labels (1 = A) -> a pair
    pku-saferlhf             PKU-SafeRLHF: response_0/1 -> a pair by better_response_id
                             (prefer_by="safer_response_id": by harmlessness instead)
    helpsteer                nvidia/HelpSteer2, HelpSteer: one row per response -> ratings per prompt by
                             helpfulness (prefer_by= another attribute); for SFT only each prompt's best response,
                             and only when rated at least SFT_MIN_RATING of 4
    oasst                    OpenAssistant/oasst1, oasst2: one row per message -> a ranking of each prompter
                             message's ranked assistant replies (rank 0 = best), the prompt the conversation from
                             the root; deleted messages and those that failed review are left out
    chatbot-arena            lmsys/chatbot_arena_conversations -> a vote (judge = annotator); a tie votes "tie";
                             a multi-turn battle whose earlier turns differ is dropped and counted: its vote is on
                             two whole conversations, not on two answers to one prompt
    orca-pairs               Intel/orca_dpo_pairs: system, question -> a pair prompted [system, user]
    distilabel-orca          argilla/distilabel-intel-orca-dpo-pairs: the same, status "tie" dropped
    unpaired-labels          KTO rows (trl-lib/kto-mix-14k): prompt, completion, label -> lorarlhf.data.feedback;
                             as pairs, each thumbs-up beats each thumbs-down of its prompt; for SFT only thumbs-up

A system prompt a layout has becomes the first message of a Conversation prompt, and history stays messages.
What a reader is for (`purpose`) decides what a layout gives: "preferences", "prompts" (ties keep their
prompt), "demonstrations" (only answers fit to learn), or "feedback".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from lorarlhf.data.columns import check_columns, rename
from lorarlhf.data.records import BadRows, PreferenceDataError, Row
from lorarlhf.validation import is_number

PURPOSES = ("preferences", "prompts", "demonstrations", "feedback")
PREFER_BY = {  # layout -> what prefer_by may name for it, the default first
    "ultrafeedback": ("overall_score", "fine-grained_score"),
    "pku-saferlhf": ("better_response_id", "safer_response_id"),
    "helpsteer": ("helpfulness", "correctness", "coherence", "complexity", "verbosity"),
}
SFT_MIN_RATING = 3
"""HelpSteer's bar for SFT: a prompt's best response is a demonstration only when rated at least this (0-4)."""
ARENA_VOTES = {"model_a": "a", "model_b": "b", "tie": "tie", "tie (bothbad)": "tie"}


@dataclass
class Item:
    """One record in our shapes, from source row `number` (a group's first row) and hub `layout` (None: ours)."""

    number: int
    record: dict
    layout: str | None
    raw: object = None
    """The row as the source gave it (a group's rows, for a grouped layout): what a bad row is reported as."""


@dataclass
class Read:
    """What a reader makes of a source: `items`, an iterator of records in our shapes, row by row (so the first
    bad row is the first error), and the counts behind them, complete once `items` is exhausted."""

    items: Iterator[Item] = field(default_factory=lambda: iter(()))
    rows: int = 0
    layouts: dict[str, int] = field(default_factory=dict)
    """Rows per hub layout, in order of first appearance."""
    dropped: dict[str, int] = field(default_factory=dict)
    """Records dropped while turning the layout into our shapes, by reason (e.g. "tie")."""


@dataclass(frozen=True)
class _Options:
    purpose: str
    prefer_by: str | None

    def prefer(self, layout: str) -> str:
        return self.prefer_by if self.prefer_by is not None else PREFER_BY[layout][0]


Output = tuple[int, dict | None, str | None]  # (row, record in our shapes or None, drop reason or None)


@dataclass(frozen=True)
class _Layout:
    name: str
    fields: tuple[str, ...]
    """Fields every row of the layout has (not None)."""
    convert: Callable[[list[Row], _Options], list[Output]]
    key: Callable[[Row, _Options], object] | None = None
    """Rows with the same key are converted together (one prompt's responses, one message tree)."""


def read_layouts(
    source: str,
    records: Iterable[tuple[int, object]],
    *,
    tokenizer,
    purpose: str,
    bad: BadRows,
    prefer_by: str | None = None,
    columns: dict[str, str] | None = None,
) -> Read:
    """Every row renamed by `columns`, and a hub layout's rows converted into our shapes; other rows as they are.

    Rows of a grouped layout (HelpSteer, oasst, KTO pairs) come after the others, once every row is read.
    """
    columns = check_columns(columns)
    check_prefer_by(prefer_by)
    options = _Options(purpose, prefer_by)
    read = Read()

    def emit(layout: _Layout, rows: list[Row], raw) -> Iterator[Item]:
        for number, record, reason in layout.convert(rows, options):
            if reason is not None and not (purpose == "prompts" and record is not None):
                read.dropped[reason] = read.dropped.get(reason, 0) + 1
            elif record is not None:
                yield Item(number, record, layout.name, raw)

    def items() -> Iterator[Item]:
        groups: dict[tuple[str, object], list[tuple[Row, object]]] = {}
        for index, (number, raw) in enumerate(records):
            read.rows += 1
            made: list[Item] = []
            with bad.guard(number, raw):
                if not isinstance(raw, dict):
                    raise PreferenceDataError(
                        source, f"a record must be an object with named fields, got {type(raw).__name__}", row=number
                    )
                row = Row(source, number, index, rename(source, number, raw, columns), tokenizer)
                layout = _detect(row, prefer_by)
                if layout is None:
                    made.append(Item(number, row.record, None, raw))
                else:
                    read.layouts[layout.name] = read.layouts.get(layout.name, 0) + 1
                    key = layout.key(row, options) if layout.key is not None else None
                    if key is None:
                        made += emit(layout, [row], raw)
                    else:
                        groups.setdefault((layout.name, key), []).append((row, raw))
            yield from made
        for (name, _), group in groups.items():
            rows, raws = [row for row, _ in group], [raw for _, raw in group]
            made = []
            with bad.guard(rows[0].number, raws):
                made += emit(_LAYOUTS[name], rows, raws)
            yield from made

    read.items = items()
    return read


def check_prefer_by(prefer_by) -> str | None:
    choices = sorted({choice for values in PREFER_BY.values() for choice in values})
    if prefer_by is not None and prefer_by not in choices:
        per_layout = "; ".join(f"{layout}: {', '.join(values)}" for layout, values in PREFER_BY.items())
        raise ValueError(f"prefer_by={prefer_by!r} is not supported; it names what orders responses ({per_layout})")
    return prefer_by


def _detect(row: Row, prefer_by: str | None) -> _Layout | None:
    found = [layout for layout in _LAYOUTS.values() if all(row.present(name) for name in layout.fields)]
    if len(found) > 1:
        raise row.error(f"has the fields of more than one hub layout: {', '.join(lay.name for lay in found)}")
    if not found:
        if prefer_by is not None:
            raise row.error(f"prefer_by={prefer_by!r} orders responses only in the hub layouts {', '.join(PREFER_BY)}")
        return None
    layout = found[0]
    if prefer_by is not None and prefer_by not in PREFER_BY.get(layout.name, ()):
        allowed = PREFER_BY.get(layout.name)
        words = f"choose one of {allowed}" if allowed else "it orders responses only for " + ", ".join(PREFER_BY)
        raise row.error(f"prefer_by={prefer_by!r} does not apply to the {layout.name} layout; {words}")
    return layout


# ---------------------------------------------------------------------------------------------------------
# The layouts, one converter each


def _prompt_value(row: Row, name: str, system: str | None = None, *, messages: bool = False):
    """The prompt field as our records hold it (text or message dicts), with a system message first if given;
    `messages`: as messages even without one, so a layout's prompts are all of one kind."""
    prompt = row.prompt(name)  # checked: text, or messages
    if not system and not (messages and isinstance(prompt, str)):
        return prompt if isinstance(prompt, str) else prompt.dicts()
    turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt.dicts()
    return [{"role": "system", "content": system}, *turns] if system else turns


def _system(row: Row) -> str | None:
    if not row.present("system"):
        return None
    value = row.record["system"]
    if not isinstance(value, str):
        raise row.error(f"must be a string, got {type(value).__name__}", field="system")
    return value if value.strip() else None  # an empty system prompt is no system message


def _binarized(chosen_score: str, rejected_score: str):
    def convert(rows: list[Row], options: _Options) -> list[Output]:
        (row,) = rows
        scores = [row.get(chosen_score), row.get(rejected_score)]
        for name, score in zip((chosen_score, rejected_score), scores, strict=True):
            if not is_number(score):
                raise row.error(f"must be a number, got {score!r}", field=name)
        if row.whole_conversations():  # the conversations' shared start is the prompt, system messages and all
            record = {"chosen": row.record["chosen"], "rejected": row.record["rejected"]}
        else:
            record = {name: row.get(name) for name in ("prompt", "chosen", "rejected")}
        return [(row.number, record, "tie" if scores[0] == scores[1] else None)]

    return convert


def _ultrafeedback(rows: list[Row], options: _Options) -> list[Output]:
    (row,) = rows
    score = options.prefer("ultrafeedback")
    responses, scores = [], []
    for i, completion in enumerate(row.entries("completions", min_len=2)):
        name = f"completions[{i}]"
        if not isinstance(completion, dict):
            raise row.error(f"must be an object with a 'response', got {type(completion).__name__}", field=name)
        responses.append(row.text(f"{name}.response", completion.get("response")))
        if not is_number(completion.get(score)):
            raise row.error(f"must be a number, got {completion.get(score)!r}", field=f"{name}.{score}")
        scores.append(completion[score])
    # Each completion's custom_system_prompt is the principle its model was asked to follow, one per completion:
    # the responses answer the one instruction, which is the prompt (as HuggingFaceH4's binarization has it).
    return [(row.number, {"prompt": row.prompt("instruction"), "responses": responses, "scores": scores}, None)]


def _label(row: Row, name: str, allowed: dict) -> object:
    value = row.get(name)
    if isinstance(value, bool) or not isinstance(value, int | str) or value not in allowed:
        raise row.error(f"must be one of {list(allowed)}, got {value!r}", field=name)
    return allowed[value]


def _shp(rows: list[Row], options: _Options) -> list[Output]:
    (row,) = rows
    a, b = row.text("human_ref_A", row.get("human_ref_A")), row.text("human_ref_B", row.get("human_ref_B"))
    a_preferred = _label(row, "labels", {1: True, 0: False})
    chosen, rejected = (a, b) if a_preferred else (b, a)
    return [(row.number, {"prompt": row.prompt("history"), "chosen": chosen, "rejected": rejected}, None)]


def _pku(rows: list[Row], options: _Options) -> list[Output]:
    (row,) = rows
    by = options.prefer("pku-saferlhf")
    better = _label(row, by, {0: 0, 1: 1})
    responses = [row.text(f"response_{i}", row.get(f"response_{i}")) for i in (0, 1)]
    record = {"prompt": _prompt_value(row, "prompt"), "chosen": responses[better], "rejected": responses[1 - better]}
    return [(row.number, record, None)]


_NEMO_TURN = re.compile(r"\s*<extra_id_1>(User|Assistant)\s*")


def _helpsteer_prompt(row: Row):
    """A multi-turn HelpSteer2 prompt is "turn 1 <extra_id_1>Assistant turn 2 <extra_id_1>User turn 3" (NeMo's
    turn markers, not text): as messages. A single turn stays text."""
    text = row.text("prompt", row.get("prompt"))
    parts = _NEMO_TURN.split(text)
    if len(parts) == 1:
        return text
    messages = [{"role": "user", "content": parts[0].strip()}]
    turns = zip(parts[1::2], parts[2::2], strict=True)
    messages += [{"role": role.lower(), "content": turn.strip()} for role, turn in turns]
    return messages


def _helpsteer_key(row: Row, options: _Options):
    return row.text("prompt", row.get("prompt"))


def _helpsteer(rows: list[Row], options: _Options) -> list[Output]:
    attribute = options.prefer("helpsteer")
    prompt = _helpsteer_prompt(rows[0])
    responses = [row.text("response", row.get("response")) for row in rows]
    ratings = []
    for row in rows:
        if not is_number(row.get(attribute)):
            raise row.error(f"must be a number, got {row.get(attribute)!r}", field=attribute)
        ratings.append(row.get(attribute))
    number = rows[0].number
    if options.purpose == "demonstrations":  # never learn to write an answer rated low
        best = max(ratings)
        if best < SFT_MIN_RATING:
            return [(number, None, "low_rated")]
        kept = dict.fromkeys(r for r, rating in zip(responses, ratings, strict=True) if rating == best)
        return [(number, {"prompt": prompt, "completion": response}, None) for response in kept]
    if len(rows) < 2:
        return [(number, {"prompt": prompt}, "unpaired")]
    return [(number, {"prompt": prompt, "responses": responses, "scores": ratings}, None)]


def _oasst_key(row: Row, options: _Options):
    return row.get("message_tree_id")


def _oasst(rows: list[Row], options: _Options) -> list[Output]:
    """Each prompter message's ranked assistant replies as a ranking; prompted by the path from the tree's root."""
    by_id = {row.get("message_id"): row for row in rows}
    children: dict[object, list[Row]] = {}
    for row in rows:
        role = row.get("role")
        if role not in ("prompter", "assistant"):
            raise row.error(f"must be 'prompter' or 'assistant', got {role!r}", field="role")
        if row.record.get("parent_id") is not None:
            children.setdefault(row.record["parent_id"], []).append(row)

    def usable(row: Row) -> bool:
        return row.record.get("deleted") is not True and row.record.get("review_result") is not False

    def path(row: Row) -> list[dict] | None:
        messages = []
        while row is not None:
            if not usable(row):
                return None
            messages.append(
                {
                    "role": "user" if row.get("role") == "prompter" else "assistant",
                    "content": row.text("text", row.get("text")),
                }
            )
            parent = row.record.get("parent_id")
            if parent is not None and parent not in by_id:
                raise row.error(f"its parent message {parent!r} is not in the data; read whole trees", "parent_id")
            row = by_id.get(parent) if parent is not None else None
        return messages[::-1]

    outputs = []
    for row in rows:
        if row.get("role") != "prompter" or (prompt := path(row)) is None:
            continue
        if options.purpose == "prompts":
            outputs.append((row.number, {"prompt": prompt}, None))
            continue
        replies = [r for r in children.get(row.get("message_id"), ()) if r.get("role") == "assistant" and usable(r)]
        ranked = [r for r in replies if r.record.get("rank") is not None]
        if len(ranked) < 2:
            continue  # nothing to rank: one reply, or replies nobody ranked
        ranks = [r.get("rank") for r in ranked]
        if len(set(ranks)) < len(ranks) or not all(is_number(rank) for rank in ranks):
            raise ranked[0].error(f"sibling replies need distinct numeric ranks, got {ranks}", field="rank")
        ranking = [r.text("text", r.get("text")) for r in sorted(ranked, key=lambda r: r.get("rank"))]
        outputs.append((row.number, {"prompt": prompt, "ranking": ranking}, None))
    return outputs


def _arena(rows: list[Row], options: _Options) -> list[Output]:
    (row,) = rows
    vote = _label(row, "winner", ARENA_VOTES)
    a, b = (row.messages(name, row.entries(name)) for name in ("conversation_a", "conversation_b"))
    for name, conversation in (("conversation_a", a), ("conversation_b", b)):
        if conversation[-1]["role"] != "assistant" or len(conversation) < 2:
            raise row.error("must end in the model's answer to a user turn", field=name)
    if a[:-1] != b[:-1]:  # the models answered earlier turns differently: no one prompt to compare answers to
        return [(row.number, None, "multi_turn")]
    prompt = [dict(message) for message in a[:-1]]
    answer_a, answer_b = row.text("conversation_a", a[-1]["content"]), row.text("conversation_b", b[-1]["content"])
    if answer_a == answer_b:
        return [(row.number, {"prompt": prompt}, "tie")]  # one answer twice: nothing to prefer
    record = {"prompt": prompt, "a": answer_a, "b": answer_b, "votes": [vote]}
    if isinstance(row.record.get("judge"), str):
        record["annotators"] = [row.record["judge"]]
    return [(row.number, record, None)]


def _orca(question: str, tie_status: bool):
    def convert(rows: list[Row], options: _Options) -> list[Output]:
        (row,) = rows
        record = {"prompt": _prompt_value(row, question, _system(row), messages=True)}
        record.update({name: row.get(name) for name in ("chosen", "rejected")})
        tie = tie_status and row.record.get("status") == "tie"  # argilla's judge rated both the same
        return [(row.number, record, "tie" if tie else None)]

    return convert


def _feedback_label(row: Row) -> bool:
    value = row.get("label")
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):  # a CSV cell
        return value.strip().lower() == "true"
    if not isinstance(value, bool):
        raise row.error(f"must be true (thumbs up) or false (thumbs down), got {value!r}", field="label")
    return value


def _feedback_key(row: Row, options: _Options):
    if options.purpose != "preferences":
        return None
    prompt = row.prompt("prompt")
    return (_system(row), prompt)


def _feedback(rows: list[Row], options: _Options) -> list[Output]:
    """KTO rows: as they are (feedback), thumbs-up ones (demonstrations), or pairs of one prompt's up and down."""
    entries = [
        (row, _prompt_value(row, "prompt", _system(row)), row.response("completion"), _feedback_label(row))
        for row in rows
    ]
    if options.purpose == "feedback":
        return [(row.number, {"prompt": p, "completion": c, "label": label}, None) for row, p, c, label in entries]
    if options.purpose == "prompts":
        return [(row.number, {"prompt": p}, None) for row, p, _, _ in entries]
    if options.purpose == "demonstrations":  # a thumbs-down completion is what not to write
        return [(row.number, {"prompt": p, "completion": c} if up else None, None if up else "thumbs_down")
                for row, p, c, up in entries]  # fmt: skip
    ups = [(row, c) for row, _, c, up in entries if up]
    downs = [c for _, _, c, up in entries if not up]
    if not ups or not downs:
        return [(row.number, None, "unpaired") for row in rows]
    prompt = entries[0][1]
    return [
        (row.number, {"prompt": prompt, "chosen": up, "rejected": down}, None)
        for row, up in ups
        for down in downs
        if up != down
    ]


_LAYOUTS = {
    layout.name: layout
    for layout in (
        _Layout("ultrafeedback-binarized", ("chosen", "rejected", "score_chosen", "score_rejected"),
                _binarized("score_chosen", "score_rejected")),
        _Layout("argilla-binarized", ("chosen", "rejected", "chosen-rating", "rejected-rating"),
                _binarized("chosen-rating", "rejected-rating")),
        _Layout("ultrafeedback", ("instruction", "completions"), _ultrafeedback),
        _Layout("shp", ("history", "human_ref_A", "human_ref_B", "labels"), _shp),
        _Layout("pku-saferlhf", ("prompt", "response_0", "response_1"), _pku),
        _Layout("helpsteer", ("prompt", "response", "helpfulness", "correctness", "coherence", "complexity",
                              "verbosity"), _helpsteer, _helpsteer_key),
        _Layout("oasst", ("message_id", "text", "role", "message_tree_id"), _oasst, _oasst_key),
        _Layout("chatbot-arena", ("conversation_a", "conversation_b", "winner"), _arena),
        _Layout("orca-pairs", ("question", "chosen", "rejected"), _orca("question", tie_status=False)),
        _Layout("distilabel-orca", ("input", "chosen", "rejected", "status"), _orca("input", tie_status=True)),
        _Layout("unpaired-labels", ("prompt", "completion", "label"), _feedback, _feedback_key),
    )
}  # fmt: skip
LAYOUTS = tuple(_LAYOUTS)
