"""Reading a source: a file, a list of records or a dataset, each yielding (1-based row number, record).

`datasets` and `pyarrow` are imported only when a source needs them, so importing lorarlhf.data stays fast.

CSV convention: an empty cell is an absent field. List fields (responses, ranking, ranks, scores, votes,
annotators) hold JSON arrays, e.g. `["good", "bad"]` and `[1, 2]`. A text field (prompt, chosen, rejected,
a, b) is read as messages only when the whole cell is a JSON array of objects with a "role"; any other
cell is kept verbatim as text.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from lorarlhf.data.records import PreferenceDataError

SUPPORTED_EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")
_CSV_LIST_FIELDS = ("responses", "ranking", "ranks", "scores", "votes", "annotators")
_CSV_TEXT_FIELDS = ("prompt", "chosen", "rejected", "a", "b")


def open_source(source, split: str) -> tuple[str, Iterator[tuple[int, object]]]:
    datasets = sys.modules.get("datasets")  # a Dataset argument means datasets is already imported
    if datasets is not None:
        if isinstance(source, datasets.DatasetDict | datasets.IterableDatasetDict):
            if split not in source:
                raise ValueError(f"the DatasetDict has no split {split!r}; its splits are {list(source)}")
            return f"datasets.DatasetDict[{split}]", enumerate(source[split], 1)
        if isinstance(source, datasets.Dataset | datasets.IterableDataset):
            return "datasets.Dataset", enumerate(source, 1)
    if isinstance(source, list | tuple):
        return "records", enumerate(source, 1)
    if isinstance(source, str | os.PathLike):
        path = Path(source).expanduser()
        if path.is_file():
            return path.name, _read_file(path)
        if path.is_dir():
            return f"{path.name}[{split}]", _load_dataset(str(path), split)
        if isinstance(source, os.PathLike) or _looks_like_path(source):
            raise FileNotFoundError(f"preference data file not found: {source}")
        return f"{source}[{split}]", _load_dataset(source, split)
    raise TypeError(
        f"source must be a path, a list of dicts, a datasets.Dataset or a dataset id, not {type(source).__name__}"
    )


def _looks_like_path(name: str) -> bool:
    """A missing local file, not a Hub id: Hub ids are "name" or "owner/name", never a data-file name."""
    return (
        name.lower().endswith(SUPPORTED_EXTENSIONS)
        or name.startswith((".", "/", "~"))
        or name.count("/") > 1
        or "\\" in name
    )


def _load_dataset(name: str, split: str) -> Iterator[tuple[int, object]]:
    import datasets  # lazy: importing it costs seconds, and only these sources need it

    return enumerate(datasets.load_dataset(name, split=split), 1)


def _read_file(path: Path) -> Iterator[tuple[int, object]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return read_jsonl(path)
    if suffix == ".json":
        return _read_json(path)
    if suffix == ".csv":
        return _read_csv(path)
    if suffix == ".parquet":
        import pyarrow.parquet  # lazy, like datasets

        return enumerate(pyarrow.parquet.read_table(path).to_pylist(), 1)
    raise PreferenceDataError(
        path.name,
        f"unsupported file type {suffix or '(no extension)'!r}; supported files are "
        f"{', '.join(SUPPORTED_EXTENSIONS)}, or pass a datasets.Dataset, a list of dicts, "
        "a local dataset directory or a Hugging Face dataset id",
    )


def read_jsonl(path: Path, *, error=PreferenceDataError) -> Iterator[tuple[int, object]]:
    """(line number, record) per non-blank line; a line that is not UTF-8 JSON raises `error` naming it."""
    with path.open("rb") as lines:  # bytes: only b"\n" ends a line, and a bad byte is named by its line
        for number, raw in enumerate(lines, 1):
            try:
                line = raw.decode("utf-8-sig")  # -sig: a byte-order mark some editors write is not data
            except UnicodeDecodeError as problem:
                raise error(path.name, f"not UTF-8 text ({problem})", row=number) from problem
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as problem:
                raise error(path.name, f"not valid JSON ({problem})", row=number) from problem


def _read_json(path: Path) -> Iterator[tuple[int, object]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as error:
        raise PreferenceDataError(path.name, f"not UTF-8 text ({error})") from error
    except json.JSONDecodeError as error:
        raise PreferenceDataError(path.name, f"not valid JSON ({error})") from error
    if isinstance(data, dict):
        key = next((k for k in ("data", "train") if isinstance(data.get(k), list)), None)
        if key is None:
            raise PreferenceDataError(
                path.name,
                f"a JSON object must hold its records as a list under 'data' or 'train'; its keys are {list(data)}",
            )
        data = data[key]
    if not isinstance(data, list):
        raise PreferenceDataError(path.name, f"expected a JSON array of records, got {type(data).__name__}")
    return enumerate(data, 1)


def _read_csv(path: Path) -> Iterator[tuple[int, object]]:
    """Rows are data rows, 1 = the first after the header. Cells become fields by the CSV convention above."""
    # utf-8-sig: spreadsheet programs start their CSV with a byte-order mark, which would rename column 1.
    with path.open(encoding="utf-8-sig", newline="") as file:
        try:
            for number, cells in enumerate(csv.DictReader(file), 1):
                yield number, _csv_record(path.name, number, cells)
        except UnicodeDecodeError as error:  # decoded in blocks, so the row is not known
            raise PreferenceDataError(path.name, f"not UTF-8 text ({error})") from error


def _csv_record(source: str, number: int, cells: dict) -> dict:
    record = {}
    for name, cell in cells.items():
        if name is None:
            raise PreferenceDataError(source, "has more cells than the header has columns", row=number)
        if cell is None or cell == "":
            continue  # an empty cell is an absent field: mixed-shape files leave other shapes' cells empty
        if name in _CSV_LIST_FIELDS:
            try:
                cell = json.loads(cell)
            except json.JSONDecodeError as error:
                raise PreferenceDataError(
                    source, f"a CSV list cell must hold a JSON array, got {cell!r}", row=number, field=name
                ) from error
        elif name in _CSV_TEXT_FIELDS and cell.lstrip().startswith("["):
            cell = _csv_messages(cell)
        record[name] = cell
    return record


def _csv_messages(cell: str):
    """The messages in a cell that is a JSON array of {"role", ...} objects, else the cell's text unchanged."""
    try:
        value = json.loads(cell)
    except json.JSONDecodeError:
        return cell
    if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m for m in value):
        return value
    return cell
