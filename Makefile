# Two commands for a newcomer: `make site` builds the sample site, `make test` runs every test.
# Both create .venv when it is missing and install everything from this repo's own files.

VENV   := .venv
PYTHON := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: site test

site: $(STAMP)
	$(VENV)/bin/gate-report build --config reporter.toml

test: $(STAMP)
	$(PYTHON) -m pytest

# torch==2.13.0 first: on these machines that is the CPU build; a bare "torch" would pull CUDA.
$(STAMP): pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet torch==2.13.0
	$(PYTHON) -m pip install --quiet -e '.[test]'
	touch $(STAMP)
