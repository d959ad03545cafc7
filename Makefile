# Two commands on a fresh clone:  `make demo` (set up + main job)  and  `make test` (set up + tests).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU wheel of this machine; override (e.g. TORCH_SPEC="torch>=2.4") elsewhere. Installed first so
# nothing else can pull a CUDA build of torch.
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint format clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -m pip install -q -e ".[torch,dev,train]" 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -c "import torch, cvt; print('cvt', cvt.__version__, 'on torch', torch.__version__)"
	touch $(STAMP)

setup: $(STAMP)

# The main job: train the embedded default (a small CvT on scikit-learn's digits; SVC printed beside it),
# evaluate the final weights on the held-out split, classify a few held-out digits saved as PNG files.
RUN ?= runs/digits
demo: setup
	$(BIN)/cvt train --out $(RUN) --overwrite
	$(BIN)/cvt eval digits --weights $(RUN)/final.safetensors --output $(RUN)/eval.json --confusion $(RUN)/confusion.png
	$(BIN)/python examples/digits_samples.py $(RUN)/samples
	$(BIN)/cvt predict --weights $(RUN)/final.safetensors --topk 3 $(RUN)/samples
	@echo "plots: $(RUN)/learning_curve.png $(RUN)/confusion.png"

# One pytest step per area (tests/areas.py): a failure names its area, and every area still runs.
test: setup
	$(BIN)/python tests/areas.py

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache src/*.egg-info
