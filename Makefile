# The two commands of the README: `make run` and `make test`. Each creates .venv when missing
# and installs the project into it (pip takes torch from local wheels where a machine has them).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ARGS ?=
PYTEST_ARGS ?=
BENCH_JSON_DIR ?= .benchmarks

.PHONY: run test test-slow bench bench-compare lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-run: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -e .
	touch $@

# The tests also install the worked plugin example, to run it like any third-party codec.
$(VENV)/.installed-test: pyproject.toml examples/linear-plugin/pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,lint]' -e examples/linear-plugin
	touch $@ $(VENV)/.installed-run

run: $(VENV)/.installed-run
	$(PY) -m bench run $(ARGS)

# The tests, with tiny models; test-slow: the default recipes against their quality bars.
test: $(VENV)/.installed-test
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: $(VENV)/.installed-test
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

# pytest-benchmark suite; JSON saved under $(BENCH_JSON_DIR) for bench-compare.
bench: $(VENV)/.installed-test
	$(PY) -m pytest tests/benchmarks --benchmark-enable --benchmark-only --benchmark-autosave \
		--benchmark-storage=$(BENCH_JSON_DIR) $(PYTEST_ARGS)

bench-compare: $(VENV)/.installed-test
	$(PY) -m pytest tests/benchmarks --benchmark-enable --benchmark-only --benchmark-storage=$(BENCH_JSON_DIR) \
		--benchmark-compare --benchmark-compare-fail=median:25% $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(PY) -m ruff check bench bench_codecs tests examples scripts

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks .hypothesis .ruff_cache *.egg-info
