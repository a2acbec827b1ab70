# make demo   set up if needed, fit the demo runs on the embedded sample, say how to open the dashboard
# make test   set up if needed, run every test (what .ci/run calls)
# make setup  create .venv with the pinned dependencies
#             make setup TORCH=cpu: torch and torchvision as CPU-only wheels from PyTorch's own
#             index (about 1 GB instead of 5 GB of CUDA libraries; needs internet)
# make html   the notebooks as HTML pages whose equations render offline (artifacts/html)
# make book   the notebooks executed at their quick setting, the generated report and an
#             index page: artifacts/book/index.html (uses make test's executed copies when there)
# make peer   our padim and cflow beside anomalib's PaDiM and CFlow on MTD (docs/results/peer.json)
# make report collect runs/ into docs/results/runs.json, rewrite docs/report.md and the README table

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH ?= default
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
TORCH_PINS = $(shell grep -E '^(torch|torchvision)==' requirements.txt)

.PHONY: setup demo test bench peer speed notebooks html book report app clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@echo "[setup 1/5] creating $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)
	@echo "[setup 2/5] upgrading pip"
	$(PY) -m pip install --progress-bar on --upgrade pip
ifeq ($(TORCH),cpu)
	@echo "[setup 3/5] CPU-only torch and torchvision ($(TORCH_PINS)) from $(TORCH_CPU_INDEX)"
	$(PY) -m pip install --progress-bar on --index-url $(TORCH_CPU_INDEX) $(TORCH_PINS)
else
	@echo "[setup 3/5] torch comes with the pins below (make setup TORCH=cpu for CPU-only wheels)"
endif
	@echo "[setup 4/5] the pinned dependencies of requirements.txt: the longest step (a few minutes)"
	$(PY) -m pip install --progress-bar on -r requirements.txt
	@echo "[setup 5/5] the kit itself (editable) and the notebooks' Jupyter kernel"
	$(PY) -m pip install --no-deps -e .
	$(PY) -m ipykernel install --prefix $(VENV) --name python3 > /dev/null
	touch $(STAMP)
	@echo "setup done: use $(PY) (or: source $(VENV)/bin/activate)"

demo: setup
	$(PY) -m kit demo

# -v: one line per test as it ends, with the share done; --durations: where the time went
test: setup
	@echo "make test: unit tests on tiny generated data first, then real data, real notebooks and"
	@echo "a real browser. pytest prints an estimate below, from the last full run on this machine."
	$(PY) -m pytest -v --durations=15

bench: setup
	$(PY) benchmarks/bench_aupro.py
	$(PY) benchmarks/bench_backbones.py
	$(PY) benchmarks/bench_padim.py
	$(PY) benchmarks/bench_app.py

html: setup
	@if ls artifacts/notebooks/*.ipynb > /dev/null 2>&1; then \
	  echo "exporting the executed notebooks of the last test run (artifacts/notebooks)"; \
	  $(PY) -m kit.export artifacts/notebooks/*.ipynb --out artifacts/html; \
	else \
	  echo "no executed notebooks yet (make test writes them): exporting the committed ones"; \
	  $(PY) -m kit.export notebooks/[0-9][0-9]_*.ipynb --out artifacts/html; \
	fi

book: setup
	@if [ "$$(ls artifacts/notebooks/*.ipynb 2>/dev/null | wc -l)" = "$$(ls notebooks/[0-9][0-9]_*.ipynb | wc -l)" ]; then \
	  echo "book: the notebooks make test executed (artifacts/notebooks)"; \
	  $(PY) -m kit.export artifacts/notebooks/*.ipynb --book --out artifacts/book; \
	else \
	  echo "book: executing every notebook at its quick setting first (about 15 minutes)"; \
	  $(PY) -m kit.export notebooks/[0-9][0-9]_*.ipynb --execute artifacts/notebooks --book --out artifacts/book; \
	fi

peer: setup
	$(PY) benchmarks/peer_anomalib.py
	$(PY) -m kit report --no-collect

speed: setup
	$(PY) benchmarks/bench_methods.py --compile --onnx --batches 1 4 8 16 --techniques
	$(PY) -m kit report --no-collect

report: setup
	$(PY) -m kit report

app: setup
	$(VENV)/bin/streamlit run app.py

clean:
	rm -rf $(VENV) .cache .pytest_cache
