# vknf: two commands set everything up on a fresh Debian machine.
#   make demo   installs what is missing, builds, and runs the main job on the embedded default
#   make test   installs what is missing, then runs formatting, lints and every test
SHELL := /bin/bash
.DEFAULT_GOAL := help

APT_PACKAGES := libvulkan1 mesa-vulkan-drivers glslc spirv-tools vulkan-validationlayers python3-venv curl fonts-dejavu-core \
	libpcap-dev tcpdump tshark wireshark-common openssl golang-github-gopacket-gopacket-dev
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
VENV := $(CURDIR)/.venv
PYTHON := $(VENV)/bin/python
NFSTREAM_VENV := $(CURDIR)/.venv-nfstream
# The KServe Python SDK (the Open Inference Protocol tests' client) needs protobuf < 7, the onnx stack
# of .venv protobuf 7: a venv of its own.
KSERVE_VENV := $(CURDIR)/.venv-kserve
KSERVE_PYTHON := $(KSERVE_VENV)/bin/python
FUZZ_SECONDS ?= 20

export VKNF_PYTHON := $(PYTHON)
export VKNF_NFSTREAM_PYTHON := $(NFSTREAM_VENV)/bin/python
export VKNF_KSERVE_PYTHON := $(KSERVE_PYTHON)
# lavapipe may otherwise run a submission inside vkQueueSubmit; GPUs never do, and the deadline tests
# need the asynchronous queue a GPU has.
export MESA_VK_ENABLE_SUBMIT_THREAD := 1
export CARGO_TERM_COLOR ?= never

.PHONY: help deps apt-deps python-deps build demo test lint unit fuzz bench-local clean

help:
	@echo "make demo   - install prerequisites, build, run the demo"
	@echo "make test   - install prerequisites, run fmt, clippy and all tests"

# System packages, installed only when missing (idempotent).
apt-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# Python packages for the scikit-learn parity tests, pinned, in a venv of the project.
$(VENV)/.installed: python/requirements.txt
	@[ -x $(PYTHON) ] || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --disable-pip-version-check -r python/requirements.txt
	@touch $@

# NFStream, for vknf-flow's flow-count parity test, in a venv of its own (its own numpy/pandas pins).
$(NFSTREAM_VENV)/.installed: python/requirements-nfstream.txt
	@[ -x $(NFSTREAM_VENV)/bin/python ] || python3 -m venv $(NFSTREAM_VENV)
	$(NFSTREAM_VENV)/bin/python -m pip install -q --disable-pip-version-check -r python/requirements-nfstream.txt
	@touch $@

# The KServe SDK, pinned, in its own venv.
$(KSERVE_VENV)/.installed: python/requirements-kserve.txt
	@[ -x $(KSERVE_PYTHON) ] || python3 -m venv $(KSERVE_VENV)
	$(KSERVE_PYTHON) -m pip install -q --disable-pip-version-check -r python/requirements-kserve.txt
	@touch $@

python-deps: apt-deps $(VENV)/.installed $(NFSTREAM_VENV)/.installed $(KSERVE_VENV)/.installed

deps: apt-deps python-deps

build: apt-deps
	cargo build --release --bin vknf

# The demo trains the traffic classifier: it needs the project's venv (not NFStream's).
demo: apt-deps $(VENV)/.installed build
	./scripts/demo.sh

lint: apt-deps
	cargo fmt --all --check
	python3 scripts/check-module-cycles.py
	cargo clippy --workspace --all-targets -- -D warnings

# The traffic path's capture tests need root (tcpdump and libpcap on loopback): without it they
# print SKIPPED and pass, so the run says so at its end.
unit: deps
	cargo test --workspace
	@[ "$$(id -u)" = 0 ] || [ -n "$$CI" ] || echo "note: not root: the traffic path's capture tests (tcpdump on lo) were skipped; run make test as root to include them"

fuzz: apt-deps
	@if [ -x fuzz/run.sh ]; then fuzz/run.sh $(FUZZ_SECONDS); fi

test: deps lint unit fuzz

clean:
	cargo clean
