# The verbs of the project. `make demo` and `make test` create .venv first when needed.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
N ?= 3
# The oldest Python 3 on the machine, for the agent's compatibility run (pyenv keeps several).
OLD_PY ?= $(shell ls -d /root/.pyenv/versions/3.* 2>/dev/null | sort -V | head -n1)/bin/python3
OLD_VENV := .venv-oldpy

.PHONY: setup demo demo-stop demo-local demo-local-stop collection ansible-216 test test-agent-oldpy lint vermin bench fleet-up fleet-down clean

setup: $(VENV)/.done

$(VENV)/.done: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

$(OLD_VENV)/.done: tests/agent/oldpy-requirements.txt
	$(OLD_PY) -m venv $(OLD_VENV)
	$(OLD_VENV)/bin/pip install -q 'pip<22'
	$(OLD_VENV)/bin/pip install -q -r tests/agent/oldpy-requirements.txt
	touch $@

demo: setup
	bash scripts/demo_fleet.sh

demo-stop:
	bash scripts/demo_fleet.sh stop

# The same story without root or a fleet: a monitor and three agents on loopback.
demo-local: setup
	bash scripts/demo_local.sh

demo-local-stop:
	bash scripts/demo_local.sh stop

vermin: setup
	$(BIN)/vermin --target=3.4- --no-tips --violations agent_src

lint: setup vermin
	$(BIN)/ruff check controller_src agent_src tests bench

test-agent-oldpy: $(OLD_VENV)/.done
	PYTHONPATH=agent_src $(OLD_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/agent

test: setup lint test-agent-oldpy
	$(BIN)/pytest -q tests

bench: setup
	$(BIN)/python bench/run_all.py

# dist/mdp-core-VERSION.tar.gz: the collection with the agent source and the controller library's
# wheel bundled in (ansible-galaxy collection install dist/mdp-core-*.tar.gz).
collection: setup
	bash scripts/build_collection.sh dist

ansible-216: setup
	bash tests/ansible/collection_tests.sh 2.16

fleet-up:
	bash tests/fleet/fleet.sh up $(N)

fleet-down:
	bash tests/fleet/fleet.sh down

clean:
	rm -rf $(VENV) $(OLD_VENV) .demo
