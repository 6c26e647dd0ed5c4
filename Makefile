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

# Main job: play the shipped nano world model in the browser (checkpoints/nano: distilled student, memory,
# INT8, LightVAE, async decode). Prints the URL; Ctrl-C stops. Without checkpoints/nano it runs a
# randomly initialised nano (a warning says so: the frames are noise). Extra flags: make play PLAY_ARGS="--open"
# NOTE PLAY_HOST, not HOST: some shells export HOST (the machine's name), which would expose the server
PLAY_HOST ?= 127.0.0.1
PLAY_PORT ?= 8765
PLAY_ARGS ?=
play: setup
	$(BIN)/worldstream play --host $(PLAY_HOST) --port $(PLAY_PORT) $(PLAY_ARGS)

# Render a small procedural world without any model: out/preview/preview.mp4 + contact_sheet.png.
preview: setup
	$(BIN)/worldstream preview --out out/preview

test: setup
	$(BIN)/ruff check worldstream tests scripts
	$(BIN)/python -m pytest tests

lint: setup
	$(BIN)/ruff check worldstream tests scripts

bench: setup
	$(BIN)/worldstream bench render --out docs/results
