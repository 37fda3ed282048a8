"""The README's example line of each data shape loads, as a one-line .jsonl file, into what its row says.

The lines are read from the README itself (the table under "Bring your own model and data" whose header is
`| shape | read by | one JSONL line |`), so the documented lines cannot drift from the loaders.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest

from lorarlhf.data import LAYOUTS, SHAPES
from lorarlhf.data.demonstrations import Demonstration
from lorarlhf.data.feedback import Feedback

README = Path(__file__).resolve().parents[1] / "README.md"
HEADER = "| shape | read by | one JSONL line |"


def readme_examples() -> list[tuple[str, str, str]]:
    """(shape cell, loader's dotted name, the JSON line) for each row of the README's examples table."""
    lines = README.read_text().splitlines()
    start = lines.index(HEADER) + 2  # past the header and its |---| rule
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        shape, loader, example = (cell.strip() for cell in line.strip("|").split(" | "))
        rows.append((shape, loader.strip("`"), example.removeprefix("`").removesuffix("`")))
    return rows


EXAMPLES = readme_examples()


def _shape_key(cell: str) -> str | None:
    """The SHAPES key a row names in backticks at its start (`pair`, `votes`, ...); None for demonstrations."""
    found = re.match(r"`([a-z-]+)`", cell)
    return found and found.group(1)


def test_every_shape_of_ours_has_a_line():
    ours = {key for key in SHAPES if key not in LAYOUTS} | {"unpaired-labels"}
    named = {_shape_key(shape) for shape, _, _ in EXAMPLES}
    assert ours <= named, f"no README line for {ours - named}"
    assert any("load_demonstrations" in loader for _, loader, _ in EXAMPLES)


@pytest.mark.parametrize(("shape", "loader", "example"), EXAMPLES, ids=[_shape_key(s) or s for s, _, _ in EXAMPLES])
def test_readme_line_loads(tmp_path, shape, loader, example):
    record = json.loads(example)
    path = tmp_path / "data.jsonl"
    path.write_text(example + "\n")
    module, name = loader.rsplit(".", 1)
    loaded = getattr(importlib.import_module(module), name)(str(path))
    key = _shape_key(shape)
    if name == "load_preferences":
        assert loaded.report.shapes == {key: 1} and loaded.report.pairs >= 1
        assert all(pair.chosen and pair.rejected for pair in loaded)
    elif name == "load_prompts":
        assert key == "prompt" and list(loaded) == [record["prompt"]]
    elif name == "load_demonstrations":
        assert list(loaded) == [Demonstration(record["prompt"], record["completion"])]
    elif name == "load_feedback":
        assert key == "unpaired-labels"
        assert list(loaded) == [Feedback(record["prompt"], record["completion"], record["label"])]
    else:
        pytest.fail(f"the README names a loader this test does not know: {loader}")
