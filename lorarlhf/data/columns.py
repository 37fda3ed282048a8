"""`columns={"prompt": "question", "chosen": "good", ...}`: another layout's field names mapped to ours.

The mapping is ours -> theirs and is applied to each row before anything reads it, so every shape and hub
layout (records.SHAPES) is reachable from any naming. A mapped field the row does not have is an error
naming it: a misspelt column would otherwise read as a row of some other shape.
"""

from __future__ import annotations

from lorarlhf.data.records import PreferenceDataError


def check_columns(columns) -> dict[str, str] | None:
    """The mapping, checked: None or a dict of our field name -> the data's, each the data's field once."""
    if columns is None:
        return None
    if not isinstance(columns, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in columns.items()):
        raise ValueError(
            f"columns={columns!r} must map our field names to the data's, e.g. {{'prompt': 'question', 'chosen': "
            "'good', 'rejected': 'bad'}"
        )
    theirs = list(columns.values())
    twice = sorted({name for name in theirs if theirs.count(name) > 1})
    if twice:
        raise ValueError(f"columns={columns!r} maps the data's field {twice[0]!r} to more than one of ours")
    return dict(columns)


def rename(source: str, number: int, record: dict, columns: dict[str, str] | None) -> dict:
    """`record` with the data's fields renamed to ours; a field of ours that the mapping replaces is dropped."""
    if not columns:
        return record
    for ours, theirs in columns.items():
        if theirs not in record:
            raise PreferenceDataError(
                source,
                f"columns= maps {ours!r} to {theirs!r}, which the data does not have; its fields are "
                f"{sorted(map(str, record))}",
                row=number,
                field=theirs,
            )
    mapped = set(columns.values()) | set(columns)
    renamed = {name: value for name, value in record.items() if name not in mapped}
    renamed.update({ours: record[theirs] for ours, theirs in columns.items()})
    return renamed
