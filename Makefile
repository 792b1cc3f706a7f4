# The two commands of the README. Both create the environment when it is missing or stale.
VENV ?= .venv
STAMP := $(VENV)/.chipmatch-installed
# Keep an embedded Ray (and everything the tests start) on 127.0.0.1.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER = 0

.PHONY: run test lint env bench

run: $(STAMP)          ## the main job: the whole pipeline on conf/quickstart.yaml
	$(VENV)/bin/chipmatch run --config conf/quickstart.yaml

test: $(STAMP)         ## the test suite
	$(VENV)/bin/python -m pytest -q

lint: $(STAMP)         ## static checks (seconds): ruff, then mypy (configured in pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

env: $(STAMP)

$(STAMP): pyproject.toml infra/constraints.txt infra/setup_env.sh
	VENV=$(VENV) infra/setup_env.sh
	touch $(STAMP)
