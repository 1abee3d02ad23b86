# laaq-bench — every target sets up its own environment from the repo's files (idempotent:
# a stamp means a second run installs nothing).
PYTHON  ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.stamp-installed
TARGET  ?= x86
RPC         ?=
RPC_TRACKER ?=
RPC_KEY     ?=
ARGS    ?=
export RPC RPC_TRACKER RPC_KEY

.PHONY: bench test test-all report experiment search emu-device perf lint clean help

help:
	@echo "make bench [TARGET=x86|arm|rpi4|rpi5|cuda ...] [RPC=host:port | RPC_TRACKER=host:9190 RPC_KEY=rasp4] [ARGS=...]"
	@echo "make test        fast CI set (real TVM path on tiny models)"
	@echo "make test-all    + slow end-to-end tests"
	@echo "make report      results/comparison.{md,html} from every run"
	@echo "make experiment  LAAQ vs baselines, plain vs PGD-AT (F1/F2 table)"
	@echo "make emu-device  build/cache the emulated Raspberry Pi (arm64 rootfs + TVM runtime)"
	@echo "make perf        peers timed side by side (benchmarks/)"

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	@PYTHON=$(PYTHON) bash scripts/check_system.sh
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -r requirements-nodeps.txt
	$(BIN)/pip install -q --no-deps -e .
	@touch $@

bench: $(STAMP)
	$(BIN)/laaq-bench bench $(foreach t,$(TARGET),--target $(t)) $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ""

report: $(STAMP)
	$(BIN)/laaq-bench report results

experiment: $(STAMP)
	$(BIN)/laaq-bench experiment $(ARGS)

search: $(STAMP)
	$(BIN)/laaq-bench search $(ARGS)

emu-device: $(STAMP)
	bash scripts/emu_rootfs.sh

perf: $(STAMP)
	$(BIN)/python benchmarks/peers.py $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check laaq harness tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
