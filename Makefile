# resnet-mnist: `make run` sets everything up and runs the main job; `make test` runs the tests.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PEER_VENV := .venv-bench
PEER_STAMP := $(PEER_VENV)/.installed-stamp
DATA := data/MNIST/raw/t10k-labels-idx1-ubyte
RESIDUAL ?= true
PRESET ?= seed
PORT ?= 5000
SERVE_PORT ?= 5001
PAD_PORT ?= 5002
PYTEST_ARGS ?=
# Tests run on this many xdist workers; what shares a module's server or store stays on one
# (tests/conftest.py). `make test TEST_WORKERS=0` runs them in this one process.
TEST_WORKERS ?= 2
XDIST = $(if $(filter 0,$(TEST_WORKERS)),-p no:xdist,-n $(TEST_WORKERS) --dist loadgroup)

FORCE ?=
SEEDS ?=
STUDY ?= cpu
WORKERS ?= 2

.PHONY: install data run compare study train bench server serve pad browser postgres test test-fast lint format ui summary verify clean

install: $(STAMP) $(DATA)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The Lightning peer `make bench` measures against, in an environment of its own: .venv's packages
# (through a .pth file) plus the `bench` extra. Not in .venv: wherever Lightning is installed,
# `import mlflow.pytorch` imports it, which would slow every train process.
$(PEER_STAMP): $(STAMP)
	rm -rf $(PEER_VENV)
	$(PYTHON) -m venv $(PEER_VENV)
	$(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))' > \
		"$$($(PEER_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/project-venv.pth"
	$(PEER_VENV)/bin/pip install --quiet -e '.[bench]'
	touch $(PEER_STAMP)

# Fetch and verify MNIST (idempotent: verified files are kept).
$(DATA): | $(STAMP)
	$(BIN)/resnet-mnist data fetch

data: $(STAMP)
	$(BIN)/resnet-mnist data fetch

# The main job: train both variants of the book's setting (reusing finished runs with the same
# parameters unless FORCE=1), compare them, register the winner as @champion.
run: install
	$(MAKE) compare
	$(BIN)/resnet-mnist data samples --out reports/digits --count 5
	$(BIN)/resnet-mnist predict reports/digits/*.png

compare: install
	$(BIN)/resnet-mnist compare --preset $(PRESET) --train-missing \
		$(if $(FORCE),--force,) $(if $(SEEDS),--seeds $(SEEDS),)

# The residual study: depth x variant x seed as nested runs under one study run, each (depth,
# variant) tuned first with the same budget; finished trials and cells are kept, so a stopped study
# continues. STUDY=cpu (tuned, < 45 min here), cpu-grid (the old two-rate grid), gpu, tiny.
study: install
	$(BIN)/resnet-mnist study --study $(STUDY) --workers $(WORKERS)

train: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/mlflow run . --env-manager local \
		--experiment-name resnet18-mnist -P use_residual=$(RESIDUAL) -P preset=$(PRESET)

bench: install $(PEER_STAMP)
	$(BIN)/python -m benchmarks

# The drawing pad: draw a digit in the browser (or drop a photo), see the champion's answer.
pad: install
	$(BIN)/resnet-mnist pad --port $(PAD_PORT)

summary: install
	$(BIN)/resnet-mnist summary

verify: install
	$(BIN)/resnet-mnist verify-torchvision

# Both tiers: the fast one and the slow one (subprocesses, `mlflow run`, DDP, signals, servers,
# the MLflow UI in a real browser).
test: install browser postgres $(PEER_STAMP)
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

# The fast tier only (pure functions, in-process CLI validation, small in-process trainings).
test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(XDIST) $(PYTEST_ARGS)

# The gates CI runs before the tests: lint (with a complexity limit), format, types.
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

# MLflow's job execution (a job runner and four huey consumers, for GenAI scorers and trace
# roll-ups) is off on our servers: nothing here uses it, and it costs each start 9 s of CPU
# and five processes (measured: 13 s of CPU to answer /health with it, 4 s without).
NO_JOBS := MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false

# A tracking server on loopback with the sqlite backend; artifacts served from ./mlartifacts.
# Point clients at it with MLFLOW_TRACKING_URI=http://127.0.0.1:$(PORT).
server: $(STAMP)
	@echo "open http://127.0.0.1:$(PORT)/#/experiments/<id>?workflowType=machine_learning" \
		"(train, compare and \`resnet-mnist links\` print the exact links)"
	$(NO_JOBS) $(BIN)/mlflow server --host 127.0.0.1 --port $(PORT) \
		--backend-store-uri sqlite:///mlflow-server.db --artifacts-destination ./mlartifacts

# The registered champion behind MLflow's own scoring server (REST: POST /invocations), on loopback.
serve: install
	PATH="$(abspath $(BIN)):$$PATH" MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false $(BIN)/mlflow models serve \
		-m models:/resnet18-mnist@champion --env-manager local -h 127.0.0.1 -p $(SERVE_PORT)

# Debian's Chromium, for the browser test of the MLflow UI (needs root and the Debian registry).
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

# Debian's PostgreSQL, for the team-server test (a real database behind `mlflow server`).
postgres:
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql)

# The MLflow UI against the default store, on loopback only.
ui: $(STAMP)
	MLFLOW_TRACKING_URI=sqlite:///mlflow.db $(BIN)/resnet-mnist links --port $(PORT)
	$(NO_JOBS) $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port $(PORT)

clean:
	rm -rf $(VENV) $(PEER_VENV) .pytest_cache .ruff_cache
