# netpol-sniffer: `make demo` runs the main job, `make test` sets everything up and runs the suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
COMPILED := $(VENV)/.compiled
# Debian packages the lab, the tests, the graph rendering, compiling the packet loop and the
# browser that opens report.html in the tests (driven by the playwright package, no browser of
# its own) need.
APT_PACKAGES := tcpdump iproute2 iptables graphviz procps kmod gcc libc6-dev python3-dev chromium
# The commands that tell whether they are there.
APT_COMMANDS := tcpdump ip iptables dot gcc chromium
# What the real node of `make node-e2e` runs on (tests/e2e/node.py).
NODE_APT_PACKAGES := containerd runc containernetworking-plugins buildah debootstrap ipset conntrack
NODE_APT_COMMANDS := containerd runc buildah debootstrap ipset conntrack
PYTEST_ARGS ?=

.PHONY: help system-deps node-deps venv lint check test unit lab-test browser-test e2e fuzz \
	control-plane node-e2e node-build node-up node-down demo bench clean

help:
	@echo "make demo    set up and run the lab + analyser on microservices-demo"
	@echo "make test    set up everything (Debian and Python packages) and run lint + all tests"
	@echo "make check   lint, types, import layers and the fast tests (CI's first stage)"
	@echo "make unit    fast tests only (no root, no lab, no control plane)"
	@echo "make e2e     end-to-end tests against a real kube-apiserver"
	@echo "make fuzz    fuzz the input parsers longer (FUZZ_EXAMPLES=5000 per target)"
	@echo "make browser-test  report.html in Debian's chromium (playwright drives it)"
	@echo "make node-e2e  the README's journey on a real node under kube-router (root)"
	@echo "make node-up   start that node by hand (Ctrl-C or make node-down stops it)"
	@echo "make bench   benchmarks (prints figures, asserts nothing)"

system-deps:
	@missing=""; for cmd in $(APT_COMMANDS); do command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$cmd"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then echo "missing:$$missing (install as root: apt-get install $(APT_PACKAGES))" >&2; exit 0; fi; \
	echo "installing Debian packages for:$$missing"; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES)

node-deps:
	@missing=""; for cmd in $(NODE_APT_COMMANDS); do command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$cmd"; done; \
	[ -x /usr/lib/cni/bridge ] || missing="$$missing cni-plugins"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then echo "missing:$$missing (install as root: apt-get install $(NODE_APT_PACKAGES))" >&2; exit 0; fi; \
	echo "installing Debian packages for:$$missing"; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(NODE_APT_PACKAGES)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip 'setuptools>=77' wheel
	NETPOL_SNIFFER_COMPILE=0 $(BIN)/pip install -q -e '.[dev,dask]'
	touch $@

# analyser/packets.py and orienting.py (the per-packet and per-connection loops) compiled in place
# with mypyc, again whenever they change:
# Python imports the compiled module before the source. No C compiler: the source runs as it is.
$(COMPILED): $(STAMP) setup.py analyser/packets.py analyser/orienting.py
	$(BIN)/python setup.py -q build_ext --inplace
	@# The copy keeps the build's time, older than the source when the C code came out the same.
	find analyser -maxdepth 1 -name "*.so" -exec touch {} +
	@$(BIN)/python -c 'import analyser.packets, analyser.orienting; [print(f"{m.__name__}:", \
		"compiled" if m.__file__.endswith(".so") else "interpreted (not compiled: see the warnings above)") \
		for m in (analyser.packets, analyser.orienting)]'
	touch $@

venv: $(COMPILED)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check --exclude "*.md" .
	$(BIN)/mypy
	$(BIN)/lint-imports

# pytest exits 5 when it collected no test: that is a failure here, not a pass.
define run_pytest
	$(BIN)/pytest $(1) $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest ran no test: failing" >&2; exit 1; fi; exit $$status
endef

# The tests that need root, network namespaces, a real control plane or Dask cluster, a real node,
# the kubectl the control plane's build makes or Debian's chromium; the rest are fast.
SLOW_MARKERS := lab or e2e or root or node or kubectl or browser

# CI's two stages: `check` (lint and every fast test, no root needed, a couple of minutes) runs
# first and stops the run on the first failure; then the root, lab and end-to-end tests, the
# real node's among them.
test: system-deps node-deps venv check control-plane node-build
	@echo "== stage 2: root, lab and end-to-end tests"
	$(call run_pytest,-m "$(SLOW_MARKERS)")

check: venv
	@echo "== stage 1: lint, types, import layers and the fast tests"
	$(MAKE) --no-print-directory lint
	$(call run_pytest,-m "not ($(SLOW_MARKERS))")

unit: venv
	$(call run_pytest,-m "not ($(SLOW_MARKERS)) and not fuzz")

lab-test: system-deps venv
	$(call run_pytest,-m lab)

browser-test: system-deps venv
	$(call run_pytest,-m browser)

e2e: system-deps venv control-plane
	$(call run_pytest,-m e2e)

# The fuzz targets run in `make test` with 150 examples each; this runs them longer.
fuzz: venv
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-5000} $(call run_pytest,-m fuzz)

# etcd, kube-apiserver, kube-controller-manager and kubectl for the e2e tests: built from source once
# per machine into /var/cache/netpol-sniffer (Go needed), reused after; prints the build time.
control-plane: venv
	$(BIN)/python tests/e2e/controlplane.py build

# The real node: kubelet, kube-proxy, kube-scheduler (with the control plane's build), kube-router and
# CoreDNS from their Go modules, the images made with debootstrap and buildah; cached like the
# control plane. node-e2e writes node-e2e-output/ and prints one summary line.
node-build: node-deps venv
	$(BIN)/python -m tests.e2e.node build

node-e2e: system-deps node-deps venv node-build
	$(call run_pytest,-m node)

node-up: node-deps venv node-build
	$(BIN)/python -m tests.e2e.node up

node-down: venv
	$(BIN)/python -m tests.e2e.node down

demo: system-deps venv
	$(BIN)/netpol-sniffer demo

# tshark is only the benchmark's baseline (the seed's method), so only `make bench` installs it.
bench: system-deps venv
	@command -v tshark >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends tshark)
	$(BIN)/python bench/analyse_throughput.py
	$(BIN)/python bench/analyse_scale.py
	$(BIN)/python bench/admission_latency.py
	$(BIN)/python bench/graph_throughput.py
	$(BIN)/python bench/pull_throughput.py
	$(BIN)/python bench/verify_universe.py
	$(BIN)/python bench/render_throughput.py
	$(BIN)/python bench/hostile_inputs.py

clean:
	rm -rf $(VENV) demo-output node-e2e-output .pytest_cache .mypy_cache .ruff_cache build analyser/*.so
