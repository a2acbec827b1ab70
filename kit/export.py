"""Notebooks as HTML pages whose equations render offline, and the book of them all.

    python -m kit.export notebooks/01_differnet.ipynb --out artifacts/html
    make html      # every executed notebook under artifacts/notebooks (else the committed ones)
    make book      # every notebook executed at its quick setting (the tests' copies when there),
                   # with an index page and the generated report: artifacts/book/index.html

nbconvert's pages load MathJax from a CDN, so on a machine without internet (a factory PC, a
train, this kit's CI) every equation of the walk-throughs shows as raw TeX. Here MathJax 2.7
comes from the ``jupyter-server-mathjax`` package: it is copied once beside the pages and
referenced by a relative URL, so the folder can be zipped and opened anywhere.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

MATHJAX_FOLDER = "mathjax"  # beside the HTML pages
# The one combined configuration the package ships (TeX input, HTML-CSS output), in Safe mode
# as nbconvert's default, so a notebook's TeX cannot run script.
MATHJAX_CONFIG = "TeX-AMS-MML_HTMLorMML-full,Safe"


def mathjax_source() -> Path:
    """The folder holding ``MathJax.js`` inside the installed ``jupyter-server-mathjax``."""
    try:
        import jupyter_server_mathjax
    except ImportError:
        raise RuntimeError("offline MathJax needs the package jupyter-server-mathjax "
                           "(make setup installs it)") from None
    static = Path(jupyter_server_mathjax.__file__).parent / "static"
    if not (static / "MathJax.js").is_file():
        raise RuntimeError(f"{static}: MathJax.js not found in jupyter-server-mathjax")
    return static


def mathjax_url() -> str:
    """The relative URL the pages load MathJax from."""
    return f"{MATHJAX_FOLDER}/MathJax.js?config={MATHJAX_CONFIG}"


def export_html(notebook: Path | str, out_dir: Path | str) -> Path:
    """Write ``<out_dir>/<notebook stem>.html`` with offline MathJax beside it; returns the page."""
    from nbconvert import HTMLExporter

    notebook, out_dir = Path(notebook), Path(out_dir)
    if not notebook.is_file():
        raise FileNotFoundError(f"{notebook}: no such notebook")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / MATHJAX_FOLDER
    if not (target / "MathJax.js").is_file():
        shutil.copytree(mathjax_source(), target, dirs_exist_ok=True)
    body, _ = HTMLExporter(mathjax_url=mathjax_url()).from_filename(str(notebook))
    page = out_dir / f"{notebook.stem}.html"
    tmp = page.with_name(f".{page.name}.tmp")
    tmp.write_text(body, encoding="utf-8")
    tmp.replace(page)
    return page


INLINE_BACKEND = "module://matplotlib_inline.backend_inline"  # figures kept in the outputs


def execute_notebook(path: Path | str, out: Path | str | None = None, timeout: int = 1200,
                     env: dict[str, str] | None = None):
    """Run a notebook top to bottom at its quick setting; returns the executed notebook (and
    writes it to ``out`` when given, never over ``path``).

    The kernel draws matplotlib figures inline (not Agg, which keeps none), so the executed
    copy, and the book made from it, shows every figure."""
    import os

    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    saved = {k: os.environ.get(k) for k in ("KIT_NOTEBOOK_BUDGET", "MPLBACKEND", *(env or {}))}
    os.environ.update({"KIT_NOTEBOOK_BUDGET": "quick", "MPLBACKEND": INLINE_BACKEND, **(env or {})})
    try:
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, Path(out))
    return nb


def notebook_title(path: Path | str) -> str:
    """The first ``# heading`` of a notebook's markdown, else its file name."""
    import nbformat

    nb = nbformat.read(Path(path), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return Path(path).stem


def export_book(notebooks: list[Path], out_dir: Path | str, report: Path | str | None = None) -> Path:
    """Every notebook as a page (:func:`export_html`), the generated report as a page with its
    plots, and ``index.html`` linking them; returns the index."""
    import html

    import mistune  # nbconvert's own Markdown renderer

    out_dir = Path(out_dir)
    items = []
    for notebook in sorted(notebooks):
        page = export_html(notebook, out_dir)
        items.append((page.name, notebook_title(notebook)))
    if report is not None and Path(report).is_file():
        report = Path(report)
        plots = report.parent / report.stem
        if plots.is_dir():
            shutil.copytree(plots, out_dir / plots.name, dirs_exist_ok=True)
        body = mistune.html(report.read_text(encoding="utf-8"))
        (out_dir / "report.html").write_text(_page("Reproduction report", body), encoding="utf-8")
        items.append(("report.html", "Reproduction report (generated from the runs)"))
    links = "\n".join(f'<li><a href="{html.escape(href)}">{html.escape(title)}</a></li>'
                      for href, title in items)
    index = out_dir / "index.html"
    index.write_text(_page("flowkit: the notebooks", f"<h1>flowkit: the notebooks</h1>\n"
                           f"<p>Each notebook executed at its quick setting on the embedded "
                           f"sample; equations render offline.</p>\n<ol>\n{links}\n</ol>"),
                     encoding="utf-8")
    return index


def _page(title: str, body: str) -> str:
    import html

    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;"
            "max-width:70em;margin:2em auto;padding:0 1em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}</style></head>"
            f"<body>\n{body}\n</body></html>\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kit.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("artifacts/html"))
    parser.add_argument("--book", action="store_true",
                        help="also an index page and the generated report (docs/report.md)")
    parser.add_argument("--execute", type=Path, default=None, metavar="DIR",
                        help="first execute each notebook at its quick setting into DIR")
    args = parser.parse_args(argv)
    try:
        notebooks = list(args.notebooks)
        if args.execute:
            import tempfile

            executed = []
            # the notebooks' runs go to a scratch folder, never into runs/ (which `kit report`
            # collects): the book's quick runs must not replace the user's
            with tempfile.TemporaryDirectory(prefix="kit-book-runs-") as scratch:
                for notebook in notebooks:
                    print(f"executing {notebook} (quick setting)")
                    target = args.execute / Path(notebook).name
                    execute_notebook(notebook, target, env={"KIT_RUNS_ROOT": scratch})
                    executed.append(target)
            notebooks = executed
        if args.book:
            from kit.report import REPORT_FILE

            print(f"book: {export_book(notebooks, args.out, REPORT_FILE)}")
            return 0
        for notebook in notebooks:
            print(f"{notebook} -> {export_html(notebook, args.out)}")
    except (FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
