"""The Colab notebook's offline cells run top to bottom in a real Jupyter kernel (the demo in its quick form)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "colab_quickstart.ipynb"


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="runs once, on the PyTorch kernels")
def test_offline_cells_execute(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    tags = [set(cell.metadata.get("tags", [])) for cell in notebook.cells]
    assert sum("online" in t for t in tags) >= 2, "the install and hub-model cells are tagged online"
    # Online cells need the network; interactive ones need a person to have labelled in the page.
    notebook.cells = [cell for cell, t in zip(notebook.cells, tags, strict=True) if not t & {"online", "interactive"}]
    (parameters,) = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    parameters.source = "QUICK = True"
    NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    printed = "".join(output.get("text", "") for output in outputs if output.output_type == "stream")
    assert "positive reviews (gold rule)" in printed and "before:" in printed
    assert any("image/png" in output.get("data", {}) for output in outputs)
    assert (tmp_path / "runs" / "demo" / "training_curves.png").is_file()
    # The labelling page is shown inline, in an iframe on this machine's loopback address.
    html = "".join(output.get("data", {}).get("text/html", "") for output in outputs)
    assert "<iframe" in html and "http://127.0.0.1:" in html
    assert len((tmp_path / "candidates.jsonl").read_text().splitlines()) == 12
