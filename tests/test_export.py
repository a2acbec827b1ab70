"""Notebooks exported to HTML render their equations offline (kit/export.py, ``make html``)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from kit.export import MATHJAX_FOLDER, export_html, main

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "00_setup_data_metrics.ipynb"  # has display and inline TeX
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    return export_html(NOTEBOOK, tmp_path_factory.mktemp("html"))


def test_mathjax_is_loaded_from_beside_the_page(page):
    html = page.read_text()
    sources = re.findall(r'<script[^>]+src="([^"]*MathJax[^"]*)"', html, flags=re.I)
    assert sources == [f"{MATHJAX_FOLDER}/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe"]
    assert not re.search(r'src="https?://[^"]*mathjax', html, flags=re.I)
    local = page.parent / sources[0].split("?")[0]
    assert local.is_file() and (page.parent / MATHJAX_FOLDER / "config"
                                / "TeX-AMS-MML_HTMLorMML-full.js").is_file()


def test_the_command_line_names_a_missing_notebook(tmp_path, capsys):
    assert main([str(tmp_path / "nope.ipynb"), "--out", str(tmp_path)]) == 2
    assert "nope.ipynb: no such notebook" in capsys.readouterr().err


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium")
def test_equations_are_typeset_without_a_network(page, tmp_path):
    """Chromium opens the page from disk; MathJax replaces the TeX with its own elements."""
    dom = subprocess.run(
        [str(CHROMIUM), "--headless=new", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--proxy-server=127.0.0.1:9",  # nothing outside
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000",
         "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120).stdout
    typeset = len(re.findall(r'class="MathJax"', dom))
    assert typeset >= 3, f"{typeset} equations typeset"
    assert "MathJax_Display" in dom  # the AUPRO display equation
