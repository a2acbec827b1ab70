"""Dashboard entry point: ``streamlit run app.py`` (or ``make app``).

Pages live in kit/app/ (one file each); this file only sets the page up, draws the shared
sidebar (runs root, broken-run warnings) and hands over to the chosen page.
"""

from pathlib import Path

import streamlit as st

from kit.app import common

HERE = Path(__file__).resolve().parent
PAGES = [  # (file, title, icon, url path)
    ("kit/app/compare.py", "Compare", ":material/compare:", "compare"),
    ("kit/app/curves.py", "Curves", ":material/show_chart:", "curves"),
    ("kit/app/features.py", "Feature space", ":material/scatter_plot:", "features"),
    ("kit/app/ablations.py", "Ablations", ":material/table_chart:", "ablations"),
    ("kit/app/try_it.py", "Try it", ":material/upload:", "try-it"),
]

st.set_page_config(page_title="kit: defect detection dashboard", page_icon=":material/search:",
                   layout="wide")
page = st.navigation([st.Page(HERE / f, title=t, icon=i, url_path=u, default=k == 0)
                      for k, (f, t, i, u) in enumerate(PAGES)])
common.sidebar()
page.run()
