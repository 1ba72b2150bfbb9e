# Two commands on a fresh machine:  make demo   and   make test
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.deepmim-installed
TEST_STAMP := $(VENV)/.deepmim-test-installed

.PHONY: demo test install clean-demo

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

# Pre-train a small DeepMIM ViT on the embedded dataset; outputs in runs/demo/. Run again, it continues an
# interrupted demo or says it has finished (train.resume=auto); make clean-demo starts over.
demo: $(STAMP)
	$(VENV)/bin/deepmim pretrain --config demo train.resume=auto $(ARGS)

test: $(TEST_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

clean-demo:
	rm -rf runs/demo
