# kube-ipsec — every target installs what it needs on a fresh Debian machine (as root).
#   make test    lint + types + unit + real-apiserver + in-VM tests (what CI runs)
#   make demo    the local lab: VM + apiserver + operator + three agents
# Extra pytest arguments: make test-vm PYTEST_ARGS='-k xfrm'

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
export KUBE_IPSEC_CACHE ?= $(HOME)/.cache/kube-ipsec

.PHONY: deps venv k8s test lint test-unit test-apiserver test-vm demo bench clean image

deps: $(KUBE_IPSEC_CACHE)/.apt-done
$(KUBE_IPSEC_CACHE)/.apt-done: hack/install-deps.sh
	bash hack/install-deps.sh
	mkdir -p $(KUBE_IPSEC_CACHE) && touch $@

venv: $(VENV)/.done
$(VENV)/.done: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

k8s: venv
	bash hack/k8s/build.sh

lint: venv
	$(VENV)/bin/ruff check kube_ipsec tests benchmarks
	$(VENV)/bin/mypy

test-unit: venv
	$(PY) -m pytest -m 'not apiserver and not vm and not interop' $(PYTEST_ARGS)

test-apiserver: venv k8s
	$(PY) -m pytest -m 'apiserver and not vm' $(PYTEST_ARGS)

test-vm: deps venv k8s  # hostside: apiserver + operator on the host for tests/e2e/test_lab.py
	$(PY) hack/lab/hostside.py -- bash hack/vm/vmrun --net --timeout 2400 \
		--rwdir $(abspath .vm-out) --rwdir $(abspath .lab) -- $(abspath $(PY)) -m pytest -p no:cacheprovider \
		-p no:hypothesispytest -m 'vm or interop' $(PYTEST_ARGS)

test: deps venv k8s lint test-unit test-apiserver test-vm

demo: deps venv k8s
	$(PY) hack/lab/hostside.py -- bash hack/vm/vmrun --net --timeout 1800 \
		--rwdir $(abspath .lab) -- $(abspath $(PY)) hack/lab/demo.py

image:  # the container image with podman (not part of test); see hack/image/build.sh
	bash hack/image/build.sh

bench: venv
	@echo "benchmarks: see benchmarks/README.md"

clean:
	rm -rf $(VENV) build *.egg-info
