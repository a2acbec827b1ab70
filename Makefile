# make demo   set up if needed, fit the demo runs on the embedded sample, say how to open the dashboard
# make test   set up if needed, run every test (what .ci/run calls)
# make setup  create .venv with the pinned dependencies

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench notebooks app clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m ipykernel install --prefix $(VENV) --name python3 > /dev/null
	touch $(STAMP)

demo: setup
	$(PY) -m kit demo

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/bench_aupro.py
	$(PY) benchmarks/bench_backbones.py
	$(PY) benchmarks/bench_app.py

app: setup
	$(VENV)/bin/streamlit run app.py

clean:
	rm -rf $(VENV) .cache .pytest_cache
