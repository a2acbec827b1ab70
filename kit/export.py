"""Notebooks as HTML pages whose equations render offline.

    python -m kit.export notebooks/01_differnet.ipynb --out artifacts/html
    make html      # every executed notebook under artifacts/notebooks (else the committed ones)

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kit.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("artifacts/html"))
    args = parser.parse_args(argv)
    try:
        for notebook in args.notebooks:
            print(f"{notebook} -> {export_html(notebook, args.out)}")
    except (FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
