# Two entry points, each sets itself up on a fresh machine: `make demo`, `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint chaos install clean

# pip compiles the bytecode on one core (half of its 110 s); compileall does it on every core after a
# --no-compile install (52 s + 24 s on 2 cores). A file that does not compile is left as pip leaves it (torch
# ships one in Python 3.12 syntax). Without bytecode every Python process would compile what it imports,
# each time where PYTHONDONTWRITEBYTECODE is set.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-compile -c constraints.txt -e '.[test]'
	$(PY) -m compileall -q -j 0 $(VENV)/lib >/dev/null || true
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m sweeper.run

# Real PostgreSQL and headless Chromium for the tests (tests/services/start.sh); the env file
# tells the tests where they are. A missing service skips its tests, or fails them under
# CXR_SWEEP_REQUIRE_SERVICES=1 (CI).
# The quick tests first, spread over the cores (pytest-xdist; tests sharing a trained fixture on one
# worker); then the `slow` ones (sweeps on real Ray clusters) in two streams on two workers: the tests of
# the session's shared smoke sweeps, and those with sweeps of their own (tests/conftest.py groups them;
# pytest is pinned where pytest-xdist can). Both always run; either failing fails make test.
# ruff (pinned; rules in pyproject.toml): a lint error fails make test before any test runs.
lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: $(STAMP) lint
	bash tests/services/start.sh
	. ./.cxr-sweep/services/env && rc=0 \
		&& { $(PY) -m pytest -m "not slow" -n auto --maxprocesses 4 --dist loadgroup || rc=$$?; } \
		&& { $(PY) -m pytest -m slow -n 2 --dist loadgroup || rc=$$?; } && exit $$rc

# The fault-injection tests at a larger scale (50 writer kills, a trial's worker killed after each
# epoch), with the cluster tests (a node removed, the driver killed and resumed).
chaos: $(STAMP)
	bash tests/services/start.sh
	. ./.cxr-sweep/services/env && CXR_SWEEP_CHAOS_SCALE=5 $(PY) -m pytest -v -s \
		tests/test_faults.py tests/sweeper/test_cluster_and_resume.py

# Also what an interrupted `ray up` test left installed for the test nodes' user (6.2 GB), if any.
clean:
	-bash tests/services/stop.sh  # a server whose data dir is deleted would linger on its port
	rm -rf $(VENV) .cxr-sweep
	-if id cxrnode >/dev/null 2>&1; then rm -rf "$$(getent passwd cxrnode | cut -d: -f6)/cxr-sweep"; fi
