"""Every notebook executes top to bottom, unattended, in its quick setting (as CI does)."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from kit.export import execute_notebook

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.fixture(scope="session")
def notebook_runs(sample_runs_root) -> Path:
    """One runs root for every notebook, as a user running them in order has, shared with the
    methods' real-sample tests (conftest.py): 03, 04 and 05_compare reuse the default runs made
    before them (each notebook also runs on its own, only slower)."""
    return sample_runs_root


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, notebook_runs, monkeypatch):
    monkeypatch.setenv("KIT_RUNS_ROOT", str(notebook_runs))  # never touch the user's runs
    # executed outputs go to artifacts/ (for a look, and for `make book`), never over the
    # committed notebook
    out = Path(__file__).resolve().parents[1] / "artifacts" / "notebooks" / path.name
    nb = execute_notebook(path, out)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors
    # a red "IProgress not found" box in every notebook means ipywidgets is missing from setup
    stderr = "".join(o.get("text", "") for o in outputs if o.get("name") == "stderr")
    assert "IProgress not found" not in stderr and "TqdmWarning" not in stderr
    # the figures are kept (an Agg backend would drop every one), so the book shows them
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{path.name}: no figure kept"


def test_book_has_every_notebook_and_the_report(tmp_path):
    """``make book``'s pages from the committed notebooks (unexecuted: the layout, not the
    figures, which test_notebook_runs checks): an index linking each page, offline MathJax."""
    from kit.export import MATHJAX_FOLDER, export_book
    from kit.report import REPORT_FILE

    index = export_book(NOTEBOOKS, tmp_path / "book", REPORT_FILE)
    text = index.read_text()
    for path in NOTEBOOKS:
        assert f'href="{path.stem}.html"' in text and (tmp_path / "book" / f"{path.stem}.html").is_file()
    assert 'href="report.html"' in text
    report = (tmp_path / "book" / "report.html").read_text()
    assert "<table>" in report and "<h1>Reproduction report</h1>" in report
    for img in report.split('src="')[1:]:
        assert (tmp_path / "book" / img.split('"')[0]).is_file()
    assert (tmp_path / "book" / MATHJAX_FOLDER / "MathJax.js").is_file()


def test_committed_notebooks_have_no_outputs():
    """Notebooks are committed stripped, so diffs stay readable and results come from running."""
    assert NOTEBOOKS, "no notebooks found"
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.get("outputs")]
        assert not dirty, f"{path.name}: cells {dirty} carry outputs (strip them before committing)"


def test_no_notebook_types_our_results_into_a_table():
    """Our numbers in a notebook come from runs or the committed result data
    (kit.report.reference_markdown, reference_method_markdown), never typed into a Markdown
    table, where they drift from the runs: no Markdown table row names ours beside a value."""
    typed = re.compile(r"^\|.*\bours\b.*\b0\.\d{2,}\b", re.IGNORECASE)
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        rows = [line for c in nb.cells if c.cell_type == "markdown"
                for line in c.source.splitlines() if typed.search(line)]
        assert not rows, f"{path.name}: typed result rows {rows}"
