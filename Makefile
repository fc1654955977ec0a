# Two commands for a fresh machine: `make demo` (set up, train, say where results are) and `make test`.
VENV   ?= .venv
PYTHON ?= python3
BIN     = $(VENV)/bin
# Offline machines: the shared blood-cell folder when it is beside the checkout, else MedMNIST's (downloaded).
DATA   ?= $(if $(wildcard ../shared/data/bloodcells/train),../shared/data/bloodcells/train,medmnist:bloodmnist)
MODEL  ?= tf_efficientnet_lite0
# Offline machines: the shared ImageNet checkpoint stands in for a download when it is there.
WEIGHTS ?= $(wildcard ../shared/weights/tf_efficientnet_lite0.in1k.safetensors)
# The unseen cells the demo ends on: test_simple beside the checkout, else the MedMNIST set's own test split.
TEST   ?= $(if $(wildcard ../shared/data/bloodcells/test_simple),../shared/data/bloodcells/test_simple,$(DATA))
SIZE   ?= 64
EPOCHS ?= 4
NAME   ?= demo
ARGS   ?=

.PHONY: setup demo test lint clean

setup: $(BIN)/.installed

# torch first (the pinned pair is served from local disk here), then the package with its test tools, then the
# TFLite extra on its own: resolved in one go, pip backtracks for minutes through litert-torch's large stack.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev,slides,openvino,tune,mlflow]'
	$(BIN)/pip install -q -e '.[tflite]'
	touch $@

# Group-aware split (augmented copies of one cell stay on one side), then the unseen cells: the two figures a new
# user sees hold on cells the model never saw.
demo: setup
	$(BIN)/histoclass train --data $(DATA) --model $(MODEL) $(if $(WEIGHTS),--weights $(WEIGHTS)) \
		--image-size $(SIZE) --epochs $(EPOCHS) --phase1-epochs 1 --batch-size 64 --group-by auto \
		--name $(NAME) $(ARGS)
	$(BIN)/histoclass evaluate $$(ls -td runs/$(NAME) runs/$(NAME)-[0-9]* 2>/dev/null | head -1) --data $(TEST)

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

test: lint
	$(BIN)/python -m pytest -q --durations=10 -m "slow or not slow"

clean:
	rm -rf $(VENV) .pytest_cache
