# Two commands for a newcomer: `make site` builds the sample site, `make test` runs every test.
# Both create .venv when it is missing and install everything from this repo's own files.

VENV   := .venv
PYTHON := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: site test chromium mutants

site: $(STAMP)
	$(VENV)/bin/gate-report build --config reporter.toml

# Lint and format are checked first (ruff); the import contracts run inside pytest (tests/test_layout.py).
test: $(STAMP) chromium
	$(VENV)/bin/ruff check reporter tests sample_models
	$(VENV)/bin/ruff format --check reporter tests sample_models
	$(PYTHON) -m pytest

# The browser test drives Debian's Chromium (Playwright's own browser download does not work here).
chromium:
	@test -x /usr/bin/chromium || { echo "installing chromium with apt (for the browser test)"; \
	  (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 || \
	  (sudo apt-get update -qq && sudo apt-get install -y -qq chromium) >/dev/null 2>&1 || \
	  { echo "could not install chromium: run 'apt-get install -y chromium' as root"; exit 1; }; }

# torch==2.13.0 first: on these machines that is the CPU build; a bare "torch" would pull CUDA.
$(STAMP): pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet torch==2.13.0
	$(PYTHON) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Plant one bug per guarantee in a copy of the code and check the tests catch each (tests/mutants.py).
mutants: $(STAMP) chromium
	$(PYTHON) -m tests.mutants
