"""Every notebook executes top to bottom, unattended, in its quick setting (as CI does)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_NOTEBOOK_BUDGET", "quick")
    monkeypatch.setenv("KIT_RUNS_ROOT", str(tmp_path / "runs"))  # never touch the user's runs
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=1200, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    # a red "IProgress not found" box in every notebook means ipywidgets is missing from setup
    stderr = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []) if o.get("name") == "stderr")
    assert "IProgress not found" not in stderr and "TqdmWarning" not in stderr
    # executed outputs are written to artifacts/ for a look, never over the committed notebook
    out = Path(__file__).resolve().parents[1] / "artifacts" / "notebooks" / path.name
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out)


def test_committed_notebooks_have_no_outputs():
    """Notebooks are committed stripped, so diffs stay readable and results come from running."""
    assert NOTEBOOKS, "no notebooks found"
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.get("outputs")]
        assert not dirty, f"{path.name}: cells {dirty} carry outputs (strip them before committing)"
