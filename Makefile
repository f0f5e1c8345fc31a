# `make test` is the one command CI and developers run: it builds the virtual
# environment from the package registry, installs the project with its test
# extras, installs the few system tools the tests use, and runs the whole suite.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: test test-unit coverage test-faults test-full test-rgw rgw-up rgw-down lint venv system-deps browser-deps bench bench-smoke docker-smoke clean

# Two passes: the suite on 2 processes (each with its own S3 server; a test file stays
# on one process), then the `serial` tests alone (rates and latencies measured at the
# proxy, a system-wide inotify limit). Both always run; either failing fails the target
# (a pass that selects nothing, status 5, as with PYTEST_ARGS=tests/worker, is fine).
test: $(VENV)/.installed system-deps browser-deps
	rc=0; \
	$(PY) -m pytest -n 2 --dist loadfile -m "not serial" $(PYTEST_ARGS) || \
	  { s=$$?; [ $$s -eq 5 ] || rc=$$s; }; \
	$(PY) -m pytest -m serial $(PYTEST_ARGS) || { s=$$?; [ $$s -eq 5 ] || rc=$$s; }; \
	exit $$rc

# The in-process unit tests alone (tests/shared, worker, supervisor, and the proxy and
# S3-server tests of tests/support), under a minute: the `unit` marker is set by
# tests/conftest.py from where a test lives.
test-unit: $(VENV)/.installed
	$(PY) -m pytest -m unit $(PYTEST_ARGS)

# The whole suite under coverage.py, lines and branches, in every process it starts:
# pytest, the `processor` supervisor, its spawned workers and their probe helpers
# ([tool.coverage.run] patch = subprocess in pyproject.toml starts coverage in each
# new Python process). A process killed with SIGKILL loses its data: combine warns
# once about its empty file, which is then removed. The data directory is
# world-writable because tests/badinput runs the processor as `nobody`. Prints the
# modules not fully covered and the total line and branch figures; the HTML report
# is in build/coverage/html. `make test` does not measure.
# Deselected: test_sigterm_during_startup signals the processor 0.1 s after its
# interpreter is up, and coverage's own start-up (~0.12 s, before the first line
# of the program) puts the processor's SIGTERM handler past that window.
COVERAGE_DESELECT := --deselect tests/faults/test_processes.py::test_sigterm_during_startup
COVERAGE_DIR := build/coverage
coverage: export COVERAGE_TOTALS := import json; t = json.load(open('$(COVERAGE_DIR)/coverage.json'))['totals']; \
  print('total lines    %d/%d = %.1f%%' % (t['covered_lines'], t['num_statements'], t['percent_statements_covered'])); \
  print('total branches %d/%d = %.1f%%' % (t['covered_branches'], t['num_branches'], t['percent_branches_covered']))
coverage: $(VENV)/.installed system-deps browser-deps
	rm -rf $(COVERAGE_DIR) && mkdir -p $(COVERAGE_DIR) && chmod 1777 $(COVERAGE_DIR)
	$(PY) -m coverage run -m pytest $(COVERAGE_DESELECT) $(PYTEST_ARGS); rc=$$?; \
	  $(PY) -m coverage combine --quiet && rm -f $(COVERAGE_DIR)/.coverage.* && \
	  $(PY) -m coverage report --skip-covered --sort=cover && \
	  $(PY) -m coverage html --quiet && \
	  $(PY) -m coverage json --quiet && \
	  $(PY) -c "$$COVERAGE_TOTALS" \
	  || rc=$$((rc ? rc : 1)); exit $$rc

# The fault-injection scenarios with their full repetitions (minutes); `make test`
# runs them with fewer.
test-faults: $(VENV)/.installed system-deps
	FAULTS_FULL=1 $(PY) -m pytest tests/faults $(PYTEST_ARGS)

# Everything at full size: the fault suite's full repetitions, 2,000 files at once, and
# the uplink tests with the issue's own sizes (tests/support/scale.py); about 30 min.
test-full: $(VENV)/.installed system-deps browser-deps
	TESTS_FULL=1 $(PY) -m pytest $(PYTEST_ARGS)

# The whole suite against Ceph's S3 gateway (radosgw, Debian's ceph 16.2) instead of
# moto: a throw-away single-node cluster on 127.0.0.1:7480 (needs root for apt-get;
# about 10 s to start, 150 MB of RAM). `make rgw-up` prints the variables that point
# `make test` or `make bench` at it by hand; `make rgw-down` stops it.
test-rgw: $(VENV)/.installed system-deps
	eval "$$(bash deploy/rgw-up.sh)" && $(PY) -m pytest $(PYTEST_ARGS); \
	  rc=$$?; bash deploy/rgw-down.sh; exit $$rc

rgw-up:
	@bash deploy/rgw-up.sh

rgw-down:
	@bash deploy/rgw-down.sh

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check supervisor worker shared tests bench
	$(VENV)/bin/mypy supervisor worker shared

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# Tools from Debian's packages that tests need (e.g. promtool); no-op when present.
system-deps:
	bash deploy/system-deps.sh

# hls.js for the browser playback test, at the version tests/browser/package-lock.json
# pins, from the npm registry (skipped without npm: that test then skips too).
BROWSER_DEPS := tests/browser/node_modules/.package-lock.json
browser-deps: $(BROWSER_DEPS)
$(BROWSER_DEPS): tests/browser/package-lock.json
	if command -v npm >/dev/null; then cd tests/browser && npm ci --no-audit --no-fund; \
	else echo "browser-deps: no npm; the browser playback test will skip"; fi

# Side-by-side benchmark against awscli, rclone and a boto3 loop (docs/BENCHMARKS.md).
bench: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test,bench]'
	command -v rclone >/dev/null || apt-get install -y -q rclone || echo "rclone unavailable: that baseline is skipped"
	$(PY) bench/run.py

bench-smoke: $(VENV)/.installed
	$(PY) bench/run.py --smoke

# Builds the image and runs it against a local S3 server (needs a Docker engine).
docker-smoke: $(VENV)/.installed
	bash deploy/docker-smoke.sh

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
