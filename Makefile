# worldstream: every command a user or CI runs starts here.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup play preview test lint bench

# Fresh machine -> working install. The CPU torch wheel goes in first: a bare `torch`
# requirement would pull a multi-GB CUDA build.
setup: $(BIN)/worldstream

$(BIN)/worldstream: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $@

# Main job. Until the trained nano ships this renders a world preview (video + contact sheet).
play: setup
	$(BIN)/worldstream preview --out out/preview

preview: play

test: setup
	$(BIN)/ruff check worldstream tests scripts
	$(BIN)/python -m pytest tests

lint: setup
	$(BIN)/ruff check worldstream tests scripts

bench: setup
	$(BIN)/worldstream bench render --out docs/results
