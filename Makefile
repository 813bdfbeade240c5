# Two commands for a new user: `make demo` and `make test`. Both bootstrap .venv first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed

export PATH := $(BIN):$(PATH)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export BENTOML_DO_NOT_TRACK := true
export DVC_NO_ANALYTICS := 1
export DO_NOT_TRACK := 1

.PHONY: install demo test constraints airflow airflow-stop serve

install: $(STAMP)

# Reinstalls only when the dependency list or the pins change.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	# torch first and pinned: the local CPU wheel, not a multi-GB CUDA build
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $@

demo: install
	dvc repro
	dvc metrics show
	dvc push --quiet
	@echo "Data Docs: data/validated/gx/uncommitted/data_docs/local_site/index.html"

test: install
	@rc=0; $(BIN)/pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: no test ran" >&2; exit 1; fi; exit $$rc

# The built bento on http://localhost:3000 (API keys: SHOPFUSION_API_KEYS or .secrets/api-keys, made on first use).
serve: install
	scripts/serve.sh

# Airflow 3: scheduler, dag-processor, triggerer, api-server (UI http://localhost:8080), state in .airflow/.
# SHOPFUSION_AIRFLOW_DB=postgresql+psycopg2://... uses PostgreSQL and the LocalExecutor.
airflow: install
	scripts/airflow.sh start

airflow-stop:
	scripts/airflow.sh stop

constraints: install
	{ echo "# Pinned versions of every package, resolved together with pip on Python 3.11 (pip freeze)."; \
	  echo "# Regenerate with: make constraints"; \
	  $(BIN)/pip freeze --exclude-editable | grep -vi '^shopfusion' | sed 's/^torch==\(.*\)+cpu$$/torch==\1/'; \
	} > constraints.txt.new && mv constraints.txt.new constraints.txt
