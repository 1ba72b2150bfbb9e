# Two commands on a fresh machine:  make demo   and   make test
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.deepmim-installed
TEST_STAMP := $(VENV)/.deepmim-test-installed

.PHONY: demo test lint install clean-demo

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@ $(STAMP)

install: $(STAMP)

# Pre-train a small DeepMIM ViT on the embedded dataset (outputs in runs/demo/), then probe every block of
# the checkpoint and of the untrained encoder it started from, and print best block against best block
# (on the embedded data the checkpoint records, 10000 images per split).
# Run again, it continues an interrupted demo or says it has finished (train.resume=auto); make clean-demo
# starts over.
DEMO_DIR ?= runs/demo
demo: $(STAMP)
	$(VENV)/bin/deepmim pretrain --config demo train.output_dir=$(DEMO_DIR) train.resume=auto $(ARGS)
	$(VENV)/bin/deepmim probe-layers $(DEMO_DIR)/checkpoint-last.pt --vs-random --out $(DEMO_DIR)/probe \
		data.num_samples=10000 features.cache_dir=$(DEMO_DIR)/probe/cache features.progress=false

test: $(TEST_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# Style: the ruff rules and format of pyproject.toml over the whole tree (seconds; CI runs it before the tests)
lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean-demo:
	rm -rf $(DEMO_DIR)
