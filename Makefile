# One entry point per task. Everything runs in a local virtual environment (.venv).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup app test test-fast lint format clean demo corpora ablation bench

setup: $(STAMP)

$(STAMP): requirements.txt requirements-test.txt pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version' 
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt -r requirements-test.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

app: setup
	$(BIN)/python app.py

test: setup lint
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

demo: setup  # rebuild data/openclipart, the default model and assets/ (needs openclipart-svg/png)
	$(BIN)/python -m training.build_demo

corpora: setup  # the two development corpora (needs openclipart-svg/png, fonts-noto-color-emoji, fonts-symbola, unicode-cldr-core)
	$(BIN)/python -m training.build_demo --data-only
	$(BIN)/python -m training.emoji_corpus

ablation: corpora  # retrain the ablation on both corpora and rewrite docs/RESULTS.md (about 2 hours on 2 cores)
	$(BIN)/python -m training.ablation

bench: setup  # rewrite docs/PERFORMANCE.md, docs/RELIABILITY.md, docs/FEEDBACK.md and docs/FEEDBACK_ORDERS.md
	OMP_NUM_THREADS=2 $(BIN)/python -m benchmarks.search --stand-in 1000000
	$(BIN)/python -m benchmarks.encoding
	$(BIN)/python -m benchmarks.training
	$(BIN)/python -m benchmarks.cache
	$(BIN)/python -m benchmarks.app
	$(BIN)/python -m benchmarks.durability
	$(BIN)/python -m benchmarks.hostile
	$(BIN)/python -m benchmarks.load
	$(BIN)/python -m benchmarks.review_progress
	$(BIN)/python -m benchmarks.startup --images 1000000  # builds a 2.9 GB gallery under cache/startup once
	$(BIN)/python -m benchmarks.conversion --images 20000 100000 1000000  # builds datasets sources under cache/conversion once
	$(BIN)/python -m benchmarks.feedback_loop  # rewrites docs/FEEDBACK.md (needs `make corpora`)
	$(BIN)/python -m benchmarks.feedback_loop --seeds 6 3 --fractions 0.1 --oracle --no-variants --report FEEDBACK_ORDERS
	$(BIN)/python -m benchmarks.query_precision  # the models of `make ablation`

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
