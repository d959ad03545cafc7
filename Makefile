# Two commands on a fresh clone:  `make demo` (set up + main job)  and  `make test` (set up + tests).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU wheel of this machine; override (e.g. TORCH_SPEC="torch>=2.4") elsewhere. Installed first so
# nothing else can pull a CUDA build of torch.
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed
# The timm interop environment (tests marked `timm`, area `interop`): timm needs torchvision, and the registry's
# torchvision for the CPU torch above is a CUDA build that fails to import beside it, so timm gets its own venv
# with a torch/torchvision pair that imports (CUDA builds; they run on the CPU; ~5.8 GB).
INTEROP_VENV  ?= .venv-interop
INTEROP_TORCH ?= torch==2.14.1 torchvision==0.29.1
INTEROP_STAMP := $(INTEROP_VENV)/.installed

.PHONY: setup interop demo test lint format clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -m pip install -q -e ".[torch,dev,train]" 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -c "import torch, cvt; print('cvt', cvt.__version__, 'on torch', torch.__version__)"
	touch $(STAMP)

setup: $(STAMP)

$(INTEROP_STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(INTEROP_VENV)
	$(INTEROP_VENV)/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
	$(INTEROP_VENV)/bin/python -m pip install -q $(INTEROP_TORCH) 2>&1 | grep -v "is ignored" || true
	$(INTEROP_VENV)/bin/python -m pip install -q -e ".[timm]" pytest scikit-learn 2>&1 | grep -v "is ignored" || true
	$(INTEROP_VENV)/bin/python -c "import torch, torchvision, timm, cvt; print('interop: timm', timm.__version__, 'torch', torch.__version__, 'torchvision', torchvision.__version__)"
	touch $(INTEROP_STAMP)

interop: $(INTEROP_STAMP)

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
test: setup interop
	$(BIN)/python tests/areas.py

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) $(INTEROP_VENV) .pytest_cache .ruff_cache src/*.egg-info
