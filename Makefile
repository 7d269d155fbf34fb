# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test check bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m tracer_wrap.lab.demo

# Lint and types first: they take seconds and fail fast.
check: $(STAMP)
	$(PY) -m ruff check tracer_wrap tests benchmarks
	$(PY) -m mypy

# One test worker per core (pytest-xdist): most tests wait on processes, servers and sockets, so
# two workers on two cores take the suite from 490 s to 280-335 s (BENCHMARKS.md, "The test suite").
test: check
	bash scripts/system-deps.sh
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -n auto --dist worksteal

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_banking77.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
