"""The Colab notebook's cells run top to bottom in a real Jupyter kernel, as a Colab user runs them after the
install cell: the doctor, the demo (in its quick form), the labelling page, a person's votes, DPO on them.

Skipped, each for its reason: the install cell (it needs the network and would install into the test's own
environment; the test runs the package already installed there) and the hub-model cells (a download and a
GPU). They are tagged "online". The cell tagged "interactive" (DPO on the votes) runs after a cell that
stands in for the person: it votes through the page's own session for the more positive review of each pair,
as the demo's gold rule would.
"""

from __future__ import annotations

import ast
import json
import math
import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "colab_quickstart.ipynb"

PERSON = """
from lorarlhf.demo.world import gold_sentiment

while (shown := server.session.next()) is not None:  # what the page's A / B / T buttons call
    a, b = (gold_sentiment(response) for response in shown.responses)
    server.session.vote(shown.item.id, "a" if a > b else "b" if b > a else "tie")
"""


def _tags(cell) -> set[str]:
    return set(cell.metadata.get("tags", []))


def test_install_cell_keeps_the_runtime_torch():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    setting, install, doctor = code[:3]
    assert setting.source.startswith("LORARLHF_SOURCE = "), "the one thing a user sets comes first"
    assert "online" in _tags(install) and "LORARLHF_SOURCE" in install.source
    ast.parse(install.source)  # plain Python (no magics), so a failed pip stops "Run all" here
    assert "--constraint" in install.source and "version('torch')" in install.source
    assert not any("pip" in cell.source for cell in code if cell is not install), "one install cell"
    assert doctor.source == "!lorarlhf doctor"


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="runs once, on the PyTorch kernels")
def test_offline_cells_execute(tmp_path, monkeypatch):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert sum("online" in _tags(cell) for cell in notebook.cells) >= 2, "the install and hub-model cells are online"
    cells = []
    for cell in notebook.cells:
        if "online" in _tags(cell):
            continue
        if "interactive" in _tags(cell):
            cells.append(nbformat.v4.new_code_cell(PERSON))
        cells.append(cell)
    notebook.cells = cells
    (parameters,) = [cell for cell in notebook.cells if "parameters" in _tags(cell)]
    parameters.source = "QUICK = True"
    # `!lorarlhf` finds the command on PATH, as pip's scripts are on Colab's.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    printed = "".join(output.get("text", "") for output in outputs if output.output_type == "stream")
    assert "lorarlhf doctor: " in printed and "kernel path" in printed
    assert "positive reviews (gold rule)" in printed and "before:" in printed
    assert any("image/png" in output.get("data", {}) for output in outputs)
    assert (tmp_path / "runs" / "demo" / "training_curves.png").is_file()
    # The labelling page is shown inline, in an iframe on this machine's loopback address.
    html = "".join(output.get("data", {}).get("text/html", "") for output in outputs)
    assert "<iframe" in html and "http://127.0.0.1:" in html
    assert len((tmp_path / "candidates.jsonl").read_text().splitlines()) == 12

    # DPO on a dozen votes learns them: at the last step the loss is well below chance (ln 2) and the chosen
    # answer wins more pairs than chance. (Two or three held-out pairs are printed, too few to assert on.)
    assert len((tmp_path / "votes.jsonl").read_text().splitlines()) == 12
    run = tmp_path / "runs" / "mine"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = [record for record in records if "dpo/accuracy" in record][-1]
    assert last["dpo/loss"] < 0.5 * math.log(2) and last["dpo/accuracy"] > 0.5, last
    assert json.loads((run / "metrics.json").read_text())["dpo/eval_pairs"] >= 1
    assert "last step: loss" in printed and "held-out: accuracy" in printed
