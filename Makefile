# The two commands of the README: `make demo` and `make test`. Each does all its own set-up.
SHELL := /bin/bash
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# the machine's python3 (set-up creates the virtualenv with it), found before .venv/bin goes on PATH
ifeq ($(origin PYTHON),undefined)
PYTHON := $(shell command -v python3)
endif
# The local stack's development settings; a real deployment sets LAKEHOUSE_* itself.
export LAKEHOUSE_ENV_FILE ?= $(CURDIR)/local.env
# spark-submit / spark-sql / the Thrift server read the generated jar list from here.
export SPARK_CONF_DIR := $(CURDIR)/.cache/spark-conf
export PYSPARK_PYTHON := $(BIN)/python
export PYSPARK_DRIVER_PYTHON := $(BIN)/python
export PATH := $(BIN):$(PATH)

.PHONY: setup stack-up stack-down stack-status jvm demo test-setup test test-unit test-reliability bench bench-p2 bench-p7 soak clean

# The virtualenv, the jars and the MinIO build, side by side with one progress display
# (devstack/bootstrap.py, the machine's Python alone); each a no-op once current.
setup:
	@$(PYTHON) -m devstack.bootstrap

stack-up: setup
	lakehouse stack up

stack-down:
	-lakehouse stack down

stack-status:
	lakehouse stack status

# The JVM's class archive: every later lakehouse start maps the classes it would load (~2 min once,
# then ~5 s less per start). Runs the pipeline on the stack; a failure only costs that speed (the
# tests check the archive themselves).
jvm: stack-up
	-@lakehouse setup jvm

# the demo brings the stack up itself (and says so)
demo: setup
	@lakehouse demo

# Everything the tests need before the first one runs (CI times it apart from the tests).
test-setup: jvm
	@lakehouse setup tests

# CI runs this: everything but the long fault scenarios (see README, "Tests"), on WORKERS pytest
# workers side by side (pytest-xdist; the tests that share GX's folder on one of them). Every
# test's duration goes to reports/junit.xml (`python -m tests.durations` summarises it);
# DURATIONS=0 prints them all.
DURATIONS ?= 20
WORKERS ?= 2
test: test-setup
	pytest -q -m "not slow" -n $(WORKERS) --dist loadgroup --durations=$(DURATIONS) --junitxml=reports/junit.xml

# The whole fault-injection suite (tests/reliability), the long scenarios included.
test-reliability: jvm
	pytest -q tests/reliability

test-unit: setup
	pytest -q -m "not stack and not cluster"

# P2 beside its peer (bench/peer.py) first, then the live ladder, recovery and backfill, then P7:
# 800 orders/s at steady state beside the peer, 30 minutes each after a 10-minute warm-up
# (`make bench-p7 MINUTES=5` for a try).
bench: jvm
	python -m bench.p2
	python -m bench.run
	python -m bench.p7 $(P7_MINUTES)

bench-p7: jvm
	python -m bench.p7 $(P7_MINUTES)

bench-p2: jvm
	python -m bench.p2

# An hour of `run all` under load, sampled every minute (not in CI); `make soak MINUTES=10` for a try.
MINUTES ?= 60
# P7's own default (30 minutes) unless MINUTES is given on the command line
P7_MINUTES = $(if $(filter command line,$(origin MINUTES)),--minutes $(MINUTES),)
soak: jvm
	python -m bench.soak --minutes $(MINUTES)

clean: stack-down
	rm -rf .stack .cache $(VENV)
