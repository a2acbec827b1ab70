"""The Streamlit dashboard (``streamlit run app.py``).

``common`` holds the run store access, caches and pickers; each other module is one page
(``compare``, ``curves``, ``features``, ``ablations``, ``try_it``) with a ``render()``
function, run by ``st.navigation`` from ``app.py``. Pages read only the run store and the
method registry, so a newly registered method appears with no change here.
"""
