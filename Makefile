# Two commands do everything on a fresh machine: `make train` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install train test test-slow test-gpu test-all bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch and torchvision are named together so pip picks a matching pair (timm needs torchvision).
	$(BIN)/pip install -q "torch>=2.4" "torchvision>=0.19"
	$(BIN)/pip install -q -e ".[dev,export,studio,bench]"
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	WANDB_MODE=$${WANDB_MODE:-offline} $(BIN)/python train.py $(ARGS)

test: $(STAMP)
	WANDB_MODE=offline $(BIN)/python -m pytest -q -n 2 $(ARGS)

test-slow: $(STAMP)
	WANDB_MODE=offline $(BIN)/python -m pytest -q -m slow $(ARGS)

# the CUDA path (tests/test_gpu.py): skipped without a GPU, never part of CI
test-gpu: $(STAMP)
	WANDB_MODE=offline $(BIN)/python -m pytest -q -m gpu $(ARGS)

test-all: $(STAMP)
	WANDB_MODE=offline $(BIN)/python -m pytest -q -m "" $(ARGS)

bench: $(STAMP)
	WANDB_MODE=offline $(BIN)/python -m bench $(ARGS)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
